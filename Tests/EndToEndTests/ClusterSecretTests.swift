import Discovery
import Foundation
import Testing

/// A cluster with a secret, end to end: the proxy ignores plain (spoofed) registrations and says so once, instances
/// with the secret register and move KV between them, and a disaggregated request gives the colocated text with the
/// KV loaded. `--allow-unauthenticated-discovery` lets plain vLLM pings in again.
@Suite(.serialized) struct ClusterSecretTests {
    static func secretFile() throws -> String {
        let path = NSTemporaryDirectory() + "tandem-secret-\(UUID().uuidString)"
        try "a cluster secret of some length\n".write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    static func spoof(_ discovery: Int, port: Int) throws -> InstanceRegistration {
        let fake = InstanceRegistration(
            ping: .init(
                role: .decode, httpAddress: HostPort(host: "127.0.0.1", port: port),
                zmqAddress: HostPort(host: "127.0.0.1", port: port + 1)),
            proxy: HostPort(host: "127.0.0.1", port: discovery), interval: 0.2)
        try fake.start()
        return fake
    }

    @Test func spoofedPingsAreIgnoredAndTheClusterServesWithTheKVLoaded() async throws {
        let file = try Self.secretFile()
        defer { try? FileManager.default.removeItem(atPath: file) }
        let colocated = try await ServerProcess()
        defer { #expect(colocated.stop() == 0) }
        let discovery = freePort()
        let proxy = try await ServerProcess.proxy(discoveryPort: discovery, extra: ["--cluster-secret-file", file])
        defer { #expect(proxy.stop() == 0) }
        let fake = try Self.spoof(discovery, port: 21_900)
        defer { fake.stop() }
        try await waitFor("the proxy to refuse the spoofed ping", timeout: 10, detail: { proxy.logText }) {
            proxy.logText.contains("refused a registration")
        }
        #expect(proxy.logText.contains("it is not signed"), "\(proxy.logText)")
        let p = try await ServerProcess.instance(
            role: "kv_producer", kvPort: freePort(), discoveryPort: discovery, sendType: "PUT_ASYNC",
            arguments: ["--cluster-secret-file", file])
        defer { #expect(p.stop() == 0) }
        let d = try await ServerProcess.instance(
            role: "kv_consumer", kvPort: freePort(), discoveryPort: discovery, sendType: "PUT_ASYNC",
            arguments: ["--cluster-secret-file", file])
        defer { #expect(d.stop() == 0) }
        try await waitForInstances(proxy, prefill: 1, decode: 1)  // the spoofed decode is not among them
        #expect(proxy.logText.components(separatedBy: "refused a registration").count == 2, "logged once per sender")
        #expect(d.logText.contains("authenticated by the cluster secret"))
        let body = #"{"prompt":"The capital of France is","max_tokens":12,"temperature":0}"#
        let want = try await colocated.post("/v1/completions", body).json?.firstChoice?["text"] as? String
        let reply = try await proxy.post("/v1/completions", body)
        #expect(reply.status == .ok, "\(reply.body)")
        #expect(reply.json?.firstChoice?["text"] as? String == want)
        let metrics = try await d.get("/metrics").body
        #expect((metricValue(metrics, "tandem_kv_loaded_tokens_total") ?? 0) > 0, "the KV moved, authenticated")
        #expect(metricValue(metrics, "tandem_kv_recomputes_total") == 0)
    }

    @Test func aMixedFleetLetsPlainPingsInWhenAllowed() async throws {
        let file = try Self.secretFile()
        defer { try? FileManager.default.removeItem(atPath: file) }
        let discovery = freePort()
        let proxy = try await ServerProcess.proxy(
            discoveryPort: discovery, extra: ["--cluster-secret-file", file, "--allow-unauthenticated-discovery"])
        defer { #expect(proxy.stop() == 0) }
        let plain = try Self.spoof(discovery, port: 21_910)
        defer { plain.stop() }
        try await waitForInstances(proxy, prefill: 0, decode: 1)
    }
}
