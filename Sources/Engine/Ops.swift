import CKernels
import Foundation

/// Element-wise and normalization operations of the forward pass (row-wise, batch-independent).
enum Ops {
    /// y = x / sqrt(mean(x²) + eps) * weight, row by row; the sum of squares is accumulated in Double as ggml does
    /// (`tk_rms_norm`).
    static func rmsNorm(
        _ x: UnsafePointer<Float>, _ weight: [Float], into y: UnsafeMutablePointer<Float>, rows: Int, width: Int,
        eps: Float
    ) {
        weight.withUnsafeBufferPointer { w in tk_rms_norm(x, w.baseAddress!, y, Int32(rows), Int32(width), eps) }
    }

    static func add(_ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>, count: Int) {
        for i in 0..<count { y[i] += x[i] }
    }

    static func addBias(_ x: UnsafeMutablePointer<Float>, _ bias: [Float], rows: Int) {
        let n = bias.count
        for r in 0..<rows {
            for i in 0..<n { x[r * n + i] += bias[i] }
        }
    }

    /// x *= factor.
    static func scale(_ x: UnsafeMutablePointer<Float>, by factor: Float, count: Int) {
        for i in 0..<count { x[i] *= factor }
    }

    /// gate = gelu(gate) * up (Gemma's FFN), GELU rounded as ggml's CPU backend rounds it.
    static func geglu(_ gate: UnsafeMutablePointer<Float>, _ up: UnsafePointer<Float>, count: Int) {
        tk_geglu(gate, up, Int32(count))
    }

    /// gate = silu(gate) * up.
    static func swiglu(_ gate: UnsafeMutablePointer<Float>, _ up: UnsafePointer<Float>, count: Int) {
        tk_swiglu(gate, up, Int32(count))
    }
}

/// Rotary position embedding with the cos/sin of each row's position computed once per forward pass.
struct RotaryEmbedding {
    let pairs: Int
    let neox: Bool
    let cos: [Float]
    let sin: [Float]

    /// The tables for `positions`, with RoPE base `base` (the model's own when nil).
    init(config: ModelConfig, base: Float? = nil, factors: [Float]?, positions: [Int]) {
        pairs = config.headDim / 2
        neox = config.ropeNeox
        let thetaScale = powf(base ?? config.ropeFreqBase, -2 / Float(config.headDim))
        var cosTable = [Float](repeating: 0, count: positions.count * pairs)
        var sinTable = cosTable
        for (r, p) in positions.enumerated() {
            var theta = Float(p) / config.ropeLinearScale
            for i in 0..<pairs {
                let t = factors.map { theta / $0[i] } ?? theta
                cosTable[r * pairs + i] = cosf(t)
                sinTable[r * pairs + i] = sinf(t)
                theta *= thetaScale
            }
        }
        cos = cosTable
        sin = sinTable
    }

    /// Rotates `heads` heads of one row in place (`tk_rope`).
    func apply(_ x: UnsafeMutablePointer<Float>, heads: Int, row: Int) {
        cos.withUnsafeBufferPointer { c in
            sin.withUnsafeBufferPointer { s in
                tk_rope(
                    x, Int32(heads), Int32(pairs), neox ? 1 : 0, c.baseAddress! + row * pairs,
                    s.baseAddress! + row * pairs)
            }
        }
    }
}

/// Scratch buffers of the forward pass, grown on demand and reused.
struct Workspace {
    struct Buffers: @unchecked Sendable {
        let x, xn, q, k, v, attn, tmp, gate, up: UnsafeMutablePointer<Float>
    }

    private var capacityRows = 0
    private var storage: UnsafeMutablePointer<Float>?
    private var buffers: Buffers?

    mutating func prepare(rows: Int, config c: ModelConfig) -> Buffers {
        if rows <= capacityRows, let buffers { return buffers }
        storage?.deallocate()
        let rowsToHold = max(rows, 16)
        let sizes = [
            c.embeddingLength, c.embeddingLength, c.qDim, c.kvDim, c.kvDim, c.qDim, c.embeddingLength,
            c.feedForwardLength, c.feedForwardLength,
        ]
        let total = sizes.reduce(0, +) * rowsToHold
        let base = UnsafeMutablePointer<Float>.allocate(capacity: total)
        base.initialize(repeating: 0, count: total)
        var offset = 0
        var pointers: [UnsafeMutablePointer<Float>] = []
        for s in sizes {
            pointers.append(base + offset)
            offset += s * rowsToHold
        }
        storage = base
        capacityRows = rowsToHold
        let b = Buffers(
            x: pointers[0], xn: pointers[1], q: pointers[2], k: pointers[3], v: pointers[4], attn: pointers[5],
            tmp: pointers[6], gate: pointers[7], up: pointers[8])
        buffers = b
        return b
    }
}
