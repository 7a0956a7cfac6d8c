import Discovery
import Foundation
import Testing

/// `tandem serve` with the runbook's `--kv-transfer-config` registers with a proxy's ZMQ ROUTER exactly as vLLM's
/// instances do.
@Suite struct RegistrationEndToEndTests {
    @Test(arguments: ["127.0.0.1", "::1"])
    func servePingsTheProxyWithTheRunbookConfig(host: String) async throws {
        let router = try ZMQSocket(.router)
        var proxyPort = 0
        for _ in 0..<20 {
            proxyPort = Int.random(in: 40_000..<60_000)
            if (try? router.bind(HostPort(host: host, port: proxyPort))) != nil { break }
        }
        let config = """
            {"kv_connector":"P2pNcclConnector","kv_role":"kv_consumer","kv_buffer_size":"1e9","kv_port":"18084",\
            "kv_connector_extra_config":{"proxy_ip":"\(host)","proxy_port":"\(proxyPort)","http_port":"18083",\
            "send_type":"PUT_ASYNC","nccl_num_channels":"16","kv_host":"\(host)"}}
            """
        let server = try await ServerProcess(host: host, ["--kv-transfer-config", config])
        defer { #expect(server.stop() == 0) }
        let frames = try #require(try router.receive(timeoutMs: 10_000), "\(server.logText)")
        let bracketed = host.contains(":") ? "[\(host)]" : host
        #expect(frames.first == Array("\(bracketed):18084".utf8))
        #expect(
            try MessagePackValue.decode(frames.last ?? [])
                == .stringMap([
                    ("type", "D"), ("http_address", "\(bracketed):18083"), ("zmq_address", "\(bracketed):18084"),
                    // Tandem's one extra key (vLLM's proxies read only the three above); it lets a Tandem proxy
                    // overlap prefill and decode and migrate streams.
                    ("tandem_features", "resume"),
                ]))
        #expect(server.logText.contains("KV connector init, role:kv_consumer"))
        #expect(server.logText.contains("send_type:PUT_ASYNC"))
    }
}
