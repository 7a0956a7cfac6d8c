import Foundation
import Testing

/// A 1 Gbit/s link to the decode host (tc tbf, both ways), 512-token prompts, 1P1D on three hosts.
extension HostsTests {
    /// A distinct ~512-token prompt per run, so that no run reuses another's prefix cache.
    static func longPrompt(_ tag: String) -> String {
        "Run \(tag). " + String(repeating: "The quick brown fox jumps over the lazy dog. ", count: 51)
    }

    /// PUT_ASYNC hides the transfer behind the prefill: the decode waits for its KV far less than the link needs
    /// to carry it. PUT shows the transfer: its send takes at least the payload's time on the link. Client TTFTs,
    /// limited and not, are printed for docs/benchmarks.md (machine noise makes them figures, not assertions).
    @Test func oneGigabitLinkToTheDecodeHost() async throws {
        try await onHosts(3) { hosts in
            let rate = 1e9
            for sendType in ["PUT_ASYNC", "PUT"] {
                // vLLM's order, so that the decode's wait is for the transfer alone (an overlapped decode also waits
                // out the prefill).
                let d = try await RunbookDeployment.start(
                    hosts, prefillHosts: [2], decodeHosts: [3], sendType: sendType,
                    proxyArguments: ["--pd-flow", "sequential"])
                var ttft: [Bool: [Double]] = [false: [], true: []]
                var waits: [Double] = []
                var sends: [Double] = []
                var payload = 0.0
                for round in 0..<3 {
                    for limited in [false, true] {
                        try await hosts.limit(3, rate: limited ? "1gbit" : "off")
                        let p0 = try await d.metrics(2, port: 8081)
                        let d0 = try await d.metrics(3, port: 8083)
                        let prompt = Self.longPrompt("\(sendType)-\(round)-\(limited)")
                        let body =
                            #"{"model":"default","prompt":\#(jsonString(prompt)),"max_tokens":4,"temperature":0,"stream":true}"#
                        let r = await stream(d.proxyURL + "/v1/completions", body, deadline: 120)
                        #expect(r.outcome == .ok, "\(sendType) round \(round)")
                        let p1 = try await d.metrics(2, port: 8081)
                        let d1 = try await d.metrics(3, port: 8083)
                        func delta(_ a: String, _ b: String, _ name: String) -> Double {
                            (metricValue(b, name) ?? 0) - (metricValue(a, name) ?? 0)
                        }
                        #expect(delta(d0, d1, "tandem_kv_recomputes_total") == 0)
                        ttft[limited]!.append(r.secondsToFirstEvent ?? .nan)
                        guard limited else { continue }
                        payload = delta(d0, d1, #"tandem_kv_transfer_bytes_total{direction="received"}"#)
                        waits.append(delta(d0, d1, "tandem_kv_transfer_seconds_sum"))
                        sends.append(delta(p0, p1, "tandem_kv_transfer_seconds_sum"))
                    }
                }
                let wire = payload * 8 / rate
                #expect(payload > 10_000_000, "a 512-token prompt's KV is about 11.8 MB (\(payload))")
                func median(_ v: [Double]) -> Double { v.sorted()[v.count / 2] }
                print(
                    "link 1gbit \(sendType): payload \(Int(payload)) B (\(wire * 1000) ms on the wire); TTFT median unlimited \(median(ttft[false]!) * 1000) ms, limited \(median(ttft[true]!) * 1000) ms; decode KV wait median \(median(waits) * 1000) ms; prefill send median \(median(sends) * 1000) ms"
                )
                if sendType == "PUT" {
                    #expect(median(sends) >= 0.9 * wire, "PUT's send takes the payload's time on the link")
                } else {
                    #expect(median(waits) < 0.5 * wire, "PUT_ASYNC: the decode barely waits; the transfer is hidden")
                }
                try await hosts.limit(3, rate: "off")
                for p in d.prefills + d.decodes + [d.proxy] { _ = await p.terminate() }
            }
        }
    }
}
