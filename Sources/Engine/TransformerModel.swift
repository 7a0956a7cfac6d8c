import CKernels
import Foundation
import GGUF
import Kernels

/// New tokens of one sequence to run through the model in a step.
public struct SequenceChunk: Sendable {
    /// The tokens to process, at positions `startPosition...`.
    public var tokens: [Int32]
    public var startPosition: Int
    /// KV-cache blocks of the sequence; must cover `startPosition + tokens.count` positions.
    public var blockTable: [Int32]
    /// In a split cache, the blocks of the sliding-window layers (`KVBlockTables.window`): they must cover each
    /// row's window.
    public var windowTable: [Int32]?
    /// Whether to return logits for the chunk's last token.
    public var wantsLogits: Bool
    /// Length of the request's prompt: it decides which attention kernel each row uses (`AttentionKernelChoice`).
    public var promptLength: Int
    /// Whether every row's logits go to `forward`'s `rowLogits` (a prompt's logprobs).
    public var wantsAllLogits = false

    public init(tokens: [Int32], startPosition: Int, blockTable: [Int32], wantsLogits: Bool, promptLength: Int) {
        self.tokens = tokens
        self.startPosition = startPosition
        self.blockTable = blockTable
        self.wantsLogits = wantsLogits
        self.promptLength = promptLength
    }
}

/// A loaded llama-family model that runs batched forward passes over a paged KV cache.
///
/// Calls to `forward` are serialized by an internal lock (one engine loop normally drives it). Every token row is computed with the same arithmetic
/// whatever else is in the batch, so outputs are batch-invariant.
public final class TransformerModel: @unchecked Sendable {
    public let file: GGUFFile
    public let config: ModelConfig
    public let weights: ModelWeights
    public let pool: ThreadPool
    private var workspace = Workspace()
    private var activations = ActivationBuffer()
    private var tiles = TiledKVBuffer()
    private let lock = NSLock()

    public init(path: String, threads: Int) throws {
        file = try GGUFFile(path: path)
        config = try ModelConfig(file: file)
        weights = try ModelWeights(file: file, config: config)
        pool = ThreadPool(threads: threads)
    }

    deinit {
        activations.release()
        tiles.release()
    }

    /// Runs `chunks` through the model, writing their K and V into `cache`; returns the last-token logits of each
    /// chunk that asked for them (nil for the others). `afterLayer`, when given, is called with each layer's index as
    /// soon as that layer's K and V for every chunk are in the cache.
    /// Chunks with `wantsAllLogits` hand each row's logits to `rowLogits` (chunk index, row in the chunk, logits),
    /// computed in groups of rows so that a long prompt never holds them all at once.
    public func forward(
        _ chunks: [SequenceChunk], cache: PagedKVCache, afterLayer: ((Int) -> Void)? = nil,
        rowLogits: ((Int, Int, UnsafeBufferPointer<Float>) -> Void)? = nil
    ) -> [[Float]?] {
        lock.lock()
        defer { lock.unlock() }
        let c = config
        let rowCount = chunks.reduce(0) { $0 + $1.tokens.count }
        guard rowCount > 0 else { return chunks.map { _ in nil } }
        var rowChunk = [Int](repeating: 0, count: rowCount)
        var rowPosition = [Int](repeating: 0, count: rowCount)
        var r = 0
        for (ci, chunk) in chunks.enumerated() {
            for i in 0..<chunk.tokens.count {
                rowChunk[r] = ci
                rowPosition[r] = chunk.startPosition + i
                r += 1
            }
        }
        let ws = workspace.prepare(rows: rowCount, config: c)
        let e = c.embeddingLength
        // Token embeddings.
        r = 0
        for chunk in chunks {
            for token in chunk.tokens {
                let id = Int(token)
                precondition(id >= 0 && id < c.vocabSize, "token id \(id) out of range")
                try! Dequantize.row(
                    weights.tokenEmbedding.type, weights.tokenEmbedding.row(id), count: e, into: ws.x + r * e)
                if c.isGemma { Ops.scale(ws.x + r * e, by: Float(e).squareRoot(), count: e) }
                r += 1
            }
        }
        let batching = PromptBatching(slidingWindow: c.slidingWindow)
        let plan = AttentionPlan(
            chunks: chunks, rowChunk: rowChunk, rowPosition: rowPosition, headCount: c.headCount,
            kvHeadCount: c.kvHeadCount, batching: batching)
        let gathered = tiles.prepare(lengths: plan.tiledLength, kvHeads: c.kvHeadCount, headDim: c.headDim)
        var partials = [Float](
            repeating: 0, count: plan.partialCount * AttentionPlan.partialStride(headDim: c.headDim))
        let rope = RotaryEmbedding(config: c, factors: weights.ropeFrequencyFactors, positions: rowPosition)
        let slidingRope =
            c.slidingWindow == nil
            ? rope
            : RotaryEmbedding(
                config: c, base: c.ropeFreqBaseSliding, factors: weights.ropeFrequencyFactors, positions: rowPosition)
        // llama.cpp's K-quant orders of each row (`KQuantOrderChoice`); its last layer's FFN runs on the output rows
        // only, one at a time (the Q4_K GEMV, Q6_K's vec_dot), and the other rows' FFN there feeds nothing.
        let kQuantOrders = (0..<rowCount).map {
            KQuantOrderChoice.orders(
                position: rowPosition[$0], promptLength: chunks[rowChunk[$0]].promptLength, batching: batching)
        }
        let lastLayerOrders = [UInt8](repeating: 0, count: rowCount)
        // Row-wise work split over the threads: each row's arithmetic is the same whichever thread does it.
        let pool = self.pool
        func inParallel(_ rows: Int, _ body: (Int, Int) -> Void) {
            pool.parallelRanges(rows, minimumPerThread: 16, body)
        }
        for (layerIndex, layer) in weights.layers.enumerated() {
            let sliding = c.slidingLayers[layerIndex]
            let layerRope = sliding ? slidingRope : rope
            inParallel(rowCount) { lo, hi in
                Ops.rmsNorm(
                    ws.x + lo * e, layer.attentionNorm, into: ws.xn + lo * e, rows: hi - lo, width: e,
                    eps: c.rmsNormEps)
            }
            WeightMatrix.multiply(
                [layer.wq, layer.wk, layer.wv], ws.xn, batch: rowCount, into: [ws.q, ws.k, ws.v], pool: pool,
                scratch: &activations, kQuantOrders: kQuantOrders)
            if let b = layer.bq { Ops.addBias(ws.q, b, rows: rowCount) }
            if let b = layer.bk { Ops.addBias(ws.k, b, rows: rowCount) }
            if let b = layer.bv { Ops.addBias(ws.v, b, rows: rowCount) }
            let tables = chunks.map {
                cache.table(layer: layerIndex, KVBlockTables(full: $0.blockTable, window: $0.windowTable))
            }
            inParallel(rowCount) { lo, hi in
                if let n = layer.qNorm {
                    Ops.rmsNorm(
                        ws.q + lo * c.qDim, n, into: ws.q + lo * c.qDim, rows: (hi - lo) * c.headCount,
                        width: c.headDim, eps: c.rmsNormEps)
                }
                if let n = layer.kNorm {
                    Ops.rmsNorm(
                        ws.k + lo * c.kvDim, n, into: ws.k + lo * c.kvDim, rows: (hi - lo) * c.kvHeadCount,
                        width: c.headDim, eps: c.rmsNormEps)
                }
                for row in lo..<hi {
                    layerRope.apply(ws.q + row * c.qDim, heads: c.headCount, row: row)
                    layerRope.apply(ws.k + row * c.kvDim, heads: c.kvHeadCount, row: row)
                    // Gemma scales the queries (llama.cpp: before attention, whose own scale is then 1).
                    if c.isGemma { Ops.scale(ws.q + row * c.qDim, by: c.attentionScale, count: c.qDim) }
                    cache.store(
                        layer: layerIndex, table: tables[rowChunk[row]], position: rowPosition[row],
                        k: ws.k + row * c.kvDim, v: ws.v + row * c.kvDim)
                }
            }
            afterLayer?(layerIndex)
            partials.withUnsafeMutableBufferPointer { p in
                attention(
                    layer: layerIndex, window: sliding ? c.slidingWindow : nil, plan: plan, tables: tables,
                    starts: chunks.map(\.startPosition),
                    rowChunk: rowChunk, rowPosition: rowPosition,
                    cache: cache, ws: ws, gathered: gathered, partials: p.baseAddress)
            }
            layer.wo.multiply(
                ws.attn, batch: rowCount, into: ws.tmp, pool: pool, scratch: &activations, kQuantOrders: kQuantOrders)
            inParallel(rowCount) { lo, hi in
                if let n = layer.postAttentionNorm {
                    Ops.rmsNorm(ws.tmp + lo * e, n, into: ws.tmp + lo * e, rows: hi - lo, width: e, eps: c.rmsNormEps)
                }
                Ops.add(ws.tmp + lo * e, into: ws.x + lo * e, count: (hi - lo) * e)
                Ops.rmsNorm(
                    ws.x + lo * e, layer.ffnNorm, into: ws.xn + lo * e, rows: hi - lo, width: e, eps: c.rmsNormEps)
            }
            // The last layer's FFN runs in llama.cpp on the output rows only (after its attention, `inp_out_ids`).
            let ffnOrders = layerIndex == weights.layers.count - 1 ? lastLayerOrders : kQuantOrders
            WeightMatrix.multiply(
                [layer.gate, layer.up], ws.xn, batch: rowCount, into: [ws.gate, ws.up], pool: pool,
                scratch: &activations, kQuantOrders: ffnOrders)
            let f = c.feedForwardLength
            inParallel(rowCount) { lo, hi in
                if c.isGemma {
                    Ops.geglu(ws.gate + lo * f, ws.up + lo * f, count: (hi - lo) * f)
                } else {
                    Ops.swiglu(ws.gate + lo * f, ws.up + lo * f, count: (hi - lo) * f)
                }
            }
            layer.down.multiply(
                ws.gate, batch: rowCount, into: ws.tmp, pool: pool, scratch: &activations,
                kQuantOrders: ffnOrders)
            inParallel(rowCount) { lo, hi in
                if let n = layer.postFFNNorm {
                    Ops.rmsNorm(ws.tmp + lo * e, n, into: ws.tmp + lo * e, rows: hi - lo, width: e, eps: c.rmsNormEps)
                }
                Ops.add(ws.tmp + lo * e, into: ws.x + lo * e, count: (hi - lo) * e)
            }
        }
        // Logits only for the rows that need them.
        var logitRows: [Int] = []
        var results: [[Float]?] = chunks.map { _ in nil }
        r = 0
        for chunk in chunks {
            r += chunk.tokens.count
            if chunk.wantsLogits { logitRows.append(r - 1) }
        }
        if let rowLogits, chunks.contains(where: \.wantsAllLogits) {
            allRowLogits(chunks, ws: ws, into: rowLogits)
        }
        guard !logitRows.isEmpty else { return results }
        for (i, row) in logitRows.enumerated() {
            Ops.rmsNorm(ws.x + row * e, weights.outputNorm, into: ws.xn + i * e, rows: 1, width: e, eps: c.rmsNormEps)
        }
        var logits = [Float](repeating: 0, count: logitRows.count * c.vocabSize)
        logits.withUnsafeMutableBufferPointer { out in
            weights.output.multiply(
                ws.xn, batch: logitRows.count, into: out.baseAddress!, pool: pool, scratch: &activations)
        }
        var k = 0
        for (ci, chunk) in chunks.enumerated() where chunk.wantsLogits {
            results[ci] = Array(logits[k * c.vocabSize..<(k + 1) * c.vocabSize])
            k += 1
        }
        return results
    }

    /// Every row's logits for the chunks that want them all, 32 rows at a time (each row's arithmetic is the
    /// same whatever else is in its group).
    private func allRowLogits(
        _ chunks: [SequenceChunk], ws: Workspace.Buffers, into rowLogits: (Int, Int, UnsafeBufferPointer<Float>) -> Void
    ) {
        let c = config
        let e = c.embeddingLength
        var rows: [(chunk: Int, row: Int, at: Int)] = []
        var r = 0
        for (ci, chunk) in chunks.enumerated() {
            if chunk.wantsAllLogits { rows += (0..<chunk.tokens.count).map { (ci, $0, r + $0) } }
            r += chunk.tokens.count
        }
        let group = 32
        var logits = [Float](repeating: 0, count: group * c.vocabSize)
        var start = 0
        while start < rows.count {
            let part = rows[start..<min(rows.count, start + group)]
            for (i, row) in part.enumerated() {
                Ops.rmsNorm(
                    ws.x + row.at * e, weights.outputNorm, into: ws.xn + i * e, rows: 1, width: e, eps: c.rmsNormEps)
            }
            logits.withUnsafeMutableBufferPointer { out in
                weights.output.multiply(
                    ws.xn, batch: part.count, into: out.baseAddress!, pool: pool, scratch: &activations)
                for (i, row) in part.enumerated() {
                    rowLogits(
                        row.chunk, row.row,
                        UnsafeBufferPointer(rebasing: out[(i * c.vocabSize)..<((i + 1) * c.vocabSize)]))
                }
            }
            start += group
        }
    }

    /// Causal attention of every row over its sequence's cached keys and values, laid out by `plan`; with `window`, a
    /// row at position p sees positions p - window + 1 ... p only (a sliding-window layer). Rows of the tiled
    /// kernel read their sequence's keys and values gathered for this layer into fp32 tiles; split rows' chunks run as
    /// separate tasks and are merged in order afterwards; the others read the fp16 cache directly.
    private func attention(
        layer: Int, window: Int?, plan: AttentionPlan, tables: [[Int32]], starts: [Int], rowChunk: [Int],
        rowPosition: [Int],
        cache: PagedKVCache, ws: Workspace.Buffers, gathered: TiledKVBuffer.Layout,
        partials: UnsafeMutablePointer<Float>?
    ) {
        let c = config
        let hd = c.headDim
        let group = c.headCount / c.kvHeadCount
        // Gemma's queries arrive scaled.
        let scale: Float = c.isGemma ? 1 : 1 / Float(hd).squareRoot()
        let stride = AttentionPlan.partialStride(headDim: hd)
        let shared = UncheckedSendable((tables, rowChunk, rowPosition, ws, plan, gathered, partials))
        if !plan.gatherTasks.isEmpty {
            pool.parallelRanges(plan.gatherTasks.count) { begin, end in
                let (tables, _, _, _, plan, gathered, _) = shared.value
                for (ci, kvHead) in plan.gatherTasks[begin..<end] {
                    let (kt, v) = gathered.head(chunk: ci, kvHead: kvHead)
                    // A sliding layer's tiled rows are those within its first window (the others use the window
                    // kernels), so only that far is gathered, and only for a chunk that starts there: blocks before
                    // a later row's window may be gone.
                    let length =
                        window.map { starts[ci] < $0 ? min(plan.tiledLength[ci], $0) : 0 } ?? plan.tiledLength[ci]
                    guard length > 0 else { continue }
                    tables[ci].withUnsafeBufferPointer { t in
                        tk_tile_kv(
                            cache.blockStart(layer: layer, value: false, block: 0) + kvHead * hd,
                            cache.blockStart(layer: layer, value: true, block: 0) + kvHead * hd, t.baseAddress,
                            Int32(cache.blockSize), cache.blockElements, cache.kvDim, Int32(length),
                            Int32(hd), kt, v)
                    }
                }
            }
        }
        pool.parallelRanges(plan.tasks.count) { begin, end in
            let (tables, rowChunk, rowPosition, ws, plan, gathered, partials) = shared.value
            for task in plan.tasks[begin..<end] {
                let row = task.row
                let length = rowPosition[row] + 1
                let first = window.map { max(0, length - $0) } ?? 0
                if task.heads > 1, first == 0 {
                    // A tiled row's query heads of one KV head, together over its gathered keys.
                    let (kt, v) = gathered.head(chunk: rowChunk[row], kvHead: task.head / group)
                    let at = row * c.qDim + task.head * hd
                    tk_attend_tiled_heads(
                        ws.q + at, Int32(task.heads), Int32(hd), Int32(length), kt, v, scale, ws.attn + at)
                    continue
                }
                for head in task.head..<(task.head + task.heads) {
                    attendOne(
                        layer: layer, cache: cache, row: row, head: head, part: task.part, length: length,
                        first: first, tables: tables,
                        rowChunk: rowChunk, ws: ws, plan: plan, gathered: gathered, partials: partials)
                }
            }
        }
        for row in plan.splitRows {
            guard case .split(_, let parts) = plan.kernels[row] else { continue }
            for head in 0..<c.headCount {
                tk_merge_parts(
                    partials! + (plan.partialBase[row] + head * parts) * stride, Int32(parts), Int32(hd),
                    ws.attn + row * c.qDim + head * hd)
            }
        }
    }

    /// One query head of one row, by its row's kernel.
    private func attendOne(
        layer: Int, cache: PagedKVCache, row: Int, head: Int, part: Int, length: Int, first: Int, tables: [[Int32]],
        rowChunk: [Int], ws: Workspace.Buffers, plan: AttentionPlan, gathered: TiledKVBuffer.Layout,
        partials: UnsafeMutablePointer<Float>?
    ) {
        let c = config
        let hd = c.headDim
        let group = c.headCount / c.kvHeadCount
        let scale: Float = c.isGemma ? 1 : 1 / Float(hd).squareRoot()
        let stride = AttentionPlan.partialStride(headDim: hd)
        let kvHead = head / group
        let q = ws.q + row * c.qDim + head * hd
        let out = ws.attn + row * c.qDim + head * hd
        let kBase = cache.blockStart(layer: layer, value: false, block: 0) + kvHead * hd
        let vBase = cache.blockStart(layer: layer, value: true, block: 0) + kvHead * hd
        let bs = Int32(cache.blockSize)
        tables[rowChunk[row]].withUnsafeBufferPointer { t in
            switch plan.kernels[row] {
            case .tiled where first > 0, .oneChunk where first > 0:
                tk_attend_f16_window(
                    q, Int32(hd), Int32(first), Int32(length), kBase, vBase, t.baseAddress, bs,
                    cache.blockElements, cache.kvDim, scale, out)
            case .split(let cells, let parts) where first > 0:
                let result = partials! + (plan.partialBase[row] + head * parts + part) * stride
                tk_attend_part_window(
                    q, Int32(hd), Int32(first), Int32(length), Int32(cells), Int32(parts), Int32(part),
                    kBase, vBase, t.baseAddress, bs, cache.blockElements, cache.kvDim, scale, result)
            case .tiled:
                let (kt, v) = gathered.head(chunk: rowChunk[row], kvHead: kvHead)
                tk_attend_tiled(q, Int32(hd), Int32(length), kt, v, scale, out)
            case .split(let cells, let parts):
                let result = partials! + (plan.partialBase[row] + head * parts + part) * stride
                tk_attend_part(
                    q, Int32(hd), Int32(length), Int32(cells), Int32(parts), Int32(part), kBase, vBase,
                    t.baseAddress, bs, cache.blockElements, cache.kvDim, scale, result)
            case .oneChunk:
                tk_attend_f16(
                    q, Int32(hd), Int32(length), kBase, vBase, t.baseAddress, bs, cache.blockElements,
                    cache.kvDim, scale, out)
            }
        }
    }
}
