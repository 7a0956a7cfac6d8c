import Discovery
import Engine
import Foundation
import Logging
import NIOCore
import NIOPosix

/// An instance's KV endpoint: a TCP listener on its `kv_port` and one persistent connection per peer, shared by
/// every transfer to or from that peer and redialed when it breaks. Frames of different requests interleave on a
/// connection; each carries its request id.
///
/// - PUT: `send` writes a whole payload and waits for the consumer's ack.
/// - PUT_ASYNC: `stream` opens a transfer that the engine feeds in groups of layers while the prefill computes.
/// - GET: `offer` keeps the payload in the outbox until the consumer `pull`s it (or its lease ends).
///
/// Memory is bounded by `kv_buffer_size` three times over: the inbox (received and arriving KV), the outbox (KV
/// waiting to be pulled) and the send budget (frames queued on connections).
public final class KVNode: Sendable {
    let state: KVNodeState
    private let listener: any Channel
    private let pool: KVConnectionPool
    private let open: OpenChannels

    public var inbox: KVInbox { state.inbox }
    public var outbox: KVInbox { state.outbox }
    public var budget: KVSendBudget { state.budget }
    public var port: Int { listener.localAddress?.port ?? 0 }
    /// Peers with an open connection now.
    public var connectionCount: Int { pool.count }

    /// Bytes of KV this node holds: received, waiting to be pulled, and queued to send.
    public var bufferedBytes: Int { inbox.bytesInUse + outbox.bytesInUse + budget.inUse }

    public init(
        bind: HostPort, fingerprint: UInt64, bufferBytes: Int, ttl: Double, transferTimeout: Double,
        windows: KVTransferWindows? = nil, connectTimeout: Double = 2, clusterSecret: [UInt8]? = nil, tls: KVTLS? = nil,
        logger: Logger,
        report: @escaping @Sendable (KVTransferEvent) -> Void = { _ in }
    ) async throws {
        let handshake = TimeAmount.milliseconds(Int64(max(0.1, connectTimeout) * 1000))
        let state = KVNodeState(
            fingerprint: fingerprint, bufferBytes: bufferBytes, ttl: ttl, transferTimeout: transferTimeout,
            windows: windows, authenticatedPeers: clusterSecret != nil || tls != nil, logger: logger, report: report)
        self.state = state
        let open = OpenChannels()
        self.open = open
        @Sendable func setUp(_ channel: any Channel, dialed: Bool) -> EventLoopFuture<Void> {
            open.add(channel)
            return channel.eventLoop.makeCompletedFuture {
                if let tls { try channel.pipeline.syncOperations.addHandler(try tls.handler(dialed: dialed)) }
                if let secret = clusterSecret {
                    try channel.pipeline.syncOperations.addHandler(
                        KVPeerAuthenticator(secret: secret, eventLoop: channel.eventLoop, handshakeTimeout: handshake))
                }
                try channel.pipeline.syncOperations.addHandler(
                    ByteToMessageHandler(KVFrameDecoder(maxFrameBytes: state.maxFrameBytes)))
                try channel.pipeline.syncOperations.addHandler(KVPeerHandler(node: state))
            }
        }
        // A peer that vanishes without closing (a link down, a host frozen) is found dead on both sides: bytes
        // left unacknowledged for the transfer deadline, or an idle connection whose keep-alive probes go
        // unanswered, close the connection; its transfers then fail, the decode recomputes, buffers are freed.
        let deadTimeout = Int(max(1, min(600, transferTimeout)) * 1000)
        let tcp = SocketOptionLevel(IPPROTO_TCP)
        // Reads of up to 1 MiB: a layer frame (hundreds of KB) arrives in a few reads, not dozens.
        let reads = AdaptiveRecvByteBufferAllocator(minimum: 4096, initial: 65_536, maximum: 1 << 20)
        listener = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(ChannelOptions.recvAllocator, value: reads)
            .childChannelOption(ChannelOptions.socketOption(.so_keepalive), value: 1)
            .childChannelOption(ChannelOptions.socket(tcp, TCP_KEEPIDLE), value: 2)
            .childChannelOption(ChannelOptions.socket(tcp, TCP_KEEPINTVL), value: 1)
            .childChannelOption(ChannelOptions.socket(tcp, TCP_USER_TIMEOUT), value: deadTimeout)
            .childChannelInitializer { setUp($0, dialed: false) }
            .bind(host: bind.host, port: bind.port).get()
        pool = KVConnectionPool { peer in
            ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .connectTimeout(.milliseconds(Int64(connectTimeout * 1000)))
                .channelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
                .channelOption(ChannelOptions.recvAllocator, value: reads)
                .channelOption(ChannelOptions.socketOption(.so_keepalive), value: 1)
                .channelOption(ChannelOptions.socket(tcp, TCP_KEEPIDLE), value: 2)
                .channelOption(ChannelOptions.socket(tcp, TCP_KEEPINTVL), value: 1)
                .channelOption(ChannelOptions.socket(tcp, TCP_USER_TIMEOUT), value: deadTimeout)
                .channelInitializer { setUp($0, dialed: true) }
                .connect(host: peer.host, port: peer.port)
                .flatMap { channel in
                    // With a cluster secret, a connection is handed out only once the peer has proved it.
                    guard clusterSecret != nil else { return channel.eventLoop.makeSucceededFuture(channel) }
                    return channel.eventLoop.flatSubmit {
                        do {
                            let auth = try channel.pipeline.syncOperations.handler(type: KVPeerAuthenticator.self)
                            return auth.authenticated.futureResult.map { channel }
                        } catch {
                            return channel.eventLoop.makeFailedFuture(error)
                        }
                    }.flatMapErrorThrowing { error in
                        channel.close(promise: nil)
                        throw error
                    }
                }
        }
    }

    /// Stops listening and closes every connection.
    public func close() async {
        try? await listener.close()
        await pool.closeAll()
        await open.closeAll()
    }

    func connection(to peer: HostPort) async throws -> KVConnection {
        do {
            return KVConnection(channel: try await pool.channel(to: peer), node: state)
        } catch {
            throw KVSendError("cannot connect to \(peer): \(error)")
        }
    }

    /// PUT: sends `payload` to `peer` and waits for its ack, within the transfer deadline. A pooled connection
    /// found dead is replaced once.
    public func send(_ payload: KVPayload, requestId: String, to peer: HostPort) async throws {
        let deadline = ContinuousClock.now + .milliseconds(Int(state.transferTimeout * 1000))
        for attempt in 0..<2 {
            let c = try await connection(to: peer)
            do {
                return try await c.transfer(payload, requestId: requestId, timeout: remaining(deadline))
            } catch let error as KVSendError where error.connectionLost && attempt == 0 {
                state.logger.info("KV connection to \(peer) lost (\(error)); reconnecting")
                pool.drop(peer, channel: c.channel)
            }
        }
    }

    /// PUT_ASYNC: opens a transfer of `tokens`' KV to `peer`, fed with `KVStream.push` as layers are computed; with
    /// `firstTokenFollows`, the transfer is complete only with `KVStream.firstToken` (a hand-off prefill's).
    public func stream(
        requestId: String, tokens: [Int32], layerCount: Int, kvDim: Int, to peer: HostPort,
        firstTokenFollows: Bool = false
    ) -> KVStream {
        KVStream(
            node: self, requestId: requestId, peer: peer,
            begin: .begin(
                requestId: requestId, layerCount: layerCount, kvDim: kvDim, fingerprint: state.fingerprint,
                tokens: tokens, firstTokenFollows: firstTokenFollows),
            bytes: layerCount * 2 * tokens.count * kvDim * 2)
    }

    /// GET: keeps `payload` in the outbox until the decode instance pulls it or its lease ends. False when it does
    /// not fit in `kv_buffer_size`.
    public func offer(_ payload: KVPayload, requestId: String) -> Bool {
        outbox.deliver(payload, for: requestId)
    }

    /// GET: asks `peer` (the prefill instance) for `requestId`'s KV and waits for it, within the transfer deadline;
    /// for `before` seconds more, a refusal because the prefill has not offered it yet is asked again (an overlapped
    /// decode, sent with its prefill).
    public func pull(_ requestId: String, from peer: HostPort, before: Double = 0) async -> KVArrival {
        let start = ContinuousClock.now
        let deadline = start + .milliseconds(Int((state.transferTimeout + before) * 1000))
        let askUntil = start + .milliseconds(Int(before * 1000))
        let c: KVConnection
        do {
            c = try await connection(to: peer)
        } catch {
            return .rejected("\(error)")
        }
        while true {
            var buffer = c.channel.allocator.buffer(capacity: 64)
            KVFrame.pull(requestId: requestId).write(into: &buffer)
            let inbox = inbox
            c.channel.writeAndFlush(buffer).whenFailure { error in
                inbox.reject(requestId, reason: "the pull could not be sent: \(error)")
            }
            let arrival = await inbox.wait(for: requestId, timeout: remaining(deadline))
            if case .rejected(let why) = arrival, why.hasSuffix(KVFrame.notYetOffered), ContinuousClock.now < askUntil {
                continue
            }
            return arrival
        }
    }
}

/// One connection per peer, dialed on first use and forgotten when it closes, so the next use redials.
final class KVConnectionPool: @unchecked Sendable {
    private let lock = NSLock()
    private var channels: [HostPort: EventLoopFuture<any Channel>] = [:]
    private let dial: @Sendable (HostPort) -> EventLoopFuture<any Channel>

    init(dial: @escaping @Sendable (HostPort) -> EventLoopFuture<any Channel>) { self.dial = dial }

    var count: Int {
        lock.lock()
        defer { lock.unlock() }
        return channels.count
    }

    /// The open connection to `peer`, dialing it if there is none (or the pooled one is dead).
    func channel(to peer: HostPort) async throws -> any Channel {
        let future = pooled(peer)
        if let channel = try? await future.get(), channel.isActive { return channel }
        forget(peer, future)
        return try await pooled(peer).get()
    }

    private func pooled(_ peer: HostPort) -> EventLoopFuture<any Channel> {
        lock.lock()
        defer { lock.unlock() }
        if let f = channels[peer] { return f }
        let f = dial(peer)
        channels[peer] = f
        f.whenComplete { result in
            switch result {
            case .failure: self.forget(peer, f)
            case .success(let channel): channel.closeFuture.whenComplete { _ in self.forget(peer, f) }
            }
        }
        return f
    }

    private func forget(_ peer: HostPort, _ future: EventLoopFuture<any Channel>) {
        lock.lock()
        if channels[peer] === future { channels[peer] = nil }
        lock.unlock()
    }

    /// Closes a connection found broken; once closed it is forgotten, and the next use redials.
    func drop(_ peer: HostPort, channel: any Channel) {
        channel.close(promise: nil)
    }

    func closeAll() async {
        let all = lock.withLock {
            let all = Array(channels.values)
            channels = [:]
            return all
        }
        for f in all { try? await f.get().close() }
    }
}

/// Every connection of a node, accepted or dialed, so that closing the node closes them all.
final class OpenChannels: @unchecked Sendable {
    private let lock = NSLock()
    private var channels: [ObjectIdentifier: any Channel] = [:]

    func add(_ channel: any Channel) {
        let key = ObjectIdentifier(channel)
        lock.withLock { channels[key] = channel }
        channel.closeFuture.whenComplete { _ in self.lock.withLock { self.channels[key] = nil } }
    }

    func closeAll() async {
        let all = lock.withLock { Array(channels.values) }
        for c in all { try? await c.close() }
    }
}
