import Discovery
import Engine
import Logging
import NIOConcurrencyHelpers

/// Tandem's TCP connector: the engine's `KVConnector` over a `KVNode`, configured by `--kv-transfer-config`.
///
/// It owns everything about moving KV: the node (listener, connections, inbox, outbox), the send type as the saver
/// strategy (PUT_ASYNC streams groups of layers while they are computed, PUT sends the whole prompt's KV before the prefill
/// answers, pulled KV waits in the outbox), the checks on what arrives (fingerprint, shape, prompt prefix), the
/// failure policy (`recompute` or `fail`) and the metrics.
public final class TandemKVConnector: KVConnector {
    public let config: KVTransferConfig
    /// `host:kv_port` as the proxy and peers know it.
    public let kvAddress: HostPort
    public let metrics = KVTransferMetrics()
    let logger: Logger
    private let bindHost: String
    private let codec: KVTransferParamsCodec
    private struct Started {
        let node: KVNode
        let fingerprint: UInt64
        let layerCount: Int
        let kvDim: Int
        let windows: KVTransferWindows
    }
    private let started = NIOLockedValueBox<Started?>(nil)

    /// With a cluster secret, KV moves only between instances that prove it (KVPeerAuthenticator).
    private let clusterSecret: [UInt8]?

    public init(
        config: KVTransferConfig, kvAddress: HostPort, bindHost: String, clusterSecret: [UInt8]? = nil, logger: Logger
    ) {
        self.config = config
        self.clusterSecret = clusterSecret
        self.kvAddress = kvAddress
        self.bindHost = bindHost
        self.logger = logger
        codec = KVTransferParamsCodec(role: config.role, sendType: config.sendType, kvAddress: kvAddress)
    }

    /// The KV node, once started.
    public var node: KVNode? { started.withLockedValue { $0?.node } }

    /// Starts listening on `kv_port` for KV of a model with this fingerprint and shape (`windows`: which positions
    /// of each layer a transfer carries, every one by default); returns a line for the log.
    public func start(
        fingerprint: UInt64, layerCount: Int, kvDim: Int, windows: KVTransferWindows? = nil
    ) async throws -> String {
        let windows = windows ?? .whole(layers: layerCount)
        let metrics = metrics
        let node = try await KVNode(
            bind: HostPort(host: bindHost, port: config.kvPort), fingerprint: fingerprint,
            bufferBytes: config.bufferBytes, ttl: config.unclaimedTTL, transferTimeout: config.transferTimeout,
            windows: windows, clusterSecret: clusterSecret,
            tls: try config.tls.map { try KVTLS(certificateFile: $0.cert, keyFile: $0.key, caFile: $0.ca) },
            logger: logger
        ) { event in
            switch event {
            case .sent(let bytes, let seconds): metrics.sent(bytes: bytes, seconds: seconds)
            case .sendFailed(let reason): metrics.failed(reason)
            }
        }
        started.withLockedValue {
            $0 = Started(
                node: node, fingerprint: fingerprint, layerCount: layerCount, kvDim: kvDim, windows: windows)
        }
        var guarded =
            clusterSecret == nil
            ? "OPEN: no cluster secret, anyone who reaches this port can send or fetch KV (set TANDEM_CLUSTER_SECRET)"
            : "authenticated by the cluster secret"
        if config.tls != nil {
            guarded =
                (clusterSecret == nil ? "" : guarded + ", ")
                + "TLS 1.3 with peer certificates from \(config.tls?.ca ?? "")"
        }
        return
            "KV node listening on \(HostPort(host: bindHost, port: config.kvPort)), \(guarded) (send_type \(config.sendType.rawValue), buffer \(config.bufferBytes) bytes, model fingerprint \(String(fingerprint, radix: 16)))"
    }

    /// Stops listening and closes every connection.
    public func close() async { await node?.close() }

    /// The connector's metrics as Prometheus text.
    public func renderMetrics() -> String {
        metrics.bufferBytes(node?.bufferedBytes ?? 0)
        return metrics.render()
    }

    // MARK: - Scheduler side

    public func parse(requestId: String?, params: [String: KVParamValue]?) throws -> KVTransferParams? {
        guard node != nil else { return nil }
        return try codec.parse(requestId: requestId, params: params)
    }

    public func startLoad(_ request: KVConnectorRequest, done: @escaping @Sendable (KVLoadOutcome) -> Void) {
        guard let s = started.withLockedValue({ $0 }) else { return done(.recompute) }
        let t = request.transfer
        if let f = t.fingerprint, f != s.fingerprint {
            return done(failed(request, "the prefill instance serves another model", reason: "rejected"))
        }
        guard let prefill = HostPort(t.prefillAddress) else {
            return done(failed(request, "bad prefill address \(t.prefillAddress)", reason: "rejected"))
        }
        let timeout = config.transferTimeout
        Task {
            let start = ContinuousClock.now
            let arrival =
                t.delivery == .pull
                ? await s.node.pull(t.transferId, from: prefill, before: t.extraWait)
                : await s.node.inbox.wait(for: t.transferId, timeout: timeout, before: t.extraWait)
            switch arrival {
            case .payload(let p):
                if let why = p.mismatch(
                    prompt: request.promptTokens, fingerprint: s.fingerprint, layerCount: s.layerCount,
                    kvDim: s.kvDim)
                {
                    done(failed(request, "the received KV does not fit this request: \(why)", reason: "rejected"))
                } else {
                    metrics.received(bytes: p.carriedBytes, seconds: seconds(since: start))
                    done(.loaded(p))
                }
            case .rejected(let why): done(failed(request, why, reason: "rejected"))
            case .timedOut:
                done(failed(request, "no KV arrived within its \(timeout) s deadline", reason: "timeout"))
            case .abandoned:
                // The request is gone from the engine already; the outcome only closes the wait.
                done(.recompute)
            }
        }
    }

    /// The failure policy, in one place: recompute the prompt, or end the request with the reason.
    private func failed(_ request: KVConnectorRequest, _ why: String, reason: String) -> KVLoadOutcome {
        metrics.failed(reason)
        if config.failurePolicy == .fail { return .failed("KV transfer failed: \(why)") }
        metrics.recomputed()
        logger.warning("KV for \(request.transfer.transferId) not used (\(why)); recomputing the prompt")
        return .recompute
    }

    public func requestFinished(_ request: KVConnectorRequest, aborted: Bool) -> [(String, KVParamValue)]? {
        if request.transfer.role == .consume, aborted, request.transfer.delivery == .push {
            // Nobody will claim this KV now: stop waiting for it and drop what is on its way.
            node?.inbox.abandon(request.transfer.transferId)
        }
        guard request.transfer.role == .produce, !aborted, let s = started.withLockedValue({ $0 }) else {
            return nil
        }
        return codec.response(for: request, fingerprint: s.fingerprint)
    }

    // MARK: - Worker side

    public func saver(for request: KVConnectorRequest) -> (any KVLayerSink)? {
        guard let s = started.withLockedValue({ $0 }) else { return nil }
        let t = request.transfer
        let id = t.transferId
        if t.delivery == .push, let decode = t.decodeAddress.flatMap(HostPort.init) {
            if config.sendType == .putAsync {
                return s.node.stream(
                    requestId: id, tokens: request.promptTokens, layerCount: s.layerCount, kvDim: s.kvDim,
                    to: decode, firstTokenFollows: request.handOff)
            }
            return assembler(request, s) { payload, answer in
                guard let payload else { return answer() }
                Task {
                    let start = ContinuousClock.now
                    do {
                        try await s.node.send(payload, requestId: id, to: decode)
                        self.metrics.sent(bytes: payload.carriedBytes, seconds: seconds(since: start))
                    } catch {
                        self.metrics.failed("send")
                        self.logger.warning("KV send for \(id) failed: \(error)")
                    }
                    answer()
                }
            }
        }
        return assembler(request, s) { payload, answer in
            if let payload, !s.node.offer(payload, requestId: id) {
                self.metrics.failed("backpressure")
                self.logger.warning("KV for \(id) does not fit in kv_buffer_size; the decode will recompute")
            }
            answer()
        }
    }

    private func assembler(
        _ request: KVConnectorRequest, _ s: Started,
        deliver: @escaping @Sendable (KVPayload?, @escaping @Sendable () -> Void) -> Void
    ) -> KVPayloadAssembler {
        KVPayloadAssembler(
            tokens: request.promptTokens, layerCount: s.layerCount, kvDim: s.kvDim, fingerprint: s.fingerprint,
            windows: s.windows, deliver: deliver)
    }
}
