import Discovery
import Foundation
import Testing

/// Every test across hosts, one at a time (they share the bridge and the hosts' names). Needs root (CI runs as
/// root); each test removes its hosts when it ends, failed or not.
@Suite(.serialized, .enabled(if: TestHosts.available, "needs root and iproute2 for network namespaces"))
struct HostsTests {
    /// The runbook on three hosts — proxy, prefill, decode — IPv6-only, and dual-stack with the proxy addressed
    /// over IPv4: the four requests through the proxy equal a colocated instance's greedy output; the response ids
    /// carry the hosts' own addresses, chosen by the route to the proxy; the KV crossed the decode host's link; the
    /// decode loaded every prompt token's KV (the prefill's first token came with it) and recomputed nothing (but for
    /// an answer that its first token ended: the prefill gives that one alone).
    @Test(arguments: [false, true])
    func runbookOnThreeHosts(dualStack: Bool) async throws {
        let hosts = try await TestHosts(3, dualStack: dualStack)
        var failure: (any Error)?
        do {
            try await runbook(hosts, ipv4: dualStack)
        } catch {
            failure = error
        }
        await hosts.down()
        if let failure { throw failure }
    }

    private func runbook(_ hosts: TestHosts, ipv4: Bool) async throws {
        let bodies = RunbookDeployment.greedyRunbookRequests
        let expected = try await colocatedTexts(hosts, host: 2, bodies)
        let d = try await RunbookDeployment.start(hosts, prefillHosts: [2], decodeHosts: [3], ipv4: ipv4)
        let p = HostPort(host: hosts.address(2, ipv4: ipv4), port: 8082)
        let dk = HostPort(host: hosts.address(3, ipv4: ipv4), port: 8084)
        // Registration: the addresses the proxy lists, and the rule that chose them.
        let listed = try await d.instances().compactMap { $0["http_address"] as? String }.sorted()
        #expect(listed == ["\(HostPort(host: p.host, port: 8081))", "\(HostPort(host: dk.host, port: 8083))"])
        for instance in d.prefills + d.decodes {
            #expect(
                instance.logText.contains(
                    "Advertising \(hosts.address(instance.host, ipv4: ipv4)) (chosen by the route to proxy_ip)"),
                "\(instance.logText)")
        }
        let before = try await hosts.bytes(3)
        var loaded = 0
        for (body, want) in zip(bodies, expected) {
            let reply = try await d.complete(body)
            #expect(reply.status == 200, "\(reply.body)")
            #expect(reply.text == want, "\(body)")
            let id = reply.id ?? ""
            #expect(id.hasPrefix("cmpl-___prefill_addr_\(p)___decode_addr_\(dk)_"), "\(id)")
            let usage = reply.json?["usage"] as? [String: Any]
            if let prompt = usage?["prompt_tokens"] as? Int, let completion = usage?["completion_tokens"] as? Int,
                completion > 1
            {
                loaded += prompt
            }
        }
        let after = try await hosts.bytes(3)
        let metrics = try await d.metrics(3, port: 8083)
        let received = metricValue(metrics, #"tandem_kv_transfer_bytes_total{direction="received"}"#) ?? 0
        #expect(received > 0)
        #expect(Double(after.received - before.received) >= received, "the KV crossed the decode host's link")
        #expect(metricValue(metrics, "tandem_kv_recomputes_total") == 0, "the decode recomputed nothing")
        #expect(
            metricValue(metrics, "tandem_kv_loaded_tokens_total") == Double(loaded),
            "the decode loaded every prompt token's KV")
        // A dual-stack proxy answers on both of its addresses.
        if ipv4 {
            let v6 = try await httpPost(hosts.url(1, port: 10002) + "/v1/completions", bodies[0])
            #expect(v6.status == 200 && v6.text == expected[0], "\(v6.body)")
        }
        #expect(await d.proxy.terminate() != nil)
    }

    /// xPyD across five hosts (2P2D): both policies spread requests over all four instances, and every output
    /// equals the colocated one.
    @Test(arguments: ["round_robin", "least_loaded"])
    func twoPrefillTwoDecodeOnFiveHosts(policy: String) async throws {
        let hosts = try await TestHosts(5)
        var failure: (any Error)?
        do {
            let prompts = (0..<8).map { "Question \($0): name a colour and a fruit." }
            let bodies = prompts.map {
                #"{"model":"default","prompt":\#(jsonString($0)),"max_tokens":12,"temperature":0}"#
            }
            let expected = try await colocatedTexts(hosts, host: 2, bodies)
            let d = try await RunbookDeployment.start(
                hosts, prefillHosts: [2, 3], decodeHosts: [4, 5], proxyArguments: ["--policy", policy])
            // Sent together, so that least_loaded sees the instances busy.
            let replies = try await withThrowingTaskGroup(of: (Int, Reply).self) { group in
                for (i, b) in bodies.enumerated() { group.addTask { (i, try await d.complete(b)) } }
                var all = [Reply?](repeating: nil, count: bodies.count)
                for try await (i, r) in group { all[i] = r }
                return all.compactMap { $0 }
            }
            var prefillSeen = Set<String>()
            var decodeSeen = Set<String>()
            for (reply, want) in zip(replies, expected) {
                #expect(reply.status == 200, "\(reply.body)")
                #expect(reply.text == want)
                if let id = DisaggregatedRequestID(String((reply.id ?? "").dropFirst("cmpl-".count))) {
                    prefillSeen.insert(id.prefill.description)
                    decodeSeen.insert(id.decode.description)
                }
            }
            #expect(prefillSeen == ["[fd00:7a::2]:8082", "[fd00:7a::3]:8082"], "\(policy): \(prefillSeen)")
            #expect(decodeSeen == ["[fd00:7a::4]:8084", "[fd00:7a::5]:8084"], "\(policy): \(decodeSeen)")
        } catch {
            failure = error
        }
        await hosts.down()
        if let failure { throw failure }
    }
}
