#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// A tensor described in a GGUF file's directory; its bytes live in the memory-mapped file.
public struct GGUFTensor: Sendable {
    public let name: String
    /// Dimensions, innermost (contiguous) first, as ggml's `ne`.
    public let shape: [Int]
    public let type: GGMLType
    /// Offset of the data from the start of the file.
    public let fileOffset: Int
    public let byteCount: Int

    /// Total number of elements.
    public var elementCount: Int { shape.reduce(1, *) }
    /// Elements in one row (the innermost dimension).
    public var rowLength: Int { shape.first ?? 1 }
    /// Number of rows (the product of the outer dimensions).
    public var rowCount: Int { shape.dropFirst().reduce(1, *) }
}

/// A read-only, memory-mapped GGUF model file (versions 2 and 3): metadata and tensor directory.
public final class GGUFFile: @unchecked Sendable {
    public let path: String
    public let version: UInt32
    public let metadata: [String: GGUFValue]
    /// Metadata keys in file order.
    public let metadataKeys: [String]
    public let tensors: [GGUFTensor]
    public let alignment: Int
    public let dataOffset: Int
    /// The whole file, mapped read-only.
    public let bytes: UnsafeRawBufferPointer
    private let tensorIndex: [String: Int]

    static let magic: UInt32 = 0x4655_4747  // "GGUF" little-endian
    static let maxArrayDepth = 8

    /// Maps and parses the file at `path`; throws `GGUFError` naming the problem on corrupt input.
    public init(path: String) throws {
        self.path = path
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw GGUFError.cannotOpen(path: path, reason: String(cString: strerror(errno))) }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else {
            throw GGUFError.cannotOpen(path: path, reason: String(cString: strerror(errno)))
        }
        let size = Int(st.st_size)
        guard size > 0 else { throw GGUFError.truncated(what: "magic", offset: 0) }
        guard let mapped = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0), mapped != MAP_FAILED else {
            throw GGUFError.cannotOpen(path: path, reason: "mmap failed: \(String(cString: strerror(errno)))")
        }
        let buffer = UnsafeRawBufferPointer(start: mapped, count: size)
        do {
            let parsed = try Self.parse(buffer)
            self.bytes = buffer
            self.version = parsed.version
            self.metadata = parsed.metadata
            self.metadataKeys = parsed.keys
            self.tensors = parsed.tensors
            self.alignment = parsed.alignment
            self.dataOffset = parsed.dataOffset
            var index: [String: Int] = [:]
            for (i, t) in parsed.tensors.enumerated() { index[t.name] = i }
            self.tensorIndex = index
        } catch {
            munmap(mapped, size)
            throw error
        }
    }

    deinit {
        munmap(UnsafeMutableRawPointer(mutating: bytes.baseAddress), bytes.count)
    }

    /// The tensor named `name`, if the file has one.
    public func tensor(_ name: String) -> GGUFTensor? {
        tensorIndex[name].map { tensors[$0] }
    }

    /// A pointer to the first byte of `tensor`'s data.
    public func data(of tensor: GGUFTensor) -> UnsafeRawPointer {
        bytes.baseAddress! + tensor.fileOffset
    }

    // MARK: Parsing

    private struct Parsed {
        var version: UInt32
        var metadata: [String: GGUFValue]
        var keys: [String]
        var tensors: [GGUFTensor]
        var alignment: Int
        var dataOffset: Int
    }

    private static func parse(_ buffer: UnsafeRawBufferPointer) throws -> Parsed {
        var cursor = ByteCursor(base: buffer.baseAddress!, count: buffer.count)
        let magic = try cursor.read(UInt32.self, "magic")
        guard magic == Self.magic else { throw GGUFError.badMagic(found: magic) }
        let version = try cursor.read(UInt32.self, "version")
        guard version == 2 || version == 3 else { throw GGUFError.unsupportedVersion(version) }
        let tensorCount = try cursor.read(UInt64.self, "tensor count")
        let kvCount = try cursor.read(UInt64.self, "metadata count")
        // Each tensor info takes at least 8 (name length) + 4 + 8 + 4 + 8 bytes; each pair at least 8 + 4 + 1.
        guard tensorCount <= UInt64(cursor.remaining / 32) else {
            throw GGUFError.absurdCount(what: "tensor count", count: tensorCount)
        }
        guard kvCount <= UInt64(cursor.remaining / 13) else {
            throw GGUFError.absurdCount(what: "metadata count", count: kvCount)
        }
        var metadata: [String: GGUFValue] = [:]
        var keys: [String] = []
        for i in 0..<Int(kvCount) {
            let key = try cursor.readString("metadata key #\(i)")
            let rawTag = try cursor.read(UInt32.self, "type of '\(key)'")
            guard let tag = GGUFValue.Tag(rawValue: rawTag) else {
                throw GGUFError.unknownValueType(rawTag, key: key)
            }
            let value = try readValue(tag, key: key, cursor: &cursor, depth: 0)
            guard metadata[key] == nil else { throw GGUFError.duplicateKey(key) }
            metadata[key] = value
            keys.append(key)
        }
        var alignment = 32
        if let a = metadata["general.alignment"] {
            guard let v = a.intValue, v > 0, v & (v - 1) == 0 else {
                throw GGUFError.badAlignment(a.intValue ?? -1)
            }
            alignment = v
        }
        struct Info {
            var name: String
            var shape: [Int]
            var type: GGMLType
            var offset: UInt64
        }
        var infos: [Info] = []
        infos.reserveCapacity(Int(tensorCount))
        var seen = Set<String>()
        for i in 0..<Int(tensorCount) {
            let name = try cursor.readString("tensor #\(i) name")
            let nDims = try cursor.read(UInt32.self, "dimension count of '\(name)'")
            guard nDims >= 1, nDims <= 4 else {
                throw GGUFError.badTensorShape(tensor: name, reason: "\(nDims) dimensions (1 to 4 allowed)")
            }
            var shape: [Int] = []
            var elements: UInt64 = 1
            for d in 0..<Int(nDims) {
                let dim = try cursor.read(UInt64.self, "dimension \(d) of '\(name)'")
                guard dim > 0, dim < (1 << 40) else {
                    throw GGUFError.badTensorShape(tensor: name, reason: "dimension \(d) is \(dim)")
                }
                let (product, overflow) = elements.multipliedReportingOverflow(by: dim)
                guard !overflow, product < (1 << 46) else {
                    throw GGUFError.badTensorShape(tensor: name, reason: "element count overflows")
                }
                elements = product
                shape.append(Int(dim))
            }
            let rawType = try cursor.read(UInt32.self, "type of '\(name)'")
            guard let type = GGMLType(rawValue: rawType) else {
                throw GGUFError.unknownTensorType(rawType, tensor: name)
            }
            guard shape[0] % type.blockSize == 0 else {
                throw GGUFError.badTensorShape(
                    tensor: name,
                    reason: "row of \(shape[0]) is not a multiple of \(type.name)'s block \(type.blockSize)")
            }
            let offset = try cursor.read(UInt64.self, "offset of '\(name)'")
            guard seen.insert(name).inserted else { throw GGUFError.duplicateTensor(name) }
            infos.append(Info(name: name, shape: shape, type: type, offset: offset))
        }
        let dataOffset = (cursor.offset + alignment - 1) / alignment * alignment
        var tensors: [GGUFTensor] = []
        tensors.reserveCapacity(infos.count)
        for info in infos {
            let elements = info.shape.reduce(1, *)
            guard let byteCount = info.type.byteCount(elements: elements) else {
                throw GGUFError.badTensorShape(tensor: info.name, reason: "size overflows")
            }
            guard info.offset % UInt64(alignment) == 0 else {
                throw GGUFError.badTensorShape(tensor: info.name, reason: "offset \(info.offset) is not aligned")
            }
            guard info.offset <= UInt64(buffer.count),
                dataOffset + Int(info.offset) + byteCount <= buffer.count
            else { throw GGUFError.tensorOutOfBounds(tensor: info.name) }
            tensors.append(
                GGUFTensor(
                    name: info.name, shape: info.shape, type: info.type,
                    fileOffset: dataOffset + Int(info.offset), byteCount: byteCount))
        }
        return Parsed(
            version: version, metadata: metadata, keys: keys, tensors: tensors, alignment: alignment,
            dataOffset: dataOffset)
    }

    private static func readValue(
        _ tag: GGUFValue.Tag, key: String, cursor: inout ByteCursor, depth: Int
    ) throws -> GGUFValue {
        switch tag {
        case .uint8: return .uint8(try cursor.read(UInt8.self, "value of '\(key)'"))
        case .int8: return .int8(try cursor.read(Int8.self, "value of '\(key)'"))
        case .uint16: return .uint16(try cursor.read(UInt16.self, "value of '\(key)'"))
        case .int16: return .int16(try cursor.read(Int16.self, "value of '\(key)'"))
        case .uint32: return .uint32(try cursor.read(UInt32.self, "value of '\(key)'"))
        case .int32: return .int32(try cursor.read(Int32.self, "value of '\(key)'"))
        case .uint64: return .uint64(try cursor.read(UInt64.self, "value of '\(key)'"))
        case .int64: return .int64(try cursor.read(Int64.self, "value of '\(key)'"))
        case .float32: return .float32(try cursor.readFloat("value of '\(key)'"))
        case .float64: return .float64(try cursor.readDouble("value of '\(key)'"))
        case .bool:
            let b = try cursor.read(UInt8.self, "value of '\(key)'")
            return .bool(b != 0)
        case .string: return .string(try cursor.readString("value of '\(key)'"))
        case .array:
            guard depth < maxArrayDepth else {
                throw GGUFError.absurdCount(what: "array nesting depth in '\(key)'", count: UInt64(depth))
            }
            let rawTag = try cursor.read(UInt32.self, "array type of '\(key)'")
            guard let elementTag = GGUFValue.Tag(rawValue: rawTag) else {
                throw GGUFError.unknownValueType(rawTag, key: key)
            }
            let count = try cursor.read(UInt64.self, "array length of '\(key)'")
            let minSize: Int
            switch elementTag {
            case .uint8, .int8, .bool: minSize = 1
            case .uint16, .int16: minSize = 2
            case .uint32, .int32, .float32: minSize = 4
            case .uint64, .int64, .float64, .string: minSize = 8
            case .array: minSize = 12
            }
            guard count <= UInt64(cursor.remaining / minSize) else {
                throw GGUFError.absurdCount(what: "array length of '\(key)'", count: count)
            }
            var elements: [GGUFValue] = []
            elements.reserveCapacity(Int(count))
            for _ in 0..<Int(count) {
                elements.append(try readValue(elementTag, key: key, cursor: &cursor, depth: depth + 1))
            }
            return .array(elements)
        }
    }
}
