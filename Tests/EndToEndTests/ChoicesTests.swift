import Foundation
import Testing

/// Several choices in one request: `n` (choice j of a seeded request samples with seed + j) and prompt lists (one
/// choice per prompt, numbered prompt by prompt), whole or streamed, each choice what the same request alone would
/// give; and `echo`.
@Suite(.serialized) struct ChoicesTests {
    struct Choice: Equatable {
        var index: Int
        var text: String
    }

    func choices(_ server: ServerProcess, _ body: String) async throws -> (choices: [Choice], usage: [String: Any]) {
        let reply = try await server.post("/v1/completions", body)
        #expect(reply.status == .ok, "\(body): \(reply.body)")
        let list = (reply.json?["choices"] as? [[String: Any]] ?? []).map {
            Choice(index: $0["index"] as? Int ?? -1, text: $0["text"] as? String ?? "?")
        }
        return (list, reply.json?["usage"] as? [String: Any] ?? [:])
    }

    @Test func nAndPromptListsGiveWhatTheRequestsAloneWould() async throws {
        let server = try await ServerProcess()
        defer { #expect(server.stop() == 0) }
        let prompts = ["The capital of France is", "def fibonacci(n):", "Once upon a time"]
        var alone: [String] = []
        for p in prompts {
            alone.append(
                try await choices(server, #"{"prompt":"\#(p)","max_tokens":8,"temperature":0}"#).choices[0].text)
        }
        // A prompt list: one choice per prompt, in order, equal to the prompts sent one by one.
        let list = try await choices(
            server, #"{"prompt":["\#(prompts[0])","\#(prompts[1])","\#(prompts[2])"],"max_tokens":8,"temperature":0}"#)
        #expect(list.choices == alone.enumerated().map { Choice(index: $0.offset, text: $0.element) })
        #expect(list.usage["completion_tokens"] as? Int == 24)

        // n = 3, seeded at temperature 0.9: choice j is the request alone with seed 7 + j.
        let sampled = try await choices(
            server, #"{"prompt":"\#(prompts[2])","max_tokens":12,"temperature":0.9,"seed":7,"n":3}"#)
        #expect(sampled.choices.map(\.index) == [0, 1, 2])
        for j in 0..<3 {
            let one = try await choices(
                server, #"{"prompt":"\#(prompts[2])","max_tokens":12,"temperature":0.9,"seed":\#(7 + j)}"#)
            #expect(sampled.choices[j].text == one.choices[0].text, "choice \(j)")
        }
        #expect(Set(sampled.choices.map(\.text)).count > 1, "different seeds, different samples: \(sampled.choices)")
        let again = try await choices(
            server, #"{"prompt":"\#(prompts[2])","max_tokens":12,"temperature":0.9,"seed":7,"n":3}"#)
        #expect(again.choices == sampled.choices, "a seeded n > 1 request repeats")
        let single = try await choices(server, #"{"prompt":"\#(prompts[2])","max_tokens":12,"seed":7}"#)
        #expect(
            sampled.usage["prompt_tokens"] as? Int == single.usage["prompt_tokens"] as? Int, "the prompt counted once")
        #expect(sampled.usage["completion_tokens"] as? Int == 36)

        // A list of token-id lists with n = 2: four choices, prompt by prompt.
        let ids = try await server.post("/tokenize", #"{"prompt":"\#(prompts[0])"}"#).json?["tokens"] as? [Int] ?? []
        let both = try await choices(
            server, #"{"prompt":[\#(ids),\#(ids.prefix(3).map { $0 })],"max_tokens":4,"temperature":0,"n":2}"#)
        #expect(both.choices.map(\.index) == [0, 1, 2, 3])
        #expect(both.choices[0].text == both.choices[1].text && both.choices[2].text == both.choices[3].text)
        #expect(both.usage["prompt_tokens"] as? Int == ids.count + 3, "each prompt counted once: \(both.usage)")

        // Chat with n = 2: two messages.
        let chat = try await server.post(
            "/v1/chat/completions", #"{"messages":[{"role":"user","content":"Hi"}],"max_tokens":4,"n":2}"#)
        #expect((chat.json?["choices"] as? [[String: Any]])?.count == 2, "\(chat.body)")

        // Streamed, the same choices arrive interleaved, each chunk with its index, then the whole usage.
        let streamed = try await server.post(
            "/v1/completions",
            #"{"prompt":"\#(prompts[2])","max_tokens":12,"temperature":0.9,"seed":7,"n":3,"stream":true,"stream_options":{"include_usage":true}}"#
        )
        var texts = ["", "", ""]
        for event in streamed.events {
            for choice in event["choices"] as? [[String: Any]] ?? [] {
                if let i = choice["index"] as? Int, (0..<3).contains(i) { texts[i] += choice["text"] as? String ?? "" }
            }
        }
        #expect(texts == sampled.choices.map(\.text), "\(texts)")
        let usage = streamed.events.last?["usage"] as? [String: Any]
        #expect(usage?["completion_tokens"] as? Int == 36 && streamed.body.hasSuffix("data: [DONE]\n\n"))

        // Out of range.
        for (body, param) in [
            (#"{"prompt":"x","n":0}"#, "n"),
            (#"{"prompt":"x","n":129}"#, "n"), (#"{"prompt":[]}"#, "prompt"), (#"{"prompt":["a",[]]}"#, "prompt"),
        ] {
            let reply = try await server.post("/v1/completions", body)
            let error = reply.json?["error"] as? [String: Any]
            #expect(reply.status == .badRequest && error?["param"] as? String == param, "\(body): \(reply.body)")
        }
    }

    /// Each choice's text by index, from a whole response or a stream.
    func texts(_ reply: HTTPReply, stream: Bool) -> [Int: String] {
        var out: [Int: String] = [:]
        let objects = stream ? reply.events : [reply.json ?? [:]]
        for object in objects {
            for choice in object["choices"] as? [[String: Any]] ?? [] {
                if let i = choice["index"] as? Int { out[i, default: ""] += choice["text"] as? String ?? "" }
            }
        }
        return out
    }

    /// Through the proxy (disaggregated), several choices and prompt lists answer as a colocated instance does, and
    /// each prompt's KV moves once: the prefill computes each prompt once (`n` > 1 too), the decode loads it once
    /// and its other choices reuse it from the prefix cache.
    @Test func throughTheProxyEachPromptsKVMovesOnceAndTheAnswersAreTheColocatedOnes() async throws {
        let cluster = try await ResumeTests.Cluster.start(decodes: 1, colocated: true)
        defer { cluster.stop() }
        let long =
            "Write a long story about a lighthouse keeper who finds a message in a bottle on a stormy night, and about the ship that sent it, its captain, and the town they both came from."
        let promptTokens =
            try await cluster.colocated!.post("/tokenize", #"{"prompt":"\#(long)"}"#).json?["count"] as? Int ?? 0
        #expect(promptTokens > 32, "the prompt fills two blocks: \(promptTokens)")
        let bodies = [
            #""prompt":"\#(long)","max_tokens":10,"temperature":0.9,"seed":3,"n":3"#,
            #""prompt":["\#(long)","def fibonacci(n):","Once upon a time"],"max_tokens":8,"temperature":0"#,
            #""prompt":["def fibonacci(n):","Once upon a time"],"max_tokens":6,"temperature":0.8,"seed":1,"n":2"#,
            #""prompt":"The capital of France is","max_tokens":6,"temperature":0,"echo":true"#,
            #""prompt":"The capital of France is","max_tokens":6,"temperature":0,"echo":true,"logprobs":2"#,
        ]
        for fields in bodies {
            for stream in [false, true] {
                let body = "{\(fields),\"stream\":\(stream)}"
                let reference = texts(try await cluster.colocated!.post("/v1/completions", body), stream: stream)
                let reply = try await cluster.proxy.post("/v1/completions", body)
                #expect(reply.status == .ok, "\(body): \(reply.body)")
                #expect(texts(reply, stream: stream) == reference, "\(body)")
                if fields.contains("logprobs"), !stream {
                    let colocated = try await cluster.colocated!.post("/v1/completions", body)
                    let a = (reply.json?["choices"] as? [[String: Any]])?.first?["logprobs"] as? NSDictionary
                    let b = (colocated.json?["choices"] as? [[String: Any]])?.first?["logprobs"] as? NSDictionary
                    #expect(a != nil && a == b, "the prompt's logprobs through the proxy: \(reply.body)")
                }
                #expect(reference.count >= 2 || fields.contains("echo"), "\(reference)")
            }
        }
        // n = 3 once more, counted: one prefill of the prompt, one load on the decode, two prefix-cache reuses.
        func counts() async throws -> (prefilled: Double, loaded: Double, hits: Double) {
            let p = try await cluster.prefill.get("/metrics").body
            let d = try await cluster.decodes[0].get("/metrics").body
            return (
                metricValue(p, "vllm:prompt_tokens_total") ?? -1, metricValue(d, "tandem_kv_loaded_tokens_total") ?? -1,
                metricValue(d, "vllm:prefix_cache_hits_total") ?? -1
            )
        }
        let before = try await counts()
        let reply = try await cluster.proxy.post(
            "/v1/completions", #"{"prompt":"\#(long) Again.","max_tokens":4,"temperature":0.9,"seed":9,"n":3}"#)
        #expect((reply.json?["choices"] as? [Any])?.count == 3, "\(reply.body)")
        let after = try await counts()
        let prompt = Double(promptTokens + 2)
        #expect(after.prefilled - before.prefilled <= prompt + 1, "the prefill computed the prompt once: \(after)")
        #expect((prompt - 1...prompt + 1).contains(after.loaded - before.loaded), "loaded once: \(before) \(after)")
        let blocks = Double((promptTokens + 2) / 16)
        #expect(
            after.hits - before.hits >= 2 * 16 * blocks, "the other two choices reused its blocks: \(before) \(after)")
        let recomputes = metricValue(try await cluster.decodes[0].get("/metrics").body, "tandem_kv_recomputes_total")
        #expect(recomputes == 0)
    }

    /// `echo`: a completion's text starts with its prompt, whole or streamed, for each prompt of a list.
    @Test func echoStartsEachTextWithItsPrompt() async throws {
        let server = try await ServerProcess()
        defer { #expect(server.stop() == 0) }
        let prompt = "The capital of France is"
        let alone = try await choices(server, #"{"prompt":"\#(prompt)","max_tokens":8,"temperature":0}"#).choices[0]
            .text
        let echoed = try await choices(
            server, #"{"prompt":"\#(prompt)","max_tokens":8,"temperature":0,"echo":true}"#)
        #expect(echoed.choices[0].text == prompt + alone)
        let stream = try await server.post(
            "/v1/completions", #"{"prompt":"\#(prompt)","max_tokens":8,"temperature":0,"echo":true,"stream":true}"#)
        let pieces = stream.events.compactMap { ($0["choices"] as? [[String: Any]])?.first?["text"] as? String }
        #expect(pieces.first?.hasPrefix(prompt) == true && pieces.joined() == prompt + alone, "\(pieces)")
        let list = try await choices(
            server, #"{"prompt":["\#(prompt)","Once upon a time"],"max_tokens":4,"temperature":0,"echo":true}"#)
        #expect(list.choices[0].text.hasPrefix(prompt) && list.choices[1].text.hasPrefix("Once upon a time"))
        let chat = try await server.post(
            "/v1/chat/completions", #"{"messages":[{"role":"user","content":"Hi"}],"echo":true}"#)
        #expect(chat.status == .badRequest && (chat.json?["error"] as? [String: Any])?["param"] as? String == "echo")
    }

    /// `echo` with `logprobs`: the prompt's tokens come first with their logprobs (the first has none), each the
    /// very number a request that generated that token gives it.
    @Test func echoedPromptLogprobsEqualTheGeneratedOnes() async throws {
        let server = try await ServerProcess()
        defer { #expect(server.stop() == 0) }
        func logprobs(_ body: String) async throws -> (tokens: [String], values: [Double?], offsets: [Int]) {
            let reply = try await server.post("/v1/completions", body)
            let choice = (reply.json?["choices"] as? [[String: Any]])?.first
            let lp = choice?["logprobs"] as? [String: Any]
            let values = (lp?["token_logprobs"] as? [Any] ?? []).map { $0 as? Double }
            return (lp?["tokens"] as? [String] ?? [], values, lp?["text_offset"] as? [Int] ?? [])
        }
        let prompt = "The capital of France is"
        let ids = try await server.post("/tokenize", #"{"prompt":"\#(prompt)"}"#).json?["tokens"] as? [Int] ?? []
        let count = ids.count
        let reply = try await server.post(
            "/v1/completions", #"{"prompt":"\#(prompt)","max_tokens":4,"temperature":0,"return_token_ids":true}"#)
        let generatedIds = (reply.json?["choices"] as? [[String: Any]])?.first?["token_ids"] as? [Int] ?? []
        let generated = try await logprobs(#"{"prompt":"\#(prompt)","max_tokens":4,"temperature":0,"logprobs":2}"#)
        // The prompt and its answer's tokens, sent as token ids: the answer's logprobs now come from the prompt's rows.
        let echoed = try await logprobs(
            #"{"prompt":\#(ids + generatedIds),"max_tokens":1,"temperature":0,"logprobs":2,"echo":true}"#)
        #expect(echoed.tokens.count == count + generated.tokens.count + 1, "\(echoed.tokens)")
        #expect(echoed.values.first! == nil && echoed.values.dropFirst().allSatisfy { $0 != nil })
        #expect(Array(echoed.values[count..<(count + generated.values.count)]) == generated.values)
        #expect(echoed.offsets.first == 0 && echoed.offsets == echoed.offsets.sorted())
        #expect(
            Array(echoed.tokens.prefix(count + generated.tokens.count).suffix(generated.tokens.count))
                == generated.tokens)
    }
}
