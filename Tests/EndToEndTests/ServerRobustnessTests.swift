import AsyncHTTPClient
import Foundation
import NIOCore
import Testing

/// Reads one metric's value from Prometheus text.
func metricValue(_ text: String, _ name: String) -> Double? {
    for line in text.split(separator: "\n") where line.hasPrefix(name + "{") || line.hasPrefix(name + " ") {
        if let v = line.split(separator: " ").last.flatMap({ Double($0) }) { return v }
    }
    return nil
}

/// Bad input, disconnecting clients and shutdown, against a real `tandem serve` process.
@Suite(.serialized) struct ServerRobustnessTests {
    @Test func badRequestsGetOpenAIErrorsAndTheServerKeepsServing() async throws {
        let server = try await ServerProcess(["--max-model-len", "64"])
        defer { #expect(server.stop() == 0) }
        let long = String(repeating: "word ", count: 100)
        let cases: [(path: String, body: String, status: Int, param: String?, says: String)] = [
            ("/v1/completions", "{not json", 400, nil, "not valid JSON"),
            ("/v1/completions", "[1,2]", 400, nil, "JSON object"),
            ("/v1/completions", "", 400, nil, "empty"),
            ("/v1/completions", #"{"max_tokens":4}"#, 400, "prompt", "required"),
            ("/v1/completions", #"{"prompt":"x","max_tokens":0}"#, 400, "max_tokens", "max_tokens"),
            ("/v1/completions", #"{"prompt":"x","max_tokens":"4"}"#, 400, "max_tokens", "integer"),
            ("/v1/completions", #"{"prompt":"x","temperature":"hot"}"#, 400, "temperature", "number"),
            ("/v1/completions", #"{"prompt":"x","top_p":0}"#, 400, "top_p", "top_p"),
            ("/v1/completions", #"{"prompt":"x","stop":[1]}"#, 400, "stop", "string"),
            ("/v1/completions", #"{"prompt":"x","stream":"yes"}"#, 400, "stream", "boolean"),
            ("/v1/completions", #"{"prompt":[1,-5]}"#, 400, "prompt", "token id"),
            ("/v1/completions", #"{"prompt":[1,99999999]}"#, 400, "prompt", "out of vocabulary"),
            ("/v1/completions", #"{"prompt":[]}"#, 400, "prompt", "empty"),
            ("/v1/completions", "{\"prompt\":\"\(long)\"}", 400, "prompt", "101 tokens"),
            ("/v1/completions", #"{"prompt":"x","model":"gpt-9"}"#, 404, "model", "does not exist"),
            ("/v1/chat/completions", #"{"max_tokens":4}"#, 400, "messages", "required"),
            ("/v1/chat/completions", #"{"messages":"hi"}"#, 400, "messages", "array"),
            ("/v1/chat/completions", #"{"messages":[{"content":"hi"}]}"#, 400, "messages", "role"),
            ("/v1/chat/completions", #"{"messages":[{"role":"user","content":5}]}"#, 400, "messages", "content"),
            ("/detokenize", #"{"tokens":["a"]}"#, 400, "tokens", "integer"),
            ("/v1/nothing", "{}", 404, nil, "no route"),
        ]
        for c in cases {
            let reply = try await server.post(c.path, c.body)
            #expect(Int(reply.status.code) == c.status, "\(c.body) → \(reply.body)")
            let error = try #require(reply.json?["error"] as? [String: Any], "\(c.body) → \(reply.body)")
            #expect((error["message"] as? String)?.contains(c.says) == true, "\(c.body) → \(error)")
            #expect(error["type"] is String)
            #expect(error["param"] as? String == c.param, "\(c.body) → \(error)")
            #expect(error.keys.contains("code"))
        }
        let tooLong = try await server.post("/v1/completions", "{\"prompt\":\"\(long)\"}")
        #expect(tooLong.body.contains("64"), "the message gives the limit too: \(tooLong.body)")

        let huge = "{\"prompt\":\"" + String(repeating: "a", count: 9 << 20) + "\"}"
        let big = try await server.post("/v1/completions", huge)
        #expect(big.status.code == 413)
        #expect((big.json?["error"] as? [String: Any])?["message"] != nil)

        let ok = try await server.post("/v1/completions", #"{"prompt":"Hi","max_tokens":2}"#)
        #expect(ok.status == .ok)
        #expect(try await server.get("/health").status == .ok)
    }

    @Test func apiKeyIsRequiredOnV1WhenSet() async throws {
        let server = try await ServerProcess(["--api-key", "sekrit"])
        defer { #expect(server.stop() == 0) }
        let body = #"{"prompt":"Hi","max_tokens":2}"#
        let missing = try await server.post("/v1/completions", body)
        #expect(missing.status == .unauthorized)
        #expect((missing.json?["error"] as? [String: Any])?["message"] as? String != nil)
        let wrong = try await server.post("/v1/completions", body, headers: [("Authorization", "Bearer nope")])
        #expect(wrong.status == .unauthorized)
        let right = try await server.post("/v1/completions", body, headers: [("Authorization", "Bearer sekrit")])
        #expect(right.status == .ok)
        #expect(try await server.get("/health").status == .ok, "health needs no key, as in vLLM")
    }

    @Test func aClientThatDisconnectsMidStreamFreesItsBlocks() async throws {
        let server = try await ServerProcess()
        defer { #expect(server.stop() == 0) }
        let url = server.baseURL
        let reader = Task {
            var request = HTTPClientRequest(url: url + "/v1/completions")
            request.method = .POST
            request.body = .bytes(
                ByteBuffer(
                    string: #"{"prompt":"Tell me a long story.","max_tokens":2000,"ignore_eos":true,"stream":true}"#))
            let response = try await HTTPClient.shared.execute(request, timeout: .seconds(120))
            var received = 0
            for try await chunk in response.body {
                received += chunk.readableBytes
                if received > 2000 { break }  // Leaving the loop drops the connection.
            }
            return received
        }
        #expect(try await reader.value > 2000)
        var usage = 1.0
        var running = 1.0
        for _ in 0..<200 {
            let metrics = try await server.get("/metrics").body
            usage = metricValue(metrics, "vllm:kv_cache_usage_perc") ?? -1
            running = metricValue(metrics, "vllm:num_requests_running") ?? -1
            if usage == 0, running == 0 { break }
            try await Task.sleep(for: .milliseconds(50))
        }
        #expect(usage == 0)
        #expect(running == 0)
        let aborted = metricValue(
            try await server.get("/metrics").body,
            #"vllm:request_success_total{model_name="default",finished_reason="abort"}"#)
        #expect(aborted == 1)
    }

    @Test func sigtermAbortsInFlightStreamsAndExitsZero() async throws {
        let server = try await ServerProcess()
        let stream = Task {
            try await server.post(
                "/v1/completions", #"{"prompt":"Count:","max_tokens":3000,"ignore_eos":true,"stream":true}"#)
        }
        try await waitFor("the stream to run", timeout: 30) {
            metricValue(try await server.get("/metrics").body, "vllm:num_requests_running") == 1
        }
        #expect(server.stop() == 0)
        let reply = try await stream.value
        #expect(reply.status == .ok)
        #expect(reply.events.last?.firstChoice?["finish_reason"] as? String == "abort")
        #expect(reply.body.hasSuffix("data: [DONE]\n\n"))
        #expect(server.logText.contains("aborting in-flight requests"))
    }
}
