import ArgumentParser
import Discovery
import Foundation
import KVTransfer
import Kernels
import Logging
import ModelStore
import Server

/// `tandem serve MODEL`: one model behind an OpenAI-compatible HTTP API, with flags named as `vllm serve` names them.
struct ServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Serve a model over an OpenAI-compatible HTTP API (prefill, decode or colocated instance).")

    @Argument(
        help:
            "A GGUF file, or a model name: `default` (SmolLM2-135M-Instruct Q4_1) or `gemma3-270m` (Gemma 3 270M Q4_K_M), downloaded on first use; see `tandem model list`."
    )
    var model: String = "default"
    @Option(help: "Address to listen on (0.0.0.0 or :: for every address, IPv6 and IPv4; or one address).")
    var host = "0.0.0.0"
    @Option(help: "HTTP port (0 picks a free one; the log says which).") var port = 8081
    @Option(
        name: .customLong("served-model-name"),
        help: "Name(s) clients use in the `model` field (repeatable; default: the MODEL argument).")
    var servedModelName: [String] = []
    @OptionGroup var guards: ClientGuardOptions
    @Option(
        name: .customLong("max-tokens-default"),
        help: "Tokens a chat request without max_tokens may generate (default: up to max_model_len).")
    var maxTokensDefault: Int?
    @Option(
        name: .customLong("max-tokens-limit"), help: "The most tokens a request may ask for; more is a 400.")
    var maxTokensLimit: Int?
    @Option(name: .customLong("api-key"), help: "Require `Authorization: Bearer KEY` on /v1 endpoints.")
    var apiKey: String?
    @Option(name: .customLong("max-num-seqs"), help: "Most requests in the running batch.") var maxNumSeqs = 16
    @Option(name: .customLong("max-model-len"), help: "Longest sequence, prompt plus output (default: the model's).")
    var maxModelLen: Int?
    @Option(
        name: .customLong("kv-cache-memory"), help: "KV-cache size in bytes (suffixes K, M, G; default 1G).")
    var kvCacheMemory: String?
    @Option(name: .customLong("num-kv-blocks"), help: "KV-cache size in blocks (overrides --kv-cache-memory).")
    var numKvBlocks: Int?
    @Option(name: .customLong("block-size"), help: "Tokens per KV-cache block.") var blockSize = 16
    @Option(
        name: .customLong("max-num-batched-tokens"),
        help: "Most tokens per engine step; longer prompts are prefilled in chunks.")
    var maxNumBatchedTokens = 256
    @Flag(inversion: .prefixedEnableDisable, help: "Reuse the KV cache of shared prompt prefixes.")
    var prefixCaching = true
    @Option(help: "CPU threads for the model.") var threads = availableCPUCount()
    @Option(
        name: .customLong("kv-transfer-config"),
        help: "vLLM's KV-transfer JSON (kv_role, kv_port, kv_connector_extra_config with proxy_ip/proxy_port, ...).")
    var kvTransferConfig: String?
    @Option(
        name: .customLong("discovery"),
        help:
            "Register in a fleet's etcd (with --kv-transfer-config): etcd://HOST:PORT[,HOST:PORT…][/PREFIX]; overrides kv_connector_extra_config's \"discovery\"."
    )
    var discovery: String?

    func validate() throws {
        if let discovery {
            do { _ = try EtcdEndpoints(url: discovery) } catch { throw ValidationError("--discovery: \(error)") }
            guard kvTransferConfig != nil else {
                throw ValidationError(
                    "--discovery registers a prefill or decode instance: give --kv-transfer-config too")
            }
        }
        guard (0...65535).contains(port) else { throw ValidationError("--port must be in 0...65535") }
        guard (maxTokensDefault ?? 1) >= 1, (maxTokensLimit ?? 1) >= 1 else {
            throw ValidationError("--max-tokens-default and --max-tokens-limit must be at least 1")
        }
        guard maxNumSeqs >= 1 else { throw ValidationError("--max-num-seqs must be at least 1") }
        guard blockSize >= 1, blockSize <= 1024 else { throw ValidationError("--block-size must be in 1...1024") }
        guard maxNumBatchedTokens >= 1 else { throw ValidationError("--max-num-batched-tokens must be at least 1") }
        guard threads >= 1 else { throw ValidationError("--threads must be at least 1") }
        if let maxModelLen, maxModelLen < 2 { throw ValidationError("--max-model-len must be at least 2") }
        if let numKvBlocks, numKvBlocks < 1 { throw ValidationError("--num-kv-blocks must be at least 1") }
        if let kvTransferConfig {
            do {
                _ = try KVTransferConfig(json: kvTransferConfig)
            } catch {
                throw ValidationError("--kv-transfer-config: \(error)")
            }
        }
        if let kvCacheMemory, Self.parseBytes(kvCacheMemory) == nil {
            throw ValidationError("--kv-cache-memory must be a byte count such as 536870912, 512M or 2G")
        }
    }

    /// "1e9", "512M", "2G", "1048576" → bytes.
    static func parseBytes(_ text: String) -> Int? {
        let units: [Character: Double] = ["K": 1024, "M": 1_048_576, "G": 1_073_741_824]
        var t = text.uppercased()
        if t.hasSuffix("IB") || t.hasSuffix("B") { t = String(t.dropLast(t.hasSuffix("IB") ? 2 : 1)) }
        var scale = 1.0
        if let last = t.last, let u = units[last] {
            scale = u
            t.removeLast()
        }
        guard let v = Double(t), v > 0, v * scale < 1e15 else { return nil }
        return Int(v * scale)
    }

    func run() async throws {
        LoggingSystem.bootstrap { StreamLogHandler.standardError(label: $0) }
        let logger = Logger(label: "tandem.serve")
        let path = try ModelStore().resolve(model)
        var options = InstanceOptions(
            modelPath: path, servedModelNames: servedModelName.isEmpty ? [model] : servedModelName)
        options.host = ListenAddress.bindHost(for: host)
        options.port = port
        options.apiKey = apiKey
        options.clientTimeout = guards.clientTimeout
        options.maxConnections = guards.maxConnections
        options.maxTokensDefault = maxTokensDefault
        options.maxTokensLimit = maxTokensLimit
        options.threads = threads
        options.maxNumSeqs = maxNumSeqs
        options.maxModelLength = maxModelLen
        options.kvCacheBytes = kvCacheMemory.flatMap(Self.parseBytes)
        options.kvBlockCount = numKvBlocks
        options.blockSize = blockSize
        options.maxBatchedTokens = maxNumBatchedTokens
        options.prefixCaching = prefixCaching
        if let kvTransferConfig {
            let kv = try KVTransferConfig(json: kvTransferConfig)
            let advertised = AdvertisedAddress.choose(kvHost: kv.advertisedHost, bindHost: host, proxy: kv.proxy)
            logger.info("Advertising \(advertised)")
            let address = advertised.host
            let http = HostPort(host: address, port: kv.httpPort ?? port)  // For the log; 0 means "as bound".
            let zmq = HostPort(host: address, port: kv.kvPort)
            let ignored = kv.ignoredKeys.isEmpty ? "" : ", ignored: \(kv.ignoredKeys.joined(separator: ", "))"
            logger.info(
                "KV connector init, role:\(kv.role.rawValue), http_address:\(http), zmq_address:\(zmq), proxy_address:\(kv.proxy?.description ?? "none"), send_type:\(kv.sendType.rawValue), buffer_size_threshold:\(kv.bufferBytes)\(ignored)"
            )
            let secret = try ClusterSecret.load(file: guards.clusterSecretFile)
            options.kvConnector = TandemKVConnector(
                config: kv, kvAddress: zmq, bindHost: options.host, clusterSecret: secret,
                logger: Logger(label: "tandem.kv"))
            let etcd = try discovery.map { try EtcdEndpoints(url: $0) } ?? kv.discovery
            if kv.proxy != nil || etcd != nil {
                options.registration = RegistrationPlan(
                    role: kv.registrationRole, host: address, httpPort: kv.httpPort ?? (port == 0 ? nil : port),
                    kvPort: kv.kvPort, proxy: kv.proxy, etcd: etcd, secret: secret)
            }
        }
        try await InstanceServer.run(options, logger: logger)
    }
}
