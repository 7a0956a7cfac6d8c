import GGUF

/// Plain Swift references for the Q5_0 and K-quant kernels (CKernels' kquants.c): the Q8_K activation blocks, and
/// each dot product's integer sums in eight lanes (lane k takes products 4k...4k+3 of every 32 values, times their
/// sub-block scale), folded into floats once per block with one fused multiply-add per lane, then reduced as hsum8.
public enum KQuantReference {
    /// One Q8_K activation block (256 values), as `tk_quantize_q8k` makes it.
    public struct Block: Equatable {
        public var d: Float
        public var qs: [Int8]
        public var bsums: [Int16]
    }

    public static func quantize(_ x: [Float]) -> [Block] {
        stride(from: 0, to: x.count, by: 256).map { start in
            let chunk = Array(x[start..<start + 256])
            var amax: Float = 0
            var max: Float = 0
            for v in chunk where abs(v) > amax {
                amax = abs(v)
                max = v
            }
            guard amax != 0 else {
                return Block(d: 0, qs: [Int8](repeating: 0, count: 256), bsums: [Int16](repeating: 0, count: 16))
            }
            let iscale = -127 / max
            let qs = chunk.map { Int8(Swift.min(127, Int((iscale * $0).rounded(.toNearestOrEven)))) }
            let bsums = (0..<16).map { j in Int16(qs[(j * 16)..<(j * 16 + 16)].reduce(0) { $0 + Int($1) }) }
            return Block(d: 1 / iscale, qs: qs, bsums: bsums)
        }
    }

    static func hsum8(_ l: [Float]) -> Float { ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7])) }

    static func half(_ p: UnsafeRawPointer, _ offset: Int) -> Float {
        HalfFloat.toFloat(p.loadUnaligned(fromByteOffset: offset, as: UInt16.self))
    }

    /// Q5_0 row · 8-bit activations (`ReferenceKernels.quantize` blocks).
    public static func dotQ5_0(row: UnsafeRawPointer, blocks: [ReferenceKernels.Block]) -> Float {
        var acc = [Float](repeating: 0, count: 8)
        for (i, x) in blocks.enumerated() {
            let b = row + i * 22
            let qh = b.loadUnaligned(fromByteOffset: 2, as: UInt32.self)
            var lanes = [Int](repeating: 0, count: 8)
            for j in 0..<16 {
                let q = Int(b.load(fromByteOffset: 6 + j, as: UInt8.self))
                let lo = ((q & 0x0F) | Int((qh >> UInt32(j)) & 1) << 4) - 16
                let hi = ((q >> 4) | Int((qh >> UInt32(j + 16)) & 1) << 4) - 16
                lanes[j / 4] += lo * Int(x.qs[j])
                lanes[(j + 16) / 4] += hi * Int(x.qs[j + 16])
            }
            let d = half(b, 0) * x.d
            for k in 0..<8 { acc[k] = acc[k].addingProduct(d, Float(lanes[k])) }
        }
        return hsum8(acc)
    }

    /// A K-quant row (Q4_K, Q5_K or Q6_K) · Q8_K activations.
    public static func dotK(_ type: GGMLType, row: UnsafeRawPointer, blocks: [Block]) -> Float {
        switch type {
        case .q4_K: return dotQ4_K(row: row, blocks: blocks)
        case .q5_K: return dotQ5_K(row: row, blocks: blocks)
        case .q6_K: return dotQ6_K(row: row, blocks: blocks)
        default: preconditionFailure("\(type.name) is not a K-quant with a kernel")
        }
    }

    /// Q4_K row · Q8_K activations.
    public static func dotQ4_K(row: UnsafeRawPointer, blocks: [Block]) -> Float {
        var acc = [Float](repeating: 0, count: 8)
        var accMin = [Float](repeating: 0, count: 4)
        for (i, x) in blocks.enumerated() {
            let b = row + i * 144
            let (sc, m) = scalesAndMins(b + 4)
            var lanes = [Int](repeating: 0, count: 8)
            for j in 0..<4 {
                for e in 0..<32 {
                    let q = Int(b.load(fromByteOffset: 16 + 32 * j + e, as: UInt8.self))
                    lanes[e / 4] += sc[2 * j] * ((q & 0x0F) * Int(x.qs[64 * j + e]))
                    lanes[e / 4] += sc[2 * j + 1] * ((q >> 4) * Int(x.qs[64 * j + 32 + e]))
                }
            }
            let d = x.d * half(b, 0)
            let dmin = -x.d * half(b, 2)
            for p in 0..<4 {
                let s0 = Int(x.bsums[4 * p]) + Int(x.bsums[4 * p + 1])
                let s1 = Int(x.bsums[4 * p + 2]) + Int(x.bsums[4 * p + 3])
                accMin[p] = accMin[p].addingProduct(dmin, Float(m[2 * p] * s0 + m[2 * p + 1] * s1))
            }
            for k in 0..<8 { acc[k] = acc[k].addingProduct(d, Float(lanes[k])) }
        }
        return hsum8(acc) + ((accMin[0] + accMin[2]) + (accMin[1] + accMin[3]))
    }

    /// Q4_K row · Q8_K activations in the orders of llama.cpp's repacked Q4_K kernels: per pair of sub-blocks one
    /// integer sum (and one of the mins); `per64` (its GEMM) folds each pair in with one FMA, else (its GEMV) the
    /// four pairs' sums once per block; the result is acc − acc_min.
    public static func dotQ4_KRepacked(row: UnsafeRawPointer, blocks: [Block], per64: Bool) -> Float {
        var acc: Float = 0
        var accMin: Float = 0
        for (i, x) in blocks.enumerated() {
            let b = row + i * 144
            let (sc, m) = scalesAndMins(b + 4)
            let d = half(b, 0) * x.d
            let dmin = half(b, 2) * x.d
            var total = 0
            var totalMin = 0
            for p in 0..<4 {
                var s0 = 0
                var s1 = 0
                for e in 0..<32 {
                    let q = Int(b.load(fromByteOffset: 16 + 32 * p + e, as: UInt8.self))
                    s0 += (q & 0x0F) * Int(x.qs[64 * p + e])
                    s1 += (q >> 4) * Int(x.qs[64 * p + 32 + e])
                }
                let sum = sc[2 * p] * s0 + sc[2 * p + 1] * s1
                let mins =
                    m[2 * p] * (Int(x.bsums[4 * p]) + Int(x.bsums[4 * p + 1])) + m[2 * p + 1]
                    * (Int(x.bsums[4 * p + 2]) + Int(x.bsums[4 * p + 3]))
                if per64 {
                    acc = acc.addingProduct(Float(sum), d)
                    accMin = accMin.addingProduct(Float(mins), dmin)
                } else {
                    total += sum
                    totalMin += mins
                }
            }
            if !per64 {
                acc = acc.addingProduct(Float(total), d)
                accMin = accMin.addingProduct(Float(totalMin), dmin)
            }
        }
        return acc - accMin
    }

    /// The 6-bit sub-block scales and mins of a Q4_K or Q5_K block, from its 12 packed bytes at `p`.
    static func scalesAndMins(_ p: UnsafeRawPointer) -> (scales: [Int], mins: [Int]) {
        let s = (0..<12).map { Int(p.load(fromByteOffset: $0, as: UInt8.self)) }
        var sc = [Int](repeating: 0, count: 8)
        var m = sc
        for j in 0..<4 {
            sc[j] = s[j] & 63
            m[j] = s[j + 4] & 63
            sc[j + 4] = (s[j + 8] & 0x0F) | ((s[j] >> 6) << 4)
            m[j + 4] = (s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4)
        }
        return (sc, m)
    }

    /// The unsigned quant of value `l` of sub-block `s` of the Q4_K (or, `five`, Q5_K) block at `b`: its nibble, and
    /// for Q5_K the fifth bit (bit s of qh[l]).
    static func q45KQuant(_ b: UnsafeRawPointer, _ s: Int, _ l: Int, five: Bool) -> Int {
        let packed = Int(b.load(fromByteOffset: (five ? 48 : 16) + 32 * (s / 2) + l, as: UInt8.self))
        let high = five ? (Int(b.load(fromByteOffset: 16 + l, as: UInt8.self)) >> s & 1) << 4 : 0
        return (s & 1 == 1 ? packed >> 4 : packed & 0x0F) | high
    }

    /// A K-quant row · Q8_K activations in the order of llama.cpp's tiled K-quant matmul (batches of 8 rows or
    /// more): Q6_K as `dotQ6_KTiled`; Q4_K and Q5_K with per block s1 = Σ_s sc_s·Σ q·y and s2 = Σ_s m_s·Σ y (exact),
    /// then acc = fma(fma(−dmin_w, Float(s2), Float(s1)·d_w), d_x, acc).
    public static func dotKTiled(_ type: GGMLType, row: UnsafeRawPointer, blocks: [Block]) -> Float {
        if type == .q6_K { return dotQ6_KTiled(row: row, blocks: blocks) }
        precondition(type == .q4_K || type == .q5_K)
        let five = type == .q5_K
        var acc: Float = 0
        for (i, x) in blocks.enumerated() {
            let b = row + i * (five ? 176 : 144)
            let (sc, m) = scalesAndMins(b + 4)
            var s1 = 0
            var s2 = 0
            for s in 0..<8 {
                var raw = 0
                for l in 0..<32 { raw += q45KQuant(b, s, l, five: five) * Int(x.qs[32 * s + l]) }
                s1 += sc[s] * raw
                s2 += m[s] * (Int(x.bsums[2 * s]) + Int(x.bsums[2 * s + 1]))
            }
            let f = (Float(s1) * half(b, 0)).addingProduct(-half(b, 2), Float(s2))
            acc = acc.addingProduct(f, x.d)
        }
        return acc
    }

    /// Q5_K row · Q8_K activations: Q4_K's lanes with a fifth bit per quant (bit s of qh[l] for value l of
    /// sub-block s); the mins summed in integers per block and accumulated with one FMA (ggml's AVX2 order).
    public static func dotQ5_K(row: UnsafeRawPointer, blocks: [Block]) -> Float {
        var acc = [Float](repeating: 0, count: 8)
        var mins: Float = 0
        for (i, x) in blocks.enumerated() {
            let b = row + i * 176
            let (sc, m) = scalesAndMins(b + 4)
            var lanes = [Int](repeating: 0, count: 8)
            for s in 0..<8 {
                for l in 0..<32 {
                    lanes[l / 4] += sc[s] * (q45KQuant(b, s, l, five: true) * Int(x.qs[32 * s + l]))
                }
            }
            var minSum = 0
            for s in 0..<8 { minSum += m[s] * (Int(x.bsums[2 * s]) + Int(x.bsums[2 * s + 1])) }
            mins = mins.addingProduct(-x.d * half(b, 2), Float(minSum))
            let d = x.d * half(b, 0)
            for k in 0..<8 { acc[k] = acc[k].addingProduct(d, Float(lanes[k])) }
        }
        return hsum8(acc) + mins
    }

    /// The unsigned 6-bit quant of value `e` (0..<256) of the Q6_K block at `b`, and its sub-block's int8 scale.
    static func q6KQuant(_ b: UnsafeRawPointer, _ e: Int) -> (q: Int, scale: Int) {
        let half = e / 128
        let within = e % 128
        let g = within / 32
        let l = within % 32
        let low = Int(b.load(fromByteOffset: 64 * half + (g & 1 == 1 ? l + 32 : l), as: UInt8.self))
        let nibble = g < 2 ? low & 0x0F : low >> 4
        let high = Int(b.load(fromByteOffset: 128 + 32 * half + l, as: UInt8.self)) >> (2 * g) & 3
        return (nibble | high << 4, Int(b.load(fromByteOffset: 192 + e / 16, as: Int8.self)))
    }

    /// Q6_K row · Q8_K activations: lane k sums scale·q·y over the unsigned quants, less 32·(bsum·scale) of
    /// sub-blocks 2k and 2k + 1.
    public static func dotQ6_K(row: UnsafeRawPointer, blocks: [Block]) -> Float {
        var acc = [Float](repeating: 0, count: 8)
        for (i, x) in blocks.enumerated() {
            let b = row + i * 210
            var lanes = [Int](repeating: 0, count: 8)
            for e in 0..<256 {
                let (q, scale) = q6KQuant(b, e)
                lanes[(e % 32) / 4] += scale * (q * Int(x.qs[e]))
            }
            // The quants' offset of 32, taken from lane k by sub-blocks 2k and 2k + 1 (ggml's order).
            for k in 0..<8 {
                let sc0 = Int(b.load(fromByteOffset: 192 + 2 * k, as: Int8.self))
                let sc1 = Int(b.load(fromByteOffset: 192 + 2 * k + 1, as: Int8.self))
                lanes[k] -= 32 * (Int(x.bsums[2 * k]) * sc0 + Int(x.bsums[2 * k + 1]) * sc1)
            }
            let d = x.d * Self.half(b, 208)
            for k in 0..<8 { acc[k] = acc[k].addingProduct(d, Float(lanes[k])) }
        }
        return hsum8(acc)
    }

    /// Q6_K row · Q8_K activations in the order of llama.cpp's tiled K-quant matmul: per block the exact integer
    /// sum of scale·(q − 32)·y, then acc = fma(Float(sum)·d_w, d_x, acc).
    public static func dotQ6_KTiled(row: UnsafeRawPointer, blocks: [Block]) -> Float {
        var acc: Float = 0
        for (i, x) in blocks.enumerated() {
            let b = row + i * 210
            var sum = 0
            for e in 0..<256 {
                let (q, scale) = q6KQuant(b, e)
                sum += scale * (q - 32) * Int(x.qs[e])
            }
            acc = acc.addingProduct(Float(sum) * Self.half(b, 208), x.d)
        }
        return acc
    }
}
