import AsyncHTTPClient
import Discovery
import Foundation
import NIOCore
import Testing

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

    @Test(arguments: ["127.0.0.1", "::1"])
    func disaggregatedOutputEqualsColocatedForGoldenPrompts(host: String) async throws {
        let golden = try loadGolden()
        let kvPort = freePort()
        let p = try await ServerProcess.instance(host: host, role: "kv_producer", kvPort: freePort())
        defer { #expect(p.stop() == 0) }
        let d = try await ServerProcess.instance(host: host, role: "kv_consumer", kvPort: kvPort)
        defer { #expect(d.stop() == 0) }
        let colocated = try await ServerProcess(host: host)
        defer { #expect(colocated.stop() == 0) }
        var checked = 0
        for (i, g) in golden.generations.enumerated() where i % 2 == 0 {
            for sampling in ["\"temperature\":0", "\"temperature\":0.8,\"top_p\":0.9,\"seed\":\(i)"] {
                let body =
                    "{\"prompt\":\(jsonString(g.prompt_text)),\"max_tokens\":12,\(sampling),\"return_token_ids\":true}"
                let want = try #require(try await colocated.post("/v1/completions", body).json?.firstChoice)
                let id = Self.newId(prefill: HostPort(host: host, port: 1), decode: HostPort(host: host, port: kvPort))
                let pre = try await p.post("/v1/completions", Self.prefillBody(body), headers: [("X-Request-Id", id)])
                #expect(pre.status == .ok, "\(pre.body)")
                let got = try await d.post("/v1/completions", body, headers: [("X-Request-Id", id)])
                #expect(got.status == .ok, "\(got.body)")
                #expect(got.json?.firstChoice?["token_ids"] as? [Int] == want["token_ids"] as? [Int], "\(g.name)")
                #expect(got.json?.firstChoice?["text"] as? String == want["text"] as? String, "\(g.name)")
                checked += 1
            }
        }
        #expect(checked == 12)
        let metrics = try await d.get("/metrics").body
        #expect(metricValue(metrics, "tandem_kv_recomputes_total") == 0, "every decode used the transferred KV")
        #expect((metricValue(metrics, #"tandem_kv_transfer_bytes_total{direction="received"}"#) ?? 0) > 0)
        #expect(metricValue(metrics, "tandem_kv_buffer_bytes") == 0)
    }

    @Test func kvThatNeverComesIsRecomputedOrRefusedWithinTheDeadline() async throws {
        let recompute = try await ServerProcess.instance(
            role: "kv_consumer", kvPort: freePort(), extra: "\"kv_transfer_timeout_s\":1")
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
        let recomputed = try await recompute.post("/v1/completions", body, headers: [("X-Request-Id", id)])
        #expect(recomputed.status == .ok)
        #expect(recomputed.json?.firstChoice?["text"] as? String == want)
        #expect(Date().timeIntervalSince(start) < 5, "answered within its deadline")
        #expect(metricValue(try await recompute.get("/metrics").body, "tandem_kv_recomputes_total") == 1)
        let refused = try await fail.post("/v1/completions", body, headers: [("X-Request-Id", id)])
        #expect(refused.status.code == 503)
        #expect(((refused.json?["error"] as? [String: Any])?["message"] as? String)?.contains("KV") == true)
    }

    @Test func buffersAndCachesReturnToZeroAfterManyMixedRequests() async throws {
        let kvPort = freePort()
        let p = try await ServerProcess.instance(role: "kv_producer", kvPort: freePort())
        defer { #expect(p.stop() == 0) }
        let d = try await ServerProcess.instance(
            role: "kv_consumer", kvPort: kvPort, extra: "\"kv_transfer_timeout_s\":2,\"kv_unclaimed_ttl_s\":2")
        defer { #expect(d.stop() == 0) }
        let decodeAddress = HostPort(host: "127.0.0.1", port: kvPort)
        try await withThrowingTaskGroup(of: Void.self) { group in
            for i in 0..<40 {
                group.addTask {
                    let body =
                        "{\"prompt\":\"Request \(i): tell me about the sea.\",\"max_tokens\":\(4 + i % 9),"
                        + "\"ignore_eos\":true,\"stream\":\(i % 3 == 0)}"
                    let id = Self.newId(prefill: HostPort(host: "127.0.0.1", port: 1), decode: decodeAddress)
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
        var held = -1.0
        for _ in 0..<50 {
            held = metricValue(try await d.get("/metrics").body, "tandem_kv_buffer_bytes") ?? -1
            if held == 0 { break }
            try await Task.sleep(for: .milliseconds(100))
        }
        #expect(held == 0)
    }
}
