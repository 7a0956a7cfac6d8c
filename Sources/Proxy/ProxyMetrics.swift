import Foundation
import Prometheus

/// The proxy's Prometheus metrics.
public final class ProxyMetrics: Sendable {
    public let registry = PrometheusCollectorRegistry()
    private let outcomes: [String: Counter]
    private let retries: [String: Counter]
    private let adds: [DiscoverySource: Counter]
    private let migrations: Counter
    private let removes: [DiscoverySource: Counter]
    private let ttft: ValueHistogram
    private let e2e: ValueHistogram

    public static let outcomeNames = [
        "success", "client_error", "no_instance", "prefill_failed", "decode_failed", "decode_broke", "client_gone",
    ]

    public init() {
        let r = registry
        func d(_ name: String, _ help: String) -> MetricNameDescriptor {
            MetricNameDescriptor(metricName: name, unitName: "", helpText: help)
        }
        var outcomes: [String: Counter] = [:]
        for o in Self.outcomeNames {
            outcomes[o] = r.makeCounter(
                descriptor: d("tandem_proxy_requests_total", "Requests by outcome."), labels: [("outcome", o)])
        }
        self.outcomes = outcomes
        var retries: [String: Counter] = [:]
        for stage in ["prefill", "decode"] {
            retries[stage] = r.makeCounter(
                descriptor: d("tandem_proxy_retries_total", "Requests retried on another instance."),
                labels: [("stage", stage)])
        }
        self.retries = retries
        migrations = r.makeCounter(
            descriptor: d(
                "tandem_proxy_migrations_total", "Streams resumed on another decode instance after theirs failed."))
        var adds: [DiscoverySource: Counter] = [:]
        var removes: [DiscoverySource: Counter] = [:]
        for source in DiscoverySource.allCases {
            let labels = [("source", source.rawValue)]
            adds[source] = r.makeCounter(
                descriptor: d("tandem_proxy_discovery_adds_total", "Instances added by discovery."), labels: labels)
            removes[source] = r.makeCounter(
                descriptor: d(
                    "tandem_proxy_discovery_removes_total",
                    "Instances removed: silent past their TTL (zmq), their record deleted or its lease lost (etcd)."),
                labels: labels)
        }
        self.adds = adds
        self.removes = removes
        let buckets = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 10, 20, 40, 80, 160]
        ttft = r.makeValueHistogram(
            descriptor: d(
                "tandem_proxy_time_to_first_byte_seconds", "Time from request to the first byte of the answer."),
            buckets: buckets)
        e2e = r.makeValueHistogram(
            descriptor: d("tandem_proxy_e2e_request_latency_seconds", "Time from request to the end of the answer."),
            buckets: buckets + [320, 640])
    }

    func outcome(_ name: String) { outcomes[name]?.increment() }
    func retry(_ stage: String) { retries[stage]?.increment() }
    func migrated() { migrations.increment() }
    func discovery(added: Bool, source: DiscoverySource) { (added ? adds : removes)[source]?.increment() }
    func firstByte(_ seconds: Double) { ttft.record(seconds) }
    func finished(_ seconds: Double) { e2e.record(seconds) }

    /// The metrics text, with one in-flight gauge line per known instance.
    public func render(instances: [KnownInstance]) -> String {
        var text = registry.emitToString()
        text += "# HELP tandem_proxy_in_flight Requests in flight on each instance.\n"
        text += "# TYPE tandem_proxy_in_flight gauge\n"
        for i in instances {
            text +=
                "tandem_proxy_in_flight{role=\"\(i.role == .prefill ? "prefill" : "decode")\",http_address=\"\(i.http)\"} \(i.inFlight)\n"
        }
        return text
    }
}
