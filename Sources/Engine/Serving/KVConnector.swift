/// What a request says about moving its KV between instances, parsed once from its id or its `kv_transfer_params`
/// (by the connector, which alone knows the wire format), and carried by `GenerationRequest.kvTransfer`.
public struct KVTransferParams: Sendable, Equatable {
    /// A producer computes the prompt and saves its KV; a consumer loads the KV and decodes.
    public enum Role: Sendable, Equatable { case produce, consume }
    /// How the KV travels: pushed by the producer to the consumer's KV address, or offered by the producer for the
    /// consumer to pull from the producer's KV address.
    public enum Delivery: String, Sendable, Equatable { case push, pull }

    public var role: Role
    public var delivery: Delivery
    /// The key the KV travels under on the wire.
    public var transferId: String
    /// The producer's KV address, `host:port`.
    public var prefillAddress: String
    /// The consumer's KV address, when known (push delivery needs it).
    public var decodeAddress: String?
    /// Prompt length and model fingerprint the producer reported, for a consumer to refuse KV it could not use
    /// before it is moved.
    public var promptTokens: Int?
    public var fingerprint: UInt64?
    /// Seconds more a consumer waits for the transfer to begin, beyond its own transfer deadline: the proxy's
    /// overlapped flow sends the decode request with the prefill's, so the wait also covers the prefill
    /// (`tandem_kv_wait_s`). Once the transfer began, the deadline is the consumer's own again.
    public var extraWait: Double = 0

    public init(
        role: Role, delivery: Delivery, transferId: String, prefillAddress: String, decodeAddress: String? = nil,
        promptTokens: Int? = nil, fingerprint: UInt64? = nil
    ) {
        self.role = role
        self.delivery = delivery
        self.transferId = transferId
        self.prefillAddress = prefillAddress
        self.decodeAddress = decodeAddress
        self.promptTokens = promptTokens
        self.fingerprint = fingerprint
    }
}

/// A JSON scalar (or a list of integers) of `kv_transfer_params`, so that the engine and the connector need no JSON
/// library: the server converts its JSON values to and from these.
public enum KVParamValue: Sendable, Equatable {
    case null
    case bool(Bool)
    case int(Int)
    case string(String)
    case ints([Int])
}

/// The engine's view of one request, as the connector sees it.
public struct KVConnectorRequest: Sendable {
    public var id: String
    public var promptTokens: [Int32]
    public var transfer: KVTransferParams
    /// A producer that stops after its first token (`tandem_handoff`): its saver may send that token with the KV.
    public var handOff: Bool

    public init(id: String, promptTokens: [Int32], transfer: KVTransferParams, handOff: Bool = false) {
        self.id = id
        self.promptTokens = promptTokens
        self.transfer = transfer
        self.handOff = handOff
    }
}

/// How a consumer's load ended.
public enum KVLoadOutcome: Sendable {
    /// The KV arrived and was checked against the request: the engine writes it into the reserved blocks.
    case loaded(KVPayload)
    /// No usable KV: the engine computes the prompt itself, in the same blocks.
    case recompute
    /// No usable KV and the failure policy says fail: the request ends with this message (a 503 to the client).
    case failed(String)
}

/// The one seam between the engine and a KV transport, after vLLM v1's `KVConnectorBase_V1`.
///
/// - Scheduler side (engine thread): `parse` turns what a request carries into `KVTransferParams`; a consumer
///   request is parked with blocks for its whole prompt and `startLoad` begins fetching its KV, signalling `done`
///   once, from any thread, when it arrived or failed; `requestFinished` reports the parameters a producer's response
///   carries.
/// - Worker side (engine thread): `saver` receives a producer's KV layer by layer, in a few groups per step.
///
/// Every method called on the engine thread must return at once.
public protocol KVConnector: AnyObject, Sendable {
    /// Parses a request's id and body `kv_transfer_params` (which win over the id); nil for a request that moves
    /// no KV. Throws a message for parameters that cannot be used.
    func parse(requestId: String?, params: [String: KVParamValue]?) throws -> KVTransferParams?

    /// Starts a consumer's load; `done` is called exactly once.
    func startLoad(_ request: KVConnectorRequest, done: @escaping @Sendable (KVLoadOutcome) -> Void)

    /// Where a producer's KV goes as it is computed; nil when it goes nowhere.
    func saver(for request: KVConnectorRequest) -> (any KVLayerSink)?

    /// The request ended (or was aborted); returns the `kv_transfer_params` of a producer's response.
    func requestFinished(_ request: KVConnectorRequest, aborted: Bool) -> [(String, KVParamValue)]?
}

/// Receives a prompt's KV layer by layer as soon as each layer of each prompt chunk is in the cache. Every (layer,
/// position) of the prompt is pushed exactly once, in position order within a layer; then `end` is called once.
/// Both are called on the engine thread and must return at once.
public protocol KVLayerSink: Sendable {
    func push(_ slice: KVLayerSlice)
    /// The request ended: `complete` when every prompt position was pushed, false when it was aborted first.
    /// `answer` releases the request's final output: a sink that must finish its transfer before the producer
    /// answers (PUT) calls it then; others call it at once. It is called exactly once, from any thread.
    func end(complete: Bool, answer: @escaping @Sendable () -> Void)
    /// The request ended before its KV was wanted (a hand-off whose first token ended it): nothing more is sent, not
    /// even a cancel, so the decode that waits for it never starts; the proxy cancels it.
    func withhold(answer: @escaping @Sendable () -> Void)
    /// A hand-off's first token, sampled after the prompt's last position (a sink that streams sends it with the KV,
    /// so that the decode continues after it; others drop it and the decode computes it again).
    func firstToken(_ token: Int32)
}

extension KVLayerSink {
    public func withhold(answer: @escaping @Sendable () -> Void) { end(complete: false, answer: answer) }
    public func firstToken(_ token: Int32) {}
}

extension KVPayload {
    /// Why this KV cannot be loaded for `prompt` on a model with this fingerprint and shape; nil when it can.
    public func mismatch(prompt: [Int32], fingerprint: UInt64, layerCount: Int, kvDim: Int) -> String? {
        guard self.fingerprint == fingerprint else { return "it comes from another model" }
        guard self.layerCount == layerCount, self.kvDim == kvDim,
            values.count == layerCount * 2 * tokens.count * kvDim, layerStarts.count == layerCount,
            layerStarts.allSatisfy({ (0...tokens.count).contains($0) })
        else { return "its shape differs from this model's" }
        guard tokens.count <= prompt.count, tokens.elementsEqual(prompt.prefix(tokens.count)) else {
            return "its tokens are not a prefix of the prompt"
        }
        return nil
    }
}
