import CKernels
import GGUF
import Kernels
import Testing

/// The three attention kernels against their Swift references, bit for bit, at every SIMD level.
@Suite(.serialized) struct AttentionKernelTests {
    /// One KV head in a paged fp16 cache of random values, its blocks in a scrambled order.
    struct PagedHead {
        let headDim: Int
        let blockSize = 16
        let table: [Int32]
        let k: [UInt16]
        let v: [UInt16]

        init(headDim: Int, blocks: Int, rng: inout KernelTests.Rng) {
            self.headDim = headDim
            table = (0..<Int32(blocks)).map { ($0 * 7) % Int32(blocks) }
            let count = blocks * blockSize * headDim
            k = (0..<count).map { _ in HalfFloat.fromFloat(rng.float(3)) }
            v = (0..<count).map { _ in HalfFloat.fromFloat(rng.float(3)) }
        }

        /// The rows of positions 0..<length of `cache` (k or v), in position order.
        func rows(_ cache: [UInt16], _ length: Int) -> [[UInt16]] {
            (0..<length).map { t in
                let start = (Int(table[t / blockSize]) * blockSize + t % blockSize) * headDim
                return Array(cache[start..<start + headDim])
            }
        }

        var blockElements: Int { blockSize * headDim }
    }

    /// Runs `kernel` at every SIMD level and checks its output against `expected`, bit for bit.
    func expectEveryLevel(_ expected: [Float], _ what: String, _ kernel: (UnsafeMutablePointer<Float>) -> Void) {
        for level in [0, 1, 2] {
            tk_set_simd_level(Int32(level))
            var out = [Float](repeating: 0, count: expected.count)
            out.withUnsafeMutableBufferPointer { kernel($0.baseAddress!) }
            #expect(out.map(\.bitPattern) == expected.map(\.bitPattern), "\(what), level \(level)")
        }
        tk_set_simd_level(99)
    }

    /// One key at a time (every path: scalar, AVX2, the fixed head sizes 64 and 128).
    @Test func oneChunkMatchesReference() {
        var rng = KernelTests.Rng(state: 11)
        for headDim in [64, 128, 40] {
            let head = PagedHead(headDim: headDim, blocks: 4, rng: &rng)
            for length in [1, 5, 16, 17, 40, 64] {
                let q = (0..<headDim).map { _ in rng.float(Float(length)) }
                let expected = ReferenceKernels.attend(
                    q: q, keys: head.rows(head.k, length), values: head.rows(head.v, length), scale: 0.125)
                expectEveryLevel(expected, "head \(headDim), length \(length)") { out in
                    tk_attend_f16(
                        q, Int32(headDim), Int32(length), head.k, head.v, head.table, Int32(head.blockSize),
                        head.blockElements, headDim, 0.125, out)
                }
            }
        }
    }

    /// Tiles of 64 keys, across tile boundaries (head 256: Gemma 3's).
    @Test func tiledMatchesReference() {
        var rng = KernelTests.Rng(state: 17)
        for headDim in [64, 128, 256, 40] {
            let head = PagedHead(headDim: headDim, blocks: 14, rng: &rng)
            for length in [1, 7, 63, 64, 65, 130, 200] {
                let q = (0..<headDim).map { _ in rng.float(2) }
                let expected = ReferenceKernels.attendTiled(
                    q: q, keys: head.rows(head.k, length), values: head.rows(head.v, length), scale: 0.125)
                var kt = [Float](repeating: .nan, count: (length + 63) / 64 * 64 * headDim)
                var vf = [Float](repeating: .nan, count: length * headDim)
                tk_tile_kv(
                    head.k, head.v, head.table, Int32(head.blockSize), head.blockElements, headDim, Int32(length),
                    Int32(headDim), &kt, &vf)
                expectEveryLevel(expected, "head \(headDim), length \(length)") { out in
                    tk_attend_tiled(q, Int32(headDim), Int32(length), kt, vf, 0.125, out)
                }
            }
        }
    }

    /// Several query heads over one KV head's tiles (grouped-query attention, up to four at once, six as four and
    /// two): each head's output is bitwise its lone reference. The keys grow with their position, so every head's
    /// running maximum rises tile after tile, each by its own factor.
    @Test func tiledHeadsMatchTheReferencePerHead() {
        var rng = KernelTests.Rng(state: 19)
        for headDim in [64, 256] {
            let length = 200
            let keys = (0..<length).map { t in
                (0..<headDim).map { _ in HalfFloat.fromFloat(rng.float(1) * (1 + Float(t) / 50)) }
            }
            let values = (0..<length).map { _ in (0..<headDim).map { _ in HalfFloat.fromFloat(rng.float(3)) } }
            let table = (0..<Int32((length + 15) / 16)).map { $0 }
            let kCache = keys.flatMap { $0 } + [UInt16](repeating: 0, count: (table.count * 16 - length) * headDim)
            let vCache = values.flatMap { $0 } + [UInt16](repeating: 0, count: (table.count * 16 - length) * headDim)
            for (heads, n) in [(4, 130), (3, 64), (6, 200), (1, 7)] {
                let q = (0..<(heads * headDim)).map { _ in rng.float(2) }
                var expected: [Float] = []
                for h in 0..<heads {
                    expected += ReferenceKernels.attendTiled(
                        q: Array(q[(h * headDim)..<((h + 1) * headDim)]), keys: Array(keys.prefix(n)),
                        values: Array(values.prefix(n)), scale: 0.125)
                }
                var kt = [Float](repeating: .nan, count: (n + 63) / 64 * 64 * headDim)
                var vf = [Float](repeating: .nan, count: n * headDim)
                tk_tile_kv(kCache, vCache, table, 16, 16 * headDim, headDim, Int32(n), Int32(headDim), &kt, &vf)
                expectEveryLevel(expected, "head \(headDim), \(heads) heads, length \(n)") { out in
                    tk_attend_tiled_heads(q, Int32(heads), Int32(headDim), Int32(n), kt, vf, 0.125, out)
                }
            }
        }
    }

    /// Split-KV, whatever the chunks hold (some empty, some partly past the last position).
    @Test func splitMatchesReference() {
        var rng = KernelTests.Rng(state: 23)
        for headDim in [64, 128, 40] {
            let head = PagedHead(headDim: headDim, blocks: 24, rng: &rng)
            for (length, parts) in [(257, 2), (300, 3), (384, 4), (200, 2)] {
                let q = (0..<headDim).map { _ in rng.float(2) }
                let expected = ReferenceKernels.attendSplit(
                    q: q, keys: head.rows(head.k, length), values: head.rows(head.v, length), cells: 512,
                    parts: parts, scale: 0.125)
                expectEveryLevel(expected, "head \(headDim), length \(length), parts \(parts)") { out in
                    tk_attend_split(
                        q, Int32(headDim), Int32(length), 512, Int32(parts), head.k, head.v, head.table,
                        Int32(head.blockSize), head.blockElements, headDim, 0.125, out)
                }
            }
        }
    }
}
