import Discovery
import Engine
import Foundation
import KVTransfer
import Logging
import Prometheus

/// An instance's part in disaggregated serving: its KV-transfer configuration, its advertised KV address, and its
/// KV node (listener, peer connections, inbox and outbox), started once the model is loaded.
public final class DisaggregationRuntime: Sendable {
    public let config: KVTransferConfig
    /// `host:kv_port` as the proxy and peers know it.
    public let kvAddress: HostPort
    let metrics: KVTransferMetrics
    let logger: Logger
    private let started = LockedValue<(node: KVNode, layerCount: Int, kvDim: Int)?>(nil)

    public init(config: KVTransferConfig, kvAddress: HostPort, logger: Logger) {
        self.config = config
        self.kvAddress = kvAddress
        metrics = KVTransferMetrics()
        self.logger = logger
    }

    /// The KV node, once started.
    public var node: KVNode? { started.withLock { $0?.node } }

    /// Starts listening on `kv_port` for a model with this fingerprint and shape.
    func start(host: String, model: ModelConfig, fingerprint: UInt64) async throws -> KVNode {
        let metrics = metrics
        let node = try await KVNode(
            bind: HostPort(host: host, port: config.kvPort), fingerprint: fingerprint,
            bufferBytes: config.bufferBytes, ttl: config.unclaimedTTL, transferTimeout: config.transferTimeout,
            logger: logger
        ) { event in
            switch event {
            case .sent(let bytes, let seconds): metrics.sent(bytes: bytes, seconds: seconds)
            case .sendFailed(let reason): metrics.failed(reason)
            }
        }
        started.withLock { $0 = (node, model.layerCount, model.kvDim) }
        return node
    }

    /// What this instance does for a request with this id: produce (prefill and send), consume (receive and
    /// decode), or nothing special.
    enum Part { case produce(DisaggregatedRequestID), consume(DisaggregatedRequestID), none }

    func part(for requestId: String?) -> Part {
        guard let requestId, let id = DisaggregatedRequestID(requestId), node != nil else { return .none }
        switch config.role {
        case .producer: return .produce(id)
        case .consumer: return .consume(id)
        case .both: return id.decode == kvAddress ? .consume(id) : .produce(id)
        }
    }

    /// Sets a prefill request up to hand its KV over as the send type says. PUT_ASYNC streams every layer as it is
    /// computed; PUT and GET have the engine export the prompt's KV at the end and return what to do with it: PUT
    /// sends it before the prefill answers, GET leaves it in the outbox for the decode instance to pull.
    func produce(_ generation: inout GenerationRequest, id: DisaggregatedRequestID) -> (
        @Sendable (KVPayload) async -> Void
    )? {
        guard let (node, layerCount, kvDim) = started.withLock({ $0 }) else { return nil }
        let requestId = id.description
        switch config.sendType {
        case .putAsync:
            generation.kvLayerSink = node.stream(
                requestId: requestId, tokens: generation.promptTokens, layerCount: layerCount, kvDim: kvDim,
                to: id.decode)
            return nil
        case .put:
            generation.exportKV = true
            return { payload in
                let start = ContinuousClock.now
                do {
                    try await node.send(payload, requestId: requestId, to: id.decode)
                    self.metrics.sent(bytes: payload.byteCount, seconds: seconds(since: start))
                } catch {
                    self.metrics.failed("send")
                    self.logger.warning("KV send for \(id) failed: \(error)")
                }
            }
        case .get:
            generation.exportKV = true
            return { payload in
                if !node.offer(payload, requestId: requestId) {
                    self.metrics.failed("backpressure")
                    self.logger.warning("KV for \(id) does not fit in kv_buffer_size; the decode will recompute")
                }
            }
        }
    }

    /// The KV for a decode request (received, or pulled with GET), or nil (recompute) when it did not come, was
    /// refused, or the policy says fail.
    func receive(id: DisaggregatedRequestID) async throws -> KVPayload? {
        guard let node else { return nil }
        let start = ContinuousClock.now
        let arrival =
            config.sendType == .get
            ? await node.pull(id.description, from: id.prefill)
            : await node.inbox.wait(for: id.description, timeout: config.transferTimeout)
        let reason: String
        switch arrival {
        case .payload(let p):
            metrics.received(bytes: p.byteCount, seconds: seconds(since: start))
            return p
        case .rejected(let why): reason = why
        case .timedOut: reason = "no KV arrived within \(config.transferTimeout) s"
        }
        metrics.failed(arrivalFailure(arrival))
        if config.failurePolicy == .fail {
            throw APIError(.serviceUnavailable, "KV transfer failed: \(reason)", code: "kv_transfer_failed")
        }
        metrics.recomputed()
        logger.warning("KV for \(id) not used (\(reason)); recomputing the prompt")
        return nil
    }

    private func arrivalFailure(_ a: KVArrival) -> String {
        if case .timedOut = a { return "timeout" }
        return "rejected"
    }
}

/// KV-transfer metrics, added to the instance's registry.
final class KVTransferMetrics: Sendable {
    let registry = PrometheusCollectorRegistry()
    private let bytesSent: Counter
    private let bytesReceived: Counter
    private let transferSeconds: ValueHistogram
    private let failures: [String: Counter]
    private let recomputes: Counter
    private let buffer: Gauge

    init() {
        func d(_ n: String, _ h: String) -> MetricNameDescriptor {
            MetricNameDescriptor(metricName: n, unitName: "", helpText: h)
        }
        let r = registry
        bytesSent = r.makeCounter(
            descriptor: d("tandem_kv_transfer_bytes_total", "KV bytes transferred."), labels: [("direction", "sent")])
        bytesReceived = r.makeCounter(
            descriptor: d("tandem_kv_transfer_bytes_total", "KV bytes transferred."),
            labels: [("direction", "received")])
        transferSeconds = r.makeValueHistogram(
            descriptor: d(
                "tandem_kv_transfer_seconds", "Time to send (producer) or wait for (consumer) a request's KV."),
            buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30])
        var failures: [String: Counter] = [:]
        for reason in ["send", "backpressure", "timeout", "rejected"] {
            failures[reason] = r.makeCounter(
                descriptor: d("tandem_kv_transfer_failures_total", "KV transfers that failed, by reason."),
                labels: [("reason", reason)])
        }
        self.failures = failures
        recomputes = r.makeCounter(
            descriptor: d("tandem_kv_recomputes_total", "Decode requests that recomputed the prompt instead."))
        buffer = r.makeGauge(
            descriptor: d(
                "tandem_kv_buffer_bytes",
                "KV bytes held: received or arriving, waiting to be pulled, and queued to send."))
    }

    func sent(bytes: Int, seconds: Double) {
        bytesSent.increment(by: Double(bytes))
        transferSeconds.record(seconds)
    }

    func received(bytes: Int, seconds: Double) {
        bytesReceived.increment(by: Double(bytes))
        transferSeconds.record(seconds)
    }

    func failed(_ reason: String) { failures[reason]?.increment() }
    func recomputed() { recomputes.increment() }
    func bufferBytes(_ n: Int) { buffer.set(Double(n)) }
}
