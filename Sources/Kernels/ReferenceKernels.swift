import CKernels
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
    public static func dot(_ type: GGMLType, row: UnsafeRawPointer, blocks: [Block]) -> Float {
        var total: Float = 0
        for (i, x) in blocks.enumerated() {
            let w = row + i * type.blockBytes
            let d = HalfFloat.toFloat(w.loadUnaligned(as: UInt16.self))
            var sum = 0
            switch type {
            case .q4_0, .q4_1:
                let qs = w + (type == .q4_0 ? 2 : 4)
                let bias = type == .q4_0 ? 8 : 0
                for j in 0..<16 {
                    let q = qs.load(fromByteOffset: j, as: UInt8.self)
                    sum += (Int(q & 0x0F) - bias) * Int(x.qs[j]) + (Int(q >> 4) - bias) * Int(x.qs[j + 16])
                }
                total += d * x.d * Float(sum)
                if type == .q4_1 {
                    total += HalfFloat.toFloat(w.loadUnaligned(fromByteOffset: 2, as: UInt16.self)) * x.s
                }
            case .q8_0:
                for j in 0..<32 { sum += Int(w.load(fromByteOffset: 2 + j, as: Int8.self)) * Int(x.qs[j]) }
                total += d * x.d * Float(sum)
            default:
                preconditionFailure("no integer kernel for \(type.name)")
            }
        }
        return total
    }
}
