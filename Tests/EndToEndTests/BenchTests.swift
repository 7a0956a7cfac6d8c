import Foundation
import Testing

/// `tandem bench` against a real `tandem serve`: its figures agree with each other and with the server's usage.
@Suite(.serialized) struct BenchTests {
    /// Runs `tandem bench ARGUMENTS --result-json F`; returns the exit status, the output and F's bytes.
    static func runBench(_ arguments: [String]) async throws -> (Int32, String, Data) {
        let json = FileManager.default.temporaryDirectory.appendingPathComponent("bench-\(UUID().uuidString).json")
        defer { try? FileManager.default.removeItem(at: json) }
        let result = try await offThePool { try TandemBinary.run(arguments + ["--result-json", json.path]) }
        return (result.status, result.stdout + result.stderr, (try? Data(contentsOf: json)) ?? Data())
    }

    static func object(_ data: Data) -> [String: Any] {
        (try? JSONSerialization.jsonObject(with: data) as? [String: Any]) ?? [:]
    }

    @Test func figuresAreConsistent() async throws {
        let server = try await ServerProcess()
        defer { #expect(server.stop() == 0) }
        let svg = FileManager.default.temporaryDirectory.appendingPathComponent("bench-\(UUID().uuidString).svg")
        defer { try? FileManager.default.removeItem(at: svg) }
        let (status, output, data) = try await Self.runBench([
            "bench", "--base-url", server.baseURL, "--num-prompts", "12", "--input-len", "32", "--output-len", "8",
            "--request-rate", "20", "--seed", "3", "--percentiles", "50,90,99", "--goodput", "ttft:60000",
            "--plot", svg.path, "--compare", server.baseURL, "--label", "first-run", "--compare-label", "second-run",
        ])
        let r = Self.object(data)
        #expect(status == 0, "\(output)")
        #expect(output.contains("Serving Benchmark Result"))
        #expect(output.contains("Mean TTFT (ms):"))
        #expect(r["completed"] as? Int == 12)
        #expect(r["failed"] as? Int == 0)
        let requests = try #require(r["requests"] as? [[String: Any]])
        let outputs = requests.compactMap { $0["output_tokens"] as? Int }
        #expect(outputs.count == 12)
        #expect(outputs.allSatisfy { (7...8).contains($0) }, "usage from the server, max_tokens honoured: \(outputs)")
        #expect(r["total_output_tokens"] as? Int == outputs.reduce(0, +))
        let inputs = requests.compactMap { $0["prompt_tokens"] as? Int }
        #expect(inputs.allSatisfy { (28...35).contains($0) }, "\(inputs)")
        let duration = try #require(r["duration_s"] as? Double)
        let throughput = try #require(r["output_throughput"] as? Double)
        #expect(abs(throughput - Double(outputs.reduce(0, +)) / duration) < 1e-6)
        for key in ["ttft", "tpot", "itl", "e2el"] {
            let s = try #require(r[key] as? [String: Double], "\(key)")
            #expect(s["p50_ms"]! <= s["p90_ms"]! && s["p90_ms"]! <= s["p99_ms"]!, "\(key): \(s)")
            #expect(abs(s["p50_ms"]! - s["median_ms"]!) < 1e-9)
        }
        let ttft = try #require(r["ttft"] as? [String: Double])
        let e2e = try #require(r["e2el"] as? [String: Double])
        #expect(ttft["mean_ms"]! <= e2e["mean_ms"]!)
        #expect(r["request_goodput"] as? Double == r["request_throughput"] as? Double, "a 60 s TTFT SLO is met by all")
        let picture = try String(contentsOf: svg, encoding: .utf8)
        #expect(picture.hasPrefix("<svg") && picture.contains("TTFT"))
        // Both deployments on each of the three panels, a legend entry each, P50 and P99 marked on the two CDFs.
        #expect(picture.components(separatedBy: "<polyline").count - 1 == 6, "\(picture)")
        #expect(picture.contains(">first-run<") && picture.contains(">second-run<"))
        #expect(picture.components(separatedBy: ">P50 ").count - 1 == 4)
        #expect(picture.components(separatedBy: ">P99 ").count - 1 == 4)
        #expect((r["compare"] as? [String: Any])?["completed"] as? Int == 12)
    }

    @Test func failuresAreCountedWhenTheServerStopsMidway() async throws {
        let server = try await ServerProcess()
        let run = Task {
            try await Self.runBench([
                "bench", "--base-url", server.baseURL, "--num-prompts", "60", "--input-len", "16", "--output-len",
                "16", "--request-rate", "5", "--seed", "1",
            ])
        }
        // Stop the server once the benchmark is under way: some requests have finished, more are still to come (the
        // arrivals last 12 s, so a loaded machine that sees the first tokens late still stops it midway).
        for _ in 0..<200 {
            let done = metricValue(try await server.get("/metrics").body, "vllm:generation_tokens_total") ?? 0
            if done > 0 { break }
            try await Task.sleep(for: .milliseconds(20))
        }
        _ = try await offThePool { server.stop() }
        let (_, output, data) = try await run.value
        let r = Self.object(data)
        let completed = r["completed"] as? Int ?? -1
        let failed = r["failed"] as? Int ?? -1
        #expect(completed + failed == 60, "\(output)")
        #expect(failed > 0)
        #expect(output.contains("First failures:"))
        #expect((r["errors"] as? [String])?.allSatisfy { !$0.isEmpty } == true)
    }

    @Test func textPromptsFromTheModelsTokenizerHaveTheRequestedLength() async throws {
        let server = try await ServerProcess()
        defer { #expect(server.stop() == 0) }
        let (status, output, data) = try await Self.runBench([
            "bench", "--base-url", server.baseURL, "--num-prompts", "6", "--input-len", "40", "--range-ratio", "0",
            "--output-len", "4", "--tokenizer", "default", "--seed", "5",
        ])
        #expect(status == 0, "\(output)")
        let requests = Self.object(data)["requests"] as? [[String: Any]] ?? []
        #expect(requests.compactMap { $0["prompt_tokens"] as? Int } == [Int](repeating: 40, count: 6), "\(requests)")
    }
}
