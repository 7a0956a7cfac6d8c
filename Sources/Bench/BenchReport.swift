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

    /// An SVG with the TTFT and ITL distributions (CDFs) and output throughput over time, of this run alone.
    public func svg(title: String) -> String {
        BenchPlot.svg(title: title, series: [BenchPlot.Series(name: "this run", result: self)])
    }

}
