import Discovery
import Engine
import Foundation
import JSON
import NIOConcurrencyHelpers
import OpenAIAPI
import Prometheus

/// The instance's Prometheus metrics, named as vLLM names them so existing dashboards work.
public final class InstanceMetrics: Sendable {
    public let registry = PrometheusCollectorRegistry()
    private let running: Gauge
    private let waiting: Gauge
    private let kvUsage: Gauge
    private let promptTokens: Counter
    private let generationTokens: Counter
    private let prefixQueries: Counter
    private let prefixHits: Counter
    private let preemptions: Counter
    private let loadedKVTokens: Counter
    private let success: [FinishReason: Counter]
    private let ttft: ValueHistogram
    private let interToken: ValueHistogram
    private let e2e: ValueHistogram
    private let lastTotals = NIOLockedValueBox<EngineStats?>(nil)
    /// The instance's etcd registration, once it runs (its counts are rendered with the rest).
    public let etcd = NIOLockedValueBox<EtcdRegistration?>(nil)

    public init(modelName: String) {
        let l = [("model_name", modelName)]
        let r = registry
        running = r.makeGauge(
            descriptor: Self.name("vllm:num_requests_running", "Requests in the running batch."), labels: l)
        waiting = r.makeGauge(descriptor: Self.name("vllm:num_requests_waiting", "Requests waiting to run."), labels: l)
        kvUsage = r.makeGauge(
            descriptor: Self.name("vllm:kv_cache_usage_perc", "Fraction of KV-cache blocks in use (1 = full)."),
            labels: l)
        promptTokens = r.makeCounter(
            descriptor: Self.name("vllm:prompt_tokens_total", "Prompt tokens processed."), labels: l)
        generationTokens = r.makeCounter(
            descriptor: Self.name("vllm:generation_tokens_total", "Tokens generated."), labels: l)
        prefixQueries = r.makeCounter(
            descriptor: Self.name("vllm:prefix_cache_queries_total", "Prompt tokens looked up in the prefix cache."),
            labels: l)
        prefixHits = r.makeCounter(
            descriptor: Self.name("vllm:prefix_cache_hits_total", "Prompt tokens found in the prefix cache."), labels: l
        )
        preemptions = r.makeCounter(
            descriptor: Self.name("vllm:num_preemptions_total", "Requests preempted for lack of KV blocks."), labels: l)
        loadedKVTokens = r.makeCounter(
            descriptor: Self.name(
                "tandem_kv_loaded_tokens_total", "Prompt tokens whose KV was loaded from a prefill instance."),
            labels: l)
        var success: [FinishReason: Counter] = [:]
        for reason in [FinishReason.stop, .length, .abort] {
            success[reason] = r.makeCounter(
                descriptor: Self.name("vllm:request_success_total", "Requests finished, by finish reason."),
                labels: l + [("finished_reason", reason.rawValue)])
        }
        self.success = success
        let latency = [
            0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80,
        ]
        ttft = r.makeValueHistogram(
            descriptor: Self.name("vllm:time_to_first_token_seconds", "Time from request arrival to its first token."),
            labels: l, buckets: latency)
        interToken = r.makeValueHistogram(
            descriptor: Self.name("vllm:inter_token_latency_seconds", "Time between consecutive output tokens."),
            labels: l, buckets: [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5, 5, 10])
        e2e = r.makeValueHistogram(
            descriptor: Self.name("vllm:e2e_request_latency_seconds", "Time from request arrival to its end."),
            labels: l, buckets: latency + [160, 320, 640])
    }

    private static func name(_ name: String, _ help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(metricName: name, unitName: "", helpText: help)
    }

    /// Records one finished request.
    public func recordFinished(
        reason: FinishReason, usage: GenerationUsage, ttftSeconds: Double?, interTokenSeconds: [Double],
        e2eSeconds: Double
    ) {
        promptTokens.increment(by: Double(usage.promptTokens))
        generationTokens.increment(by: Double(usage.completionTokens))
        success[reason]?.increment()
        if let ttftSeconds { ttft.record(ttftSeconds) }
        for s in interTokenSeconds { interToken.record(s) }
        e2e.record(e2eSeconds)
    }

    /// Refreshes the gauges and engine totals from `stats`, then renders every metric in Prometheus text format.
    public func render(stats: EngineStats?) -> String {
        if let stats {
            running.set(Double(stats.running))
            waiting.set(Double(stats.waiting))
            kvUsage.set(stats.kvCacheUsage)
            lastTotals.withLockedValue { last in
                let before = last ?? stats
                let queries = stats.prefixQueryTokens - (last == nil ? 0 : before.prefixQueryTokens)
                let hits = stats.prefixHitTokens - (last == nil ? 0 : before.prefixHitTokens)
                let preempted = stats.preemptions - (last == nil ? 0 : before.preemptions)
                let loaded = stats.loadedKVTokens - (last == nil ? 0 : before.loadedKVTokens)
                loadedKVTokens.increment(by: Double(max(0, loaded)))
                prefixQueries.increment(by: Double(max(0, queries)))
                prefixHits.increment(by: Double(max(0, hits)))
                preemptions.increment(by: Double(max(0, preempted)))
                last = stats
            }
        }
        var text = registry.emitToString()
        if let etcd = etcd.withLockedValue({ $0 }) {
            for (name, kind, help, value) in [
                (
                    "tandem_etcd_registrations_total", "counter",
                    "Times the instance put its record in etcd (more than 1 after a lease was lost).",
                    etcd.registrations
                ),
                (
                    "tandem_etcd_lease_losses_total", "counter", "Leases etcd no longer knew when kept alive.",
                    etcd.leaseLosses
                ),
                ("tandem_etcd_reachable", "gauge", "1 when the last call to etcd succeeded.", etcd.isReachable ? 1 : 0),
            ] {
                text += "# HELP \(name) \(help)\n# TYPE \(name) \(kind)\n\(name) \(value)\n"
            }
        }
        return text
    }
}
