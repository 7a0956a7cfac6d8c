import Discovery
import Foundation
import JSON

/// The `--kv-transfer-config` JSON of `vllm serve`, read so that the runbook's configuration works unchanged.
///
/// vLLM's keys: `kv_connector` (`P2pNcclConnector`, or ours, `TandemConnector`), `kv_role` (`kv_producer`,
/// `kv_consumer`, `kv_both`), `kv_buffer_size` and `kv_port` (numbers or strings such as `"1e9"`), and under
/// `kv_connector_extra_config`: `proxy_ip`, `proxy_port`, `http_port`, `send_type` (`PUT`, `PUT_ASYNC`, `GET`),
/// `nccl_num_channels` (accepted and ignored). Tandem's own extra keys: `kv_transfer_timeout_s` (how long a consumer
/// waits for KV, default 10), `kv_unclaimed_ttl_s` (how long received KV waits for its request, default 60),
/// `kv_load_failure_policy` (`recompute`, the default, or `fail`), `kv_host` (the address
/// advertised to the proxy and peers; the first of `AdvertisedAddress`'s rules).
public struct KVTransferConfig: Sendable, Equatable {
    public enum Role: String, Sendable { case producer = "kv_producer", consumer = "kv_consumer", both = "kv_both" }
    public enum SendType: String, Sendable { case put = "PUT", putAsync = "PUT_ASYNC", get = "GET" }
    public enum FailurePolicy: String, Sendable { case recompute, fail }

    public static let connectorNames = ["P2pNcclConnector", "TandemConnector"]

    public var connector: String
    public var role: Role
    public var bufferBytes: Int
    public var kvPort: Int
    public var proxy: HostPort?
    public var httpPort: Int?
    public var sendType: SendType
    public var transferTimeout: Double
    /// Seconds received KV waits for its request before it is dropped.
    public var unclaimedTTL: Double
    public var failurePolicy: FailurePolicy
    public var advertisedHost: String?
    /// TLS on the KV plane (`kv_tls_cert_file`, `kv_tls_key_file`, `kv_tls_ca_file`, all three or none): see `KVTLS`.
    public var tls: TLSFiles?
    /// A fleet's etcd to register in (`"discovery": "etcd://…"`), as well as or instead of the proxy's ZMQ port.
    public var discovery: EtcdEndpoints?
    /// The PEM files of `KVTLS`.
    public struct TLSFiles: Sendable, Equatable {
        public var cert, key, ca: String
    }
    /// Keys read but without effect here, for the startup log.
    public var ignoredKeys: [String]

    /// The role the instance registers with: `kv_both` registers as a prefill instance, as vLLM's does.
    public var registrationRole: RegistrationPing.Role { role == .consumer ? .decode : .prefill }
}

/// A `--kv-transfer-config` that cannot be used; the message names the key.
public struct KVTransferConfigError: Error, CustomStringConvertible, Equatable {
    public let description: String
    init(_ description: String) { self.description = description }
}

extension KVTransferConfig {
    /// Parses the JSON text; every problem names its key.
    public init(json: String) throws {
        guard let object = JSONValue.parse(Array(json.utf8)), case .object = object else {
            throw KVTransferConfigError("--kv-transfer-config must be a JSON object")
        }
        var extra = object["kv_connector_extra_config"] ?? .null
        if extra == .null { extra = .object([]) }
        guard case .object(let extraPairs) = extra else {
            throw KVTransferConfigError("kv_connector_extra_config must be a JSON object")
        }

        func string(_ key: String, in o: JSONValue) throws -> String? {
            switch o[key] {
            case nil, .null?: return nil
            case .string(let s)?: return s
            default: throw KVTransferConfigError("\(key) must be a string")
            }
        }
        /// A number given as a JSON number or a string ("1e9", "8082").
        func number(_ key: String, in o: JSONValue) throws -> Double? {
            switch o[key] {
            case nil, .null?: return nil
            case .string(let s)?:
                guard let d = Double(s.trimmingCharacters(in: .whitespaces)), d.isFinite else {
                    throw KVTransferConfigError("\(key) must be a number, got \"\(s)\"")
                }
                return d
            case .int(let i)?: return Double(i)
            case .double(let d)?: return d
            default: throw KVTransferConfigError("\(key) must be a number or a numeric string")
            }
        }
        func port(_ key: String, in o: JSONValue) throws -> Int? {
            guard let d = try number(key, in: o) else { return nil }
            guard d == d.rounded(), (1...65535).contains(d) else {
                throw KVTransferConfigError("\(key) must be a port number in 1...65535, got \(d)")
            }
            return Int(d)
        }

        connector = try string("kv_connector", in: object) ?? "P2pNcclConnector"
        guard Self.connectorNames.contains(connector) else {
            throw KVTransferConfigError(
                "kv_connector '\(connector)' is not supported (use \(Self.connectorNames.joined(separator: " or ")))")
        }
        guard let roleText = try string("kv_role", in: object) else {
            throw KVTransferConfigError("kv_role is required (kv_producer, kv_consumer or kv_both)")
        }
        guard let role = Role(rawValue: roleText) else {
            throw KVTransferConfigError("kv_role '\(roleText)' is not one of kv_producer, kv_consumer, kv_both")
        }
        self.role = role
        let buffer = try number("kv_buffer_size", in: object) ?? 1e9
        guard buffer >= 1, buffer < 1e15 else { throw KVTransferConfigError("kv_buffer_size must be a positive size") }
        bufferBytes = Int(buffer)
        kvPort = try port("kv_port", in: object) ?? 14579
        let proxyIP = try string("proxy_ip", in: extra)
        let proxyPort = try port("proxy_port", in: extra)
        switch (proxyIP, proxyPort) {
        case (let ip?, let p?): proxy = HostPort(host: ip, port: p)
        case (nil, nil): proxy = nil
        default: throw KVTransferConfigError("proxy_ip and proxy_port must be given together")
        }
        httpPort = try port("http_port", in: extra)
        let sendText = try string("send_type", in: extra) ?? "PUT_ASYNC"
        guard let send = SendType(rawValue: sendText) else {
            throw KVTransferConfigError("send_type '\(sendText)' is not one of PUT, PUT_ASYNC, GET")
        }
        sendType = send
        transferTimeout = try number("kv_transfer_timeout_s", in: extra) ?? 10
        guard transferTimeout > 0, transferTimeout <= 3600 else {
            throw KVTransferConfigError("kv_transfer_timeout_s must be in (0, 3600]")
        }
        unclaimedTTL = try number("kv_unclaimed_ttl_s", in: extra) ?? 60
        guard unclaimedTTL > 0, unclaimedTTL <= 86_400 else {
            throw KVTransferConfigError("kv_unclaimed_ttl_s must be in (0, 86400]")
        }
        let policyText = try string("kv_load_failure_policy", in: extra) ?? "recompute"
        guard let policy = FailurePolicy(rawValue: policyText) else {
            throw KVTransferConfigError("kv_load_failure_policy '\(policyText)' is not one of recompute, fail")
        }
        failurePolicy = policy
        advertisedHost = try string("kv_host", in: extra)
        if let url = try string("discovery", in: extra) {
            do { discovery = try EtcdEndpoints(url: url) } catch { throw KVTransferConfigError("discovery: \(error)") }
        }
        let tlsFiles = try ["kv_tls_cert_file", "kv_tls_key_file", "kv_tls_ca_file"].map { try string($0, in: extra) }
        switch (tlsFiles[0], tlsFiles[1], tlsFiles[2]) {
        case (let cert?, let key?, let ca?): tls = TLSFiles(cert: cert, key: key, ca: ca)
        case (nil, nil, nil): tls = nil
        default:
            throw KVTransferConfigError("kv_tls_cert_file, kv_tls_key_file and kv_tls_ca_file must be given together")
        }
        ignoredKeys = extraPairs.map(\.0).filter { $0 == "nccl_num_channels" }.sorted()
    }
}
