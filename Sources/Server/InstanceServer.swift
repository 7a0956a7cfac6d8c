import Discovery
import Engine
import Foundation
import Hummingbird
import JSON
import KVTransfer
import Kernels
import Logging
import NIOConcurrencyHelpers
import OpenAIAPI
import ServiceLifecycle

/// How an instance is configured (`tandem serve` flags, named as `vllm serve` names them).
public struct InstanceOptions: Sendable {
    public var modelPath: String
    /// Names accepted in a request's `model` field; the first is reported.
    public var servedModelNames: [String]
    public var host = "0.0.0.0"
    public var port = 8081
    public var apiKey: String?
    /// Seconds a client connection may stay silent before its request is complete (a half-sent header, a stalled
    /// body) or between requests; then it is closed.
    public var clientTimeout = 30.0
    /// The most HTTP connections open at once; more are closed as soon as they are accepted.
    public var maxConnections = 1024
    /// Bounds on generated tokens: the default of a chat request without `max_tokens`, and the most any may ask.
    public var maxTokensDefault: Int?
    public var maxTokensLimit: Int?
    public var threads = availableCPUCount()
    public var maxNumSeqs = 16
    public var maxModelLength: Int?
    /// KV-cache size in bytes, or in blocks (blocks win); 1 GiB when neither is given.
    public var kvCacheBytes: Int?
    public var kvBlockCount: Int?
    public var blockSize = 16
    public var maxBatchedTokens = 256
    public var prefixCaching = true
    /// Registration with the proxy once the model is loaded (disaggregated instances).
    public var registration: RegistrationPlan?
    /// KV transfer (disaggregated instances).
    public var kvConnector: TandemKVConnector?

    public init(modelPath: String, servedModelNames: [String]) {
        self.modelPath = modelPath
        self.servedModelNames = servedModelNames
    }
}

/// How an instance registers with the proxy; the HTTP port defaults to the one the server is bound to.
public struct RegistrationPlan: Sendable {
    public var role: RegistrationPing.Role
    public var host: String
    public var httpPort: Int?
    public var kvPort: Int
    /// vLLM's registration: pings to the proxy's ZMQ port.
    public var proxy: HostPort?
    /// A fleet's etcd: the record under a lease.
    public var etcd: EtcdEndpoints?
    /// With the cluster secret, pings and records are signed.
    public var secret: [UInt8]?

    public init(
        role: RegistrationPing.Role, host: String, httpPort: Int?, kvPort: Int, proxy: HostPort?,
        etcd: EtcdEndpoints? = nil, secret: [UInt8]? = nil
    ) {
        self.secret = secret
        self.etcd = etcd
        self.role = role
        self.host = host
        self.httpPort = httpPort
        self.kvPort = kvPort
        self.proxy = proxy
    }
}

/// A configuration the model cannot be served with.
public struct InstanceConfigError: Error, CustomStringConvertible {
    public let description: String
}

/// Loads the model into an engine, marks the instance ready, and on graceful shutdown aborts every request and
/// stops the engine, before the HTTP server itself stops.
struct EngineService: Service {
    let options: InstanceOptions
    let host: EngineHost
    let logger: Logger
    let boundPort: NIOLockedValueBox<Int?>
    let metrics: InstanceMetrics

    func run() async throws {
        let options = options
        let engine = try await onThread { try Self.makeEngine(options) }
        let c = engine.config
        logger.info(
            "Model loaded: \(options.modelPath) (\(engine.model.config.architecture.rawValue), \(engine.model.config.layerCount) layers); KV cache \(c.blockCount) blocks × \(c.blockSize) tokens\(engine.windowBlockCount.map { " (sliding-window layers: \($0) blocks)" } ?? ""), max_model_len \(c.maxModelLength), max_num_seqs \(c.maxNumSeqs), \(options.threads) threads"
        )
        if let c = options.kvConnector {
            let mc = engine.model.config
            let line = try await c.start(
                fingerprint: engine.fingerprint, layerCount: mc.layerCount, kvDim: mc.kvDim,
                windows: engine.transferWindows)
            logger.info("\(line)")
        }
        host.setReady(LoadedModel(engine: engine))
        var registration: InstanceRegistration?
        var etcdRegistration: EtcdRegistration?
        if let plan = options.registration {
            var port = plan.httpPort ?? boundPort.withLockedValue { $0 }
            while port == nil {
                try await Task.sleep(for: .milliseconds(10))
                port = boundPort.withLockedValue { $0 }
            }
            let ping = RegistrationPing(
                role: plan.role, httpAddress: HostPort(host: plan.host, port: port!),
                zmqAddress: HostPort(host: plan.host, port: plan.kvPort), resumable: true)
            if let proxy = plan.proxy {
                let r = InstanceRegistration(ping: ping, proxy: proxy, secret: plan.secret)
                try r.start()
                registration = r
                logger.info(
                    "Registering with the proxy at \(proxy) every 3 s as \(ping.role.rawValue): http_address \(ping.httpAddress), zmq_address \(ping.zmqAddress)"
                )
            }
            if let etcd = plan.etcd {
                let record = EtcdInstanceRecord(
                    ping: ping, model: options.servedModelNames[0], fingerprint: engine.fingerprint, started: Date(),
                    secret: plan.secret)
                let r = EtcdRegistration(
                    client: EtcdClient(endpoints: etcd), record: record, logger: Logger(label: "tandem.discovery"))
                r.start()
                etcdRegistration = r
                metrics.etcd.withLockedValue { $0 = r }
            }
        }
        try? await gracefulShutdown()
        // Out of the fleet first (the lease revoked, so proxies stop routing here at once), then the requests.
        await etcdRegistration?.stop()
        logger.info("Shutting down: aborting in-flight requests")
        registration?.stop()
        await options.kvConnector?.close()
        host.setStopped()
        await onThread { engine.shutdown() }
    }

    static func makeEngine(_ o: InstanceOptions) throws -> EngineCore {
        let model = try TransformerModel(path: o.modelPath, threads: o.threads)
        let tokenizer = try Tokenizer(file: model.file)
        let mc = model.config
        guard o.blockSize >= 1, o.blockSize <= 1024 else {
            throw InstanceConfigError(description: "--block-size must be in 1...1024")
        }
        let layerBlockBytes = 2 * mc.kvDim * 2 * o.blockSize
        let budget = o.kvCacheBytes ?? (1 << 30)
        var blocks = o.kvBlockCount ?? max(1, budget / (mc.layerCount * layerBlockBytes))
        let sliding = mc.slidingLayers.filter { $0 }.count
        if o.kvBlockCount == nil, let window = mc.slidingWindow, sliding > 0, sliding < mc.layerCount {
            // The sliding-window layers take a window's blocks per request (`EngineConfig.windowBlockCount`); what
            // they leave of the budget goes to the other layers' blocks.
            var probe = EngineConfig(maxModelLength: 1, blockCount: blocks)
            probe.blockSize = o.blockSize
            probe.maxNumSeqs = o.maxNumSeqs
            probe.maxBatchedTokens = o.maxBatchedTokens
            let left = budget - probe.windowBlockCount(window: window) * sliding * layerBlockBytes
            blocks = max(blocks, left / ((mc.layerCount - sliding) * layerBlockBytes))
        }
        guard blocks >= 1 else { throw InstanceConfigError(description: "the KV cache must hold at least 1 block") }
        let capacity = blocks * o.blockSize
        if let m = o.maxModelLength {
            guard m <= mc.contextLength else {
                throw InstanceConfigError(
                    description: "--max-model-len \(m) exceeds the model's context length of \(mc.contextLength)")
            }
            guard m <= capacity else {
                throw InstanceConfigError(
                    description:
                        "--max-model-len \(m) does not fit in the KV cache (\(capacity) tokens); give more --kv-cache-memory or --num-kv-blocks"
                )
            }
        }
        var config = EngineConfig(
            maxModelLength: min(o.maxModelLength ?? mc.contextLength, capacity), blockCount: blocks)
        config.blockSize = o.blockSize
        config.maxNumSeqs = o.maxNumSeqs
        config.maxBatchedTokens = o.maxBatchedTokens
        config.prefixCaching = o.prefixCaching
        return EngineCore(model: model, tokenizer: tokenizer, config: config, connector: o.kvConnector)
    }
}

/// An instance: the HTTP API in front of an engine, run until SIGINT or SIGTERM.
public enum InstanceServer {
    /// Serves until a shutdown signal; then aborts in-flight requests, stops accepting and returns.
    public static func run(_ options: InstanceOptions, logger: Logger) async throws {
        let host = EngineHost()
        let metrics = InstanceMetrics(modelName: options.servedModelNames[0])
        let boundPort = NIOLockedValueBox<Int?>(nil)
        let api = InstanceAPI(
            host: host, servedModelNames: options.servedModelNames, modelPath: options.modelPath, metrics: metrics,
            kvConnector: options.kvConnector, maxTokensDefault: options.maxTokensDefault,
            maxTokensLimit: options.maxTokensLimit)
        let app = Application(
            router: api.router(apiKey: options.apiKey),
            server: .tandem(clientTimeout: options.clientTimeout, maxConnections: options.maxConnections),
            configuration: .init(address: .hostname(options.host, port: options.port), serverName: "tandem"),
            onServerRunning: { channel in
                let port = channel.localAddress?.port ?? options.port
                boundPort.withLockedValue { $0 = port }
                logger.info("Tandem instance listening on http://\(formatHostPort(options.host, port))")
            },
            logger: logger
        )
        let engine = EngineService(
            options: options, host: host, logger: logger, boundPort: boundPort, metrics: metrics)
        // Services stop in reverse order: the engine first (ending every stream), then the HTTP server.
        let group = ServiceGroup(
            configuration: .init(
                services: [app, engine], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
    }
}

/// `host:port`, with IPv6 hosts in brackets.
public func formatHostPort(_ host: String, _ port: Int) -> String {
    host.contains(":") && !host.hasPrefix("[") ? "[\(host)]:\(port)" : "\(host):\(port)"
}
