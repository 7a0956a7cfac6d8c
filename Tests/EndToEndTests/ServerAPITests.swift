import Foundation
import Testing

func loadGolden() throws -> GoldenFile {
    let url = try #require(
        Bundle.module.url(forResource: "smollm2-135m-instruct-q4_1", withExtension: "json", subdirectory: "Fixtures"))
    return try JSONDecoder().decode(GoldenFile.self, from: Data(contentsOf: url))
}

/// Escapes a string as a JSON string literal.
func jsonString(_ s: String) -> String {
    let data = try! JSONSerialization.data(withJSONObject: [s], options: [.fragmentsAllowed])
    return String(String(decoding: data, as: UTF8.self).dropFirst().dropLast())
}

extension Dictionary where Key == String, Value == Any {
    var firstChoice: [String: Any]? { (self["choices"] as? [[String: Any]])?.first }
    var usage: [String: Int]? { self["usage"] as? [String: Int] }
}

/// `tandem serve` over real HTTP: the OpenAI endpoints, streamed and not, on IPv4 and IPv6.
@Suite(.serialized) struct ServerAPITests {
    @Test(arguments: ["127.0.0.1", "::1"])
    func completionsAndChatStreamedAndNot(host: String) async throws {
        let server = try await ServerProcess(host: host)
        defer { #expect(server.stop() == 0) }
        let prompt = #""prompt":"The capital of Germany is","max_tokens":8,"temperature":0"#
        let plain = try await server.post("/v1/completions", "{\(prompt),\"return_token_ids\":true}")
        #expect(plain.status == .ok)
        #expect(plain.contentType.hasPrefix("application/json"))
        let body = try #require(plain.json)
        #expect(body["object"] as? String == "text_completion")
        let choice = try #require(body.firstChoice)
        let text = try #require(choice["text"] as? String)
        #expect(text.hasPrefix(" Berlin"))
        #expect(choice["finish_reason"] as? String == "length")
        #expect((choice["token_ids"] as? [Int])?.count == 8)
        #expect(body.usage == ["prompt_tokens": 5, "completion_tokens": 8, "total_tokens": 13])

        let streamed = try await server.post(
            "/v1/completions", "{\(prompt),\"stream\":true,\"stream_options\":{\"include_usage\":true}}")
        #expect(streamed.status == .ok)
        #expect(streamed.contentType.hasPrefix("text/event-stream"))
        #expect(streamed.body.hasSuffix("data: [DONE]\n\n"))
        let events = streamed.events
        let deltas = events.compactMap { $0.firstChoice?["text"] as? String }
        #expect(deltas.joined() == text)
        #expect(events.compactMap { $0.firstChoice?["finish_reason"] as? String } == ["length"])
        #expect(events.last?.usage == ["prompt_tokens": 5, "completion_tokens": 8, "total_tokens": 13])

        let messages = #""messages":[{"role":"user","content":"What is 2+2?"}],"max_tokens":12,"temperature":0"#
        let chat = try await server.post(
            "/v1/chat/completions", "{\(messages)}", headers: [("X-Request-Id", "abc123")])
        #expect(chat.status == .ok)
        let chatBody = try #require(chat.json)
        #expect(chatBody["id"] as? String == "chatcmpl-abc123")
        #expect(chatBody["object"] as? String == "chat.completion")
        let message = try #require(chatBody.firstChoice?["message"] as? [String: Any])
        #expect(message["role"] as? String == "assistant")
        let content = try #require(message["content"] as? String)
        #expect(!content.isEmpty)

        let chatStream = try await server.post("/v1/chat/completions", "{\(messages),\"stream\":true}")
        let chunks = chatStream.events
        #expect(chunks.first?["object"] as? String == "chat.completion.chunk")
        #expect((chunks.first?.firstChoice?["delta"] as? [String: Any])?["role"] as? String == "assistant")
        let streamedContent = chunks.compactMap { ($0.firstChoice?["delta"] as? [String: Any])?["content"] as? String }
        #expect(streamedContent.joined() == content)
    }

    @Test func goldenPromptsGiveTheSameTokensAsTandemGenerate() async throws {
        let golden = try loadGolden()
        let server = try await ServerProcess()
        defer { #expect(server.stop() == 0) }
        // All twelve at once: the batch must not change any of them.
        let served = try await withThrowingTaskGroup(of: (String, [Int]).self) { group in
            for g in golden.generations {
                group.addTask {
                    let body =
                        "{\"prompt\":\(jsonString(g.prompt_text)),\"max_tokens\":16,\"temperature\":0,"
                        + "\"ignore_eos\":true,\"return_token_ids\":true}"
                    let reply = try await server.post("/v1/completions", body)
                    let ids = try #require(reply.json?.firstChoice?["token_ids"] as? [Int], "\(reply.body)")
                    let promptIds = try #require(reply.json?.firstChoice?["prompt_token_ids"] as? [Int])
                    #expect(promptIds == g.prompt_ids, "\(g.name)")
                    return (g.name, ids)
                }
            }
            return try await group.reduce(into: [:]) { $0[$1.0] = $1.1 }
        }
        for g in golden.generations {
            let result = try TandemBinary.run([
                "generate", "--prompt", g.prompt_text, "--max-tokens", "16", "--ignore-eos", "--json",
            ])
            #expect(result.status == 0, "\(result.stderr)")
            let object = try #require(
                try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any])
            #expect(served[g.name] == object["token_ids"] as? [Int], "\(g.name)")
        }
    }

    @Test func eightConcurrentMixedRequestsMatchTheSameRequestsSentAlone() async throws {
        let server = try await ServerProcess()
        defer { #expect(server.stop() == 0) }
        let prompts = [
            "Tell me about the moon.", "def add(a, b):", "The three primary colors are", "Once upon a time",
            "Water boils at", "My favourite food is", "The history of Rome begins", "import numpy as np\n",
        ]
        let bodies = prompts.enumerated().map { i, p in
            let sampling = i % 2 == 0 ? "\"temperature\":0" : "\"temperature\":0.8,\"top_p\":0.9,\"seed\":\(i * 7)"
            return "{\"prompt\":\(jsonString(p)),\"max_tokens\":\(8 + 3 * i),\(sampling),\"return_token_ids\":true}"
        }
        func ids(_ body: String, _ chat: Bool) async throws -> [Int] {
            let reply = try await server.post(chat ? "/v1/chat/completions" : "/v1/completions", body)
            return try #require(reply.json?.firstChoice?["token_ids"] as? [Int], "\(reply.body)")
        }
        // Odd requests go through chat (the prompt as a user message).
        let requests: [(String, Bool)] = bodies.enumerated().map { i, b in
            i % 2 == 0
                ? (b, false)
                : (
                    b.replacingOccurrences(of: "\"prompt\":", with: "\"messages\":[{\"role\":\"user\",\"content\":")
                        .replacingOccurrences(of: ",\"max_tokens\"", with: "}],\"max_tokens\""), true
                )
        }
        var alone: [[Int]] = []
        for (b, chat) in requests { alone.append(try await ids(b, chat)) }
        let together = try await withThrowingTaskGroup(of: (Int, [Int]).self) { group in
            for (i, (b, chat)) in requests.enumerated() { group.addTask { (i, try await ids(b, chat)) } }
            return try await group.reduce(into: [Int: [Int]]()) { $0[$1.0] = $1.1 }
        }
        for i in 0..<requests.count { #expect(together[i] == alone[i], "request \(i)") }
    }

    @Test func modelsHealthVersionTokenizeAndMetrics() async throws {
        let server = try await ServerProcess(["--served-model-name", "smol", "--max-model-len", "1024"])
        defer { #expect(server.stop() == 0) }
        let models = try #require(try await server.get("/v1/models").json)
        let entry = try #require((models["data"] as? [[String: Any]])?.first)
        #expect(entry["id"] as? String == "smol")
        #expect(entry["max_model_len"] as? Int == 1024)
        #expect(try await server.get("/health").status == .ok)
        #expect(try await server.get("/version").json?["version"] as? String != nil)

        let tokenized = try #require(try await server.post("/tokenize", #"{"prompt":"Hello world"}"#).json)
        #expect(tokenized["tokens"] as? [Int] == [19556, 905])
        #expect(tokenized["count"] as? Int == 2)
        #expect(tokenized["max_model_len"] as? Int == 1024)
        let chatTokens = try #require(
            try await server.post("/tokenize", #"{"messages":[{"role":"user","content":"Hi"}]}"#).json)
        #expect((chatTokens["count"] as? Int ?? 0) > 10)
        let text = try await server.post("/detokenize", #"{"tokens":[19556,905]}"#).json
        #expect(text?["prompt"] as? String == "Hello world")

        _ = try await server.post("/v1/completions", #"{"model":"smol","prompt":"Hi","max_tokens":3}"#)
        let metrics = try await server.get("/metrics")
        #expect(metrics.status == .ok)
        for name in [
            "vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
            "vllm:prompt_tokens_total", "vllm:generation_tokens_total", "vllm:time_to_first_token_seconds_bucket",
            "vllm:inter_token_latency_seconds_bucket", "vllm:e2e_request_latency_seconds_count",
            "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total",
        ] {
            #expect(metrics.body.contains(name), "\(name)")
        }
        #expect(metrics.body.contains(#"vllm:generation_tokens_total{model_name="smol"} 3"#))
    }
}
