/// A MessagePack value: the subset the registration pings use (nil, bool, integers, floats, strings, binary, arrays
/// and maps), with an encoder and a bounds-checked decoder.
public enum MessagePackValue: Sendable, Equatable, Hashable {
    case null
    case bool(Bool)
    case int(Int64)
    case uint(UInt64)
    case double(Double)
    case string(String)
    case binary([UInt8])
    case array([MessagePackValue])
    /// Key/value pairs in wire order.
    case map([MessagePackPair])

    /// The value of string key `key` in a map.
    public subscript(key: String) -> MessagePackValue? {
        guard case .map(let pairs) = self else { return nil }
        return pairs.first { $0.key == .string(key) }?.value
    }

    public var stringValue: String? {
        if case .string(let s) = self { return s }
        if case .binary(let b) = self { return String(validating: b, as: UTF8.self) }
        return nil
    }
}

/// One key/value entry of a MessagePack map.
public struct MessagePackPair: Sendable, Equatable, Hashable {
    public var key: MessagePackValue
    public var value: MessagePackValue
    public init(_ key: MessagePackValue, _ value: MessagePackValue) {
        self.key = key
        self.value = value
    }
}

/// Why bytes are not a MessagePack value.
public enum MessagePackError: Error, Equatable, CustomStringConvertible {
    case truncated
    case unsupportedType(UInt8)
    case invalidUTF8
    case tooDeep
    case trailingBytes(Int)

    public var description: String {
        switch self {
        case .truncated: return "msgpack: truncated input"
        case .unsupportedType(let b): return "msgpack: unsupported type byte 0x\(String(b, radix: 16))"
        case .invalidUTF8: return "msgpack: a string is not valid UTF-8"
        case .tooDeep: return "msgpack: nesting deeper than 32 levels"
        case .trailingBytes(let n): return "msgpack: \(n) bytes after the value"
        }
    }
}

extension MessagePackValue {
    /// A map with string keys and string values, in the given order.
    public static func stringMap(_ pairs: [(String, String)]) -> MessagePackValue {
        .map(pairs.map { MessagePackPair(.string($0.0), .string($0.1)) })
    }

    /// The value's MessagePack encoding (shortest forms, as msgpack-python writes them).
    public func encoded() -> [UInt8] {
        var out: [UInt8] = []
        encode(into: &out)
        return out
    }

    private func encode(into out: inout [UInt8]) {
        func be<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v.bigEndian) { out += $0 } }
        switch self {
        case .null: out.append(0xc0)
        case .bool(let b): out.append(b ? 0xc3 : 0xc2)
        case .uint(let u):
            if u <= UInt64(Int64.max) {
                MessagePackValue.int(Int64(u)).encode(into: &out)
            } else {
                out.append(0xcf)
                be(u)
            }
        case .int(let i):
            if i >= 0 && i < 128 {
                out.append(UInt8(i))
            } else if i < 0 && i >= -32 {
                out.append(UInt8(bitPattern: Int8(i)))
            } else if i >= 0 && i <= Int64(UInt8.max) {
                out.append(0xcc)
                out.append(UInt8(i))
            } else if i >= 0 && i <= Int64(UInt16.max) {
                out.append(0xcd)
                be(UInt16(i))
            } else if i >= 0 && i <= Int64(UInt32.max) {
                out.append(0xce)
                be(UInt32(i))
            } else if i >= Int64(Int8.min) && i < 0 {
                out.append(0xd0)
                out.append(UInt8(bitPattern: Int8(i)))
            } else if i >= Int64(Int16.min) && i < 0 {
                out.append(0xd1)
                be(Int16(i))
            } else if i >= Int64(Int32.min) && i < 0 {
                out.append(0xd2)
                be(Int32(i))
            } else {
                out.append(i >= 0 ? 0xcf : 0xd3)
                be(i)
            }
        case .double(let d):
            out.append(0xcb)
            be(d.bitPattern)
        case .string(let s):
            let bytes = Array(s.utf8)
            let n = bytes.count
            if n < 32 {
                out.append(0xa0 | UInt8(n))
            } else if n <= Int(UInt8.max) {
                out += [0xd9, UInt8(n)]
            } else if n <= Int(UInt16.max) {
                out.append(0xda)
                be(UInt16(n))
            } else {
                out.append(0xdb)
                be(UInt32(n))
            }
            out += bytes
        case .binary(let b):
            if b.count <= Int(UInt8.max) {
                out += [0xc4, UInt8(b.count)]
            } else if b.count <= Int(UInt16.max) {
                out.append(0xc5)
                be(UInt16(b.count))
            } else {
                out.append(0xc6)
                be(UInt32(b.count))
            }
            out += b
        case .array(let items):
            if items.count < 16 {
                out.append(0x90 | UInt8(items.count))
            } else if items.count <= Int(UInt16.max) {
                out.append(0xdc)
                be(UInt16(items.count))
            } else {
                out.append(0xdd)
                be(UInt32(items.count))
            }
            for item in items { item.encode(into: &out) }
        case .map(let pairs):
            if pairs.count < 16 {
                out.append(0x80 | UInt8(pairs.count))
            } else if pairs.count <= Int(UInt16.max) {
                out.append(0xde)
                be(UInt16(pairs.count))
            } else {
                out.append(0xdf)
                be(UInt32(pairs.count))
            }
            for p in pairs {
                p.key.encode(into: &out)
                p.value.encode(into: &out)
            }
        }
    }

    /// Decodes exactly one value from `bytes`.
    public static func decode(_ bytes: [UInt8]) throws -> MessagePackValue {
        var reader = MessagePackReader(bytes: bytes)
        let value = try reader.value(depth: 0)
        guard reader.offset == bytes.count else { throw MessagePackError.trailingBytes(bytes.count - reader.offset) }
        return value
    }
}

/// Reads MessagePack values from a byte array, checking every length against what is left.
struct MessagePackReader {
    let bytes: [UInt8]
    var offset = 0

    mutating func take(_ n: Int) throws -> ArraySlice<UInt8> {
        guard n >= 0, n <= bytes.count - offset else { throw MessagePackError.truncated }
        defer { offset += n }
        return bytes[offset..<offset + n]
    }

    mutating func uint(_ size: Int) throws -> UInt64 {
        try take(size).reduce(0) { $0 << 8 | UInt64($1) }
    }

    mutating func value(depth: Int) throws -> MessagePackValue {
        guard depth < 32 else { throw MessagePackError.tooDeep }
        let b = try take(1).first!
        switch b {
        case 0x00...0x7f: return .int(Int64(b))
        case 0xe0...0xff: return .int(Int64(Int8(bitPattern: b)))
        case 0x80...0x8f: return try map(Int(b & 0x0f), depth)
        case 0x90...0x9f: return try array(Int(b & 0x0f), depth)
        case 0xa0...0xbf: return try string(Int(b & 0x1f))
        case 0xc0: return .null
        case 0xc2: return .bool(false)
        case 0xc3: return .bool(true)
        case 0xc4, 0xc5, 0xc6: return .binary(Array(try take(Int(try uint(1 << Int(b - 0xc4))))))
        case 0xca: return .double(Double(Float(bitPattern: UInt32(try uint(4)))))
        case 0xcb: return .double(Double(bitPattern: try uint(8)))
        case 0xcc, 0xcd, 0xce, 0xcf:
            let u = try uint(1 << Int(b - 0xcc))
            return u <= UInt64(Int64.max) ? .int(Int64(u)) : .uint(u)
        case 0xd0: return .int(Int64(Int8(truncatingIfNeeded: try uint(1))))
        case 0xd1: return .int(Int64(Int16(truncatingIfNeeded: try uint(2))))
        case 0xd2: return .int(Int64(Int32(truncatingIfNeeded: try uint(4))))
        case 0xd3: return .int(Int64(bitPattern: try uint(8)))
        case 0xd9, 0xda, 0xdb: return try string(Int(try uint(1 << Int(b - 0xd9))))
        case 0xdc, 0xdd: return try array(Int(try uint(b == 0xdc ? 2 : 4)), depth)
        case 0xde, 0xdf: return try map(Int(try uint(b == 0xde ? 2 : 4)), depth)
        default: throw MessagePackError.unsupportedType(b)
        }
    }

    mutating func string(_ n: Int) throws -> MessagePackValue {
        guard let s = String(validating: try take(n), as: UTF8.self) else { throw MessagePackError.invalidUTF8 }
        return .string(s)
    }

    mutating func array(_ n: Int, _ depth: Int) throws -> MessagePackValue {
        // Each element takes at least one byte: a count beyond what is left is a lie, not an allocation.
        guard n <= bytes.count - offset else { throw MessagePackError.truncated }
        var items: [MessagePackValue] = []
        items.reserveCapacity(n)
        for _ in 0..<n { items.append(try value(depth: depth + 1)) }
        return .array(items)
    }

    mutating func map(_ n: Int, _ depth: Int) throws -> MessagePackValue {
        guard n <= (bytes.count - offset) / 2 else { throw MessagePackError.truncated }
        var pairs: [MessagePackPair] = []
        pairs.reserveCapacity(n)
        for _ in 0..<n {
            let k = try value(depth: depth + 1)
            pairs.append(MessagePackPair(k, try value(depth: depth + 1)))
        }
        return .map(pairs)
    }
}
