import CKernels
import Foundation
import GGUF

/// Plain Swift versions of the C kernels: the specification the SIMD paths are tested against.
public enum ReferenceKernels {
    /// Float dot product, accumulated left to right.
    @inline(__always)
    public static func dot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, count: Int) -> Float {
        var sum: Float = 0
        for i in 0..<count { sum += a[i] * b[i] }
        return sum
    }

    /// One 8-bit activation block, as `tk_quantize_q8` makes it.
    public struct Block: Equatable {
        public var d: Float
        public var s: Float
        public var qs: [Int8]
    }

    /// Quantizes `x` (a multiple of 32 floats) into blocks: q = round-half-even(x·127/max|x|), d = max|x|/127 and
    /// s = d·Σq, both rounded to fp16 (llama.cpp's Q8_1).
    public static func quantize(_ x: [Float]) -> [Block] {
        stride(from: 0, to: x.count, by: 32).map { start in
            let chunk = x[start..<start + 32]
            let amax = chunk.map { abs($0) }.max() ?? 0
            let d = amax / 127
            let id: Float = amax != 0 ? 127 / amax : 0
            let qs = chunk.map { Int8(($0 * id).rounded(.toNearestOrEven)) }
            let sum = qs.reduce(0) { $0 + Int($1) }
            return Block(
                d: HalfFloat.toFloat(HalfFloat.fromFloat(d)),
                s: HalfFloat.toFloat(HalfFloat.fromFloat(Float(sum) * d)), qs: qs)
        }
    }

    /// The dot product of a Q4_0, Q4_1 or Q8_0 weight row with quantized activations, block by block in integers.
    /// Q4_1 and Q8_0 take llama.cpp's order, which every SIMD path follows bitwise: eight partial sums, partial c
    /// taking columns 4c..4c+3 of every block (Q4_1: low nibbles of bytes 4c..4c+3 for c < 4, their high nibbles for
    /// c ≥ 4), each accumulated as fma(d_w·d_x, sum, partial), reduced ((4+0) + (6+2)) + ((5+1) + (7+3)); Q4_1's
    /// minimums (m_w·s_x) accumulate apart and are added last.
    public static func dot(_ type: GGMLType, row: UnsafeRawPointer, blocks: [Block]) -> Float {
        var total: Float = 0
        var partial = [Float](repeating: 0, count: 8)
        var mins: Float = 0
        for (i, x) in blocks.enumerated() {
            let w = row + i * type.blockBytes
            let d = HalfFloat.toFloat(w.loadUnaligned(as: UInt16.self))
            switch type {
            case .q4_0:
                var sum = 0
                for j in 0..<16 {
                    let q = w.load(fromByteOffset: 2 + j, as: UInt8.self)
                    sum += (Int(q & 0x0F) - 8) * Int(x.qs[j]) + (Int(q >> 4) - 8) * Int(x.qs[j + 16])
                }
                total += d * x.d * Float(sum)
            case .q4_1, .q8_0:
                let scale = d * x.d
                for c in 0..<8 {
                    var sum = 0
                    for j in 0..<4 {
                        let weight: Int
                        if type == .q4_1 {
                            let q = w.load(fromByteOffset: 4 + 4 * (c & 3) + j, as: UInt8.self)
                            weight = Int(c < 4 ? q & 0x0F : q >> 4)
                        } else {
                            weight = Int(w.load(fromByteOffset: 2 + 4 * c + j, as: Int8.self))
                        }
                        sum += weight * Int(x.qs[4 * c + j])
                    }
                    partial[c] = partial[c].addingProduct(scale, Float(sum))
                }
                if type == .q4_1 {
                    mins = mins.addingProduct(
                        HalfFloat.toFloat(w.loadUnaligned(fromByteOffset: 2, as: UInt16.self)), x.s)
                }
            default:
                preconditionFailure("no integer kernel for \(type.name)")
            }
        }
        if type == .q4_0 { return total }
        let p = partial
        return ((p[4] + p[0]) + (p[6] + p[2])) + ((p[5] + p[1]) + (p[7] + p[3])) + mins
    }

    /// The fp16 dot product of attention scores (`tk_dot_f16_f32`), in the order of ggml's AVX-512 build: 64 lanes
    /// over steps of 64 elements, each lane a fused multiply-add chain; lanes l, l+16, l+32, l+48 summed as
    /// (l + (l+32)) + ((l+16) + (l+48)); the 16 results reduced by halves (upper + lower, twice), then
    /// (0 + 2) + (1 + 3); elements past the last full step added one product at a time in Double.
    public static func dotF16(_ a: [UInt16], _ b: [Float]) -> Float {
        let n = a.count
        let steps = n & ~63
        var lanes = [Float](repeating: 0, count: 64)
        for i in stride(from: 0, to: steps, by: 64) {
            for j in 0..<64 { lanes[j] = lanes[j].addingProduct(HalfFloat.toFloat(a[i + j]), b[i + j]) }
        }
        var x = [Float](repeating: 0, count: 16)
        for l in 0..<16 {
            let outer: Float = lanes[l] + lanes[32 + l]
            let inner: Float = lanes[16 + l] + lanes[48 + l]
            x[l] = outer + inner
        }
        for width in [8, 4] {
            for l in 0..<width { x[l] = x[l + width] + x[l] }
        }
        let pairs: Float = (x[0] + x[2]) + (x[1] + x[3])
        var sum = Double(pairs)
        for i in steps..<n { sum += Double(HalfFloat.toFloat(a[i]) * b[i]) }
        return Float(sum)
    }

    /// One query row's attention over `keys` and `values` (fp16 rows of `q.count`), as `tk_attend_f16` computes it
    /// (ggml's flash-attention step for an fp16 cache): the query rounded to fp16; an online softmax whose running
    /// sum is S = fma(S, ms, vs); the output accumulator kept in fp16, rescaled and rounded at every key.
    public static func attend(q: [Float], keys: [[UInt16]], values: [[UInt16]], scale: Float) -> [Float] {
        let (_, sum, acc) = attendPartial(q: q, keys: keys[...], values: values[...], scale: scale)
        let inverse: Float = sum == 0 ? 0 : 1 / sum
        return acc.map { $0 * inverse }
    }

    /// The running maximum, sum and unnormalized accumulator of `attend` over some of the keys.
    public static func attendPartial(
        q: [Float], keys: ArraySlice<[UInt16]>, values: ArraySlice<[UInt16]>, scale: Float
    ) -> (max: Float, sum: Float, acc: [Float]) {
        let q16 = q.map { HalfFloat.toFloat(HalfFloat.fromFloat($0)) }
        var acc = [UInt16](repeating: 0, count: q.count)
        var m = -Float.infinity
        var sum: Float = 0
        for (k, v) in zip(keys, values) {
            let s = dotF16(k, q16) * scale
            var ms: Float = 1
            var vs: Float = 1
            if s > m {
                ms = expf(m - s)
                m = s
                acc = acc.map { HalfFloat.fromFloat(HalfFloat.toFloat($0) * ms) }
            } else {
                vs = expf(s - m)
            }
            for i in 0..<acc.count {
                acc[i] = HalfFloat.fromFloat(HalfFloat.toFloat(acc[i]).addingProduct(HalfFloat.toFloat(v[i]), vs))
            }
            sum = vs.addingProduct(sum, ms)
        }
        return (m, sum, acc.map(HalfFloat.toFloat))
    }

    /// `tk_attend_split`: the `cells` positions cut into `parts` chunks of ceil(cells / parts), each attended over
    /// its keys (positions below `keys.count`) by `attendPartial`, merged in order (empty chunks skipped) as
    /// a·expf(m_a − m) + b·expf(m_b − m) with the first product fused; finally times 1/S.
    public static func attendSplit(
        q: [Float], keys: [[UInt16]], values: [[UInt16]], cells: Int, parts: Int, scale: Float
    ) -> [Float] {
        let size = (cells + parts - 1) / parts
        var m = -Float.infinity
        var sum: Float = 0
        var out = [Float](repeating: 0, count: q.count)
        for p in 0..<parts {
            let begin = p * size
            let end = min(begin + size, cells, keys.count)
            guard begin < end else { continue }
            let part = attendPartial(q: q, keys: keys[begin..<end], values: values[begin..<end], scale: scale)
            guard part.sum != 0 else { continue }
            let newMax = max(m, part.max)
            let scaleOld = expf(m - newMax)
            let scaleNew = expf(part.max - newMax)
            for i in 0..<out.count { out[i] = (part.acc[i] * scaleNew).addingProduct(out[i], scaleOld) }
            sum = (part.sum * scaleNew).addingProduct(sum, scaleOld)
            m = newMax
        }
        guard sum != 0 else { return out }
        let inverse = 1 / sum
        return out.map { $0 * inverse }
    }

    /// One query row's attention as `tk_attend_tiled` computes it (ggml's tiled flash attention): the query in fp32;
    /// keys in tiles of 64 positions; scores as FMA chains over the head dimension; per tile, the running maximum
    /// (accumulator and sum rescaled by expf(old − new) when it grows), exponentials by `tk_expf`, their sum reduced
    /// 16 at a time (upper 8 + lower 8, then i+4 + i, then (0+2) + (1+3)) into a Double added to the sum in Double;
    /// the output accumulated per lane as an FMA chain over the tile's keys; finally times 1/S.
    public static func attendTiled(q: [Float], keys: [[UInt16]], values: [[UInt16]], scale: Float) -> [Float] {
        var acc = [Float](repeating: 0, count: q.count)
        var m = -Float.infinity
        var sum: Float = 0
        for start in stride(from: 0, to: keys.count, by: 64) {
            let n = min(64, keys.count - start)
            var e = [Float](repeating: 0, count: 64)
            for t in 0..<n {
                var d: Float = 0
                for i in 0..<q.count { d = d.addingProduct(HalfFloat.toFloat(keys[start + t][i]), q[i]) }
                e[t] = d * scale
            }
            let newMax = max(m, e[0..<n].max()!)
            if newMax > m {
                let ms = expf(m - newMax)
                acc = acc.map { $0 * ms }
                sum *= ms
            }
            m = newMax
            for t in 0..<n { e[t] = tk_expf(e[t] - newMax) }
            var tileSum: Double = 0
            for g in stride(from: 0, to: 64, by: 16) {
                var x = (0..<8).map { e[g + $0 + 8] + e[g + $0] }
                for l in 0..<4 { x[l] = x[l + 4] + x[l] }
                let pairs: Float = (x[0] + x[2]) + (x[1] + x[3])
                tileSum += Double(pairs)
            }
            sum = Float(Double(sum) + tileSum)
            for t in 0..<n {
                for i in 0..<acc.count {
                    acc[i] = acc[i].addingProduct(HalfFloat.toFloat(values[start + t][i]), e[t])
                }
            }
        }
        let inverse: Float = sum == 0 ? 0 : 1 / sum
        return acc.map { $0 * inverse }
    }
}
