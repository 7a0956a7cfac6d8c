import Foundation
import Testing

/// vllm-router 0.1.17 (PyPI, the real peer; `scripts/peers.sh` installs it into `.build/peers`) in front of Tandem
/// prefill and decode instances, in both of its PD modes: the static list of instance URLs, and vLLM's ZMQ
/// discovery, where instances register with the router as with the runbook's proxy. Either way the output equals
/// colocated, the decode loaded every prompt token's KV but the last (no recompute), and the router never logs that a
/// prefill response lacked `kv_transfer_params`.
@Suite(.serialized) struct VLLMRouterInteropTests {
    static var routerURL: URL {
        if let path = ProcessInfo.processInfo.environment["TANDEM_VLLM_ROUTER"] { return URL(fileURLWithPath: path) }
        var dir = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { dir.deleteLastPathComponent() }
        return dir.appendingPathComponent(".build/peers/bin/vllm-router")
    }

    static func router(_ arguments: [String], readyLine: String? = nil) async throws -> ServerProcess {
        guard FileManager.default.isExecutableFile(atPath: routerURL.path) else {
            throw TestFailure("vllm-router is not installed at \(routerURL.path): run scripts/peers.sh")
        }
        let port = freePort()
        return try await ServerProcess(
            arguments: arguments + [
                "--host", "127.0.0.1", "--port", "\(port)", "--policy", "round_robin", "--prometheus-port",
                "\(freePort())",
            ], host: "127.0.0.1", executable: routerURL, knownPort: port, readyLine: readyLine)
    }

    enum Mode: String, CaseIterable { case staticList, zmqDiscovery }

    @Test(arguments: Mode.allCases)
    func routerFrontsTandemWithTheKVLoaded(mode: Mode) async throws {
        let golden = try loadGolden()
        let colocated = try await ServerProcess()
        defer { #expect(colocated.stop() == 0) }
        let discovery = freePort()
        let registers = mode == .zmqDiscovery ? discovery : nil
        // In discovery mode the router is up first, so the instances' first registrations reach it.
        let discoveryRouter =
            mode == .zmqDiscovery
            ? try await Self.router(
                [
                    "--vllm-pd-disaggregation", "--vllm-discovery-address", "127.0.0.1:\(discovery)",
                ], readyLine: "Starting router") : nil
        let p = try await ServerProcess.instance(
            role: "kv_producer", kvPort: freePort(), discoveryPort: registers, sendType: "PUT_ASYNC")
        defer { #expect(p.stop() == 0) }
        let d = try await ServerProcess.instance(
            role: "kv_consumer", kvPort: freePort(), discoveryPort: registers, sendType: "PUT_ASYNC")
        defer { #expect(d.stop() == 0) }
        var router: ServerProcess
        if let discoveryRouter {
            router = discoveryRouter
        } else {
            router = try await Self.router([
                "--vllm-pd-disaggregation", "--prefill", p.baseURL, "--decode", d.baseURL,
            ])
        }
        defer { router.stop(grace: 2) }  // vllm-router does not always exit on SIGTERM
        var expectedLoaded = 0
        for g in golden.generations.prefix(4) {
            let body = "{\"prompt\":\(jsonString(g.prompt_text)),\"max_tokens\":12,\"temperature\":0}"
            let want = try #require(
                try await colocated.post("/v1/completions", body).json?.firstChoice?["text"] as? String)
            // Registrations reach the router every few seconds: retry until it knows both instances.
            var reply = try await router.post("/v1/completions", body)
            try await waitFor("the router to know both instances", timeout: 30, detail: { router.logText }) {
                if reply.status != .ok { reply = try await router.post("/v1/completions", body) }
                return reply.status == .ok
            }
            #expect(reply.status == .ok, "\(reply.body)\n\(router.logText)")
            #expect(reply.json?.firstChoice?["text"] as? String == want, "\(mode) \(g.prompt_text)")
            expectedLoaded += (reply.json?["usage"] as? [String: Any])?["prompt_tokens"] as? Int ?? 0
            expectedLoaded -= 1
        }
        let metrics = try await d.get("/metrics").body
        #expect(metricValue(metrics, "tandem_kv_loaded_tokens_total") == Double(expectedLoaded), "\(mode)")
        #expect(metricValue(metrics, "tandem_kv_recomputes_total") == 0, "\(mode)")
        #expect(!router.logText.contains("No kv_transfer_params"), "\(router.logText)")
    }
}
