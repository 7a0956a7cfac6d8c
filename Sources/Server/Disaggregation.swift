import Discovery
import Engine
import Foundation
import KVTransfer
import Logging
import Prometheus

/// An instance's part in disaggregated serving: its KV-transfer configuration, its advertised KV address, and (on
/// a consumer) the inbox where received KV waits for its request.
public final class DisaggregationRuntime: Sendable {
    public let config: KVTransferConfig
    /// `host:kv_port` as the proxy and peers know it.
    public let kvAddress: HostPort
    public let inbox: KVInbox
    let metrics: KVTransferMetrics
    let logger: Logger

    public init(config: KVTransferConfig, kvAddress: HostPort, logger: Logger) {
        self.config = config
        self.kvAddress = kvAddress
        inbox = KVInbox(capacityBytes: config.bufferBytes, ttl: config.unclaimedTTL)
        metrics = KVTransferMetrics()
        self.logger = logger
    }

    /// What this instance does for a request with this id: produce (prefill and send), consume (receive and
    /// decode), or nothing special.
    enum Part { case produce(DisaggregatedRequestID), consume(DisaggregatedRequestID), none }

    func part(for requestId: String?) -> Part {
        guard let requestId, let id = DisaggregatedRequestID(requestId) else { return .none }
        switch config.role {
        case .producer: return .produce(id)
        case .consumer: return .consume(id)
        case .both: return id.decode == kvAddress ? .consume(id) : .produce(id)
        }
    }

    /// Sends a prefill's KV to the decode instance named in the id (PUT: before the prefill's answer).
    func send(_ payload: KVPayload, id: DisaggregatedRequestID) async {
        let start = ContinuousClock.now
        do {
            try await KVSender.send(
                payload, requestId: id.description, to: id.decode, connectTimeout: 2, timeout: config.transferTimeout)
            metrics.sent(bytes: payload.byteCount, seconds: seconds(since: start))
        } catch {
            metrics.failed("send")
            logger.warning("KV send for \(id) failed: \(error)")
        }
    }

    /// The KV for a decode request, or nil (recompute) when it did not come, was refused, or the policy says fail.
    func receive(id: DisaggregatedRequestID) async throws -> KVPayload? {
        let start = ContinuousClock.now
        let arrival = await inbox.wait(for: id.description, timeout: config.transferTimeout)
        metrics.bufferBytes(inbox.bytesInUse)
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
        for reason in ["send", "timeout", "rejected"] {
            failures[reason] = r.makeCounter(
                descriptor: d("tandem_kv_transfer_failures_total", "KV transfers that failed, by reason."),
                labels: [("reason", reason)])
        }
        self.failures = failures
        recomputes = r.makeCounter(
            descriptor: d("tandem_kv_recomputes_total", "Decode requests that recomputed the prompt instead."))
        buffer = r.makeGauge(descriptor: d("tandem_kv_buffer_bytes", "Received KV bytes waiting for their request."))
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

/// Seconds from `start` to now.
public func seconds(since start: ContinuousClock.Instant) -> Double {
    let d = ContinuousClock.now - start
    return Double(d.components.seconds) + Double(d.components.attoseconds) * 1e-18
}
