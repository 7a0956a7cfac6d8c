import Foundation

/// Why the engine refused a request.
public enum EngineError: Error, CustomStringConvertible, Equatable {
    case emptyPrompt
    case promptTooLong(prompt: Int, limit: Int)
    case tokenOutOfRange(id: Int32, vocabularySize: Int)
    /// The resume point cannot be continued (the message says why).
    case badResume(String)
    case stopped

    public var description: String {
        switch self {
        case .emptyPrompt: return "the prompt is empty"
        case .promptTooLong(let p, let l):
            return
                "This model's maximum context length is \(l) tokens. However, you requested \(p) tokens in the "
                + "prompt, which leaves no room for output. Please reduce the length of the prompt."
        case .tokenOutOfRange(let id, let n):
            return "token id \(id) is out of vocabulary (valid ids are 0..<\(n))"
        case .badResume(let why): return "the request cannot be resumed: \(why)"
        case .stopped: return "the engine is shutting down"
        }
    }
}

/// A submitted request: its stream of outputs, and a way to abort it.
public struct GenerationHandle: Sendable {
    /// Ends after the output that carries a finish reason.
    public let outputs: AsyncStream<GenerationOutput>
    let abortAction: @Sendable () -> Void
    /// For a resumed request, the text the run it continues had released before the resume point (its outputs
    /// continue after it: a completion's `text_offset` counts from its end).
    public var resumedText = ""

    /// Aborts the request if it is still running (its stream then ends with finish reason `abort`); a no-op after
    /// it finished.
    public func abort() { abortAction() }
}

/// A snapshot of the engine's load and totals, for metrics.
public struct EngineStats: Sendable, Equatable {
    public var running = 0
    public var waiting = 0
    public var usedBlocks = 0
    /// Blocks of the sliding-window layers held by requests (a split cache; 0 otherwise).
    public var usedWindowBlocks = 0
    /// Bytes of KV the held blocks of both kinds take.
    public var heldKVBytes = 0
    /// The fuller of the two kinds of block, 0...1.
    public var kvCacheUsage = 0.0
    public var prefixQueryTokens = 0
    public var prefixHitTokens = 0
    public var preemptions = 0
    /// Prompt tokens whose KV was loaded from another instance instead of computed.
    public var loadedKVTokens = 0
    public var steps = 0
}

/// The serving engine: continuous batching over one model and one paged KV cache.
///
/// A dedicated thread runs the loop: take new requests and aborts, schedule a step, run it through the model, sample
/// one token for every sequence that reached its end, and stream the result to each request's `AsyncStream`.
/// Requests join and leave the batch at every step. Everything a request computes depends only on that request
/// (batch-invariant kernels, per-request sampler state), so its output is the same alone or in any batch.
public final class EngineCore: @unchecked Sendable {
    public let model: TransformerModel
    public let tokenizer: Tokenizer
    public let config: EngineConfig
    /// This model's fingerprint, checked against loaded KV.
    public let fingerprint: UInt64
    /// Moves KV to and from other instances; nil for an instance that serves alone.
    public let connector: (any KVConnector)?
    /// Which positions of each layer a prompt's KV transfer carries (sliding-window layers: their window only).
    public let transferWindows: KVTransferWindows
    let cache: PagedKVCache
    /// Blocks of the sliding-window layers, when the cache keeps them apart (a model with such layers).
    public var windowBlockCount: Int? { cache.windowBlockCount }
    private let scheduler: Scheduler
    private let condition = NSCondition()
    // Guarded by `condition`:
    private var inbox: [EngineRequest] = []
    private var aborts: [UInt64] = []
    /// Consumers' loads that ended, signalled by the connector from any thread.
    private var finishedLoads: [(serial: UInt64, outcome: KVLoadOutcome)] = []
    private var stopping = false
    private var loopExited = false
    private var nextSerial: UInt64 = 0
    private var published = EngineStats()
    private var thread: Thread?
    // Engine thread only:
    private var live: [UInt64: EngineRequest] = [:]

    public init(
        model: TransformerModel, tokenizer: Tokenizer, config: EngineConfig, connector: (any KVConnector)? = nil
    ) {
        self.model = model
        self.connector = connector
        self.tokenizer = tokenizer
        var config = config
        config.maxModelLength = min(config.maxModelLength, config.blockCount * config.blockSize)
        self.config = config
        let window = model.config.slidingWindow.flatMap { model.config.slidingLayers.contains(true) ? $0 : nil }
        let windowBlocks = window.map { config.windowBlockCount(window: $0) }
        cache = PagedKVCache(
            layerCount: model.config.layerCount, blockCount: config.blockCount, blockSize: config.blockSize,
            kvDim: model.config.kvDim, slidingLayers: model.config.slidingLayers, windowBlockCount: windowBlocks)
        scheduler = Scheduler(config: config, window: window)
        fingerprint = model.fingerprint
        transferWindows = KVTransferWindows(model.config)
        let cache = cache
        scheduler.loadKV = { r, payload, count in cache.load(payload, count: count, tables: r.tables) }
        scheduler.startLoad = { [unowned self] r in self.startLoad(r) }
        // The thread keeps the engine alive until `shutdown()`.
        let thread = Thread { self.loop() }
        thread.name = "tandem-engine"
        thread.stackSize = 8 << 20
        self.thread = thread
        thread.start()
    }

    /// Queues a request; its outputs arrive on the handle's stream, which ends after the output with a finish
    /// reason. Cancelling the task that consumes the stream, or calling `abort()`, aborts the request.
    public func submit(_ request: GenerationRequest) throws -> GenerationHandle {
        guard !request.promptTokens.isEmpty else { throw EngineError.emptyPrompt }
        guard request.promptTokens.count < config.maxModelLength else {
            throw EngineError.promptTooLong(prompt: request.promptTokens.count, limit: config.maxModelLength)
        }
        let vocab = model.config.vocabSize
        if let bad = request.promptTokens.first(where: { $0 < 0 || Int($0) >= vocab }) {
            throw EngineError.tokenOutOfRange(id: bad, vocabularySize: vocab)
        }
        let resumed = request.resume?.tokens ?? []
        if let bad = resumed.first(where: { $0 < 0 || Int($0) >= vocab }) {
            throw EngineError.tokenOutOfRange(id: bad, vocabularySize: vocab)
        }
        if let point = request.resume { try checkResume(point, request) }
        let (stream, continuation) = AsyncStream<GenerationOutput>.makeStream()
        let engineRequest = EngineRequest(
            request, arrival: 0, maxModelLength: config.maxModelLength, continuation: continuation)
        var resumedText = ""
        if let point = request.resume {
            let tokenizer = tokenizer
            resumedText = engineRequest.resume(from: point) { tokenizer.bytes(of: $0) }
        }
        condition.lock()
        defer { condition.unlock() }
        guard !stopping else { throw EngineError.stopped }
        nextSerial += 1
        let serial = nextSerial
        engineRequest.arrival = serial
        inbox.append(engineRequest)
        continuation.onTermination = { [weak self] reason in
            if case .cancelled = reason { self?.abort(serial: serial) }
        }
        condition.signal()
        var handle = GenerationHandle(outputs: stream) { [weak self] in self?.abort(serial: serial) }
        handle.resumedText = resumedText
        return handle
    }

    /// Refuses a resume point that an uninterrupted run could not have reached: one that already ended the request
    /// (an end token, a stop string, `max_tokens`), or on a request that hands its KV on.
    private func checkResume(_ point: ResumePoint, _ request: GenerationRequest) throws {
        let tokens = point.tokens
        if let draws = point.randomDraws, draws < 0 { throw EngineError.badResume("random_draws is negative") }
        guard request.kvTransfer?.role != .produce, !request.handOffAfterFirstToken else {
            throw EngineError.badResume("a prefill (KV producer) request starts from the prompt")
        }
        let limit = min(config.maxModelLength, request.promptTokens.count + max(0, request.params.maxTokens))
        guard request.promptTokens.count + tokens.count < limit else {
            throw EngineError.badResume("its \(tokens.count) tokens already reach max_tokens or the context length")
        }
        let ends = tokenizer.endOfGenerationIds
        if let end = tokens.first(where: {
            (!request.params.ignoreEOS && ends.contains($0)) || request.params.stopTokenIds.contains($0)
        }) {
            throw EngineError.badResume("token \(end) already ended the request")
        }
        var decoder = IncrementalDecoder()
        var stops = StopStringMatcher(stops: request.params.stop)
        for id in tokens where stops.append(decoder.append(tokenizer.bytes(of: id))).stopped {
            throw EngineError.badResume("its text already contains a stop string")
        }
    }

    private func abort(serial: UInt64) {
        condition.lock()
        aborts.append(serial)
        condition.signal()
        condition.unlock()
    }

    /// The latest load and totals.
    public var stats: EngineStats {
        condition.lock()
        defer { condition.unlock() }
        return published
    }

    /// Aborts every request (their streams end with finish reason `abort`) and stops the loop; later submissions
    /// are refused. Returns once the loop has exited.
    public func shutdown() {
        condition.lock()
        stopping = true
        condition.signal()
        while !loopExited { condition.wait() }
        condition.unlock()
    }

    // MARK: - The loop

    private func loop() {
        while true {
            condition.lock()
            while inbox.isEmpty && aborts.isEmpty && finishedLoads.isEmpty && scheduler.isIdle && !stopping {
                condition.wait()
            }
            let arrived = inbox
            let aborted = aborts
            let loads = finishedLoads
            let stop = stopping
            inbox = []
            aborts = []
            finishedLoads = []
            condition.unlock()
            for r in arrived {
                live[r.arrival] = r
                if let id = r.promptSourceId {
                    r.promptSource = live.values.first { $0.id == id && $0.prompt == r.prompt }
                }
                if r.kvTransfer?.role == .produce, let view = r.connectorView {
                    r.kvLayerSink = connector?.saver(for: view)
                }
                scheduler.add(r)
            }
            for serial in aborted {
                if let r = live[serial] { finish(r, reason: .abort) }
            }
            for (serial, outcome) in loads {
                if let r = live[serial] { resolveLoad(r, outcome) }
            }
            if stop {
                for r in live.values.sorted(by: { $0.arrival < $1.arrival }) { finish(r, reason: .abort) }
                publish()
                condition.lock()
                loopExited = true
                condition.broadcast()
                condition.unlock()
                return
            }
            let plan = scheduler.schedule()
            if plan.isEmpty {
                // Nothing can run until something arrives, is aborted, or a load ends: wait to be signalled.
                publish()
                condition.lock()
                while inbox.isEmpty && aborts.isEmpty && finishedLoads.isEmpty && !stopping { condition.wait() }
                condition.unlock()
                continue
            }
            step(plan)
            publish()
        }
    }

    /// Asks the connector for a parked consumer's KV; the outcome comes back through `finishedLoads`.
    private func startLoad(_ r: EngineRequest) {
        guard let connector, let view = r.connectorView else {
            _ = scheduler.resolveLoad(r, payload: nil)
            return
        }
        let serial = r.arrival
        connector.startLoad(view) { [weak self] outcome in
            guard let self else { return }
            self.condition.lock()
            self.finishedLoads.append((serial, outcome))
            self.condition.signal()
            self.condition.unlock()
        }
    }

    /// Loads (or recomputes, or fails) a parked consumer whose load ended. KV whose shape or tokens do not fit is
    /// never written into the cache.
    private func resolveLoad(_ r: EngineRequest, _ outcome: KVLoadOutcome) {
        switch outcome {
        case .loaded(_) where r.params.promptLogprobs != nil:
            // The prompt's logprobs need every position computed here: the KV that came is not used.
            _ = scheduler.resolveLoad(r, payload: nil)
        case .loaded(let payload):
            let unfit = payload.mismatch(
                prompt: r.prompt, fingerprint: fingerprint, layerCount: model.config.layerCount,
                kvDim: model.config.kvDim)
            // With the prefill's first token (and nothing this instance must compute itself: no logprobs, nothing
            // generated yet), every prompt position is loaded and the request goes on after that token.
            let first =
                unfit == nil && r.output.isEmpty && r.params.logprobs == nil
                    && payload.tokens.count == r.prompt.count ? payload.firstToken : nil
            guard scheduler.resolveLoad(r, payload: unfit == nil ? payload : nil, whole: first != nil) else { return }
            if let first { emitFirstToken(first, for: r) }
        case .recompute:
            _ = scheduler.resolveLoad(r, payload: nil)
        case .failed(let why):
            var out = GenerationOutput()
            out.failure = why
            finish(r, reason: .abort, last: out)
        }
    }

    private func step(_ plan: [ScheduledChunk]) {
        var chunks = plan.map { c in
            SequenceChunk(
                tokens: Array(c.request.allTokens[c.start..<c.start + c.count]), startPosition: c.start,
                blockTable: c.request.blockTable, wantsLogits: c.wantsLogits,
                promptLength: c.request.prompt.count)
        }
        for (i, c) in plan.enumerated() where c.request.usesWindowBlocks {
            chunks[i].windowTable = c.request.windowTable
        }
        for (i, c) in plan.enumerated() where c.request.params.promptLogprobs != nil && c.start < c.request.prompt.count
        {
            chunks[i].wantsAllLogits = true
        }
        let streams = streamPlan(plan)
        let cache = cache
        // The step's KV goes to the savers during the pass, in `Self.kvHandOffs` groups of layers, so that the
        // transfer overlaps the compute: one hand-off per layer (30 for SmolLM2) woke the network threads so often
        // that a prefill's first token came 10-15 % later on two cores. A hand-off sends its first token after the
        // KV, or withholds the end of the transfer when that token ends the request (`emitToken`, `finish`).
        let group = max(1, (cache.layerCount + Self.kvHandOffs - 1) / Self.kvHandOffs)
        var pending: [(EngineRequest, KVLayerSlice)] = []
        let logits = model.forward(
            chunks, cache: cache,
            afterLayer: streams.isEmpty
                ? nil
                : { layer in
                    for (r, range) in streams {
                        guard let carried = self.carried(range, layer: layer, of: r) else { continue }
                        pending.append((r, cache.slice(layer: layer, range: carried, tables: r.tables)))
                    }
                    guard (layer + 1) % group == 0, layer + 1 < cache.layerCount else { return }
                    for (r, slice) in pending { r.kvLayerSink?.push(slice) }
                    pending.removeAll()
                },
            rowLogits: { ci, row, logits in
                // Row `row` of a prompt chunk gives the logprob of the prompt token after it.
                let r = plan[ci].request
                let position = plan[ci].start + row
                guard position + 1 < r.prompt.count, position == r.promptLogprobs.count,
                    let top = r.params.promptLogprobs
                else { return }
                r.promptLogprobs.append(Sampler.logprob(of: r.prompt[position + 1], in: Array(logits), top: top))
            })
        for (r, slice) in pending { r.kvLayerSink?.push(slice) }
        for (r, range) in streams { r.streamedTokens = range.upperBound }
        for (i, c) in plan.enumerated() {
            scheduler.commit(c)
            if let l = logits[i] { emitToken(for: c.request, logits: l) }
        }
    }

    /// The part of prompt positions `range` that `r`'s transfer carries for `layer` (a sliding-window layer only its
    /// last window: `KVTransferWindows`); nil when none of it.
    private func carried(_ range: Range<Int>, layer: Int, of r: EngineRequest) -> Range<Int>? {
        let lower = max(range.lowerBound, transferWindows.start(layer: layer, tokens: r.prompt.count))
        return lower < range.upperBound ? lower..<range.upperBound : nil
    }

    /// How many times a step hands its KV to the savers (PUT_ASYNC sends each group at once).
    static let kvHandOffs = 4

    /// For requests that stream their prompt's KV: hands out at once what is already cached but not yet streamed
    /// (a prefix-cache hit), and returns the prompt positions this step computes that still have to go out.
    private func streamPlan(_ plan: [ScheduledChunk]) -> [(EngineRequest, Range<Int>)] {
        var streams: [(EngineRequest, Range<Int>)] = []
        for c in plan {
            let r = c.request
            guard let sink = r.kvLayerSink else { continue }
            let cachedEnd = min(c.start, r.prompt.count)
            if r.streamedTokens < cachedEnd {
                for layer in 0..<cache.layerCount {
                    guard let carried = carried(r.streamedTokens..<cachedEnd, layer: layer, of: r) else { continue }
                    sink.push(cache.slice(layer: layer, range: carried, tables: r.tables))
                }
                r.streamedTokens = cachedEnd
            }
            let lower = max(c.start, r.streamedTokens)
            let upper = min(c.start + c.count, r.prompt.count)
            if lower < upper { streams.append((r, lower..<upper)) }
        }
        return streams
    }

    private func emitToken(for r: EngineRequest, logits: [Float]) {
        let endTokens = tokenizer.endOfGenerationIds
        let (id, logprob) = r.sampler.sample(logits: logits, generatedCount: r.output.count, endTokens: endTokens)
        emit(id, logprob: logprob, for: r)
    }

    /// The first token a hand-off prefill sampled, taken as this request's own: the sampler is brought to where it
    /// would stand after sampling it (its one draw made), and the token goes out as if sampled here.
    private func emitFirstToken(_ id: Int32, for r: EngineRequest) {
        r.sampler.resume(after: [id], draws: Sampler.defaultDraws(params: r.params, tokens: 1))
        emit(id, logprob: nil, for: r)
    }

    private func emit(_ id: Int32, logprob: TokenLogprob?, for r: EngineRequest) {
        let endTokens = tokenizer.endOfGenerationIds
        r.output.append(id)
        r.allTokens.append(id)
        var out = GenerationOutput(tokenIds: [id])
        if let logprob { out.logprobs = [logprob] }
        if r.output.count == 1, r.params.promptLogprobs != nil { out.promptLogprobs = r.promptLogprobs }
        let isEnd = (!r.params.ignoreEOS && endTokens.contains(id)) || r.params.stopTokenIds.contains(id)
        var stopped = false
        if !isEnd {
            (out.text, stopped) = r.stops.append(r.decoder.append(tokenizer.bytes(of: id)))
        }
        if isEnd || stopped {
            finish(r, reason: .stop, last: out)
        } else if r.handOffAfterFirstToken, r.allTokens.count < r.maxTotalTokens {
            // The decode instance continues from here (what is held back is its to release): the token goes out to
            // the client first, then with the KV to the decode.
            r.continuation.yield(out)
            r.kvLayerSink?.firstToken(id)
            var end = GenerationOutput()
            end.handedOff = true
            finish(r, reason: .length, last: end)
        } else if r.allTokens.count >= r.maxTotalTokens {
            let (tail, _) = r.stops.append(r.decoder.flush())
            out.text += tail + r.stops.releaseAll()
            finish(r, reason: .length, last: out)
        } else {
            r.continuation.yield(out)
        }
    }

    private func finish(_ r: EngineRequest, reason: FinishReason, last: GenerationOutput = GenerationOutput()) {
        var out = last
        out.finishReason = reason
        out.usage = GenerationUsage(
            promptTokens: r.prompt.count, completionTokens: r.output.count, cachedTokens: max(0, r.cachedPromptTokens))
        if let view = r.connectorView {
            out.kvTransferParams = connector?.requestFinished(view, aborted: reason == .abort)
        }
        scheduler.remove(r)
        live[r.arrival] = nil
        let continuation = r.continuation
        let final = out
        let answer: @Sendable () -> Void = {
            continuation.yield(final)
            continuation.finish()
        }
        if let sink = r.kvLayerSink, r.handOffAfterFirstToken, reason != .abort, !last.handedOff {
            // A hand-off ended by its first token: the decode waiting for this transfer never starts.
            sink.withhold(answer: answer)
        } else if let sink = r.kvLayerSink {
            sink.end(complete: reason != .abort && r.streamedTokens >= r.prompt.count, answer: answer)
        } else {
            answer()
        }
    }

    private func publish() {
        var s = EngineStats()
        s.running = scheduler.running.count
        s.waiting = scheduler.waiting.count + scheduler.awaitingKV.count
        s.usedBlocks = scheduler.pool.usedCount
        s.usedWindowBlocks = scheduler.windowPool?.usedCount ?? 0
        s.heldKVBytes =
            s.usedBlocks * cache.bytesPerBlock(window: false) + s.usedWindowBlocks * cache.bytesPerBlock(window: true)
        s.kvCacheUsage = max(scheduler.pool.usage, scheduler.windowPool?.usage ?? 0)
        s.prefixQueryTokens = scheduler.prefixQueryTokens
        s.prefixHitTokens = scheduler.prefixHitTokens
        s.preemptions = scheduler.preemptions
        s.loadedKVTokens = scheduler.loadedKVTokens
        condition.lock()
        s.steps = published.steps + 1
        published = s
        condition.unlock()
    }
}
