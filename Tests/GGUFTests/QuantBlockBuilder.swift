import GGUF

/// Builds ggml blocks byte by byte from chosen scales and quants, so tests know the exact expected floats.
enum QuantBlockBuilder {
    static func half(_ f: Float) -> [UInt8] {
        let h = HalfFloat.fromFloat(f)
        return [UInt8(h & 0xFF), UInt8(h >> 8)]
    }

    /// Packs 32 4-bit quants: byte j holds q[j] (low nibble) and q[j + 16] (high nibble).
    static func nibbles(_ q: [Int]) -> [UInt8] {
        (0..<16).map { UInt8(q[$0] & 0xF) | UInt8((q[$0 + 16] & 0xF) << 4) }
    }

    /// The fifth bits of 32 quants, as a little-endian u32.
    static func highBits(_ q: [Int]) -> [UInt8] {
        var bits: UInt32 = 0
        for j in 0..<32 where q[j] & 0x10 != 0 { bits |= 1 << UInt32(j) }
        return [UInt8(bits & 0xFF), UInt8((bits >> 8) & 0xFF), UInt8((bits >> 16) & 0xFF), UInt8(bits >> 24)]
    }

    /// Packs eight 6-bit scales and mins into the 12-byte K-quant layout.
    static func kScales(_ scales: [Int], _ mins: [Int]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 12)
        for j in 0..<4 {
            out[j] = UInt8(scales[j] & 63) | UInt8((scales[j + 4] >> 4) << 6)
            out[j + 4] = UInt8(mins[j] & 63) | UInt8((mins[j + 4] >> 4) << 6)
            out[j + 8] = UInt8(scales[j + 4] & 0xF) | UInt8((mins[j + 4] & 0xF) << 4)
        }
        return out
    }
}
