import Foundation
import GGUF
import Testing

/// Writes bytes to a fresh temporary file and returns its path.
func temporaryFile(_ bytes: [UInt8], name: String = "test.gguf") throws -> String {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tandem-gguf-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    let url = dir.appendingPathComponent(name)
    try Data(bytes).write(to: url)
    return url.path
}

@Suite struct GGUFFileTests {
    func sampleWriter(version: UInt32 = 3) -> GGUFWriter {
        var w = GGUFWriter(version: version)
        w.add("general.architecture", .string("llama"))
        w.add("u8", .uint8(200))
        w.add("i8", .int8(-5))
        w.add("u16", .uint16(60000))
        w.add("i16", .int16(-30000))
        w.add("u32", .uint32(4_000_000_000))
        w.add("i32", .int32(-2_000_000_000))
        w.add("f32", .float32(1.5))
        w.add("bool", .bool(true))
        w.add("u64", .uint64(1 << 40))
        w.add("i64", .int64(-(1 << 40)))
        w.add("f64", .float64(-0.25))
        w.add("strings", .array([.string("a"), .string("ünï")]))
        w.add("nested", .array([.array([.int32(1), .int32(2)]), .array([.int32(3)])]))
        w.addTensor("weights", shape: [4, 2], floats: [1, 2, 3, 4, 5, 6, 7, 8])
        w.addTensor("q", shape: [32], type: .q8_0, data: [UInt8](repeating: 1, count: 34))
        return w
    }

    @Test(arguments: [UInt32(2), 3])
    func roundTripsEveryValueType(version: UInt32) throws {
        let path = try temporaryFile(sampleWriter(version: version).serialize())
        let file = try GGUFFile(path: path)
        #expect(file.version == version)
        #expect(file.metadata["u8"] == .uint8(200))
        #expect(file.metadata["i8"] == .int8(-5))
        #expect(file.metadata["u16"] == .uint16(60000))
        #expect(file.metadata["i16"] == .int16(-30000))
        #expect(file.metadata["u32"] == .uint32(4_000_000_000))
        #expect(file.metadata["i32"] == .int32(-2_000_000_000))
        #expect(file.metadata["f32"] == .float32(1.5))
        #expect(file.metadata["bool"] == .bool(true))
        #expect(file.metadata["u64"] == .uint64(1 << 40))
        #expect(file.metadata["i64"] == .int64(-(1 << 40)))
        #expect(file.metadata["f64"] == .float64(-0.25))
        #expect(file.metadata["strings"] == .array([.string("a"), .string("ünï")]))
        #expect(file.metadata["nested"] == .array([.array([.int32(1), .int32(2)]), .array([.int32(3)])]))
        #expect(file.metadataKeys.first == "general.architecture")
        let t = try #require(file.tensor("weights"))
        #expect(t.shape == [4, 2] && t.type == .f32 && t.rowCount == 2 && t.rowLength == 4)
        #expect(t.fileOffset % 32 == 0)
        let values = try Dequantize.row(.f32, file.data(of: t), count: 8)
        #expect(values == [1, 2, 3, 4, 5, 6, 7, 8])
        #expect(file.tensor("q")?.byteCount == 34)
    }

    @Test func honoursAlignment() throws {
        var w = sampleWriter()
        w.alignment = 64
        w.add("general.alignment", .uint32(64))
        let file = try GGUFFile(path: try temporaryFile(w.serialize()))
        #expect(file.alignment == 64)
        for t in file.tensors { #expect(t.fileOffset % 64 == 0) }
    }

    func expectError(_ bytes: [UInt8], _ check: (GGUFError) -> Bool, sourceLocation: SourceLocation = #_sourceLocation)
        throws
    {
        let path = try temporaryFile(bytes)
        do {
            _ = try GGUFFile(path: path)
            Issue.record("expected an error", sourceLocation: sourceLocation)
        } catch let error as GGUFError {
            #expect(check(error), "unexpected error: \(error)", sourceLocation: sourceLocation)
            #expect(!error.description.isEmpty)
        }
    }

    @Test func rejectsBadMagic() throws {
        var bytes = sampleWriter().serialize()
        bytes[0] = 0x47
        bytes[3] = 0x00
        try expectError(bytes) { if case .badMagic = $0 { return true } else { return false } }
    }

    @Test func rejectsUnsupportedVersion() throws {
        var bytes = sampleWriter().serialize()
        bytes[4] = 1
        try expectError(bytes) { $0 == .unsupportedVersion(1) }
    }

    @Test func rejectsEveryTruncationOfTheHeader() throws {
        let bytes = sampleWriter().serialize()
        let file = try GGUFFile(path: try temporaryFile(bytes))
        // Every cut inside the header and tensor data must give an error, not a crash.
        for cut in stride(from: 1, to: bytes.count, by: 3) where cut < file.tensors.last!.fileOffset + 34 {
            try expectError(Array(bytes[0..<cut])) {
                switch $0 {
                case .truncated, .tensorOutOfBounds, .absurdCount: return true
                default: return false
                }
            }
        }
    }

    @Test func rejectsTensorPastEndOfFile() throws {
        var w = GGUFWriter()
        w.addTensor("big", shape: [1024], floats: [Float](repeating: 1, count: 1024))
        let bytes = w.serialize()
        try expectError(Array(bytes[0..<(bytes.count - 100)])) { $0 == .tensorOutOfBounds(tensor: "big") }
    }

    @Test func rejectsUnknownTypes() throws {
        var w = GGUFWriter()
        w.addTensor("t", shape: [32], type: .q8_0, data: [UInt8](repeating: 0, count: 34))
        var bytes = w.serialize()
        // The tensor type field follows name (8 + 1) and dims (4 + 8) after the 24-byte header.
        let typeOffset = 24 + 8 + 1 + 4 + 8
        bytes[typeOffset] = 99
        try expectError(bytes) { $0 == .unknownTensorType(99, tensor: "t") }

        var m = GGUFWriter()
        m.add("k", .uint8(1))
        var mb = m.serialize()
        mb[24 + 8 + 1] = 77  // the value type of key "k"
        try expectError(mb) { $0 == .unknownValueType(77, key: "k") }
    }

    @Test func rejectsAbsurdCounts() throws {
        var bytes = GGUFWriter().serialize()
        // tensor count = 2^62
        bytes.replaceSubrange(8..<16, with: [0, 0, 0, 0, 0, 0, 0, 0x40])
        try expectError(bytes) { if case .absurdCount = $0 { return true } else { return false } }

        var w = GGUFWriter()
        w.add("arr", .array([.uint32(1)]))
        var ab = w.serialize()
        // The array length follows key (8 + 3), value tag (4) and element tag (4).
        let lengthOffset = 24 + 8 + 3 + 4 + 4
        ab.replaceSubrange(lengthOffset..<(lengthOffset + 8), with: [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F])
        try expectError(ab) { if case .absurdCount = $0 { return true } else { return false } }
    }

    @Test func rejectsBadAlignmentAndShapes() throws {
        var w = GGUFWriter()
        w.add("general.alignment", .uint32(48))
        try expectError(w.serialize()) { $0 == .badAlignment(48) }

        var s = GGUFWriter()
        s.addTensor("ragged", shape: [20], type: .q4_0, data: [UInt8](repeating: 0, count: 18))
        try expectError(s.serialize()) { if case .badTensorShape = $0 { return true } else { return false } }
    }

    @Test func reportsMissingFile() throws {
        #expect(throws: GGUFError.self) { try GGUFFile(path: "/nonexistent/model.gguf") }
    }
}
