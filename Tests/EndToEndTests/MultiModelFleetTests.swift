import Foundation
import Testing

/// One proxy in front of two model families, each a 1P1D pair: SmolLM2 (`default`) and Gemma 3 (`gemma3-270m`).
/// The proxy learns each instance's models from its `/v1/models`, routes a request by its `model` field, lists both,
/// and refuses a model nobody serves with OpenAI's 404. Gemma's disaggregated output equals a colocated Gemma's, its
/// decode loading the prefill's KV, of which sliding-window layers carry only their window.
@Suite(.serialized) struct MultiModelFleetTests {
    @Test func aProxyRoutesEachRequestToAnInstancePairServingItsModel() async throws {
        let discovery = freePort()
        let proxy = try await ServerProcess.proxy(discoveryPort: discovery)
        var started: [ServerProcess] = [proxy]
        defer { for p in started { p.stop() } }
        func pair(_ model: String) async throws -> (prefill: ServerProcess, decode: ServerProcess) {
            let p = try await onAFreePort { port in
                try await ServerProcess.instance(
                    model: model, role: "kv_producer", kvPort: port, discoveryPort: discovery)
            }
            started.append(p)
            let d = try await onAFreePort { port in
                try await ServerProcess.instance(
                    model: model, role: "kv_consumer", kvPort: port, discoveryPort: discovery)
            }
            started.append(d)
            return (p, d)
        }
        let smol = try await pair("default")
        let gemma = try await pair("gemma3-270m")
        let colocated = try await ServerProcess(model: "gemma3-270m")
        started.append(colocated)
        try await waitForInstances(proxy, prefill: 2, decode: 2)
        try await waitFor("the proxy to list both models", timeout: 30) {
            let data = try await proxy.get("/v1/models").json?["data"] as? [[String: Any]] ?? []
            return Set(data.compactMap { $0["id"] as? String }) == ["default", "gemma3-270m"]
        }

        for prompt in ["The capital of France is", "def fibonacci(n):", "Once upon a time"] {
            let body = #"{"model":"gemma3-270m","prompt":"\#(prompt)","max_tokens":24,"temperature":0}"#
            let want = try #require(try await colocated.post("/v1/completions", body).json?.firstChoice)
            let got = try await proxy.post("/v1/completions", body)
            #expect(got.status == .ok, "\(got.body)")
            #expect(got.json?["model"] as? String == "gemma3-270m")
            #expect(got.json?.firstChoice?["text"] as? String == want["text"] as? String, "\(prompt)")
        }
        // A prompt longer than the sliding window (512): still the colocated answer, and the transfer carried every
        // position of the 3 global layers but only the last 512 of the 15 sliding-window ones.
        let received = #"tandem_kv_transfer_bytes_total{direction="received"}"#
        let before = metricValue(try await gemma.decode.get("/metrics").body, received) ?? 0
        let long = String(repeating: "The quick brown fox jumps over the lazy dog, and the dog sleeps on. ", count: 48)
        let longBody = #"{"model":"gemma3-270m","prompt":"\#(long)","max_tokens":16,"temperature":0}"#
        let wantLong = try #require(try await colocated.post("/v1/completions", longBody).json)
        let gotLong = try await proxy.post("/v1/completions", longBody)
        #expect(gotLong.status == .ok, "\(gotLong.body)")
        #expect(gotLong.json?.firstChoice?["text"] as? String == wantLong.firstChoice?["text"] as? String)
        let tokens = try #require((wantLong["usage"] as? [String: Any])?["prompt_tokens"] as? Int)
        #expect(tokens > 512)
        let after = metricValue(try await gemma.decode.get("/metrics").body, received) ?? 0
        let perPosition = 2 * 256 * 2  // K and V, one KV head of 256, fp16
        let whole = 18 * tokens * perPosition
        let windowed = (3 * tokens + 15 * 512) * perPosition
        #expect(Int(after - before) == windowed, "carried \(after - before) bytes; every position would be \(whole)")
        print("gemma3 1P1D, \(tokens)-token prompt: \(Int(after - before)) KV bytes carried, \(whole) without windows")

        // Gemma 3 270M is a base model: its file has no chat template, so chat is refused (400), through the proxy as
        // from the instance itself.
        let gemmaChat =
            #"{"model":"gemma3-270m","messages":[{"role":"user","content":"Name three colours."}],"max_tokens":24}"#
        let wantChat = try await colocated.post("/v1/chat/completions", gemmaChat)
        let gotChat = try await proxy.post("/v1/chat/completions", gemmaChat)
        #expect(wantChat.status == .badRequest && gotChat.status == .badRequest, "\(gotChat.body)")
        #expect(gotChat.body.contains("no chat template"), "\(gotChat.body)")

        let smolReply = try await proxy.post(
            "/v1/completions", #"{"model":"default","prompt":"Hello","max_tokens":8,"temperature":0}"#)
        #expect(smolReply.status == .ok && smolReply.json?["model"] as? String == "default", "\(smolReply.body)")

        // Each decode served only its own model's requests, and Gemma's loaded the prefill's KV.
        let gemmaMetrics = try await gemma.decode.get("/metrics").body
        #expect(metricValue(gemmaMetrics, "tandem_kv_recomputes_total") == 0)
        #expect((metricValue(gemmaMetrics, "tandem_kv_loaded_tokens_total") ?? 0) > 0)
        #expect(metricSum(gemmaMetrics, "vllm:request_success_total") == 4)
        #expect(metricSum(try await smol.decode.get("/metrics").body, "vllm:request_success_total") == 1)

        let unknown = try await proxy.post("/v1/completions", #"{"model":"llama-3","prompt":"Hi","max_tokens":4}"#)
        #expect(unknown.status == .notFound)
        let error = unknown.json?["error"] as? [String: Any]
        #expect(error?["code"] as? String == "model_not_found" && error?["param"] as? String == "model")
    }
}

/// The sum of a metric over all its label sets.
func metricSum(_ text: String, _ name: String) -> Double {
    text.split(separator: "\n").filter { $0.hasPrefix(name + "{") || $0.hasPrefix(name + " ") }
        .compactMap { $0.split(separator: " ").last.flatMap { Double($0) } }.reduce(0, +)
}
