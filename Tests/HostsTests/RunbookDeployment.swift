import Foundation
import Testing

/// The runbook's deployment across hosts: `tandem proxy` on one host, prefill and decode instances on others, each
/// started with nothing but the runbook's flags (`--host 0.0.0.0 --port 8081 --kv-transfer-config {...}` with
/// `proxy_ip` the proxy host's address), on the runbook's ports.
struct RunbookDeployment {
    let hosts: TestHosts
    let proxyHost: Int
    let proxy: HostProcess
    /// The address clients and instances use for the proxy.
    let proxyIP: String
    var prefills: [HostProcess] = []
    var decodes: [HostProcess] = []

    static let proxyHTTPPort = 10002
    static let runbookRequests = [
        #"{"model":"default","prompt":"Hello world","max_tokens":10}"#,
        #"{"model":"default","prompt":"What is the capital of France?","max_tokens":8}"#,
        #"{"model":"default","prompt":"def fibonacci(n):\n    if n <= 1:\n        return n\n    else:\n        return","max_tokens":12}"#,
        #"{"model":"default","prompt":"Once upon a time in a magical forest, there lived a wise old dragon who","max_tokens":20}"#,
    ]
    /// vLLM's default temperature is 1 (sampled); compared greedily.
    static var greedyRunbookRequests: [String] {
        runbookRequests.map { $0.replacingOccurrences(of: "}", with: ",\"temperature\":0}") }
    }

    /// The runbook's `--kv-transfer-config`, for a role, its ports and the proxy's address.
    static func kvConfig(role: String, http: Int, kv: Int, proxyIP: String, sendType: String, extra: String = "")
        -> String
    {
        """
        {"kv_connector":"P2pNcclConnector","kv_role":"\(role)","kv_buffer_size":"1e9","kv_port":"\(kv)",\
        "kv_connector_extra_config":{"proxy_ip":"\(proxyIP)","proxy_port":"30002","http_port":"\(http)",\
        "send_type":"\(sendType)","nccl_num_channels":"16"\(extra.isEmpty ? "" : "," + extra)}}
        """
    }

    /// Starts the proxy, then the instances, and waits until the proxy lists all of them.
    static func start(
        _ hosts: TestHosts, proxyHost: Int = 1, prefillHosts: [Int], decodeHosts: [Int], ipv4: Bool = false,
        sendType: String = "PUT_ASYNC", proxyArguments: [String] = [], kvExtra: String = ""
    ) async throws -> RunbookDeployment {
        let proxyIP = hosts.address(proxyHost, ipv4: ipv4)
        let proxy = try await hosts.start(proxyHost, "proxy", ["proxy"] + proxyArguments, healthPort: proxyHTTPPort)
        var d = RunbookDeployment(hosts: hosts, proxyHost: proxyHost, proxy: proxy, proxyIP: proxyIP)
        for (i, h) in prefillHosts.enumerated() {
            d.prefills.append(
                try await d.startInstance(h, "prefill\(i + 1)", producer: true, sendType: sendType, kvExtra: kvExtra))
        }
        for (i, h) in decodeHosts.enumerated() {
            d.decodes.append(
                try await d.startInstance(h, "decode\(i + 1)", producer: false, sendType: sendType, kvExtra: kvExtra))
        }
        try await d.waitForInstances(prefill: prefillHosts.count, decode: decodeHosts.count)
        return d
    }

    /// A prefill instance (8081/8082) or a decode instance (8083/8084) on `host`, exactly as the runbook starts it.
    func startInstance(_ host: Int, _ name: String, producer: Bool, sendType: String, kvExtra: String = "")
        async throws -> HostProcess
    {
        let http = producer ? 8081 : 8083
        let config = Self.kvConfig(
            role: producer ? "kv_producer" : "kv_consumer", http: http, kv: http + 1, proxyIP: proxyIP,
            sendType: sendType, extra: kvExtra)
        return try await hosts.start(
            host, name, ["serve", "default", "--host", "0.0.0.0", "--port", "\(http)", "--kv-transfer-config", config],
            healthPort: http)
    }

    var proxyURL: String { proxyIP.contains(":") ? "http://[\(proxyIP)]:10002" : "http://\(proxyIP):10002" }

    /// The proxy's `/health` instances.
    func instances() async throws -> [[String: Any]] {
        try await httpGet(proxyURL + "/health").json?["instances"] as? [[String: Any]] ?? []
    }

    func waitForInstances(prefill: Int, decode: Int, timeout: Double = 30) async throws {
        try await poll("the proxy lists \(prefill)P\(decode)D", timeout: timeout, detail: { proxy.logText }) {
            let all = try await instances()
            return all.filter { $0["role"] as? String == "prefill" }.count == prefill
                && all.filter { $0["role"] as? String == "decode" }.count == decode
        }
    }

    func complete(_ body: String, timeout: Int64 = 120) async throws -> Reply {
        try await httpPost(proxyURL + "/v1/completions", body, timeout: timeout)
    }

    func metrics(_ host: Int, port: Int) async throws -> String {
        try await httpGet(hosts.url(host, port: port) + "/metrics").body
    }
}

/// Greedy outputs of a colocated instance (`tandem serve default`, no KV transfer) on `host`, for the bodies given.
func colocatedTexts(_ hosts: TestHosts, host: Int, _ bodies: [String]) async throws -> [String] {
    let colocated = try await hosts.start(
        host, "colocated", ["serve", "default", "--host", "::", "--port", "8090"], healthPort: 8090)
    var texts: [String] = []
    for b in bodies {
        let reply = try await httpPost(hosts.url(host, port: 8090) + "/v1/completions", b)
        guard reply.status == 200, let text = reply.text else {
            throw HostsFailure("the colocated instance answered \(reply.status): \(reply.body)")
        }
        texts.append(text)
    }
    _ = await colocated.terminate()
    return texts
}
