import Foundation

/// What a caller asks the engine to generate.
public struct GenerationRequest: Sendable {
    public var id: String
    public var promptTokens: [Int32]
    public var params: SamplingParams
    /// Whether and how the prompt's KV moves to or from another instance (disaggregated prefill/decode).
    public var kvTransfer: KVTransferParams?
    /// Where a resumed request picks up: the tokens it already generated elsewhere (their text was already
    /// delivered) and the sampler's random draws for them. It continues with exactly the tokens an uninterrupted run
    /// would produce next; its outputs start after these tokens, its usage counts them.
    public var resume: ResumePoint?
    /// Ends the request after its first token unless that token already ends it (a prefill handing the rest to a
    /// decode instance): the last output then has `handedOff` set and nothing held back is flushed.
    public var handOffAfterFirstToken = false
    /// The id of a request submitted just before this one with the same prompt, whose KV comes from another
    /// instance: this one waits until that prompt's KV is in the prefix cache and reuses it, so the KV moves once
    /// for all the choices of a disaggregated request (`n`).
    public var sharesPromptWith: String?

    public init(id: String, promptTokens: [Int32], params: SamplingParams) {
        self.id = id
        self.promptTokens = promptTokens
        self.params = params
    }
}

/// The state a request resumes from (`GenerationRequest.resume`).
public struct ResumePoint: Sendable, Equatable {
    public var tokens: [Int32]
    /// Random draws the sampler made for `tokens`; nil: one per token when sampling, none when greedy.
    public var randomDraws: Int?

    public init(tokens: [Int32], randomDraws: Int? = nil) {
        self.tokens = tokens
        self.randomDraws = randomDraws
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
    /// On the first output, with `SamplingParams.promptLogprobs`: the logprob of each prompt token after the first.
    public var promptLogprobs: [TokenLogprob]?
    public var finishReason: FinishReason?
    public var usage: GenerationUsage?
    /// On a producer's final output: the `kv_transfer_params` its response carries.
    public var kvTransferParams: [(String, KVParamValue)]?
    /// Why the request failed (its KV did not come and the failure policy says fail); set with finish reason
    /// `abort`.
    public var failure: String?
    /// The request stopped after its first token to be continued elsewhere (`handOffAfterFirstToken`); set with
    /// finish reason `length`, which the response does not report.
    public var handedOff = false
}

/// The engine's state for one request while it waits, runs, or is preempted.
final class EngineRequest {
    enum Status { case waiting, running, finished }

    let id: String
    let prompt: [Int32]
    let params: SamplingParams
    var arrival: UInt64
    let maxTotalTokens: Int
    let continuation: AsyncStream<GenerationOutput>.Continuation
    var status = Status.waiting
    var output: [Int32] = []
    /// Prompt then output tokens: everything whose KV the sequence needs.
    var allTokens: [Int32]
    /// Tokens whose KV is in the cache.
    var computed = 0
    var blockTable: [Int32] = []
    /// In a split cache (`usesWindowBlocks`), the blocks of the sliding-window layers, position / blockSize as in
    /// `blockTable`; -1 where none is held: before the window of the next position to compute.
    var windowTable: [Int32] = []
    var usesWindowBlocks = false
    /// Entries of `windowTable` below this index were let go (or never taken).
    var windowDroppedBelow = 0
    /// Chain hashes of the full blocks registered for prefix reuse, in order.
    var blockHashes: [UInt64] = []
    var cachedPromptTokens = -1
    var preemptions = 0
    let kvTransfer: KVTransferParams?
    /// A consumer's load was started (once: a request preempted later recomputes).
    var loadStarted = false
    /// Prompt tokens whose KV was loaded from elsewhere.
    var loadedTokens = 0
    /// Window blocks starting below this position are not offered to the prefix cache: their sliding-window layers
    /// were loaded for the window only.
    var windowValidFrom = 0
    /// A producer's saver, from the connector when the request is first seen.
    var kvLayerSink: (any KVLayerSink)?
    /// Prompt positions already handed to `kvLayerSink` (for every layer).
    var streamedTokens = 0
    var sampler: Sampler
    var decoder = IncrementalDecoder()
    var stops: StopStringMatcher
    let handOffAfterFirstToken: Bool
    /// The logprobs of prompt tokens 1..., as computed so far (`SamplingParams.promptLogprobs`).
    var promptLogprobs: [TokenLogprob] = []
    /// The request whose prompt KV this one waits for (`GenerationRequest.sharesPromptWith`).
    weak var promptSource: EngineRequest?
    let promptSourceId: String?

    /// Whether this request must still wait for its prompt source: until the source's full prompt blocks are in the
    /// prefix cache, or it ended.
    var waitsForPromptSource: Bool {
        guard let source = promptSource, source.status != .finished else { return false }
        return source.blockHashes.count < source.fullPromptBlocks
    }

    /// How many full blocks the prompt fills (set by the scheduler, which knows the block size).
    var fullPromptBlocks = 0

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
        kvTransfer = request.kvTransfer
        sampler = Sampler(params: request.params, promptTokens: request.promptTokens)
        stops = StopStringMatcher(stops: request.params.stop)
        handOffAfterFirstToken = request.handOffAfterFirstToken
        promptSourceId = request.sharesPromptWith
    }

    /// Puts a resumed request where the run it continues stood after `point.tokens`: output, sampler, and the text
    /// state (incomplete characters and possible stop strings held back), replayed with `bytes` of each token.
    /// Returns the text that run had released by then.
    @discardableResult
    func resume(from point: ResumePoint, bytes: (Int32) -> [UInt8]) -> String {
        output = point.tokens
        allTokens = prompt + point.tokens
        sampler.resume(
            after: point.tokens,
            draws: point.randomDraws ?? Sampler.defaultDraws(params: params, tokens: point.tokens.count))
        var released = ""
        for id in point.tokens { released += stops.append(decoder.append(bytes(id))).delta }
        return released
    }

    /// The request's blocks, as the cache and the model read them.
    var tables: KVBlockTables { KVBlockTables(full: blockTable, window: usesWindowBlocks ? windowTable : nil) }

    /// Tokens still to run through the model before the next token can be sampled.
    var pendingTokens: Int { allTokens.count - computed }

    /// The request as the connector sees it; nil for one that moves no KV.
    var connectorView: KVConnectorRequest? {
        kvTransfer.map {
            KVConnectorRequest(id: id, promptTokens: prompt, transfer: $0, handOff: handOffAfterFirstToken)
        }
    }
}
