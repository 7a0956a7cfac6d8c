import Foundation

/// One request's measurements.
public struct RequestRecord: Sendable {
    public var index: Int
    public var start: Double
    public var promptTokens: Int
    public var outputTokens: Int
    /// Seconds from send to the first content chunk.
    public var ttft: Double?
    /// Gaps between content chunks.
    public var itl: [Double]
    public var e2e: Double
    public var error: String?

    public var succeeded: Bool { error == nil }
    /// Time per output token after the first.
    public var tpot: Double? {
        guard let ttft, outputTokens > 1 else { return nil }
        return (e2e - ttft) / Double(outputTokens - 1)
    }
}

/// Mean, median, standard deviation and chosen percentiles of a sample, in the way `vllm bench serve` reports them.
public struct Summary: Sendable, Equatable {
    public var mean: Double
    public var median: Double
    public var std: Double
    public var percentiles: [(Double, Double)]

    public static func == (a: Summary, b: Summary) -> Bool {
        a.mean == b.mean && a.median == b.median && a.std == b.std
            && a.percentiles.map(\.0) == b.percentiles.map(\.0) && a.percentiles.map(\.1) == b.percentiles.map(\.1)
    }

    public init(_ values: [Double], percentiles: [Double]) {
        let v = values.sorted()
        guard !v.isEmpty else {
            mean = 0
            median = 0
            std = 0
            self.percentiles = percentiles.map { ($0, 0) }
            return
        }
        let m = v.reduce(0, +) / Double(v.count)
        mean = m
        median = Self.quantile(v, 50)
        std = (v.map { ($0 - m) * ($0 - m) }.reduce(0, +) / Double(v.count)).squareRoot()
        self.percentiles = percentiles.map { ($0, Self.quantile(v, $0)) }
    }

    /// Linear interpolation between closest ranks (NumPy's default).
    static func quantile(_ sorted: [Double], _ p: Double) -> Double {
        let pos = p / 100 * Double(sorted.count - 1)
        let lo = Int(pos.rounded(.down))
        let hi = min(sorted.count - 1, lo + 1)
        return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - Double(lo))
    }
}

/// The figures of a benchmark run.
public struct BenchResult: Sendable {
    public var records: [RequestRecord]
    public var duration: Double
    public var percentiles: [Double]
    public var goodput: (ttftMs: Double?, tpotMs: Double?)?

    public var succeeded: [RequestRecord] { records.filter(\.succeeded) }
    public var failed: [RequestRecord] { records.filter { !$0.succeeded } }
    public var inputTokens: Int { succeeded.reduce(0) { $0 + $1.promptTokens } }
    public var outputTokens: Int { succeeded.reduce(0) { $0 + $1.outputTokens } }
    public var requestThroughput: Double { Double(succeeded.count) / duration }
    public var outputThroughput: Double { Double(outputTokens) / duration }
    public var totalThroughput: Double { Double(inputTokens + outputTokens) / duration }
    public var ttft: Summary { Summary(succeeded.compactMap(\.ttft).map { $0 * 1000 }, percentiles: percentiles) }
    public var tpot: Summary { Summary(succeeded.compactMap(\.tpot).map { $0 * 1000 }, percentiles: percentiles) }
    public var itl: Summary { Summary(succeeded.flatMap(\.itl).map { $0 * 1000 }, percentiles: percentiles) }
    public var e2e: Summary { Summary(succeeded.map(\.e2e).map { $0 * 1000 }, percentiles: percentiles) }

    /// Requests per second that met every SLO given.
    public var goodputRate: Double? {
        guard let g = goodput else { return nil }
        let good = succeeded.filter { r in
            (g.ttftMs.map { (r.ttft ?? .infinity) * 1000 <= $0 } ?? true)
                && (g.tpotMs.map { (r.tpot ?? 0) * 1000 <= $0 } ?? true)
        }
        return Double(good.count) / duration
    }
}
