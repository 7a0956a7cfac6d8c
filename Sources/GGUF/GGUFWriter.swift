/// Builds GGUF files in memory: used by tests and tools to make small synthetic models.
public struct GGUFWriter {
    public var version: UInt32 = 3
    public var alignment: Int = 32
    private var metadata: [(String, GGUFValue)] = []
    private var tensors: [(name: String, shape: [Int], type: GGMLType, data: [UInt8])] = []

    public init(version: UInt32 = 3) { self.version = version }

    /// Adds a metadata pair (written in insertion order).
    public mutating func add(_ key: String, _ value: GGUFValue) {
        metadata.append((key, value))
    }

    /// Adds a tensor with its raw bytes (already in `type`'s block layout).
    public mutating func addTensor(_ name: String, shape: [Int], type: GGMLType, data: [UInt8]) {
        tensors.append((name, shape, type, data))
    }

    /// Adds an F32 tensor.
    public mutating func addTensor(_ name: String, shape: [Int], floats: [Float]) {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(floats.count * 4)
        for f in floats { withUnsafeBytes(of: f.bitPattern.littleEndian) { bytes.append(contentsOf: $0) } }
        addTensor(name, shape: shape, type: .f32, data: bytes)
    }

    /// The file's bytes.
    public func serialize() -> [UInt8] {
        var out: [UInt8] = []
        func put<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) } }
        func putString(_ s: String) {
            put(UInt64(s.utf8.count))
            out.append(contentsOf: s.utf8)
        }
        func tag(_ v: GGUFValue) -> GGUFValue.Tag {
            switch v {
            case .uint8: return .uint8
            case .int8: return .int8
            case .uint16: return .uint16
            case .int16: return .int16
            case .uint32: return .uint32
            case .int32: return .int32
            case .float32: return .float32
            case .bool: return .bool
            case .string: return .string
            case .array: return .array
            case .uint64: return .uint64
            case .int64: return .int64
            case .float64: return .float64
            }
        }
        func putValue(_ v: GGUFValue) {
            switch v {
            case .uint8(let x): put(x)
            case .int8(let x): put(x)
            case .uint16(let x): put(x)
            case .int16(let x): put(x)
            case .uint32(let x): put(x)
            case .int32(let x): put(x)
            case .float32(let x): put(x.bitPattern)
            case .bool(let x): put(UInt8(x ? 1 : 0))
            case .string(let s): putString(s)
            case .uint64(let x): put(x)
            case .int64(let x): put(x)
            case .float64(let x): put(x.bitPattern)
            case .array(let items):
                put((items.first.map(tag) ?? .uint8).rawValue)
                put(UInt64(items.count))
                for item in items { putValue(item) }
            }
        }
        put(GGUFFile.magic)
        put(version)
        put(UInt64(tensors.count))
        put(UInt64(metadata.count))
        for (key, value) in metadata {
            putString(key)
            put(tag(value).rawValue)
            putValue(value)
        }
        var offset = 0
        var offsets: [Int] = []
        for t in tensors {
            offsets.append(offset)
            offset += (t.data.count + alignment - 1) / alignment * alignment
        }
        for (i, t) in tensors.enumerated() {
            putString(t.name)
            put(UInt32(t.shape.count))
            for d in t.shape { put(UInt64(d)) }
            put(t.type.rawValue)
            put(UInt64(offsets[i]))
        }
        while out.count % alignment != 0 { out.append(0) }
        for t in tensors {
            out.append(contentsOf: t.data)
            while out.count % alignment != 0 { out.append(0) }
        }
        return out
    }
}
