import Foundation

/// What a caller asks the engine to generate.
public struct GenerationRequest: Sendable {
    public var id: String
    public var promptTokens: [Int32]
    public var params: SamplingParams
    /// Return the prompt's KV with the final output (a prefill instance's request).
    public var exportKV = false
    /// KV computed elsewhere for a prefix of the prompt (a decode instance's request); its tokens must equal the
    /// prompt's first tokens, and its fingerprint this model's.
    public var preloadedKV: KVPayload?
    /// KV still on its way from a prefill instance (a decode instance's request): the engine admits the request,
    /// reserves blocks for its whole prompt, and holds them until the box is filled (the KV is loaded) or fails (the
    /// prompt is recomputed in those blocks).
    public var remoteKV: RemoteKV?
    /// Receives the prompt's KV layer by layer as it is computed (a prefill instance streaming with PUT_ASYNC).
    public var kvLayerSink: (any KVLayerSink)?

    public init(id: String, promptTokens: [Int32], params: SamplingParams) {
        self.id = id
        self.promptTokens = promptTokens
        self.params = params
    }
}

/// Receives a prompt's KV layer by layer as soon as each layer of each prompt chunk is in the cache. Every (layer,
/// position) of the prompt is pushed exactly once, in position order within a layer; then `end` is called once.
/// Both are called on the engine thread and must return at once.
public protocol KVLayerSink: Sendable {
    func push(_ slice: KVLayerSlice)
    /// The request ended: `complete` when every prompt position was pushed, false when it was aborted first.
    func end(complete: Bool)
}

/// Where a decode request's KV will come from; filled or failed once by the server, read by the scheduler.
public final class RemoteKV: @unchecked Sendable {
    enum State {
        case pending
        case ready(KVPayload)
        case failed
        /// The payload was taken and loaded; the box no longer holds it.
        case used
    }

    private let lock = NSLock()
    private var value = State.pending

    public init() {}

    /// The KV arrived (already checked against the request with `EngineCore.check`).
    public func deliver(_ payload: KVPayload) { lock.withLock { if case .pending = value { value = .ready(payload) } } }

    /// No usable KV: the engine recomputes the prompt.
    public func fail() { lock.withLock { if case .pending = value { value = .failed } } }

    var state: State { lock.withLock { value } }

    /// The payload, once: the box then forgets it, so its memory goes with the load.
    func take() -> KVPayload? {
        lock.withLock {
            guard case .ready(let payload) = value else { return nil }
            value = .used
            return payload
        }
    }
}

/// Counts reported when a request ends.
public struct GenerationUsage: Sendable, Equatable {
    public var promptTokens: Int
    public var completionTokens: Int
    /// Prompt tokens whose KV came from the prefix cache.
    public var cachedTokens: Int

    public init(promptTokens: Int, completionTokens: Int, cachedTokens: Int) {
        self.promptTokens = promptTokens
        self.completionTokens = completionTokens
        self.cachedTokens = cachedTokens
    }
}

/// One step's news for one request: the tokens it produced, the text they released, and the end, if reached.
public struct GenerationOutput: Sendable {
    public var tokenIds: [Int32] = []
    public var text = ""
    public var logprobs: [TokenLogprob] = []
    public var finishReason: FinishReason?
    public var usage: GenerationUsage?
    /// The prompt's KV, on the final output of a request submitted with `exportKV`.
    public var exportedKV: KVPayload?
}

/// The engine's state for one request while it waits, runs, or is preempted.
final class EngineRequest {
    enum Status { case waiting, running, finished }

    let id: String
    let prompt: [Int32]
    let params: SamplingParams
    let arrival: UInt64
    let maxTotalTokens: Int
    let continuation: AsyncStream<GenerationOutput>.Continuation
    var status = Status.waiting
    var output: [Int32] = []
    /// Prompt then output tokens: everything whose KV the sequence needs.
    var allTokens: [Int32]
    /// Tokens whose KV is in the cache.
    var computed = 0
    var blockTable: [Int32] = []
    /// Chain hashes of the full blocks registered for prefix reuse, in order.
    var blockHashes: [UInt64] = []
    var cachedPromptTokens = -1
    var preemptions = 0
    let exportKV: Bool
    /// KV to load when the request is first admitted; dropped once loaded.
    var preloadedKV: KVPayload?
    let remoteKV: RemoteKV?
    /// Prompt tokens whose KV was loaded from elsewhere.
    var loadedTokens = 0
    let kvLayerSink: (any KVLayerSink)?
    /// Prompt positions already handed to `kvLayerSink` (for every layer).
    var streamedTokens = 0
    var sampler: Sampler
    var decoder = IncrementalDecoder()
    var stops: StopStringMatcher

    init(
        _ request: GenerationRequest, arrival: UInt64, maxModelLength: Int,
        continuation: AsyncStream<GenerationOutput>.Continuation
    ) {
        id = request.id
        prompt = request.promptTokens
        params = request.params
        self.arrival = arrival
        maxTotalTokens = min(maxModelLength, prompt.count + max(0, request.params.maxTokens))
        self.continuation = continuation
        allTokens = prompt
        exportKV = request.exportKV
        preloadedKV = request.preloadedKV
        remoteKV = request.remoteKV
        kvLayerSink = request.kvLayerSink
        sampler = Sampler(params: request.params, promptTokens: request.promptTokens)
        stops = StopStringMatcher(stops: request.params.stop)
    }

    /// Tokens still to run through the model before the next token can be sampled.
    var pendingTokens: Int { allTokens.count - computed }
}
