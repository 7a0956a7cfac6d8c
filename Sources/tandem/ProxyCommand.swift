import ArgumentParser
import Discovery
import Foundation
import Logging
import Proxy

/// `tandem proxy`: service discovery and request routing, a drop-in for vLLM's P2P proxy.
struct ProxyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "proxy",
        abstract: "Run the front door: service discovery (30002) and request routing over HTTP (10002).")

    @Option(help: "HTTP address (:: or 0.0.0.0 listens on every address, IPv6 and IPv4).") var host = "::"
    @Option(help: "HTTP port.") var port = 10002
    @Option(name: .customLong("discovery-host"), help: "Address of the ZMQ ROUTER that receives instance pings.")
    var discoveryHost = "::"
    @Option(name: .customLong("discovery-port"), help: "Port of the ZMQ ROUTER.") var discoveryPort = 30002
    @Option(help: "How to pick instances: round_robin or least_loaded.") var policy = "round_robin"
    @OptionGroup var guards: ClientGuardOptions
    @Option(name: .customLong("api-key"), help: "Require `Authorization: Bearer KEY` from clients on /v1.")
    var apiKey: String?
    @Flag(
        name: .customLong("allow-unauthenticated-discovery"),
        help: "With a cluster secret, still accept plain (vLLM) registrations, for fleets mixed with vLLM instances.")
    var allowUnauthenticatedDiscovery = false
    @Option(name: .customLong("instance-ttl"), help: "Seconds without a ping before an instance is removed (5s).")
    var instanceTTL = "5s"
    @Option(name: .customLong("connect-timeout"), help: "Seconds to connect to an instance.") var connectTimeout = 5.0
    @Option(name: .customLong("prefill-timeout"), help: "Seconds a prefill request may take.") var prefillTimeout =
        300.0
    @Option(name: .customLong("decode-timeout"), help: "Seconds a decode request may take, stream included.")
    var decodeTimeout = 1800.0
    @Option(name: .customLong("read-timeout"), help: "Seconds of silence from an answering instance.")
    var readTimeout = 120.0
    @Option(
        name: .customLong("pd-flow"),
        help:
            "overlap, the default (prefill and decode start together, the first token comes from the prefill, a failed decode stream moves to another decode; Tandem instances only) or sequential (vLLM's order)."
    )
    var pdFlow = "overlap"
    @Option(
        name: .customLong("max-migrations"), help: "Times one stream may move to another decode instance (overlap).")
    var maxMigrations = 2
    @Option(
        name: .customLong("shutdown-grace"),
        help: "Seconds requests in flight may still run after SIGTERM before they are cut.")
    var shutdownGrace = 1.0
    @Option(
        name: .customLong("discovery"),
        help: "A fleet's etcd to watch as well as the ZMQ pings: etcd://HOST:PORT[,HOST:PORT…][/PREFIX].")
    var discovery: String?

    static func seconds(_ text: String) -> Double? {
        let t = text.hasSuffix("s") ? String(text.dropLast()) : text
        guard let v = Double(t), v > 0, v < 86_400 else { return nil }
        return v
    }

    func validate() throws {
        guard (0...65535).contains(port), (1...65535).contains(discoveryPort) else {
            throw ValidationError("--port and --discovery-port must be valid port numbers")
        }
        guard RoutingPolicy(rawValue: policy) != nil else {
            throw ValidationError("--policy must be round_robin or least_loaded")
        }
        guard PDFlow(rawValue: pdFlow) != nil else { throw ValidationError("--pd-flow must be overlap or sequential") }
        guard (0...100).contains(maxMigrations) else { throw ValidationError("--max-migrations must be in 0...100") }
        guard Self.seconds(instanceTTL) != nil else { throw ValidationError("--instance-ttl must be like 5s or 2.5") }
        if let discovery {
            do { _ = try EtcdEndpoints(url: discovery) } catch { throw ValidationError("--discovery: \(error)") }
        }
        for (name, v) in [
            ("connect-timeout", connectTimeout), ("prefill-timeout", prefillTimeout),
            ("decode-timeout", decodeTimeout), ("read-timeout", readTimeout), ("shutdown-grace", shutdownGrace),
        ] where !(v > 0) {
            throw ValidationError("--\(name) must be positive")
        }
    }

    func run() async throws {
        LoggingSystem.bootstrap { StreamLogHandler.standardError(label: $0) }
        var options = ProxyOptions()
        options.host = ListenAddress.bindHost(for: host)
        options.port = port
        options.discoveryHost = ListenAddress.bindHost(for: discoveryHost)
        options.discoveryPort = discoveryPort
        options.policy = RoutingPolicy(rawValue: policy)!
        options.apiKey = apiKey
        options.clientTimeout = guards.clientTimeout
        options.maxConnections = guards.maxConnections
        options.instanceTTL = Self.seconds(instanceTTL)!
        options.connectTimeout = connectTimeout
        options.prefillTimeout = prefillTimeout
        options.decodeTimeout = decodeTimeout
        options.readTimeout = readTimeout
        options.shutdownGrace = shutdownGrace
        options.flow = PDFlow(rawValue: pdFlow)!
        options.maxMigrations = maxMigrations
        options.clusterSecret = try ClusterSecret.load(file: guards.clusterSecretFile)
        options.allowUnauthenticatedDiscovery = allowUnauthenticatedDiscovery
        options.etcd = try discovery.map { try EtcdEndpoints(url: $0) }
        try await ProxyServer.run(options, logger: Logger(label: "tandem.proxy"))
    }
}
