import CKernels
import GGUF
import Kernels
import Testing

/// The Q5_0 and K-quant kernels at every SIMD level give bitwise the Swift reference's dot products, on random rows
/// and activations of ragged lengths; the Q8_K activation blocks are the reference's.
@Suite(.serialized) struct KQuantKernelTests {
    typealias Rng = KernelTests.Rng

    func randomRow(_ type: GGMLType, blocks: Int, rng: inout Rng) -> [UInt8] {
        var row: [UInt8] = []
        for _ in 0..<blocks {
            var block = (0..<type.blockBytes).map { _ in rng.byte() }
            func putHalf(_ value: Float, at offset: Int) {
                let h = HalfFloat.fromFloat(value)
                block[offset] = UInt8(h & 0xFF)
                block[offset + 1] = UInt8(h >> 8)
            }
            switch type {
            case .q5_0: putHalf(rng.float(0.05), at: 0)
            case .q4_K, .q5_K:
                putHalf(rng.float(0.01), at: 0)
                putHalf(rng.float(0.01), at: 2)
            default: putHalf(rng.float(0.01), at: 208)
            }
            row += block
        }
        return row
    }

    /// At every SIMD level, including a block of zeros, a largest magnitude that occurs twice with both signs (the
    /// first one's sign is the scale's), and values that round half-way.
    @Test func q8KBlocksMatchTheReference() {
        var rng = Rng(state: 7)
        for level in 0...2 {
            let used = tk_set_simd_level(Int32(level))
            for blocks in [1, 3, 8] {
                var x = (0..<(blocks * 256)).map { _ in rng.float(4) }
                x[5] = 0
                if blocks == 3 { for i in 256..<512 { x[i] = 0 } }
                if blocks == 8 {
                    x[300] = 9
                    x[301] = -9
                    x[600] = -9
                    x[700] = 9
                    x[1024] = 127
                    x[1025] = 0.5
                    x[1026] = 1.5
                    x[1027] = -2.5
                }
                var c = [tk_block_q8k](repeating: tk_block_q8k(), count: blocks)
                tk_quantize_q8k(x, &c, Int32(x.count))
                for (b, r) in KQuantReference.quantize(x).enumerated() {
                    let qs = withUnsafeBytes(of: c[b].qs) { Array($0.bindMemory(to: Int8.self)) }
                    let sums = withUnsafeBytes(of: c[b].bsums) { Array($0.bindMemory(to: Int16.self)) }
                    #expect(
                        c[b].d == r.d && qs == r.qs && sums == r.bsums, "level \(used): block \(b) of \(blocks)")
                }
            }
        }
        tk_set_simd_level(99)
    }

    @Test(arguments: [GGMLType.q5_0, .q4_K, .q5_K, .q6_K])
    func dotsAreTheReferenceBitForBit(type: GGMLType) {
        var rng = Rng(state: 11)
        for level in 0...2 {
            let used = tk_set_simd_level(Int32(level))
            for superBlocks in [1, 2, 3, 5, 8] {
                let n = superBlocks * 256
                let x = (0..<n).map { _ in rng.float(3) }
                let row = randomRow(type, blocks: n / type.blockSize, rng: &rng)
                let expected: Float
                let got: Float
                if type == .q5_0 {
                    let reference = ReferenceKernels.quantize(x)
                    var q = [tk_block_q8](repeating: tk_block_q8(), count: n / 32)
                    tk_quantize_q8(x, &q, Int32(n))
                    expected = row.withUnsafeBytes { KQuantReference.dotQ5_0(row: $0.baseAddress!, blocks: reference) }
                    got = row.withUnsafeBytes { tk_dot_q5_0($0.baseAddress!, q, Int32(n)) }
                } else {
                    let reference = KQuantReference.quantize(x)
                    var q = [tk_block_q8k](repeating: tk_block_q8k(), count: n / 256)
                    tk_quantize_q8k(x, &q, Int32(n))
                    expected = row.withUnsafeBytes {
                        KQuantReference.dotK(type, row: $0.baseAddress!, blocks: reference)
                    }
                    got = row.withUnsafeBytes { tk_dot_k(Int32(type.rawValue), $0.baseAddress!, q, Int32(n)) }
                }
                #expect(got == expected, "level \(used) \(type.name) n=\(n): \(got) vs \(expected)")
                // And near the float dot product of the dequantized row (the quantization error only).
                let w = row.withUnsafeBytes { try! Dequantize.row(type, $0.baseAddress!, count: n) }
                let exact = zip(w, x).reduce(Float(0)) { $0 + $1.0 * $1.1 }
                let scale = zip(w, x).reduce(Float(0)) { $0 + abs($1.0 * $1.1) }
                #expect(abs(got - exact) <= 0.02 * scale + 1e-3, "\(type.name) n=\(n): \(got) vs float \(exact)")
            }
        }
        tk_set_simd_level(99)
    }

    /// The Q5_0 matrix kernel, which decodes a weight row once for four activation rows, gives every output the bits
    /// of that row's dot product alone, for any number of activation rows (so batches of 4 and the rest agree).
    @Test func q5_0MatrixRowsAreTheirDotProducts() {
        var rng = Rng(state: 23)
        let n = 640  // 20 blocks: Gemma 3's hidden size
        let rows = 7
        let rowBytes = n / 32 * 22
        let w = (0..<rows).flatMap { _ in randomRow(.q5_0, blocks: n / 32, rng: &rng) }
        for level in 0...2 {
            let used = tk_set_simd_level(Int32(level))
            for count in [1, 3, 4, 5, 9] {
                let x = (0..<count * n).map { _ in rng.float(3) }
                var q = [tk_block_q8](repeating: tk_block_q8(), count: count * n / 32)
                tk_quantize_q8(x, &q, Int32(count * n))
                var out = [Float](repeating: .nan, count: count * rows)
                w.withUnsafeBytes { raw in
                    _ = tk_matmul_q(
                        6, raw.baseAddress!, rowBytes, Int32(n), 0, Int32(rows), q, Int32(count), &out, Int32(rows))
                }
                for r in 0..<rows {
                    for b in 0..<count {
                        let alone = w.withUnsafeBytes { raw in
                            q.withUnsafeBufferPointer {
                                tk_dot_q5_0(raw.baseAddress! + r * rowBytes, $0.baseAddress! + b * n / 32, Int32(n))
                            }
                        }
                        #expect(
                            out[b * rows + r].bitPattern == alone.bitPattern,
                            "level \(used), \(count) rows: row \(r), act \(b)")
                    }
                }
            }
        }
        tk_set_simd_level(99)
    }

    /// The K-quant matrix kernel, which reads a Q4_K or Q6_K weight row once (Q5_K: one at a time) for four activation rows, gives every output the
    /// bits of that row's dot product alone, for any number of activation rows.
    @Test(arguments: [GGMLType.q4_K, .q5_K, .q6_K])
    func kQuantMatrixRowsAreTheirDotProducts(type: GGMLType) {
        var rng = Rng(state: 29)
        let n = 1024  // 4 super-blocks: Gemma 3's attention output
        let rows = 5
        let rowBytes = n / 256 * type.blockBytes
        let w = (0..<rows).flatMap { _ in randomRow(type, blocks: n / 256, rng: &rng) }
        for level in 0...2 {
            let used = tk_set_simd_level(Int32(level))
            for count in [1, 3, 4, 6, 9] {
                let x = (0..<count * n).map { _ in rng.float(3) }
                var q = [tk_block_q8k](repeating: tk_block_q8k(), count: count * n / 256)
                tk_quantize_q8k(x, &q, Int32(count * n))
                var out = [Float](repeating: .nan, count: count * rows)
                w.withUnsafeBytes { raw in
                    _ = tk_matmul_k(
                        Int32(type.rawValue), raw.baseAddress!, rowBytes, Int32(n), 0, Int32(rows), q, Int32(count),
                        &out, Int32(rows))
                }
                for r in 0..<rows {
                    for b in 0..<count {
                        let alone = w.withUnsafeBytes { raw in
                            q.withUnsafeBufferPointer {
                                tk_dot_k(
                                    Int32(type.rawValue), raw.baseAddress! + r * rowBytes,
                                    $0.baseAddress! + b * n / 256,
                                    Int32(n))
                            }
                        }
                        #expect(
                            out[b * rows + r].bitPattern == alone.bitPattern,
                            "level \(used) \(type.name), \(count) rows: row \(r), act \(b)")
                    }
                }
            }
        }
        tk_set_simd_level(99)
    }

    /// Q4_K, Q5_K and Q6_K repacked into groups of 16 interleaved rows: at every level, for 1 to 7 activation rows and a
    /// last group of fewer than 16 rows, every output is bitwise the Swift reference's dot product.
    @Test(arguments: [GGMLType.q4_K, .q5_K, .q6_K])
    func interleavedKQuantsEqualTheReferenceBitwiseAtEveryLevel(type: GGMLType) {
        var rng = Rng(state: 41)
        let id = Int32(type.rawValue)
        for (rows, columns) in [(37, 256), (16, 1024), (5, 512)] {
            let weights = randomRow(type, blocks: rows * columns / 256, rng: &rng)
            let rowBytes = columns / 256 * type.blockBytes
            let groups = (rows + 15) / 16
            var packed = [UInt8](repeating: 0, count: groups * tk_interleaved_k_group_bytes(id, Int32(columns)))
            #expect(tk_repack_interleaved_k(id, weights, rowBytes, Int32(rows), Int32(columns), &packed) == 0)
            let batch = 7
            let x = (0..<(batch * columns)).map { _ in rng.float(3) }
            var q = [tk_block_q8k](repeating: tk_block_q8k(), count: batch * columns / 256)
            tk_quantize_q8k(x, &q, Int32(batch * columns))
            for level in 0...2 {
                let used = tk_set_simd_level(Int32(level))
                for n in [1, 2, 3, 7] {
                    var out = [Float](repeating: .nan, count: n * rows)
                    tk_matmul_interleaved_k(
                        id, packed, Int32(columns), 0, Int32(groups), Int32(rows), q, Int32(n), &out, Int32(rows))
                    for b in 0..<n {
                        let blocks = KQuantReference.quantize(Array(x[(b * columns)..<((b + 1) * columns)]))
                        for r in 0..<rows {
                            let expected = weights.withUnsafeBytes {
                                KQuantReference.dotK(type, row: $0.baseAddress! + r * rowBytes, blocks: blocks)
                            }
                            #expect(
                                out[b * rows + r].bitPattern == expected.bitPattern,
                                "level \(used) n=\(n) b=\(b) r=\(r)")
                        }
                    }
                }
            }
        }
        tk_set_simd_level(99)
    }

    /// Q4_K in llama.cpp's repacked orders (its GEMM: one FMA per 64 values; its GEMV: one per 256), each activation
    /// row in its own: the interleaved kernel at every level (1, 2, 4 rows per pass) and the row kernel give bitwise
    /// the Swift reference's dot product; and the two orders do differ.
    @Test func repackedQ4KOrdersEqualTheReferenceBitwise() {
        var rng = Rng(state: 43)
        expectOrderedKernelsMatchTheReference(
            .q4_K, rows: 37, columns: 512, orders: [1, 0, 1, 1, 0, 0, 1], rng: &rng,
            reference: { row, blocks, order in
                KQuantReference.dotQ4_KRepacked(row: row, blocks: blocks, per64: order == 1)
            },
            otherOrder: { $0 ^ 1 },
            interleaved: { packed, groups, columns, rows, q, batch, orders, out in
                tk_matmul_interleaved_q4_k_repacked(packed, columns, 0, groups, rows, q, batch, orders, out, rows)
            },
            byRows: { weights, rowBytes, columns, rows, q, batch, orders, out in
                tk_matmul_q4_k_repacked(weights, rowBytes, columns, 0, rows, q, batch, orders, out, rows)
            })
    }

    /// Q6_K, Q5_K and Q4_K (of a matrix llama.cpp does not repack: 37 rows) in llama.cpp's tiled order (batches of 8
    /// rows or more) and in vec_dot's, each activation row in its own: the interleaved kernel at every level (Q6_K:
    /// 1, 2 and 4 rows per pass; Q4_K and Q5_K: 1 and 2), the row kernel and `tk_dot_k_tiled` give bitwise the Swift
    /// reference's dot product; and the two orders do differ.
    @Test(arguments: [GGMLType.q6_K, .q5_K, .q4_K])
    func tiledKQuantOrderEqualsTheReferenceBitwise(type: GGMLType) {
        var rng = Rng(state: 47)
        let tiled = UInt8(TK_ORDER_TILED)
        let id = Int32(type.rawValue)
        // Runs of 7, 1, 2 and 1 tiled rows between vec_dot ones, with the Q4_K GEMM flag (ignored here) on some.
        let orders: [UInt8] = [
            tiled, tiled | 1, tiled, tiled, tiled, tiled, tiled, 0, tiled, 1, 0, tiled, tiled, 0, tiled,
        ]
        let (weights, x) = expectOrderedKernelsMatchTheReference(
            type, rows: 37, columns: 1024, orders: orders, rng: &rng,
            reference: { row, blocks, order in
                order & tiled != 0
                    ? KQuantReference.dotKTiled(type, row: row, blocks: blocks)
                    : KQuantReference.dotK(type, row: row, blocks: blocks)
            },
            otherOrder: { $0 ^ tiled },
            interleaved: { packed, groups, columns, rows, q, batch, orders, out in
                tk_matmul_interleaved_k_ordered(id, packed, columns, 0, groups, rows, q, batch, orders, out, rows)
            },
            byRows: { weights, rowBytes, columns, rows, q, batch, orders, out in
                tk_matmul_k_ordered(id, weights, rowBytes, columns, 0, rows, q, batch, orders, out, rows)
            })
        let blocks = KQuantReference.quantize(Array(x[0..<1024]))
        var q = [tk_block_q8k](repeating: tk_block_q8k(), count: 4)
        tk_quantize_q8k(x, &q, 1024)
        let want = weights.withUnsafeBytes { KQuantReference.dotKTiled(type, row: $0.baseAddress!, blocks: blocks) }
        for level in 0...2 {
            let used = tk_set_simd_level(Int32(level))
            #expect(tk_dot_k_tiled(id, weights, q, 1024).bitPattern == want.bitPattern, "tk_dot_k_tiled, level \(used)")
        }
        tk_set_simd_level(99)
    }

    /// Random `type` weights of `rows` × `columns` and one activation row per entry of `orders`: the `interleaved`
    /// and `byRows` kernels at every SIMD level give each output the bits of `reference` in its row's order, and
    /// `otherOrder` rounds differently somewhere. Returns the weights and activations.
    @discardableResult
    func expectOrderedKernelsMatchTheReference(
        _ type: GGMLType, rows: Int, columns: Int, orders: [UInt8], rng: inout Rng,
        reference: (UnsafeRawPointer, [KQuantReference.Block], UInt8) -> Float, otherOrder: (UInt8) -> UInt8,
        interleaved: (
            UnsafeRawPointer, Int32, Int32, Int32, UnsafePointer<tk_block_q8k>, Int32, UnsafePointer<UInt8>,
            UnsafeMutablePointer<Float>
        ) -> Int32,
        byRows: (
            UnsafeRawPointer, Int, Int32, Int32, UnsafePointer<tk_block_q8k>, Int32, UnsafePointer<UInt8>,
            UnsafeMutablePointer<Float>
        ) -> Int32
    ) -> (weights: [UInt8], x: [Float]) {
        let id = Int32(type.rawValue)
        let weights = randomRow(type, blocks: rows * columns / 256, rng: &rng)
        let rowBytes = columns / 256 * type.blockBytes
        let groups = (rows + 15) / 16
        var packed = [UInt8](repeating: 0, count: groups * tk_interleaved_k_group_bytes(id, Int32(columns)))
        tk_repack_interleaved_k(id, weights, rowBytes, Int32(rows), Int32(columns), &packed)
        let batch = orders.count
        let x = (0..<(batch * columns)).map { _ in rng.float(3) }
        var q = [tk_block_q8k](repeating: tk_block_q8k(), count: batch * columns / 256)
        tk_quantize_q8k(x, &q, Int32(batch * columns))
        var expected = [Float](repeating: 0, count: batch * rows)
        var differ = 0
        for b in 0..<batch {
            let blocks = KQuantReference.quantize(Array(x[(b * columns)..<((b + 1) * columns)]))
            for r in 0..<rows {
                weights.withUnsafeBytes {
                    let row = $0.baseAddress! + r * rowBytes
                    expected[b * rows + r] = reference(row, blocks, orders[b])
                    if reference(row, blocks, otherOrder(orders[b])) != expected[b * rows + r] { differ += 1 }
                }
            }
        }
        #expect(differ > 0, "the orders round differently somewhere")
        for level in 0...2 {
            let used = tk_set_simd_level(Int32(level))
            var packedOut = [Float](repeating: .nan, count: batch * rows)
            var rowOut = [Float](repeating: .nan, count: batch * rows)
            _ = interleaved(packed, Int32(groups), Int32(columns), Int32(rows), q, Int32(batch), orders, &packedOut)
            _ = byRows(weights, rowBytes, Int32(columns), Int32(rows), q, Int32(batch), orders, &rowOut)
            #expect(packedOut.map(\.bitPattern) == expected.map(\.bitPattern), "interleaved, level \(used)")
            #expect(rowOut.map(\.bitPattern) == expected.map(\.bitPattern), "rows, level \(used)")
        }
        tk_set_simd_level(99)
        return (weights, x)
    }
}
