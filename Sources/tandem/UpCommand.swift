import ArgumentParser
import AsyncHTTPClient
import Discovery
import Foundation
import Kernels
import ModelStore
import NIOFoundationCompat

/// `tandem up`: a proxy with prefill and decode instances on this machine, as child processes on the runbook's ports.
struct UpCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "up", abstract: "Start a proxy with prefill and decode instances on this machine.",
        discussion: """
            Ports follow the runbook: proxy 10002 (HTTP) and 30002 (discovery), the first prefill instance 8081/8082 \
            (HTTP/KV), the first decode instance 8083/8084, further instances on the next free pairs. Each process \
            logs to a file in --log-dir. Ctrl-C, or any child dying, stops them all.
            """)

    @Option(help: "A GGUF file, or a model name (`default`, `gemma3-270m`; see `tandem model list`).") var model =
        "default"
    @Option(help: "Number of prefill instances.") var prefill = 1
    @Option(help: "Number of decode instances.") var decode = 1
    @Option(name: .customLong("send-type"), help: "KV send type: PUT, PUT_ASYNC or GET.") var sendType = "PUT_ASYNC"
    @Option(
        help: """
            Address every process listens on: :: (the default) or 0.0.0.0 for every address, IPv6 and IPv4 alike; \
            or one address, which the processes then also use to reach each other.
            """)
    var host = "::"
    @Option(name: .customLong("proxy-port"), help: "The proxy's HTTP port.") var proxyPort = 10002
    @Option(name: .customLong("discovery-port"), help: "The proxy's discovery port.") var discoveryPort = 30002
    @Option(name: .customLong("first-port"), help: "The first instance's HTTP port; its KV port is the next one.")
    var firstPort = 8081
    @Option(name: .customLong("log-dir"), help: "Folder for the processes' logs.") var logDir = "tandem-logs"
    @Option(help: "CPU threads per instance.") var threads = availableCPUCount()
    @Option(name: .customLong("startup-timeout"), help: "Seconds to wait for every process to be ready.")
    var startupTimeout = 120.0

    func validate() throws {
        guard prefill >= 1, decode >= 1 else { throw ValidationError("--prefill and --decode must be at least 1") }
        guard ["PUT", "PUT_ASYNC", "GET"].contains(sendType) else {
            throw ValidationError("--send-type must be PUT, PUT_ASYNC or GET")
        }
        guard threads >= 1 else { throw ValidationError("--threads must be at least 1") }
        if let discovery, discovery != "etcd" {
            do { _ = try EtcdEndpoints(url: discovery) } catch {
                throw ValidationError("--discovery must be etcd or an etcd://HOST:PORT URL: \(error)")
            }
        }
    }

    /// The sample request `up` prints: a chat request, which an instruct model answers (a raw completion of a
    /// question often gets nothing but the end of the turn); a completion for a base model, which has no template.
    static func sampleRequest(model: String) -> (path: String, body: String) {
        if ModelRegistry.spec(named: model)?.hasChatTemplate == false {
            return (
                "/v1/completions",
                #"{"model":"\#(model)","prompt":"The capital of France is","max_tokens":32,"temperature":0}"#
            )
        }
        return (
            "/v1/chat/completions",
            #"{"model":"\#(model)","messages":[{"role":"user","content":"What is the capital of France? Answer in one sentence."}],"max_tokens":32,"temperature":0}"#
        )
    }

    /// Starts a local etcd (Debian's etcd-server) on free ports with its data in the log folder; its URL.
    private func startEtcd(_ supervisor: ProcessSupervisor, host: String, reach: String, taken: inout Set<Int>) throws
        -> String
    {
        guard let etcd = ["/usr/bin/etcd", "/usr/local/bin/etcd"].first(where: FileManager.default.isExecutableFile)
        else {
            throw UpError(
                "--discovery etcd needs etcd (Debian/Ubuntu: apt-get install etcd-server), or give etcd://HOST:PORT")
        }
        var port = 2379
        while taken.contains(port) || taken.contains(port + 1) || !portIsFree(port, host: host)
            || !portIsFree(port + 1, host: host)
        {
            port += 2
        }
        taken.formUnion([port, port + 1])
        // A demo's etcd starts empty: records left by an earlier run would list instances that are gone.
        try? FileManager.default.removeItem(atPath: "\(logDir)/etcd-data")
        let client = "http://\(HostPort(host: reach, port: port))"
        let peer = "http://\(HostPort(host: reach, port: port + 1))"
        try supervisor.start(
            name: "etcd", program: etcd,
            arguments: [
                "--name", "tandem-up", "--data-dir", "\(logDir)/etcd-data", "--listen-client-urls", client,
                "--advertise-client-urls", client, "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", "tandem-up=\(peer)",
            ], log: "\(logDir)/etcd.log")
        say("started etcd: \(client) (data in \(logDir)/etcd-data)")
        return "etcd://\(HostPort(host: reach, port: port))"
    }

    @Option(
        name: .customLong("discovery"),
        help:
            "etcd: register the instances in etcd (a local one started here, or etcd://HOST:PORT[,…] of a running one) and put two proxies in front, on --proxy-port and the next port."
    )
    var discovery: String?

    @Option(
        name: .customLong("cluster-secret-file"),
        help: "A file holding the cluster secret for the instances (else $TANDEM_CLUSTER_SECRET, else a fresh one).")
    var clusterSecretFile: String?

    func run() async throws {
        let path = try ModelStore().resolve(model)
        try FileManager.default.createDirectory(atPath: logDir, withIntermediateDirectories: true)
        let supervisor = ProcessSupervisor(executable: Bundle.main.executablePath ?? CommandLine.arguments[0])
        // The instances authenticate each other's KV connections: with the secret given, else with a fresh one
        // (the children inherit the environment).
        let secret =
            try clusterSecretFile.flatMap { try ClusterSecret.load(file: $0) }.map {
                String(decoding: $0, as: UTF8.self)
            }
            ?? ProcessInfo.processInfo.environment[ClusterSecret.environmentKey] ?? ClusterSecret.generate()
        setenv(ClusterSecret.environmentKey, secret, 1)
        let bindHost = ListenAddress.bindHost(for: host)
        // Where the processes reach each other: the loopback of the family they listen on, or the one address given.
        let reach = ListenAddress.isWildcard(host) ? (bindHost == "::" ? "::1" : "127.0.0.1") : bindHost

        var taken: Set<Int> = [proxyPort, discoveryPort]
        var nextPort = firstPort
        func freePair() -> (Int, Int) {
            while taken.contains(nextPort) || taken.contains(nextPort + 1) || !portIsFree(nextPort, host: bindHost)
                || !portIsFree(nextPort + 1, host: bindHost)
            {
                nextPort += 2
            }
            defer { nextPort += 2 }
            taken.formUnion([nextPort, nextPort + 1])
            return (nextPort, nextPort + 1)
        }
        // The runbook's order: P1 on 8081/8082, D1 on 8083/8084, then the others.
        let roles =
            ["prefill"] + ["decode"] + Array(repeating: "prefill", count: prefill - 1)
            + Array(repeating: "decode", count: decode - 1)

        do {
            let etcd = try discovery.map {
                $0 == "etcd" ? try startEtcd(supervisor, host: bindHost, reach: reach, taken: &taken) : $0
            }
            // With etcd, two proxies watch one fleet: the second on the next ports.
            let proxies =
                etcd == nil
                ? [(proxyPort, discoveryPort)] : [(proxyPort, discoveryPort), (proxyPort + 1, discoveryPort + 1)]
            taken.formUnion(proxies.flatMap { [$0.0, $0.1] })
            for (i, (port, zmq)) in proxies.enumerated() {
                try supervisor.start(
                    name: i == 0 ? "proxy" : "proxy\(i + 1)",
                    arguments: [
                        "proxy", "--host", bindHost, "--port", "\(port)", "--discovery-host", bindHost,
                        "--discovery-port", "\(zmq)",
                    ] + (etcd.map { ["--discovery", $0] } ?? []),
                    log: "\(logDir)/\(i == 0 ? "proxy" : "proxy\(i + 1)").log")
            }
            var counts = ["prefill": 0, "decode": 0]
            for role in roles {
                counts[role]! += 1
                let (http, kv) = freePair()
                // With etcd, instances register there only (so a stopped one leaves at once, not after a TTL).
                let registration =
                    etcd.map { #""discovery":"\#($0)""# } ?? #""proxy_ip":"\#(reach)","proxy_port":"\#(discoveryPort)""#
                let config = """
                    {"kv_connector":"P2pNcclConnector","kv_role":"\(role == "prefill" ? "kv_producer" : "kv_consumer")",\
                    "kv_buffer_size":"1e9","kv_port":"\(kv)","kv_connector_extra_config":{\(registration),\
                    "http_port":"\(http)","send_type":"\(sendType)"}}
                    """
                let name = "\(role)\(counts[role]!)"
                try supervisor.start(
                    name: name,
                    arguments: [
                        "serve", path, "--host", bindHost, "--port", "\(http)", "--served-model-name", model,
                        "--threads", "\(threads)", "--kv-transfer-config", config,
                    ], log: "\(logDir)/\(name).log")
                say("started \(name): http://\(HostPort(host: reach, port: http)), KV port \(kv)")
            }
            let proxyURL = "http://\(HostPort(host: reach, port: proxyPort))"
            // A dual-stack proxy answers on both loopbacks.
            let alsoURL = bindHost == "::" ? "   (also http://\(HostPort(host: "127.0.0.1", port: proxyPort)))" : ""
            let secondURL = "http://\(HostPort(host: reach, port: proxyPort + 1))"
            for url in etcd == nil ? [proxyURL] : [proxyURL, secondURL] {
                try await waitUntilRegistered(url, supervisor: supervisor)
            }
            let fleet =
                etcd.map { "\n  second proxy: \(secondURL) (both watch \($0))" } ?? ""
            say(
                """

                Tandem is up: \(prefill) prefill and \(decode) decode instance(s) behind the proxy.
                  proxy:   \(proxyURL)\(alsoURL)\(fleet)
                  health:  \(proxyURL)/health   metrics: \(proxyURL)/metrics
                  logs:    \(logDir)/
                Try:
                  curl -s \(proxyURL)\(Self.sampleRequest(model: model).path) -H 'Content-Type: application/json' \\
                    -d '\(Self.sampleRequest(model: model).body)'
                Ctrl-C stops everything.
                """)
            let reason = await supervisor.waitForStop()
            say("stopping: \(reason)")
            supervisor.stopAll()
            if case .childDied = reason { throw ExitCode.failure }
        } catch let error as ExitCode {
            throw error
        } catch {
            supervisor.stopAll()
            throw error
        }
    }

    private func waitUntilRegistered(_ proxyURL: String, supervisor: ProcessSupervisor) async throws {
        let deadline = Date().addingTimeInterval(startupTimeout)
        while Date() < deadline {
            if let sig = supervisor.signalReceived {
                throw UpError("interrupted by signal \(sig) during startup")
            }
            if let dead = supervisor.deadChild() {
                throw UpError("\(dead) exited during startup; its log ends with:\n\(supervisor.logTail(dead))")
            }
            if let reply = try? await HTTPClient.shared.execute(
                HTTPClientRequest(url: proxyURL + "/health"), timeout: .seconds(2)),
                let body = try? await reply.body.collect(upTo: 1 << 20),
                let object = try? JSONSerialization.jsonObject(with: Data(buffer: body)) as? [String: Any],
                let instances = object["instances"] as? [[String: Any]]
            {
                let p = instances.filter { $0["role"] as? String == "prefill" }.count
                let d = instances.filter { $0["role"] as? String == "decode" }.count
                if p >= prefill && d >= decode { return }
            }
            try await Task.sleep(for: .milliseconds(200))
        }
        throw UpError("not every instance registered with the proxy within \(Int(startupTimeout)) s (see \(logDir)/)")
    }
}

struct UpError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Whether a TCP port can be bound on `host` now.
func portIsFree(_ port: Int, host: String) -> Bool {
    let v6 = host.contains(":")
    let fd = socket(v6 ? AF_INET6 : AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { return false }
    defer { close(fd) }
    var yes: Int32 = 1
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, socklen_t(MemoryLayout<Int32>.size))
    func bindsTo<Address>(_ address: Address) -> Bool {
        var a = address
        return withUnsafePointer(to: &a) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<Address>.size)) == 0
            }
        }
    }
    if v6 {
        var addr = sockaddr_in6()
        addr.sin6_family = sa_family_t(AF_INET6)
        addr.sin6_port = in_port_t(UInt16(port).bigEndian)
        return bindsTo(addr)
    }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_port = in_port_t(UInt16(port).bigEndian)
    return bindsTo(addr)
}
