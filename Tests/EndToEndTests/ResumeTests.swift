import AsyncHTTPClient
import Foundation
import NIOCore
import Testing

/// Resumable decode: `tandem_resume` continues a request exactly; the proxy's overlapped flow (`--pd-flow overlap`)
/// answers the first token from the prefill, cancels the decode when the prefill fails, and moves a stream whose
/// decode dies or freezes to another decode with the same tokens.
@Suite struct ResumeTests {
    static let sampled = #""temperature":0.8,"seed":1234"#
    static let greedy = #""temperature":0"#

    @Test(arguments: [greedy, sampled])
    func resumingAfterTheFirstTokensGivesTheRestOfTheColocatedAnswer(sampling: String) async throws {
        let server = try await ServerProcess()
        defer { #expect(server.stop() == 0) }
        for stream in [false, true] {
            let body = """
                {"prompt":"Tell me a story about a lighthouse.","max_tokens":16,"ignore_eos":true,\
                "return_token_ids":true,"stream":\(stream),"stream_options":{"include_usage":true},\(sampling)
                """
            let whole = Answer(try await server.post("/v1/completions", body + "}"), stream: stream)
            #expect(whole.tokens.count == 16, "\(whole)")
            for k in 0...5 {
                let resume = #","tandem_resume":{"token_ids":\#(Array(whole.tokens.prefix(k)))}}"#
                let rest = Answer(try await server.post("/v1/completions", body + resume), stream: stream)
                #expect(rest.tokens == Array(whole.tokens.dropFirst(k)), "k = \(k), stream \(stream)")
                #expect(whole.text.hasSuffix(rest.text) && (k > 0 || rest.text == whole.text), "k = \(k)")
                #expect(rest.finishReason == "length")
                #expect(rest.completionTokens == 16, "usage counts the whole request")
            }
        }
        // A completion's logprobs `text_offset` counts from the start of the whole answer.
        let lp =
            #"{"prompt":"Tell me a story about a lighthouse.","max_tokens":8,"ignore_eos":true,"logprobs":1,"return_token_ids":true,\#(sampling)"#
        let all = try #require(try await server.post("/v1/completions", lp + "}").json?.firstChoice)
        let ids = try #require(all["token_ids"] as? [Int])
        let resume = #","tandem_resume":{"token_ids":\#(Array(ids.prefix(3)))}}"#
        let rest = try #require(try await server.post("/v1/completions", lp + resume).json?.firstChoice)
        let offsets = { (c: [String: Any]) in (c["logprobs"] as? [String: Any])?["text_offset"] as? [Int] ?? [] }
        #expect(offsets(all).count == 8 && offsets(rest) == Array(offsets(all).dropFirst(3)), "\(offsets(rest))")
        // A point that an uninterrupted run could not reach is refused.
        let past = try await server.post(
            "/v1/completions", #"{"prompt":"Hi","max_tokens":2,"tandem_resume":{"token_ids":[1,2]}}"#)
        #expect(past.status == .badRequest)
        #expect(past.body.contains("tandem_resume"))
    }

    /// 1P2D behind an overlapping proxy, and a colocated instance for the reference answers.
    struct Cluster {
        let proxy: ServerProcess
        let prefill: ServerProcess
        let decodes: [ServerProcess]
        let colocated: ServerProcess?

        static func start(
            decodes: Int = 2, colocated: Bool = true, proxyArguments: [String] = [], decodeExtra: String = ""
        ) async throws -> Cluster {
            var discovery = 0
            let proxy = try await onAFreePort { port in
                discovery = port
                return try await ServerProcess.proxy(
                    discoveryPort: port, ttl: "30s", extra: ["--pd-flow", "overlap"] + proxyArguments)
            }
            let prefill = try await onAFreePort { port in
                try await ServerProcess.instance(
                    role: "kv_producer", kvPort: port, discoveryPort: discovery, sendType: "PUT_ASYNC")
            }
            var list: [ServerProcess] = []
            for _ in 0..<decodes {
                list.append(
                    try await onAFreePort { port in
                        try await ServerProcess.instance(
                            role: "kv_consumer", kvPort: port, discoveryPort: discovery, sendType: "PUT_ASYNC",
                            extra: decodeExtra)
                    })
            }
            let reference = colocated ? try await ServerProcess() : nil
            try await waitForInstances(proxy, prefill: 1, decode: decodes)
            return Cluster(proxy: proxy, prefill: prefill, decodes: list, colocated: reference)
        }

        /// Stops every process; `killed` (SIGKILLed by the test) is only reaped.
        func stop(killed: ServerProcess? = nil) {
            for s in [proxy, prefill] + decodes + (colocated.map { [$0] } ?? []) {
                let status = s.stop()
                if s !== killed { #expect(status == 0) }
            }
        }
    }

    @Test func theOverlappedFlowAnswersExactlyAsAColocatedInstance() async throws {
        let cluster = try await Cluster.start(decodes: 1)
        defer { cluster.stop() }
        for sampling in [Self.greedy, Self.sampled, #""temperature":1.1,"top_p":0.9,"seed":7"#] {
            for stream in [false, true] {
                let body =
                    #"{"prompt":"Write a short poem about rain.","max_tokens":24,"stream":\#(stream),\#(sampling)}"#
                let a = Answer(try await cluster.proxy.post("/v1/completions", body), stream: stream)
                let b = Answer(try await cluster.colocated!.post("/v1/completions", body), stream: stream)
                #expect(a.text == b.text && a.finishReason == b.finishReason, "\(sampling) stream \(stream)")
                #expect(a.completionTokens == b.completionTokens || stream)
            }
        }
        // The decode took the prefill's first token with the KV: it loaded every prompt position.
        let metrics = try await cluster.decodes[0].get("/metrics").body
        #expect(metricValue(metrics, "tandem_kv_recomputes_total") == 0)
        #expect((metricValue(metrics, "tandem_kv_loaded_tokens_total") ?? 0) > 0)
    }

    @Test(arguments: ["SIGKILL", "SIGSTOP"])
    func aStreamWhoseDecodeDiesAtToken40EndsWithTheColocatedText(signal: String) async throws {
        // A read timeout short enough for the test, long enough that a healthy decode on a loaded machine (the suite
        // runs tests in parallel on two cores) is not taken for a frozen one.
        let cluster = try await Cluster.start(proxyArguments: ["--read-timeout", "4"])
        var hit: ServerProcess?
        defer { cluster.stop(killed: signal == "SIGKILL" ? hit : nil) }
        let body = #"{"prompt":"Tell me a long story.","max_tokens":300,"ignore_eos":true,\#(Self.sampled)"#
        let reference = try #require(try await cluster.colocated?.post("/v1/completions", body + "}").json)
        let text = try #require(reference.firstChoice?["text"] as? String)
        let reply = try await streamPost(cluster.proxy, "/v1/completions", body + #","stream":true}"#) { events in
            guard events == 40 else { return }
            for d in cluster.decodes
            where metricValue(try await d.get("/metrics").body, "vllm:num_requests_running") == 1 {
                hit = d
            }
            guard let hit else { return }
            if signal == "SIGKILL" { hit.kill9() } else { kill(hit.process.processIdentifier, SIGSTOP) }
        }
        let frozen = try #require(hit, "one decode instance was running the stream at token 40")
        defer { if signal == "SIGSTOP" { kill(frozen.process.processIdentifier, SIGCONT) } }
        #expect(reply.status == .ok)
        #expect(!reply.body.contains("\"error\""), "no error event reaches the client")
        #expect(reply.body.hasSuffix("data: [DONE]\n\n"))
        let streamed = reply.events.compactMap { $0.firstChoice?["text"] as? String }.joined()
        #expect(streamed == text, "the stream goes on with the same tokens: \(streamed.count) of \(text.count)")
        let ids = Set(reply.events.compactMap { $0["id"] as? String })
        #expect(ids.count == 1, "one id for the whole stream")
        let moves = metricValue(try await cluster.proxy.get("/metrics").body, "tandem_proxy_migrations_total") ?? 0
        #expect(moves >= 1 && moves <= 2, "moved once (twice only if the machine stalled the second decode)")
        let other = try #require(cluster.decodes.first { $0 !== frozen })
        #expect(cluster.proxy.logText.contains("resuming on decode instance 127.0.0.1:\(other.port)"))
    }

    /// A constrained chat stream (a JSON schema; a forced tool call) whose decode is killed midway resumes on the other
    /// decode inside the grammar: the client gets the colocated answer, the same JSON, the same call.
    @Test(arguments: ["json_schema", "tool_call"])
    func aConstrainedStreamWhoseDecodeDiesResumesInsideItsGrammar(kind: String) async throws {
        // The decode is killed (its connection closes at once), so no read timeout is needed to find it; a generous
        // one lets the prefill compile the grammar on a loaded machine (CI timed a 4 s one out).
        let cluster = try await Cluster.start(proxyArguments: ["--read-timeout", "60"])
        var hit: ServerProcess?
        defer { cluster.stop(killed: hit) }
        let story =
            #"{"type":"object","properties":{"title":{"type":"string"},"story":{"type":"string"}},"required":["title","story"]}"#
        let constraint =
            kind == "json_schema"
            ? #""response_format":{"type":"json_schema","json_schema":{"name":"s","schema":\#(story)}}"#
            : #""tools":[{"type":"function","function":{"name":"tell","parameters":\#(story)}}],"tool_choice":"required","parallel_tool_calls":false"#
        let body =
            #"{"messages":[{"role":"user","content":"Tell me a long story as JSON."}],"max_tokens":120,"temperature":0.9,"seed":5,\#(constraint)"#
        let reference = try #require(try await cluster.colocated?.post("/v1/chat/completions", body + "}").json)
        let message = try #require(reference.firstChoice?["message"] as? [String: Any])
        // The decode is killed as soon as one runs the stream, found by polling the decodes rather than by what the
        // client has read: a tool call's deltas come late, and on a loaded machine the decode could finish before
        // the client reads its second event.
        let killed = LockedBox<ServerProcess>()
        let decodes = cluster.decodes
        let watcher = Task {
            try? await waitFor("a decode to run the stream", timeout: 60) {
                guard !Task.isCancelled else { return true }
                for d in decodes {
                    guard let text = try? await d.get("/metrics").body,
                        (metricValue(text, "vllm:num_requests_running") ?? 0) >= 1
                    else { continue }
                    d.kill9()
                    killed.set(d)
                    return true
                }
                return false
            }
        }
        let reply = try await streamPost(cluster.proxy, "/v1/chat/completions", body + #","stream":true}"#) { _ in }
        watcher.cancel()
        await watcher.value
        hit = killed.value
        #expect(hit != nil, "one decode instance was running the stream")
        #expect(reply.status == .ok && !reply.body.contains("\"error\""), "\(reply.body.suffix(400))")
        let moves = metricValue(try await cluster.proxy.get("/metrics").body, "tandem_proxy_migrations_total") ?? 0
        #expect(moves >= 1, "the stream moved to the other decode")
        let deltas = reply.events.compactMap { $0.firstChoice?["delta"] as? [String: Any] }
        if kind == "json_schema" {
            let streamed = deltas.compactMap { $0["content"] as? String }.joined()
            #expect(streamed == message["content"] as? String, "\(streamed)")
        } else {
            let calls = deltas.flatMap { $0["tool_calls"] as? [[String: Any]] ?? [] }
            let expected = (message["tool_calls"] as? [[String: Any]])?.first?["function"] as? [String: Any]
            let got = calls.first?["function"] as? [String: Any]
            #expect(calls.count == 1 && got?["arguments"] as? String == expected?["arguments"] as? String, "\(calls)")
            let finish = reply.events.compactMap { $0.firstChoice?["finish_reason"] as? String }.last
            #expect(finish == reference.firstChoice?["finish_reason"] as? String)
        }
    }

    @Test func aFailedPrefillCancelsTheOverlappedDecodeAtOnce() async throws {
        let cluster = try await Cluster.start(
            decodes: 1, colocated: false, proxyArguments: ["--prefill-timeout", "15"],
            decodeExtra: #""kv_transfer_timeout_s":60"#)
        defer { cluster.stop() }
        let d = cluster.decodes[0]
        kill(cluster.prefill.process.processIdentifier, SIGSTOP)
        defer { kill(cluster.prefill.process.processIdentifier, SIGCONT) }
        let call = Task {
            try await cluster.proxy.post("/v1/completions", #"{"prompt":"Hi there","max_tokens":20}"#)
        }
        // The decode request went out with the prefill's: the decode holds it, waiting for KV (for as long as the
        // proxy's 15 s prefill timeout: a loaded run missed a 5 s one).
        try await waitFor("the decode to wait for the KV", timeout: 15) {
            metricValue(try await d.get("/metrics").body, "vllm:num_requests_waiting") == 1
        }
        let reply = try await call.value
        #expect(reply.status == .badGateway)
        #expect((reply.json?["error"] as? [String: Any])?["type"] as? String == "upstream_error", "\(reply.body)")
        // Cancelled at once, not when its KV wait (60 s here) runs out; nothing is left reserved.
        try await waitFor("the decode to drop the request", timeout: 15, detail: { d.logText }) {
            let metrics = try await d.get("/metrics").body
            return metricValue(metrics, "vllm:num_requests_waiting") == 0
                && metricValue(metrics, "vllm:num_requests_running") == 0
                && metricValue(metrics, "tandem_kv_buffer_bytes") == 0
        }
    }

    @Test func maxTokens1AndAnEndingFirstTokenNeverRunOnTheDecode() async throws {
        let cluster = try await Cluster.start(decodes: 1)
        defer { cluster.stop() }
        let d = cluster.decodes[0]
        let work = ["vllm:generation_tokens_total", "tandem_kv_loaded_tokens_total", "tandem_kv_recomputes_total"]
        let counters = { () async throws -> [Double] in
            let metrics = try await d.get("/metrics").body
            return work.map { metricValue(metrics, $0) ?? 0 }
        }
        let before = try await counters()
        for round in 0..<4 {
            let stream = round % 2 == 1
            // max_tokens 1: the prefill's token is the answer, and the decode is not called.
            let one = #"{"prompt":"Once upon a time","max_tokens":1,"temperature":0,"stream":\#(stream)}"#
            let a = Answer(try await cluster.proxy.post("/v1/completions", one), stream: stream)
            let b = Answer(try await cluster.colocated!.post("/v1/completions", one), stream: stream)
            #expect(a.text == b.text && a.finishReason == "length")
            // An end token first (this prompt's greedy answer is EOS at once): the overlapped decode was sent, but
            // the prefill withholds the KV, so the decode never starts, and the proxy cancels it.
            let eos = #"{"prompt":"What is 2+2?","max_tokens":20,"temperature":0,"stream":\#(stream)}"#
            let c = Answer(try await cluster.proxy.post("/v1/completions", eos), stream: stream)
            let e = Answer(try await cluster.colocated!.post("/v1/completions", eos), stream: stream)
            #expect(e.finishReason == "stop" && e.text.isEmpty, "the prompt still ends at once: \(e)")
            #expect(c.text == e.text && c.finishReason == "stop")
        }
        try await waitFor("the decode to hold nothing", timeout: 5) {
            let metrics = try await d.get("/metrics").body
            return metricValue(metrics, "vllm:num_requests_waiting") == 0
                && metricValue(metrics, "vllm:num_requests_running") == 0
                && metricValue(metrics, "tandem_kv_buffer_bytes") == 0
        }
        let after = try await counters()
        #expect(
            after == before, "the decode computed, loaded and recomputed nothing (\(work): \(before) then \(after))")
    }
}

/// Starts a process on a port `freePort` found free, again on another when a process of a test running alongside
/// took it first (the check and the bind are apart).
func onAFreePort(_ start: (Int) async throws -> ServerProcess) async throws -> ServerProcess {
    for attempt in 1... {
        do {
            return try await start(freePort())
        } catch let failure as TestFailure where attempt < 3 && failure.description.contains("Address already in use") {
            continue
        }
    }
    fatalError("unreachable")
}

/// A completion's text, tokens, finish reason and completion-token count, from a whole answer or a stream.
struct Answer: CustomStringConvertible {
    var text = ""
    var tokens: [Int] = []
    var finishReason: String?
    var completionTokens: Int?

    init(_ reply: HTTPReply, stream: Bool) {
        let objects = stream ? reply.events : [reply.json ?? [:]]
        for object in objects {
            if let choice = object.firstChoice {
                text += choice["text"] as? String ?? ""
                tokens += choice["token_ids"] as? [Int] ?? []
                finishReason = choice["finish_reason"] as? String ?? finishReason
            }
            if let usage = object["usage"] as? [String: Any] { completionTokens = usage["completion_tokens"] as? Int }
        }
    }

    var description: String { "\(finishReason ?? "nil") \(tokens) \(text.debugDescription)" }
}

/// POSTs `body` and reads the server-sent events as they come, calling `onEvent` with the count of `data:` events
/// so far after each; returns the whole reply.
func streamPost(
    _ server: ServerProcess, _ path: String, _ body: String, onEvent: (Int) async throws -> Void
) async throws -> HTTPReply {
    var request = HTTPClientRequest(url: server.baseURL + path)
    request.method = .POST
    request.headers.add(name: "Content-Type", value: "application/json")
    request.body = .bytes(ByteBuffer(string: body))
    let response = try await HTTPClient.shared.execute(request, timeout: .seconds(120))
    var text = ""
    var events = 0
    for try await buffer in response.body {
        text += String(buffer: buffer)
        let now = text.components(separatedBy: "\n\n").dropLast().filter { $0.hasPrefix("data: ") }.count
        while events < now {
            events += 1
            try await onEvent(events)
        }
    }
    return HTTPReply(
        status: response.status, contentType: response.headers.first(name: "Content-Type") ?? "", body: text)
}
