import CKernels
import GGUF
import Kernels
import Testing

/// The C SIMD kernels agree with the plain Swift references on random data of ragged sizes, at every SIMD level.
@Suite(.serialized) struct KernelTests {
    struct Rng {
        var state: UInt64
        mutating func next() -> UInt64 {
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return state >> 33
        }
        mutating func float(_ scale: Float = 1) -> Float { (Float(next() % 20001) / 10000 - 1) * scale }
        mutating func byte() -> UInt8 { UInt8(next() & 0xFF) }
    }

    /// A random weight row of `blocks` blocks, with sane fp16 scales.
    func randomRow(_ type: GGMLType, blocks: Int, rng: inout Rng) -> [UInt8] {
        var row: [UInt8] = []
        for _ in 0..<blocks {
            var block = (0..<type.blockBytes).map { _ in rng.byte() }
            let d = HalfFloat.fromFloat(rng.float(0.05))
            block[0] = UInt8(d & 0xFF)
            block[1] = UInt8(d >> 8)
            if type == .q4_1 {
                let m = HalfFloat.fromFloat(rng.float(0.2))
                block[2] = UInt8(m & 0xFF)
                block[3] = UInt8(m >> 8)
            }
            row += block
        }
        return row
    }

    @Test(arguments: [GGMLType.q4_0, .q4_1, .q8_0])
    func quantizedDotMatchesReference(type: GGMLType) throws {
        var rng = Rng(state: 42)
        for level in 0...2 {
            let used = tk_set_simd_level(Int32(level))
            for blocks in [1, 2, 3, 7, 18, 48] {
                let n = blocks * 32
                let x = (0..<n).map { _ in rng.float(3) }
                let row = randomRow(type, blocks: blocks, rng: &rng)
                let reference = ReferenceKernels.quantize(x)
                var blocksC = [tk_block_q8](repeating: tk_block_q8(), count: blocks)
                tk_quantize_q8(x, &blocksC, Int32(n))
                for b in 0..<blocks {
                    #expect(blocksC[b].d == reference[b].d && blocksC[b].s == reference[b].s)
                    let qs = withUnsafeBytes(of: blocksC[b].qs) { Array($0.bindMemory(to: Int8.self)) }
                    #expect(qs == reference[b].qs)
                }
                let expected = row.withUnsafeBytes {
                    ReferenceKernels.dot(type, row: $0.baseAddress!, blocks: reference)
                }
                let got: Float = row.withUnsafeBytes { w in
                    switch type {
                    case .q4_0: return tk_dot_q4_0(w.baseAddress!, blocksC, Int32(n))
                    case .q4_1: return tk_dot_q4_1(w.baseAddress!, blocksC, Int32(n))
                    default: return tk_dot_q8_0(w.baseAddress!, blocksC, Int32(n))
                    }
                }
                if type == .q4_0 {
                    let tolerance = 1e-4 * max(1, abs(expected))
                    #expect(abs(got - expected) <= tolerance, "level \(used) n=\(n): \(got) vs \(expected)")
                } else {
                    #expect(got == expected, "level \(used) \(type.name) n=\(n): \(got) vs \(expected)")
                }
            }
        }
        tk_set_simd_level(99)
    }

    /// The interleaved kernels (8 rows at a time, 1, 2 or 4 activation rows per pass; Q5_0 from 8 activation rows
    /// with each group unpacked once) at every SIMD level give bitwise the reference dot product, including a last
    /// group of fewer than 8 rows.
    @Test(arguments: [GGMLType.q4_1, .q5_0, .q8_0])
    func interleavedKernelsEqualTheReferenceBitwiseAtEveryLevel(type: GGMLType) {
        var rng = Rng(state: 11)
        for (rows, columns) in [(37, 96), (16, 576), (5, 32), (8, 64)] {
            let weights = randomRow(type, blocks: rows * columns / 32, rng: &rng)
            let batch = 11
            let x = (0..<(batch * columns)).map { _ in rng.float(2) }
            var q = [tk_block_q8](repeating: tk_block_q8(), count: batch * columns / 32)
            for b in 0..<batch {
                Array(x[(b * columns)..<((b + 1) * columns)]).withUnsafeBufferPointer { xb in
                    q.withUnsafeMutableBufferPointer {
                        tk_quantize_q8(xb.baseAddress!, $0.baseAddress! + b * columns / 32, Int32(columns))
                    }
                }
            }
            weights.withUnsafeBytes { w in
                let rowBytes = type.byteCount(elements: columns)!
                let groups = (rows + 15) / 16
                var packed = [UInt8](
                    repeating: 0, count: groups * tk_interleaved_group_bytes(Int32(type.rawValue), Int32(columns)))
                tk_repack_interleaved(
                    Int32(type.rawValue), w.baseAddress!, rowBytes, Int32(rows), Int32(columns), &packed)
                for level in 0...2 {
                    let used = tk_set_simd_level(Int32(level))
                    for n in [1, 2, 3, 4, 7, 8, 11] {
                        var out = [Float](repeating: .nan, count: n * rows)
                        tk_matmul_interleaved(
                            Int32(type.rawValue), packed, Int32(columns), 0, Int32(groups), Int32(rows), q, Int32(n),
                            &out, Int32(rows))
                        for b in 0..<n {
                            let reference = ReferenceKernels.quantize(Array(x[(b * columns)..<((b + 1) * columns)]))
                            for r in 0..<rows {
                                let row = w.baseAddress! + r * rowBytes
                                let expected =
                                    type == .q5_0
                                    ? KQuantReference.dotQ5_0(row: row, blocks: reference)
                                    : ReferenceKernels.dot(type, row: row, blocks: reference)
                                #expect(
                                    out[b * rows + r].bitPattern == expected.bitPattern,
                                    "level \(used) n=\(n) b=\(b) r=\(r)")
                            }
                        }
                    }
                }
            }
        }
        tk_set_simd_level(99)
    }

    /// 37 rows: split over two threads, some rows go through the four-row kernel in one split and the one-row kernel
    /// in the other, and must come out bitwise equal.
    @Test(arguments: [GGMLType.q4_0, .q4_1, .q8_0])
    func matmulMatchesPerRowDotsAndIsBatchInvariant(type: GGMLType) {
        var rng = Rng(state: 7)
        let rows = 37
        let columns = 96
        let weights = randomRow(type, blocks: rows * columns / 32, rng: &rng)
        let x = (0..<(5 * columns)).map { _ in rng.float(2) }
        weights.withUnsafeBytes { w in
            let matrix = WeightMatrix(type: type, data: w.baseAddress!, rows: rows, columns: columns)
            var scratch = ActivationBuffer()
            defer { scratch.release() }
            var batched = [Float](repeating: 0, count: 5 * rows)
            matrix.multiply(x, batch: 5, into: &batched, pool: ThreadPool(threads: 2), scratch: &scratch)
            for b in 0..<5 {
                var single = [Float](repeating: 0, count: rows)
                Array(x[(b * columns)..<((b + 1) * columns)]).withUnsafeBufferPointer { xb in
                    matrix.multiply(
                        xb.baseAddress!, batch: 1, into: &single, pool: ThreadPool(threads: 1), scratch: &scratch)
                }
                #expect(Array(batched[(b * rows)..<((b + 1) * rows)]) == single)
                let reference = ReferenceKernels.quantize(Array(x[(b * columns)..<((b + 1) * columns)]))
                for r in 0..<rows {
                    let expected = ReferenceKernels.dot(type, row: matrix.row(r), blocks: reference)
                    #expect(abs(single[r] - expected) <= 1e-4 * max(1, abs(expected)))
                }
            }
        }
    }

    @Test func fp16HelpersMatchReference() {
        var rng = Rng(state: 3)
        for level in [0, 1] {
            tk_set_simd_level(Int32(level))
            for n in [1, 7, 8, 63, 64, 77, 128, 200] {
                let a = (0..<n).map { _ in HalfFloat.fromFloat(rng.float(4)) }
                let b = (0..<n).map { _ in rng.float(4) }
                let got = tk_dot_f16_f32(a, b, Int32(n))
                #expect(got.bitPattern == ReferenceKernels.dotF16(a, b).bitPattern, "n \(n), level \(level)")
                var converted = [UInt16](repeating: 0, count: n)
                tk_f32_to_f16(b, &converted, Int32(n))
                #expect(converted == b.map(HalfFloat.fromFloat))
                var back = [Float](repeating: 0, count: n)
                tk_f16_to_f32(a, &back, Int32(n))
                #expect(back == a.map(HalfFloat.toFloat))
            }
        }
        tk_set_simd_level(99)
    }

    /// The vectorized SwiGLU gives the scalar path's exact bits, including lanes far out in exp's range.
    @Test func swigluPathsAgreeBitwise() {
        var rng = Rng(state: 5)
        for scale in [Float(1), 10, 100, 200] {
            let n = 77
            let gate = (0..<n).map { _ in rng.float(scale) }
            let up = (0..<n).map { _ in rng.float(2) }
            var outs: [[Float]] = []
            for level in [0, 1, 2] {
                tk_set_simd_level(Int32(level))
                var g = gate
                tk_swiglu(&g, up, Int32(n))
                outs.append(g)
            }
            #expect(outs[0] == outs[1] && outs[1] == outs[2], "scale \(scale)")
        }
        tk_set_simd_level(99)
    }

    /// The vectorized GEGLU gives the scalar path's exact bits: the same fp16 table entries, and the cut-offs at
    /// -10 and 10 (both sides of each).
    @Test func gegluPathsAgreeBitwise() {
        var rng = Rng(state: 6)
        for scale in [Float(1), 8, 12, 60000] {
            let n = 83
            var gate = (0..<n).map { _ in rng.float(scale) }
            gate[0] = -10
            gate[1] = 10
            gate[2] = -10.000001
            gate[3] = 9.999999
            let up = (0..<n).map { _ in rng.float(2) }
            var outs: [[UInt32]] = []
            for level in [0, 1, 2] {
                tk_set_simd_level(Int32(level))
                var g = gate
                tk_geglu(&g, up, Int32(n))
                outs.append(g.map(\.bitPattern))
            }
            #expect(outs[0] == outs[1] && outs[1] == outs[2], "scale \(scale)")
        }
        tk_set_simd_level(99)
    }
}
