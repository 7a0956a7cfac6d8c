import Discovery
import Foundation
import Testing

/// Faults that cross a network, on four hosts: the proxy (1), a prefill instance (2) and two decode instances (3,
/// 4). Each test prints its figures (requests ok / error status / error event / hung / empty 200) and requires the
/// last two to be 0, and every KV buffer to end at 0 bytes.
extension HostsTests {
    static let story =
        #"{"model":"default","prompt":"Tell me a story.","max_tokens":400,"ignore_eos":true,"stream":true,"temperature":0}"#
    static let short = #"{"model":"default","prompt":"Name a colour.","max_tokens":8,"temperature":0}"#

    /// Runs `body` on fresh hosts and removes them afterwards, failed or not.
    func onHosts(_ count: Int, _ body: (TestHosts) async throws -> Void) async throws {
        let hosts = try await TestHosts(count)
        var failure: (any Error)?
        do { try await body(hosts) } catch { failure = error }
        await hosts.down()
        if let failure { throw failure }
    }

    /// The decode host whose KV address is in a response id.
    func decodeHost(_ id: String?, _ hosts: TestHosts) -> Int? {
        guard let id, let parsed = DisaggregatedRequestID(String(id.dropFirst("cmpl-".count))) else { return nil }
        return (1...hosts.count).first { hosts.address($0) == parsed.decode.host }
    }

    /// Every instance's KV buffers reach 0 bytes within `timeout` seconds.
    func expectBuffersDrain(_ d: RunbookDeployment, timeout: Double = 30) async throws {
        for instance in d.prefills + d.decodes where instance.isRunning {
            let port = instance.name.hasPrefix("prefill") ? 8081 : 8083
            try await poll("\(instance.name)'s KV buffers drain", timeout: timeout) {
                guard let m = try? await d.metrics(instance.host, port: port) else { return false }
                return metricValue(m, "tandem_kv_buffer_bytes") == 0
            }
        }
    }

    /// The story's greedy text from a colocated instance on `host`.
    func colocatedStory(_ hosts: TestHosts, host: Int) async throws -> String {
        let whole = Self.story.replacingOccurrences(of: #""stream":true"#, with: #""stream":false"#)
        return try await colocatedTexts(hosts, host: host, [whole])[0]
    }

    /// The proxy's count of streams it moved to another decode instance.
    func migrations(_ d: RunbookDeployment) async throws -> Double? {
        metricValue(try await httpGet(d.proxyURL + "/metrics").body, "tandem_proxy_migrations_total")
    }

    /// The decode host's link goes down mid-stream: once the decode has been silent for the proxy's read timeout,
    /// the stream moves to the other decode and ends with exactly the colocated text (no error event); the proxy
    /// drops the unreachable decode after its TTL, new requests go to the other; once the link is back the instance
    /// registers again.
    @Test func decodeLinkDownMidStream() async throws {
        try await onHosts(4) { hosts in
            let expected = try await colocatedStory(hosts, host: 2)
            let d = try await RunbookDeployment.start(
                hosts, prefillHosts: [2], decodeHosts: [3, 4], proxyArguments: ["--read-timeout", "5"])
            var tally = Tally()
            let downHost = LockedBox<Int?>(nil)
            let result = await stream(d.proxyURL + "/v1/completions", Self.story, deadline: 60) { event, count in
                guard count == 20, let h = self.decodeHost(event["id"] as? String, hosts) else { return }
                try? await hosts.link(h, up: false)
                downHost.set(h)
            }
            tally.add(result.outcome)
            let down = try #require(downHost.value, "the stream reached 20 events")
            #expect(result.outcome == .ok, "\(result.events.count) events, \(result.outcome)")
            #expect(result.text == expected, "the moved stream has the colocated text")
            #expect(try await migrations(d) ?? 0 >= 1)
            let other = down == 3 ? 4 : 3
            try await poll("the proxy drops decode \(down)", timeout: 5 + 5) {
                try await d.instances().filter { $0["role"] as? String == "decode" }.count == 1
            }
            for _ in 0..<4 {
                let (outcome, reply) = await classify(d.proxyURL + "/v1/completions", Self.short)
                tally.add(outcome)
                #expect(outcome == .ok, "\(reply?.body ?? "")")
                #expect(decodeHost(reply?.id, hosts) == other)
            }
            try await hosts.link(down, up: true)
            try await d.waitForInstances(prefill: 1, decode: 2, timeout: 10)
            print("fault decode link down mid-stream: \(tally)")
            #expect(tally[.hung] == 0 && tally[.empty200] == 0)
            try await expectBuffersDrain(d)
        }
    }

    /// The prefill host's link goes down while its PUT_ASYNC transfer is still on the wire (the link is held to
    /// 10 Mbit/s so the KV lags behind the prefill's answer): the decode gives up on the KV at its deadline,
    /// recomputes, and answers exactly the colocated text; every buffer drains, on both sides.
    @Test func prefillLinkDownDuringTransfer() async throws {
        try await onHosts(4) { hosts in
            let prompt = String(repeating: "The quick brown fox jumps over the lazy dog. ", count: 51)
            let body = #"{"model":"default","prompt":\#(jsonString(prompt)),"max_tokens":8,"temperature":0}"#
            let expected = try await colocatedTexts(hosts, host: 2, [body])[0]
            let d = try await RunbookDeployment.start(
                hosts, prefillHosts: [2], decodeHosts: [3], kvExtra: #""kv_transfer_timeout_s":"4""#)
            try await hosts.limit(2, rate: "10mbit")
            let request = Task { await classify(d.proxyURL + "/v1/completions", body) }
            // The proxy has the prefill's answer (the prefill is no longer in flight, the decode still is) while the
            // KV is still arriving; the decode has waited for it since the request came in, with the prefill's.
            try await poll("the proxy to have the prefill's answer", timeout: 60) {
                let m = try await httpGet(d.proxyURL + "/metrics").body
                func inFlight(_ role: String) -> Double? {
                    m.split(separator: "\n").first { $0.hasPrefix("tandem_proxy_in_flight{role=\"\(role)\"") }
                        .flatMap { $0.split(separator: " ").last.flatMap { Double($0) } }
                }
                return inFlight("prefill") == 0 && inFlight("decode") == 1
            }
            let m0 = try await d.metrics(3, port: 8083)
            #expect(
                (metricValue(m0, "vllm:num_requests_waiting") ?? 0) == 1
                    && (metricValue(m0, "tandem_kv_recomputes_total") ?? 0) == 0,
                "the decode still waits for its KV")
            try await hosts.link(2, up: false)
            let (outcome, reply) = await request.value
            var tally = Tally()
            tally.add(outcome)
            #expect(outcome == .ok, "\(reply?.body ?? "")")
            #expect(reply?.text == expected, "the recomputed answer equals the colocated one")
            let m = try await d.metrics(3, port: 8083)
            #expect(metricValue(m, "tandem_kv_recomputes_total") == 1, "the decode recomputed")
            print("fault prefill link down during PUT_ASYNC: \(tally)")
            #expect(tally[.hung] == 0 && tally[.empty200] == 0)
            // With its link still down, the prefill finds the connection dead once its bytes go unacknowledged past
            // the transfer deadline (4 s here), and frees what it had queued.
            try await poll("the prefill's send buffer drains with its link down", timeout: 4 + 10) {
                let m = try await hosts.localGet(2, port: 8081, path: "/metrics")
                return metricValue(m, "tandem_kv_buffer_bytes") == 0
            }
            #expect(d.prefills[0].logText.contains("KV stream for"), "the prefill logs the failed stream")
            try await hosts.link(2, up: true)
            try await expectBuffersDrain(d, timeout: 30)
        }
    }

    /// The proxy host restarts: the proxy exits within 2 s of SIGTERM and frees its ports (a new one binds them at
    /// once), the instances register again within one ping interval (3 s), and requests succeed.
    @Test func proxyRestart() async throws {
        try await onHosts(4) { hosts in
            let first = try await RunbookDeployment.start(hosts, prefillHosts: [2], decodeHosts: [3, 4])
            var tally = Tally()
            let (before, _) = await classify(first.proxyURL + "/v1/completions", Self.short)
            tally.add(before)
            // A client mid-stream when the proxy stops.
            let inFlight = Task { await stream(first.proxyURL + "/v1/completions", Self.story, deadline: 30) }
            try await poll("the stream is running", timeout: 30) {
                let m = try await httpGet(first.proxyURL + "/metrics").body
                return m.split(separator: "\n").contains {
                    $0.hasPrefix("tandem_proxy_in_flight{role=\"decode\"") && $0.hasSuffix(" 1")
                }
            }
            let exit = await first.proxy.terminate(timeout: 10)
            #expect(exit != nil && exit! < 2, "the proxy exits within 2 s of SIGTERM (took \(exit ?? -1) s)")
            let cut = await inFlight.value
            tally.add(cut.outcome)
            #expect(cut.outcome != .hung && cut.outcome != .empty200)
            let restarted = Date()
            let proxy = try await hosts.start(1, "proxy2", ["proxy"], healthPort: 10002)
            let d = RunbookDeployment(
                hosts: hosts, proxyHost: 1, proxy: proxy, proxyIP: first.proxyIP, prefills: first.prefills,
                decodes: first.decodes)
            try await d.waitForInstances(prefill: 1, decode: 2, timeout: 10)
            let took = Date().timeIntervalSince(restarted)
            #expect(took < 3 + 1.5, "registered again within one ping interval (took \(took) s)")
            for _ in 0..<2 {
                let (outcome, reply) = await classify(d.proxyURL + "/v1/completions", Self.short)
                tally.add(outcome)
                #expect(outcome == .ok, "\(reply?.body ?? "")")
            }
            print("fault proxy restart: \(tally), exit \(exit ?? -1) s, re-registered in \(took) s")
            #expect(tally[.hung] == 0 && tally[.empty200] == 0)
            try await expectBuffersDrain(d)
        }
    }

    /// A decode host freezes (SIGSTOP) for 20 s, then resumes: the stream on it moves to the other decode after the
    /// read timeout and ends with the colocated text, requests keep being answered (by the other decode once the
    /// proxy drops the frozen one), none hangs, and the resumed instance registers and serves again.
    @Test func decodeFrozenThenResumed() async throws {
        try await onHosts(4) { hosts in
            let expected = try await colocatedStory(hosts, host: 2)
            let d = try await RunbookDeployment.start(
                hosts, prefillHosts: [2], decodeHosts: [3, 4], proxyArguments: ["--read-timeout", "5"])
            var tally = Tally()
            let frozen = LockedBox<Int?>(nil)
            let streamed = Task {
                await stream(d.proxyURL + "/v1/completions", Self.story, deadline: 60) { event, count in
                    guard count == 20, let h = self.decodeHost(event["id"] as? String, hosts) else { return }
                    (h == 3 ? d.decodes[0] : d.decodes[1]).kill(SIGSTOP)
                    frozen.set(h)
                }
            }
            try await poll("a decode is frozen", timeout: 60) { frozen.value != nil }
            let frozenAt = Date()
            // Requests one after another while it is frozen.
            while Date().timeIntervalSince(frozenAt) < 20 {
                let (outcome, reply) = await classify(d.proxyURL + "/v1/completions", Self.short, deadline: 30)
                tally.add(outcome)
                #expect(outcome == .ok || outcome == .errorStatus, "\(reply?.body ?? "")")
            }
            let h = frozen.value!
            (h == 3 ? d.decodes[0] : d.decodes[1]).kill(SIGCONT)
            let cut = await streamed.value
            tally.add(cut.outcome)
            #expect(cut.outcome == .ok && cut.text == expected, "the frozen decode's stream moved and ended whole")
            #expect(try await migrations(d) ?? 0 >= 1, "(requests sent to the frozen decode moved as well)")
            try await d.waitForInstances(prefill: 1, decode: 2, timeout: 10)
            var servedByResumed = false
            for _ in 0..<4 {
                let (outcome, reply) = await classify(d.proxyURL + "/v1/completions", Self.short)
                tally.add(outcome)
                #expect(outcome == .ok, "\(reply?.body ?? "")")
                if decodeHost(reply?.id, hosts) == h { servedByResumed = true }
            }
            #expect(servedByResumed, "the resumed decode serves again")
            print("fault decode frozen 20 s: \(tally)")
            #expect(tally[.hung] == 0 && tally[.empty200] == 0)
            #expect(tally[.ok] > tally[.errorStatus], "most requests during the freeze were answered")
            try await expectBuffersDrain(d)
        }
    }
}

/// A value shared between a test and its callbacks.
final class LockedBox<T: Sendable>: @unchecked Sendable {
    private let lock = NSLock()
    private var stored: T
    init(_ value: T) { stored = value }
    var value: T { lock.withLock { stored } }
    func set(_ v: T) { lock.withLock { stored = v } }
}
