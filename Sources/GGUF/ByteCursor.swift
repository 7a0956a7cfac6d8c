/// A bounds-checked little-endian reader over raw bytes; every read names what it reads for error messages.
struct ByteCursor {
    let base: UnsafeRawPointer
    let count: Int
    var offset: Int = 0

    init(base: UnsafeRawPointer, count: Int) {
        self.base = base
        self.count = count
    }

    var remaining: Int { count - offset }

    mutating func read<T: FixedWidthInteger>(_: T.Type, _ what: @autoclosure () -> String) throws -> T {
        let size = MemoryLayout<T>.size
        guard remaining >= size else { throw GGUFError.truncated(what: what(), offset: offset) }
        let value = base.loadUnaligned(fromByteOffset: offset, as: T.self)
        offset += size
        return T(littleEndian: value)
    }

    mutating func readFloat(_ what: @autoclosure () -> String) throws -> Float {
        Float(bitPattern: try read(UInt32.self, what()))
    }

    mutating func readDouble(_ what: @autoclosure () -> String) throws -> Double {
        Double(bitPattern: try read(UInt64.self, what()))
    }

    /// Reads a length-prefixed (u64) UTF-8 string.
    mutating func readString(_ what: @autoclosure () -> String) throws -> String {
        let start = offset
        let length = try read(UInt64.self, what())
        guard length <= UInt64(remaining) else { throw GGUFError.truncated(what: what(), offset: start) }
        let bytes = UnsafeRawBufferPointer(start: base + offset, count: Int(length))
        offset += Int(length)
        guard let s = String(validating: bytes, as: UTF8.self) else {
            // Some vocabularies hold invalid UTF-8 fragments; keep them lossily rather than failing.
            return String(decoding: bytes, as: UTF8.self)
        }
        return s
    }
}
