import AsyncHTTPClient
import Discovery
import Engine
import Foundation
import KVTransfer
import NIOCore
import NIOPosix
import Testing

/// Writes raw bytes to a TCP port (hand-made KV frames) and keeps the connection open until closed.
func writeRaw(_ bytes: ByteBuffer, toPort port: Int) async throws -> any Channel {
    let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
        .connect(host: "127.0.0.1", port: port).get()
    try await channel.writeAndFlush(bytes)
    return channel
}

/// A prefill and a decode `tandem serve` process exchanging KV over TCP, driven as the proxy drives them.
@Suite(.serialized) struct DisaggregationTests {
    static func newId(prefill: HostPort, decode: HostPort) -> String {
        DisaggregatedRequestID(
            prefill: prefill, decode: decode,
            uuid: UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased()
        ).description
    }

    /// The prefill copy of a body, as the proxy makes it.
    static func prefillBody(_ body: String) -> String {
        body.replacingOccurrences(of: "\"max_tokens\":", with: "\"max_tokens\":1,\"ignored_max_tokens\":")
    }

    /// For each send type, on IPv4 and IPv6: a request sent to P (max_tokens 1) then to D with the same id gives
    /// exactly the colocated output, greedy and seeded, for the golden prompts.
    @Test(arguments: ["127.0.0.1", "::1"])
    func disaggregatedOutputEqualsColocatedForGoldenPrompts(host: String) async throws {
        let golden = try loadGolden()
        let colocated = try await ServerProcess(host: host)
        defer { #expect(colocated.stop() == 0) }
        var wants: [String: [String: Any]] = [:]
        for sendType in ["PUT", "PUT_ASYNC", "GET"] {
            let pPort = freePort()
            let dPort = freePort()
            let p = try await ServerProcess.instance(host: host, role: "kv_producer", kvPort: pPort, sendType: sendType)
            defer { #expect(p.stop() == 0) }
            let d = try await ServerProcess.instance(host: host, role: "kv_consumer", kvPort: dPort, sendType: sendType)
            defer { #expect(d.stop() == 0) }
            var checked = 0
            var promptTokens = 0
            for (i, g) in golden.generations.enumerated() where i % 2 == 0 {
                for sampling in ["\"temperature\":0", "\"temperature\":0.8,\"top_p\":0.9,\"seed\":\(i)"] {
                    let body =
                        "{\"prompt\":\(jsonString(g.prompt_text)),\"max_tokens\":12,\(sampling),\"return_token_ids\":true}"
                    if wants[body] == nil {
                        wants[body] = try #require(try await colocated.post("/v1/completions", body).json?.firstChoice)
                    }
                    let want = wants[body]!
                    let id = Self.newId(
                        prefill: HostPort(host: host, port: pPort), decode: HostPort(host: host, port: dPort))
                    let pre = try await p.post(
                        "/v1/completions", Self.prefillBody(body), headers: [("X-Request-Id", id)])
                    #expect(pre.status == .ok, "\(pre.body)")
                    let got = try await d.post("/v1/completions", body, headers: [("X-Request-Id", id)])
                    #expect(got.status == .ok, "\(got.body)")
                    #expect(
                        got.json?.firstChoice?["token_ids"] as? [Int] == want["token_ids"] as? [Int],
                        "\(sendType) \(g.name)")
                    #expect(got.json?.firstChoice?["text"] as? String == want["text"] as? String, "\(g.name)")
                    checked += 1
                    promptTokens += g.prompt_ids.count
                }
            }
            #expect(checked == 12)
            let metrics = try await d.get("/metrics").body
            #expect(metricValue(metrics, "tandem_kv_recomputes_total") == 0, "\(sendType): every decode used the KV")
            #expect(
                metricValue(metrics, "tandem_kv_loaded_tokens_total") == Double(promptTokens - checked),
                "\(sendType): D loaded every prompt token's KV but the last")
            #expect((metricValue(metrics, #"tandem_kv_transfer_bytes_total{direction="received"}"#) ?? 0) > 0)
            #expect(metricValue(metrics, "tandem_kv_buffer_bytes") == 0)
            let pm = try await p.get("/metrics").body
            #expect((metricValue(pm, #"tandem_kv_transfer_bytes_total{direction="sent"}"#) ?? 0) > 0, "\(sendType)")
            #expect(metricValue(pm, "tandem_kv_buffer_bytes") == 0)
        }
    }

    @Test func kvThatNeverComesIsRecomputedOrRefusedWithinTheDeadline() async throws {
        let recompute = try await ServerProcess.instance(
            role: "kv_consumer", kvPort: freePort(), extra: "\"kv_transfer_timeout_s\":3")
        defer { #expect(recompute.stop() == 0) }
        let fail = try await ServerProcess.instance(
            role: "kv_consumer", kvPort: freePort(),
            extra: "\"kv_transfer_timeout_s\":1,\"kv_load_failure_policy\":\"fail\"")
        defer { #expect(fail.stop() == 0) }
        let colocated = try await ServerProcess()
        defer { #expect(colocated.stop() == 0) }
        let body = #"{"prompt":"The capital of Germany is","max_tokens":8,"temperature":0}"#
        let want = try await colocated.post("/v1/completions", body).json?.firstChoice?["text"] as? String
        let id = Self.newId(prefill: HostPort(host: "127.0.0.1", port: 1), decode: HostPort(host: "127.0.0.1", port: 2))
        let start = Date()
        let pending = Task { try await recompute.post("/v1/completions", body, headers: [("X-Request-Id", id)]) }
        // While the KV is awaited, the request is admitted and holds its cache blocks, waiting outside the batch.
        var holding = false
        for _ in 0..<100 where !holding {
            let m = try await recompute.get("/metrics").body
            holding =
                (metricValue(m, "vllm:kv_cache_usage_perc") ?? 0) > 0
                && metricValue(m, "vllm:num_requests_waiting") == 1
            if !holding { try await Task.sleep(for: .milliseconds(20)) }
        }
        #expect(holding, "blocks reserved while waiting for the KV")
        let recomputed = try await pending.value
        #expect(recomputed.status == .ok)
        #expect(recomputed.json?.firstChoice?["text"] as? String == want)
        #expect(Date().timeIntervalSince(start) < 10, "answered within its deadline")
        #expect(metricValue(try await recompute.get("/metrics").body, "tandem_kv_recomputes_total") == 1)
        let refused = try await fail.post("/v1/completions", body, headers: [("X-Request-Id", id)])
        #expect(refused.status.code == 503)
        #expect(((refused.json?["error"] as? [String: Any])?["message"] as? String)?.contains("KV") == true)
    }

    /// KV from another model, and KV whose payload was corrupted on the way, are refused at once: the decode request
    /// recomputes and answers exactly the colocated output, long before its deadline.
    @Test func foreignOrCorruptedKVIsRefusedAndTheDecodeRecomputes() async throws {
        let kvPort = freePort()
        let d = try await ServerProcess.instance(
            role: "kv_consumer", kvPort: kvPort, extra: "\"kv_transfer_timeout_s\":30")
        defer { #expect(d.stop() == 0) }
        let prompt = "The capital of Germany is"
        let body = "{\"prompt\":\"\(prompt)\",\"max_tokens\":8,\"temperature\":0}"
        let want = try await d.post("/v1/completions", body).json?.firstChoice?["text"] as? String
        let tokens = try #require(
            try await d.post("/tokenize", "{\"prompt\":\"\(prompt)\"}").json?["tokens"] as? [Int])
        let logged = try #require(d.logText.firstMatch(of: /model fingerprint ([0-9a-f]+)/))
        let fingerprint = try #require(UInt64(logged.1, radix: 16))
        for (name, fp, corrupt) in [("foreign", fingerprint &+ 1, false), ("corrupted", fingerprint, true)] {
            let id = Self.newId(
                prefill: HostPort(host: "127.0.0.1", port: 1), decode: HostPort(host: "127.0.0.1", port: kvPort))
            let payload = KVPayload(
                tokens: tokens.map(Int32.init), layerCount: 30, kvDim: 192, fingerprint: fp,
                values: (0..<(30 * 2 * tokens.count * 192)).map { UInt16(truncatingIfNeeded: $0 &* 40_503) & 0x3BFF })
            var frames = KVFrame.frames(for: payload, requestId: id)
            if corrupt, case .layer(let r, let l, let s, let c, let k, let sum, var values) = frames[5] {
                values[17] ^= 0x0100
                frames[5] = .layer(
                    requestId: r, layer: l, tokenStart: s, tokenCount: c, kvDim: k, checksum: sum, values: values)
            }
            var bytes = ByteBuffer()
            for f in frames { f.write(into: &bytes) }
            let channel = try await writeRaw(bytes, toPort: kvPort)
            let reply = try await d.post("/v1/completions", body, headers: [("X-Request-Id", id)])
            #expect(reply.status == .ok, "\(name)")
            #expect(reply.json?.firstChoice?["text"] as? String == want, "\(name)")
            try? await channel.close()
        }
        let metrics = try await d.get("/metrics").body
        #expect(metricValue(metrics, "tandem_kv_recomputes_total") == 2)
        #expect(metricValue(metrics, #"tandem_kv_transfer_failures_total{reason="rejected"}"#) == 2)
        // Refused when they came, not given up at the 30 s deadline.
        #expect(metricValue(metrics, #"tandem_kv_transfer_failures_total{reason="timeout"}"#) == 0)
        #expect(d.logText.contains("fingerprint mismatch") && d.logText.contains("failed its checksum"))
    }

    /// 100 mixed requests, some never decoded, some decoded without their prefill, some abandoned mid-stream: both
    /// sides' caches and KV buffers end at zero bytes.
    @Test(arguments: ["PUT_ASYNC", "GET"])
    func buffersAndCachesReturnToZeroAfterManyMixedRequests(sendType: String) async throws {
        let kvPort = freePort()
        let pPort = freePort()
        let limits = "\"kv_transfer_timeout_s\":2,\"kv_unclaimed_ttl_s\":2"
        let p = try await ServerProcess.instance(role: "kv_producer", kvPort: pPort, sendType: sendType, extra: limits)
        defer { #expect(p.stop() == 0) }
        let d = try await ServerProcess.instance(role: "kv_consumer", kvPort: kvPort, sendType: sendType, extra: limits)
        defer { #expect(d.stop() == 0) }
        let decodeAddress = HostPort(host: "127.0.0.1", port: kvPort)
        let prefillAddress = HostPort(host: "127.0.0.1", port: pPort)
        try await withThrowingTaskGroup(of: Void.self) { group in
            // Eight clients at a time (as many connections as the test's HTTP client opens to one host, so that no
            // decode request waits in the client while its KV's lease runs out).
            for i in 0..<100 {
                if i >= 8 { try await group.next() }
                group.addTask {
                    // Every tenth prompt is long enough to be prefilled in several chunks.
                    let text = String(repeating: "Request \(i): tell me about the sea. ", count: i % 10 == 0 ? 30 : 1)
                    let body =
                        "{\"prompt\":\"\(text)\",\"max_tokens\":\(4 + i % 9),"
                        + "\"ignore_eos\":true,\"stream\":\(i % 3 == 0)}"
                    let id = Self.newId(prefill: prefillAddress, decode: decodeAddress)
                    if i % 7 == 3 {
                        // The prefill never reaches the decode: its KV goes out and is never claimed... or the
                        // decode request is never sent.
                        _ = try await p.post("/v1/completions", Self.prefillBody(body), headers: [("X-Request-Id", id)])
                        return
                    }
                    if i % 5 != 4 {
                        _ = try await p.post("/v1/completions", Self.prefillBody(body), headers: [("X-Request-Id", id)])
                    }
                    if i % 3 == 0 && i % 2 == 1 {
                        // A streaming client that leaves after the first bytes.
                        var request = HTTPClientRequest(url: d.baseURL + "/v1/completions")
                        request.method = .POST
                        request.headers.add(name: "X-Request-Id", value: id)
                        request.body = .bytes(
                            ByteBuffer(
                                string: body.replacingOccurrences(
                                    of: "\"max_tokens\":", with: "\"max_tokens\":400,\"x\":")))
                        let response = try await HTTPClient.shared.execute(request, timeout: .seconds(60))
                        for try await _ in response.body { break }
                        return
                    }
                    let reply = try await d.post("/v1/completions", body, headers: [("X-Request-Id", id)])
                    #expect(reply.status == .ok, "\(reply.body)")
                }
            }
            try await group.waitForAll()
        }
        var settled = false
        for _ in 0..<100 {
            let dm = try await d.get("/metrics").body
            let pm = try await p.get("/metrics").body
            if metricValue(dm, "vllm:kv_cache_usage_perc") == 0, metricValue(pm, "vllm:kv_cache_usage_perc") == 0,
                metricValue(dm, "vllm:num_requests_running") == 0
            {
                settled = true
                break
            }
            try await Task.sleep(for: .milliseconds(100))
        }
        #expect(settled, "both caches back to zero")
        // Unclaimed KV (prefills whose decode never came) expires after its TTL: the buffer is back to zero.
        var held = (-1.0, -1.0)
        for _ in 0..<50 {
            held = (
                metricValue(try await d.get("/metrics").body, "tandem_kv_buffer_bytes") ?? -1,
                metricValue(try await p.get("/metrics").body, "tandem_kv_buffer_bytes") ?? -1
            )
            if held == (0, 0) { break }
            try await Task.sleep(for: .milliseconds(100))
        }
        #expect(held == (0, 0), "decode and prefill KV buffers (bytes)")
        let pm = try await p.get("/metrics").body
        #expect(
            (metricValue(pm, #"tandem_kv_transfer_bytes_total{direction="sent"}"#) ?? 0) > 0,
            "\(String(p.logText.suffix(3000)))\n\(String(d.logText.suffix(3000)))")
    }
}
