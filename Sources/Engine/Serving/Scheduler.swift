/// Limits that shape how the engine batches work.
public struct EngineConfig: Sendable, Equatable {
    /// Most requests in the running batch (`--max-num-seqs`).
    public var maxNumSeqs = 16
    /// Longest sequence, prompt plus output (`--max-model-len`).
    public var maxModelLength: Int
    /// KV-cache blocks and tokens per block.
    public var blockCount: Int
    public var blockSize = 16
    /// Most tokens run through the model in one step; longer prompts are prefilled in chunks.
    public var maxBatchedTokens = 256
    public var prefixCaching = true

    public init(maxModelLength: Int, blockCount: Int) {
        self.maxModelLength = maxModelLength
        self.blockCount = blockCount
    }

    /// Blocks for the sliding-window layers of a model that attends `window` positions back: what every request of
    /// a full batch holds at most (its next position's window and one step's tokens), twice over, so that blocks
    /// let go stay cached for prefix reuse a while; never more than `blockCount`.
    public func windowBlockCount(window: Int) -> Int {
        let perRequest = (window - 1 + maxBatchedTokens + blockSize - 1) / blockSize + 1
        return min(blockCount, 2 * maxNumSeqs * perRequest)
    }
}

/// One request's share of a step: `count` tokens from `start` of its sequence.
struct ScheduledChunk {
    let request: EngineRequest
    let start: Int
    let count: Int
    var wantsLogits: Bool { start + count == request.allTokens.count }
}

/// Decides, each step, which requests run and how many of their tokens: running requests first (a decode is one
/// token, a prefill takes what the token budget leaves), then waiting requests in arrival order while blocks, batch
/// slots and budget allow. When a running request needs a block and none is free, the newest running request is
/// preempted: its blocks are freed and it is recomputed later, with its output so far kept.
///
/// With a split cache, a request also holds blocks of the sliding-window layers (`windowPool`), only for the
/// positions its next query sees: those before are let go once computed, and stay cached for prefix reuse until
/// taken. A prefix hit then needs the window before its end cached too.
final class Scheduler {
    let config: EngineConfig
    let pool: KVBlockPool
    /// The sliding-window layers' blocks of a split cache, and how far back those layers attend.
    let windowPool: KVBlockPool?
    let window: Int?
    private(set) var waiting: [EngineRequest] = []
    private(set) var running: [EngineRequest] = []
    /// Admitted requests holding blocks for their whole prompt while their KV comes from a prefill instance.
    private(set) var awaitingKV: [EngineRequest] = []
    private(set) var prefixQueryTokens = 0
    private(set) var prefixHitTokens = 0
    private(set) var preemptions = 0
    /// Prompt tokens whose KV was loaded from another instance instead of computed.
    private(set) var loadedKVTokens = 0

    /// Writes a request's loaded KV for positions 0..<count into the cache (set by the engine, which owns it).
    var loadKV: (EngineRequest, KVPayload, Int) -> Void = { _, _, _ in }
    /// Asks the connector for a parked request's KV (set by the engine).
    var startLoad: (EngineRequest) -> Void = { _ in }

    init(config: EngineConfig, window: Int? = nil) {
        self.config = config
        pool = KVBlockPool(
            blockCount: config.blockCount, blockSize: config.blockSize, prefixCaching: config.prefixCaching,
            batching: PromptBatching(slidingWindow: window))
        self.window = window
        windowPool = window.map {
            KVBlockPool(
                blockCount: config.windowBlockCount(window: $0), blockSize: config.blockSize,
                prefixCaching: config.prefixCaching, batching: PromptBatching(slidingWindow: $0))
        }
    }

    /// Nothing to compute: no request runs or waits for admission (requests parked for their KV need no step).
    var isIdle: Bool { waiting.isEmpty && running.isEmpty }

    func add(_ request: EngineRequest) {
        request.fullPromptBlocks = request.prompt.count / config.blockSize
        request.usesWindowBlocks = windowPool != nil
        waiting.append(request)
    }

    /// The work of the next step.
    func schedule() -> [ScheduledChunk] {
        var budget = config.maxBatchedTokens
        var plan: [ScheduledChunk] = []
        var preempted = false
        var i = 0
        runningLoop: while i < running.count, budget > 0 {
            let r = running[i]
            let n = min(r.pendingTokens, budget)
            while !reserve(r, upTo: r.computed + n) {
                let victim = running.removeLast()
                preempt(victim)
                preempted = true
                if victim === r { break runningLoop }
            }
            plan.append(ScheduledChunk(request: r, start: r.computed, count: n))
            budget -= n
            i += 1
        }
        guard !preempted else { return plan }
        // In arrival order, past requests that wait for another's prompt KV (`waitsForPromptSource`).
        while let r = waiting.first(where: { !$0.waitsForPromptSource }),
            running.count + awaitingKV.count < config.maxNumSeqs, budget > 0
        {
            var hit = 0
            let computesWholePrompt = r.params.promptLogprobs != nil
            if r.blockTable.isEmpty, r.kvTransfer?.role == .consume, !r.loadStarted {
                // KV on its way: take blocks for the whole prompt now and wait for it outside the batch, until the
                // connector signals that the load finished or failed.
                // The window blocks from the last prompt position's window: what the transfer carries.
                guard reserve(r, upTo: r.prompt.count, computingFrom: r.prompt.count - 1) else { break }
                if r.cachedPromptTokens < 0 { r.cachedPromptTokens = 0 }
                waiting.removeAll { $0 === r }
                r.status = .running
                r.loadStarted = true
                awaitingKV.append(r)
                startLoad(r)
                continue
            }
            if r.blockTable.isEmpty, !computesWholePrompt {
                let (blocks, hashes) = takeCachedPrefix(r)
                r.blockTable = blocks
                r.blockHashes = hashes
                r.computed = blocks.count * config.blockSize
                hit = r.computed
            }
            let n = min(r.pendingTokens, budget)
            guard reserve(r, upTo: r.computed + n) else {
                releaseBlocks(r)
                r.blockHashes = []
                r.computed = 0
                break
            }
            if r.cachedPromptTokens < 0 { r.cachedPromptTokens = hit }
            prefixQueryTokens += r.allTokens.count
            prefixHitTokens += hit
            waiting.removeAll { $0 === r }
            r.status = .running
            running.append(r)
            plan.append(ScheduledChunk(request: r, start: r.computed, count: n))
            budget -= n
        }
        return plan
    }

    /// Moves a request whose load ended from waiting for KV into the running batch: loaded into its blocks (all but
    /// the last prompt token, which is computed to give the first output token's logits), or recomputed in them.
    /// False when the request is not waiting for KV (it was aborted meanwhile).
    func resolveLoad(_ r: EngineRequest, payload: KVPayload?, whole: Bool = false) -> Bool {
        guard let i = awaitingKV.firstIndex(where: { $0 === r }) else { return false }
        awaitingKV.remove(at: i)
        if let payload {
            // The last prompt position is computed here to sample the first token, unless that token came too.
            let count = min(payload.tokens.count, whole ? r.prompt.count : r.prompt.count - 1)
            loadKV(r, payload, count)
            // Sliding-window layers were carried for the window only: the window blocks before it stay private.
            r.windowValidFrom = min(payload.windowedBelow, count)
            r.loadedTokens = count
            r.computed = count
            loadedKVTokens += count
        } else {
            r.computed = 0
        }
        running.append(r)
        return true
    }

    /// Marks a step's chunks as computed and offers their newly full blocks to the prefix cache.
    func commit(_ chunk: ScheduledChunk) {
        let r = chunk.request
        r.computed = chunk.start + chunk.count
        let bs = config.blockSize
        while r.blockHashes.count < r.computed / bs {
            let j = r.blockHashes.count
            let tokens = r.allTokens[j * bs..<(j + 1) * bs]
            let kernels = pool.kernels(ofBlock: j, promptLength: r.prompt.count)
            let h = KVBlockPool.hash(parent: r.blockHashes.last, tokens: tokens, kernels: kernels)
            pool.register(block: r.blockTable[j], hash: h, tokens: tokens, kernels: kernels)
            if let windowPool, j < r.windowTable.count, r.windowTable[j] >= 0, j * bs >= r.windowValidFrom {
                windowPool.register(block: r.windowTable[j], hash: h, tokens: tokens, kernels: kernels)
            }
            r.blockHashes.append(h)
        }
        dropPassedWindow(r)
    }

    /// Removes a request (finished or aborted) and frees its blocks.
    func remove(_ request: EngineRequest) {
        if let i = running.firstIndex(where: { $0 === request }) { running.remove(at: i) }
        if let i = waiting.firstIndex(where: { $0 === request }) { waiting.remove(at: i) }
        if let i = awaitingKV.firstIndex(where: { $0 === request }) { awaitingKV.remove(at: i) }
        releaseBlocks(request)
        request.status = .finished
    }

    /// Grows the request's block tables to cover `tokens` positions, and its window blocks from the window of
    /// position `computingFrom` (by default the next to compute); false (nothing taken) when blocks run out.
    private func reserve(_ r: EngineRequest, upTo tokens: Int, computingFrom: Int? = nil) -> Bool {
        let bs = config.blockSize
        let needed = max(0, (tokens + bs - 1) / bs - r.blockTable.count)
        var windowSlots: [Int] = []
        if let windowPool, let window {
            let first = max(r.windowDroppedBelow, max(0, (computingFrom ?? r.computed) - window + 1) / bs)
            let end = r.blockTable.count + needed
            if first < end {
                windowSlots = (first..<end).filter { $0 >= r.windowTable.count || r.windowTable[$0] < 0 }
            }
            guard windowSlots.count <= windowPool.freeCount else { return false }
        }
        guard needed <= pool.freeCount else { return false }
        if needed > 0 { r.blockTable += pool.allocate(needed)! }
        if let windowPool {
            if r.windowTable.count < r.blockTable.count {
                r.windowTable += [Int32](repeating: -1, count: r.blockTable.count - r.windowTable.count)
            }
            if !windowSlots.isEmpty {
                for (j, b) in zip(windowSlots, windowPool.allocate(windowSlots.count)!) { r.windowTable[j] = b }
            }
        }
        return true
    }

    /// The longest run of cached blocks that holds a prefix of the request's tokens, and, with a split cache,
    /// whose last window is cached too (the positions after it attend to that window): taken, and the window
    /// blocks set in the request's window table.
    private func takeCachedPrefix(_ r: EngineRequest) -> (blocks: [Int32], hashes: [UInt64]) {
        let (blocks, hashes) = pool.takeCachedPrefix(of: r.allTokens, promptLength: r.prompt.count)
        guard let windowPool, let window, !blocks.isEmpty else { return (blocks, hashes) }
        let bs = config.blockSize
        var m = blocks.count
        var windowBlocks: [Int32] = []
        while m > 0 {
            let first = max(0, m * bs - window + 1) / bs
            windowBlocks = []
            for j in first..<m {
                guard
                    let b = windowPool.cachedBlock(
                        hash: hashes[j], tokens: r.allTokens[j * bs..<(j + 1) * bs],
                        kernels: pool.kernels(ofBlock: j, promptLength: r.prompt.count))
                else { break }
                windowBlocks.append(b)
            }
            if windowBlocks.count == m - first { break }
            m -= 1
        }
        pool.release(Array(blocks[m...]))
        guard m > 0 else { return ([], []) }
        let first = max(0, m * bs - window + 1) / bs
        for b in windowBlocks { windowPool.take(b) }
        r.windowTable = [Int32](repeating: -1, count: first) + windowBlocks
        r.windowDroppedBelow = first
        return (Array(blocks[..<m]), Array(hashes[..<m]))
    }

    /// Lets go of the window blocks no later query of the request sees: block j once (j + 1) · blockSize ≤
    /// computed − window + 1. Registered ones stay cached.
    private func dropPassedWindow(_ r: EngineRequest) {
        guard let windowPool, let window else { return }
        let limit = min(r.windowTable.count, max(0, r.computed - window + 1) / config.blockSize)
        var passed: [Int32] = []
        while r.windowDroppedBelow < limit {
            let j = r.windowDroppedBelow
            if r.windowTable[j] >= 0 {
                passed.append(r.windowTable[j])
                r.windowTable[j] = -1
            }
            r.windowDroppedBelow += 1
        }
        windowPool.release(passed)
    }

    /// Frees every block the request holds, of both kinds.
    private func releaseBlocks(_ r: EngineRequest) {
        pool.release(r.blockTable)
        windowPool?.release(r.windowTable.filter { $0 >= 0 })
        r.blockTable = []
        r.windowTable = []
        r.windowDroppedBelow = 0
        r.windowValidFrom = 0
    }

    private func preempt(_ r: EngineRequest) {
        releaseBlocks(r)
        r.blockHashes = []
        r.computed = 0
        r.status = .waiting
        r.preemptions += 1
        preemptions += 1
        waiting.insert(r, at: 0)
    }
}
