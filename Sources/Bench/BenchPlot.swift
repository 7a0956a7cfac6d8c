import Foundation

/// The SVG picture of one run or of several side by side (`tandem bench --compare --plot`): three panels, TTFT and
/// inter-token latency CDFs and output throughput over time, each deployment drawn in its own colour on every panel,
/// with a legend, ticked axes and each series' P50 and P99 marked on the CDFs.
public enum BenchPlot {
    /// One deployment's result and the name its legend entry shows.
    public struct Series {
        public var name: String
        public var result: BenchResult
        public init(name: String, result: BenchResult) {
            self.name = name
            self.result = result
        }
    }

    static let colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
    static let dashes = ["", "6 3", "2 2", "8 2 2 2"]

    public static func svg(title: String, series: [Series]) -> String {
        let width = 1020.0
        let height = 400.0
        var out: [String] = [
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(width))\" height=\"\(Int(height))\" font-family=\"sans-serif\" font-size=\"11\">",
            "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>",
            "<text x=\"12\" y=\"20\" font-size=\"14\">\(escape(title))</text>",
        ]
        // Legend, one entry per deployment.
        for (i, s) in series.enumerated() {
            let x = 12.0 + Double(i) * 330
            out.append(line(x, 36, x + 24, 36, colour: i))
            out.append("<text x=\"\(f(x + 30))\" y=\"40\">\(escape(s.name))</text>")
        }
        let ttft = series.map { cdf($0.result.succeeded.compactMap(\.ttft).map { $0 * 1000 }) }
        let itl = series.map { cdf($0.result.succeeded.flatMap(\.itl).map { $0 * 1000 }) }
        let throughput = series.map { throughputOverTime($0.result) }
        out += panel(0, "Time to first token (CDF)", x: "TTFT (ms)", y: "fraction of requests", ttft, marks: true)
        out += panel(1, "Inter-token latency (CDF)", x: "ITL (ms)", y: "fraction of tokens", itl, marks: true)
        out += panel(2, "Output throughput over time", x: "time (s)", y: "tokens/s", throughput, marks: false)
        out.append("</svg>")
        return out.joined(separator: "\n")
    }

    /// One panel: frame, ticks and labels on both axes, a polyline per series, and P50/P99 marks on CDFs.
    private static func panel(
        _ index: Int, _ name: String, x xLabel: String, y yLabel: String, _ data: [[(Double, Double)]], marks: Bool
    ) -> [String] {
        let x0 = 70 + Double(index) * 330
        let y0 = 70.0
        let pw = 250.0
        let ph = 260.0
        var out = [
            "<rect x=\"\(f(x0))\" y=\"\(f(y0))\" width=\"\(f(pw))\" height=\"\(f(ph))\" fill=\"none\" stroke=\"#888\"/>",
            "<text x=\"\(f(x0))\" y=\"\(f(y0 - 8))\" font-size=\"12\">\(escape(name))</text>",
            "<text x=\"\(f(x0 + pw / 2))\" y=\"\(f(y0 + ph + 34))\" text-anchor=\"middle\">\(escape(xLabel))</text>",
            "<text x=\"\(f(x0 - 46))\" y=\"\(f(y0 + ph / 2))\" text-anchor=\"middle\" transform=\"rotate(-90 \(f(x0 - 46)) \(f(y0 + ph / 2)))\">\(escape(yLabel))</text>",
        ]
        let all = data.flatMap { $0 }
        guard let maxX = all.map(\.0).max(), let maxY = all.map(\.1).max(), maxX > 0, maxY > 0 else {
            out.append("<text x=\"\(f(x0 + 100))\" y=\"\(f(y0 + ph / 2))\">no data</text>")
            return out
        }
        let xTicks = ticks(upTo: maxX)
        let yTicks = marks ? [0, 0.25, 0.5, 0.75, 1] : ticks(upTo: maxY)
        let xMax = xTicks.last!
        let yMax = yTicks.last!
        func px(_ v: Double) -> Double { x0 + v / xMax * pw }
        func py(_ v: Double) -> Double { y0 + ph - v / yMax * ph }
        for t in xTicks {
            out.append(
                "<line x1=\"\(f(px(t)))\" y1=\"\(f(y0 + ph))\" x2=\"\(f(px(t)))\" y2=\"\(f(y0 + ph + 4))\" stroke=\"#888\"/>"
            )
            out.append(
                "<text x=\"\(f(px(t)))\" y=\"\(f(y0 + ph + 16))\" text-anchor=\"middle\">\(label(t))</text>")
        }
        for t in yTicks {
            out.append(
                "<line x1=\"\(f(x0 - 4))\" y1=\"\(f(py(t)))\" x2=\"\(f(x0 + pw))\" y2=\"\(f(py(t)))\" stroke=\"#eee\"/>"
            )
            out.append(
                "<text x=\"\(f(x0 - 6))\" y=\"\(f(py(t) + 4))\" text-anchor=\"end\">\(label(t))</text>")
        }
        for (i, points) in data.enumerated() where !points.isEmpty {
            let path = points.map { "\(f(px($0.0))),\(f(py($0.1)))" }.joined(separator: " ")
            out.append(
                "<polyline fill=\"none\" stroke=\"\(colours[i % colours.count])\" stroke-width=\"2\" stroke-dasharray=\"\(dashes[i % dashes.count])\" points=\"\(path)\"/>"
            )
            guard marks else { continue }
            // P50 and P99: a dot on the curve and the value, stacked per series so that labels do not collide.
            for q in [0.5, 0.99] {
                let v = quantile(points, q)
                let yText = py(q) + 14 + Double(i) * 12
                out.append(
                    "<circle cx=\"\(f(px(v)))\" cy=\"\(f(py(q)))\" r=\"3.5\" fill=\"\(colours[i % colours.count])\"/>")
                out.append(
                    "<text x=\"\(f(min(px(v) + 5, x0 + pw - 2)))\" y=\"\(f(yText))\" fill=\"\(colours[i % colours.count])\" text-anchor=\"\(px(v) + 5 > x0 + pw - 70 ? "end" : "start")\">P\(q == 0.5 ? "50" : "99") \(label(v))</text>"
                )
            }
        }
        return out
    }

    static func cdf(_ values: [Double]) -> [(Double, Double)] {
        let v = values.sorted()
        return v.enumerated().map { ($1, Double($0 + 1) / Double(v.count)) }
    }

    /// The smallest value whose CDF reaches `q`.
    static func quantile(_ cdf: [(Double, Double)], _ q: Double) -> Double {
        cdf.first { $0.1 >= q - 1e-12 }?.0 ?? cdf.last?.0 ?? 0
    }

    /// Output tokens per second in one-second bins, each request's tokens spread over its life.
    static func throughputOverTime(_ r: BenchResult) -> [(Double, Double)] {
        let bins = max(1, Int(r.duration.rounded(.up)))
        var perSecond = [Double](repeating: 0, count: bins)
        for q in r.succeeded where q.outputTokens > 0 {
            let first = q.start + (q.ttft ?? 0)
            let end = q.start + q.e2e
            for k in 0..<q.outputTokens {
                let t = q.outputTokens == 1 ? end : first + (end - first) * Double(k) / Double(q.outputTokens - 1)
                perSecond[min(bins - 1, max(0, Int(t)))] += 1
            }
        }
        return perSecond.enumerated().map { (Double($0 + 1), $1) }
    }

    /// Round tick values from 0 to at least `maximum`: steps of 1, 2 or 5 times a power of ten, 4 to 6 ticks.
    static func ticks(upTo maximum: Double) -> [Double] {
        let raw = maximum / 5
        let power = pow(10, floor(log10(raw)))
        let step = [1.0, 2, 5, 10].map { $0 * power }.first { $0 >= raw } ?? 10 * power
        let count = Int((maximum / step).rounded(.up))
        return (0...max(1, count)).map { Double($0) * step }
    }

    static func label(_ v: Double) -> String {
        if v == 0 { return "0" }
        if abs(v) >= 10_000 { return String(format: "%.1fk", v / 1000) }
        if abs(v) >= 10 || v == v.rounded() { return String(format: "%.0f", v) }
        return String(format: "%.2g", v)
    }

    private static func line(_ x1: Double, _ y1: Double, _ x2: Double, _ y2: Double, colour i: Int) -> String {
        "<line x1=\"\(f(x1))\" y1=\"\(f(y1))\" x2=\"\(f(x2))\" y2=\"\(f(y2))\" stroke=\"\(colours[i % colours.count])\" stroke-width=\"2\" stroke-dasharray=\"\(dashes[i % dashes.count])\"/>"
    }

    private static func f(_ v: Double) -> String { String(format: "%.1f", v) }

    static func escape(_ s: String) -> String {
        s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
            .replacingOccurrences(of: ">", with: "&gt;")
    }
}
