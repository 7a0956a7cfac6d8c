/// Reference (plain Swift) dequantization of every supported ggml block format into `Float`.
///
/// This is the ground truth the SIMD kernels are tested against, and the generic path for types without one.
public enum Dequantize {
    /// Errors from dequantizing.
    public enum Failure: Error, CustomStringConvertible {
        case unsupported(GGMLType)
        case notWholeBlocks(GGMLType, Int)
        public var description: String {
            switch self {
            case .unsupported(let t): return "tensor type \(t.name) cannot be dequantized"
            case .notWholeBlocks(let t, let n): return "\(n) elements are not whole \(t.name) blocks"
            }
        }
    }

    @inline(__always) static func half(_ p: UnsafeRawPointer, _ offset: Int) -> Float {
        HalfFloat.toFloat(p.loadUnaligned(fromByteOffset: offset, as: UInt16.self))
    }

    /// Dequantizes `count` elements starting at `source` into `destination`.
    public static func row(
        _ type: GGMLType, _ source: UnsafeRawPointer, count: Int, into destination: UnsafeMutablePointer<Float>
    ) throws {
        guard type.isDequantizable else { throw Failure.unsupported(type) }
        guard count % type.blockSize == 0 else { throw Failure.notWholeBlocks(type, count) }
        let blocks = count / type.blockSize
        let bb = type.blockBytes
        switch type {
        case .f32:
            for i in 0..<count { destination[i] = source.loadUnaligned(fromByteOffset: i * 4, as: Float.self) }
        case .f16:
            for i in 0..<count { destination[i] = half(source, i * 2) }
        case .bf16:
            for i in 0..<count {
                destination[i] = HalfFloat.bf16ToFloat(source.loadUnaligned(fromByteOffset: i * 2, as: UInt16.self))
            }
        case .q4_0:
            for b in 0..<blocks { q4_0(source + b * bb, destination + b * 32) }
        case .q4_1:
            for b in 0..<blocks { q4_1(source + b * bb, destination + b * 32) }
        case .q5_0:
            for b in 0..<blocks { q5(source + b * bb, destination + b * 32, hasMin: false) }
        case .q5_1:
            for b in 0..<blocks { q5(source + b * bb, destination + b * 32, hasMin: true) }
        case .q8_0:
            for b in 0..<blocks { q8_0(source + b * bb, destination + b * 32) }
        case .q4_K:
            for b in 0..<blocks { q4_K(source + b * bb, destination + b * 256) }
        case .q5_K:
            for b in 0..<blocks { q5_K(source + b * bb, destination + b * 256) }
        case .q6_K:
            for b in 0..<blocks { q6_K(source + b * bb, destination + b * 256) }
        default:
            throw Failure.unsupported(type)
        }
    }

    /// Convenience: dequantizes into a new array.
    public static func row(_ type: GGMLType, _ source: UnsafeRawPointer, count: Int) throws -> [Float] {
        var out = [Float](repeating: 0, count: count)
        try out.withUnsafeMutableBufferPointer { try row(type, source, count: count, into: $0.baseAddress!) }
        return out
    }

    static func q4_0(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(p, 0)
        let qs = p + 2
        for j in 0..<16 {
            let q = qs.load(fromByteOffset: j, as: UInt8.self)
            y[j] = Float(Int(q & 0x0F) - 8) * d
            y[j + 16] = Float(Int(q >> 4) - 8) * d
        }
    }

    static func q4_1(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(p, 0)
        let m = half(p, 2)
        let qs = p + 4
        for j in 0..<16 {
            let q = qs.load(fromByteOffset: j, as: UInt8.self)
            y[j] = Float(q & 0x0F) * d + m
            y[j + 16] = Float(q >> 4) * d + m
        }
    }

    static func q5(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>, hasMin: Bool) {
        let d = half(p, 0)
        let m: Float = hasMin ? half(p, 2) : 0
        let hOffset = hasMin ? 4 : 2
        let qh = p.loadUnaligned(fromByteOffset: hOffset, as: UInt32.self).littleEndian
        let qs = p + hOffset + 4
        for j in 0..<16 {
            let q = qs.load(fromByteOffset: j, as: UInt8.self)
            let h0 = Int((qh >> UInt32(j)) & 1) << 4
            let h1 = Int((qh >> UInt32(j + 16)) & 1) << 4
            let x0 = Int(q & 0x0F) | h0
            let x1 = Int(q >> 4) | h1
            if hasMin {
                y[j] = Float(x0) * d + m
                y[j + 16] = Float(x1) * d + m
            } else {
                y[j] = Float(x0 - 16) * d
                y[j + 16] = Float(x1 - 16) * d
            }
        }
    }

    static func q8_0(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(p, 0)
        for j in 0..<32 { y[j] = Float(p.load(fromByteOffset: 2 + j, as: Int8.self)) * d }
    }

    /// The 6-bit scale and min of sub-block `j` in a Q4_K/Q5_K 12-byte scale array.
    @inline(__always) static func scaleMinK4(_ j: Int, _ q: UnsafeRawPointer) -> (Float, Float) {
        func b(_ i: Int) -> UInt8 { q.load(fromByteOffset: i, as: UInt8.self) }
        if j < 4 {
            return (Float(b(j) & 63), Float(b(j + 4) & 63))
        }
        let sc = (b(j + 4) & 0x0F) | ((b(j - 4) >> 6) << 4)
        let mn = (b(j + 4) >> 4) | ((b(j) >> 6) << 4)
        return (Float(sc), Float(mn))
    }

    static func q4_K(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(p, 0)
        let dmin = half(p, 2)
        let scales = p + 4
        var q = p + 16
        var out = y
        for pair in 0..<4 {
            let (sc1, m1) = scaleMinK4(pair * 2, scales)
            let (sc2, m2) = scaleMinK4(pair * 2 + 1, scales)
            let d1 = d * sc1, min1 = dmin * m1
            let d2 = d * sc2, min2 = dmin * m2
            for l in 0..<32 { out[l] = d1 * Float(q.load(fromByteOffset: l, as: UInt8.self) & 0x0F) - min1 }
            for l in 0..<32 { out[32 + l] = d2 * Float(q.load(fromByteOffset: l, as: UInt8.self) >> 4) - min2 }
            q += 32
            out += 64
        }
    }

    static func q5_K(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(p, 0)
        let dmin = half(p, 2)
        let scales = p + 4
        let qh = p + 16
        var ql = p + 48
        var out = y
        var u1: UInt8 = 1
        var u2: UInt8 = 2
        for pair in 0..<4 {
            let (sc1, m1) = scaleMinK4(pair * 2, scales)
            let (sc2, m2) = scaleMinK4(pair * 2 + 1, scales)
            let d1 = d * sc1, min1 = dmin * m1
            let d2 = d * sc2, min2 = dmin * m2
            for l in 0..<32 {
                let h = qh.load(fromByteOffset: l, as: UInt8.self)
                let lo = ql.load(fromByteOffset: l, as: UInt8.self)
                out[l] = d1 * Float(Int(lo & 0x0F) + (h & u1 != 0 ? 16 : 0)) - min1
                out[32 + l] = d2 * Float(Int(lo >> 4) + (h & u2 != 0 ? 16 : 0)) - min2
            }
            ql += 32
            out += 64
            u1 <<= 2
            u2 <<= 2
        }
    }

    static func q6_K(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        var ql = p
        var qh = p + 128
        var sc = p + 192
        let d = half(p, 208)
        var out = y
        for _ in 0..<2 {
            for l in 0..<32 {
                let s = l / 16
                let a = ql.load(fromByteOffset: l, as: UInt8.self)
                let b = ql.load(fromByteOffset: l + 32, as: UInt8.self)
                let h = qh.load(fromByteOffset: l, as: UInt8.self)
                let q1 = Int((a & 0x0F) | ((h & 3) << 4)) - 32
                let q2 = Int((b & 0x0F) | (((h >> 2) & 3) << 4)) - 32
                let q3 = Int((a >> 4) | (((h >> 4) & 3) << 4)) - 32
                let q4 = Int((b >> 4) | (((h >> 6) & 3) << 4)) - 32
                func scale(_ i: Int) -> Float { Float(sc.load(fromByteOffset: i, as: Int8.self)) }
                out[l] = d * scale(s) * Float(q1)
                out[l + 32] = d * scale(s + 2) * Float(q2)
                out[l + 64] = d * scale(s + 4) * Float(q3)
                out[l + 96] = d * scale(s + 6) * Float(q4)
            }
            out += 128
            ql += 64
            qh += 32
            sc += 8
        }
    }
}
