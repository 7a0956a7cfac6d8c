import Prometheus

/// The connector's metrics, under vLLM-style names, appended to the instance's `/metrics`.
public final class KVTransferMetrics: Sendable {
    public let registry = PrometheusCollectorRegistry()
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

    /// The Prometheus text of every metric here.
    public func render() -> String { registry.emitToString() }
}
