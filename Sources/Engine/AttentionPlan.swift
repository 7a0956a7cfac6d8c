import Foundation

/// How a forward pass lays out its attention; the same for every layer, so it is built once per pass.
///
/// It holds each row's kernel (`AttentionKernelChoice`), how far each sequence's keys must be gathered for its tiled
/// rows, and the work items: one per (row, head), per (row, KV head) for a tiled row (its query heads go together
/// through the gathered keys), or per (row, head, chunk of cells) for a split row, whose chunk results then wait in a
/// partials buffer to be merged in order. A row's cost grows with its position, so rows are
/// handed out first, last, second, second to last, ...: each thread's contiguous range of items gets about the same
/// work.
struct AttentionPlan {
    let kernels: [AttentionKernelChoice.Kernel]
    /// Per chunk: how many positions its tiled rows attend to (0 when it has none).
    let tiledLength: [Int]
    /// (chunk, KV head) pairs whose keys and values are gathered for tiled rows.
    let gatherTasks: [(chunk: Int, kvHead: Int)]
    /// The work items: query heads `head ..< head + heads` of `row`; `part` is -1 except for split rows.
    let tasks: [(row: Int, head: Int, part: Int, heads: Int)]
    /// Rows using the split kernel, and where each one's partial results start (in partials).
    let splitRows: [Int]
    let partialBase: [Int]
    let partialCount: Int

    /// Floats of one partial result of a split chunk: maximum, sum, then the unnormalized output.
    static func partialStride(headDim: Int) -> Int { 2 + headDim }

    init(
        chunks: [SequenceChunk], rowChunk: [Int], rowPosition: [Int], headCount: Int, kvHeadCount: Int,
        batching: PromptBatching = .plain
    ) {
        let rows = rowPosition.count
        kernels = (0..<rows).map {
            AttentionKernelChoice.kernel(
                position: rowPosition[$0], promptLength: chunks[rowChunk[$0]].promptLength, batching: batching)
        }
        var tiledLength = [Int](repeating: 0, count: chunks.count)
        for row in 0..<rows where kernels[row] == .tiled {
            tiledLength[rowChunk[row]] = max(tiledLength[rowChunk[row]], rowPosition[row] + 1)
        }
        self.tiledLength = tiledLength
        gatherTasks = chunks.indices.filter { tiledLength[$0] > 0 }.flatMap { ci in (0..<kvHeadCount).map { (ci, $0) } }
        var tasks: [(row: Int, head: Int, part: Int, heads: Int)] = []
        let group = headCount / kvHeadCount
        var splitRows: [Int] = []
        var partialBase = [Int](repeating: -1, count: rows)
        var partialCount = 0
        for row in (0..<rows).map({ $0 % 2 == 0 ? $0 / 2 : rows - 1 - $0 / 2 }) {
            if case .split(_, let parts) = kernels[row] {
                splitRows.append(row)
                partialBase[row] = partialCount
                partialCount += headCount * parts
                for head in 0..<headCount { for part in 0..<parts { tasks.append((row, head, part, 1)) } }
            } else if kernels[row] == .tiled {
                for kvHead in 0..<kvHeadCount { tasks.append((row, kvHead * group, -1, group)) }
            } else {
                for head in 0..<headCount { tasks.append((row, head, -1, 1)) }
            }
        }
        self.tasks = tasks
        self.splitRows = splitRows
        self.partialBase = partialBase
        self.partialCount = partialCount
    }
}

/// Scratch memory for the keys and values that tiled-kernel rows read: per chunk and KV head, the keys as fp32 tiles
/// of 64 positions (dimension-major) and the values as fp32 rows (`tk_tile_kv`). Grown on demand and reused.
struct TiledKVBuffer {
    /// Where each (chunk, KV head) lives in the buffer.
    struct Layout: @unchecked Sendable {
        let base: UnsafeMutablePointer<Float>?
        let offsets: [[(kt: Int, v: Int)]]

        func head(chunk: Int, kvHead: Int) -> (UnsafeMutablePointer<Float>, UnsafeMutablePointer<Float>) {
            let o = offsets[chunk][kvHead]
            return (base! + o.kt, base! + o.v)
        }
    }

    private var storage: UnsafeMutablePointer<Float>?
    private var capacity = 0

    mutating func prepare(lengths: [Int], kvHeads: Int, headDim: Int) -> Layout {
        var offsets: [[(kt: Int, v: Int)]] = []
        var total = 0
        for length in lengths {
            var heads: [(kt: Int, v: Int)] = []
            let tileFloats = (length + 63) / 64 * 64 * headDim
            for _ in 0..<kvHeads {
                heads.append((total, total + tileFloats))
                total += tileFloats + length * headDim
            }
            offsets.append(heads)
        }
        if total > capacity {
            storage?.deallocate()
            capacity = total
            storage = UnsafeMutablePointer<Float>.allocate(capacity: total)
        }
        return Layout(base: storage, offsets: offsets)
    }

    mutating func release() {
        storage?.deallocate()
        storage = nil
    }
}
