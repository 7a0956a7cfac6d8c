import Foundation

/// The printed table, the JSON and the SVG picture of a run.
extension BenchResult {
    private static func line(_ label: String, _ value: String) -> String {
        label.padding(toLength: 42, withPad: " ", startingAt: 0) + value
    }

    private static func number(_ v: Double) -> String { String(format: "%.2f", v) }

    private static func rule(_ title: String) -> String {
        let width = 50
        let side = max(1, (width - title.count) / 2)
        let left = String(repeating: "-", count: side)
        return left + title + String(repeating: "-", count: max(1, width - side - title.count))
    }

    /// The table, in the layout of `vllm bench serve`.
    public var table: String {
        var out = [
            String(repeating: "=", count: 12) + " Serving Benchmark Result " + String(repeating: "=", count: 12),
            Self.line("Successful requests:", "\(succeeded.count)"),
            Self.line("Failed requests:", "\(failed.count)"),
            Self.line("Benchmark duration (s):", Self.number(duration)),
            Self.line("Total input tokens:", "\(inputTokens)"),
            Self.line("Total generated tokens:", "\(outputTokens)"),
            Self.line("Request throughput (req/s):", Self.number(requestThroughput)),
            Self.line("Output token throughput (tok/s):", Self.number(outputThroughput)),
            Self.line("Total Token throughput (tok/s):", Self.number(totalThroughput)),
        ]
        if let g = goodputRate { out.append(Self.line("Request goodput (req/s):", Self.number(g))) }
        for (title, short, s) in [
            ("Time to First Token", "TTFT", ttft), ("Time per Output Token (excl. 1st token)", "TPOT", tpot),
            ("Inter-token Latency", "ITL", itl), ("End-to-end Latency", "E2EL", e2e),
        ] {
            out.append(Self.rule(title))
            out.append(Self.line("Mean \(short) (ms):", Self.number(s.mean)))
            out.append(Self.line("Median \(short) (ms):", Self.number(s.median)))
            for (p, v) in s.percentiles {
                out.append(
                    Self.line(
                        "P\(p.formatted(.number.precision(.fractionLength(0...1)))) \(short) (ms):", Self.number(v)))
            }
        }
        out.append(String(repeating: "=", count: 50))
        if !failed.isEmpty {
            out.append("First failures:")
            for r in failed.prefix(3) { out.append("  request \(r.index): \(r.error ?? "?")") }
        }
        return out.joined(separator: "\n")
    }

    /// Every figure plus per-request records.
    public var json: [String: Any] {
        func summary(_ s: Summary) -> [String: Any] {
            var o: [String: Any] = ["mean_ms": s.mean, "median_ms": s.median, "std_ms": s.std]
            for (p, v) in s.percentiles { o["p\(p.formatted(.number.precision(.fractionLength(0...1))))_ms"] = v }
            return o
        }
        var o: [String: Any] = [
            "completed": succeeded.count, "failed": failed.count, "duration_s": duration,
            "total_input_tokens": inputTokens, "total_output_tokens": outputTokens,
            "request_throughput": requestThroughput, "output_throughput": outputThroughput,
            "total_token_throughput": totalThroughput, "ttft": summary(ttft), "tpot": summary(tpot),
            "itl": summary(itl), "e2el": summary(e2e),
            "errors": failed.map { $0.error ?? "" },
            "requests": records.map { r -> [String: Any] in
                [
                    "index": r.index, "start_s": r.start, "prompt_tokens": r.promptTokens,
                    "output_tokens": r.outputTokens, "ttft_s": r.ttft ?? NSNull(), "itl_s": r.itl, "e2e_s": r.e2e,
                    "error": r.error ?? NSNull(),
                ]
            },
        ]
        if let g = goodputRate { o["request_goodput"] = g }
        return o
    }

    /// An SVG with the TTFT and ITL distributions (CDFs) and output throughput over time.
    public func svg(title: String) -> String {
        let w = 960.0
        let h = 360.0
        var parts: [String] = [
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(w))\" height=\"\(Int(h))\" font-family=\"sans-serif\" font-size=\"12\">",
            "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>",
            "<text x=\"10\" y=\"18\" font-size=\"14\">\(Self.escape(title))</text>",
        ]
        func panel(_ index: Int, _ name: String, _ xLabel: String, _ points: [(Double, Double)], yLabel: String) {
            let x0 = 20 + Double(index) * 315 + 40
            let y0 = 40.0
            let pw = 250.0
            let ph = 260.0
            parts.append(
                "<rect x=\"\(x0)\" y=\"\(y0)\" width=\"\(pw)\" height=\"\(ph)\" fill=\"none\" stroke=\"#888\"/>")
            parts.append("<text x=\"\(x0)\" y=\"\(y0 - 6)\">\(name)</text>")
            parts.append("<text x=\"\(x0 + pw / 2 - 30)\" y=\"\(y0 + ph + 30)\">\(xLabel)</text>")
            parts.append(
                "<text x=\"\(x0 - 30)\" y=\"\(y0 + ph / 2)\" transform=\"rotate(-90 \(x0 - 30) \(y0 + ph / 2))\">\(yLabel)</text>"
            )
            guard let maxX = points.map(\.0).max(), let maxY = points.map(\.1).max(), maxX > 0, maxY > 0 else {
                parts.append("<text x=\"\(x0 + 80)\" y=\"\(y0 + ph / 2)\">no data</text>")
                return
            }
            parts.append("<text x=\"\(x0 + pw - 40)\" y=\"\(y0 + ph + 14)\">\(Self.short(maxX))</text>")
            parts.append("<text x=\"\(x0 - 36)\" y=\"\(y0 + 10)\">\(Self.short(maxY))</text>")
            let path = points.map { p in
                "\(String(format: "%.1f", x0 + p.0 / maxX * pw)),\(String(format: "%.1f", y0 + ph - p.1 / maxY * ph))"
            }.joined(separator: " ")
            parts.append("<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"2\" points=\"\(path)\"/>")
        }
        func cdf(_ values: [Double]) -> [(Double, Double)] {
            let v = values.sorted()
            return v.enumerated().map { ($1, Double($0 + 1) / Double(v.count)) }
        }
        panel(
            0, "TTFT distribution (CDF)", "TTFT (ms)", cdf(succeeded.compactMap(\.ttft).map { $0 * 1000 }),
            yLabel: "fraction")
        panel(
            1, "Inter-token latency (CDF)", "ITL (ms)", cdf(succeeded.flatMap(\.itl).map { $0 * 1000 }),
            yLabel: "fraction")
        // Output tokens per second in one-second bins, from each request's tokens spread over its life.
        let bins = max(1, Int(duration.rounded(.up)))
        var perSecond = [Double](repeating: 0, count: bins)
        for r in succeeded where r.outputTokens > 0 {
            let first = r.start + (r.ttft ?? 0)
            let end = r.start + r.e2e
            for k in 0..<r.outputTokens {
                let t = r.outputTokens == 1 ? end : first + (end - first) * Double(k) / Double(r.outputTokens - 1)
                perSecond[min(bins - 1, max(0, Int(t)))] += 1
            }
        }
        panel(
            2, "Output throughput over time", "time (s)", perSecond.enumerated().map { (Double($0 + 1), $1) },
            yLabel: "tokens/s")
        parts.append("</svg>")
        return parts.joined(separator: "\n")
    }

    static func short(_ v: Double) -> String { v >= 100 ? String(Int(v.rounded())) : String(format: "%.2g", v) }

    static func escape(_ s: String) -> String {
        s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
    }
}
