import CKernels
import Discovery
import Engine
import Logging
import NIOConcurrencyHelpers
import NIOCore

/// What every connection of one instance's KV node shares.
final class KVNodeState: Sendable {
    let fingerprint: UInt64
    /// Which positions of each layer a transfer must carry (nil: every one, whatever the layer count).
    let windows: KVTransferWindows?
    /// KV received for this instance's decode requests.
    let inbox: KVInbox
    /// KV waiting to be pulled by decode instances (send type GET).
    let outbox: KVInbox
    let budget: KVSendBudget
    let acks = KVAckTable()
    let transferTimeout: Double
    let logger: Logger
    let report: @Sendable (KVTransferEvent) -> Void

    init(
        fingerprint: UInt64, bufferBytes: Int, ttl: Double, transferTimeout: Double, windows: KVTransferWindows? = nil,
        authenticatedPeers: Bool = false, logger: Logger, report: @escaping @Sendable (KVTransferEvent) -> Void
    ) {
        self.windows = windows
        self.authenticatedPeers = authenticatedPeers
        self.fingerprint = fingerprint
        inbox = KVInbox(capacityBytes: bufferBytes, ttl: ttl)
        outbox = KVInbox(capacityBytes: bufferBytes, ttl: ttl)
        budget = KVSendBudget(capacity: bufferBytes)
        self.transferTimeout = transferTimeout
        self.logger = logger
        self.report = report
    }

    /// Largest frame a connection accepts.
    var maxFrameBytes: Int { max(1 << 20, inbox.capacityBytes) }

    /// Whether every connection's peer proved the cluster secret.
    let authenticatedPeers: Bool

    /// The most bytes the transfers arriving from one peer host (all its connections together) may hold reserved
    /// once it has one: all of the buffer for peers that proved the secret, a quarter of it otherwise.
    var hostShare: Int { authenticatedPeers ? inbox.capacityBytes : inbox.capacityBytes / 4 }

    /// Bytes reserved in the inbox by the transfers arriving from each peer host.
    private let reservedByHost = NIOLockedValueBox<[String: Int]>([:])

    /// Reserves `bytes` for a transfer from `host` if the host holds nothing yet (its first transfer may be as
    /// large as the buffer) or stays within its share.
    func reserve(host: String, bytes: Int) -> Bool {
        reservedByHost.withLockedValue { table in
            let held = table[host, default: 0]
            guard held == 0 || held + bytes <= hostShare else { return false }
            table[host] = held + bytes
            return true
        }
    }

    /// Gives back what a host's transfers reserved.
    func release(host: String, bytes: Int) {
        reservedByHost.withLockedValue { table in
            let left = table[host, default: 0] - bytes
            table[host] = left > 0 ? left : nil
        }
    }

    /// Bytes reserved by the transfers arriving from `host` now.
    func reserved(host: String) -> Int { reservedByHost.withLockedValue { $0[host, default: 0] } }
}

/// Something a KV node did on its own that metrics should count (streamed sends finish in the background; pulls
/// are served on the producer's side).
public enum KVTransferEvent: Sendable {
    case sent(bytes: Int, seconds: Double)
    case sendFailed(String)
}

/// One KV connection, accepted or dialed; both ends run the same handler. It assembles incoming transfers (begin,
/// then layer slices in position order per layer) into the inbox and acks them, routes acks to the senders waiting
/// for them, and serves pulls from the outbox.
final class KVPeerHandler: ChannelInboundHandler {
    typealias InboundIn = KVInbound
    typealias OutboundOut = ByteBuffer

    /// A transfer being received: its values are written in place, layer frame by layer frame.
    private final class Assembly {
        let layers: Int
        let kvDim: Int
        let tokens: [Int32]
        var values: [UInt16]
        /// Per layer, the first position a transfer must carry (a sliding-window layer: its window's).
        let needed: [Int]
        /// Per layer, where its first frame started (nil until one arrived) and the position after the last one.
        var started: [Int?]
        var filled: [Int]
        var completeLayers = 0
        /// A hand-off prefill's transfer ends with its first token (`first` frame); until then it is not complete.
        let awaitsFirstToken: Bool
        var firstToken: Int32?

        init(layers: Int, kvDim: Int, tokens: [Int32], awaitsFirstToken: Bool, windows: KVTransferWindows?) {
            self.layers = layers
            self.kvDim = kvDim
            self.tokens = tokens
            self.awaitsFirstToken = awaitsFirstToken
            // Not zeroed: a payload is delivered only once every position of every layer has been written.
            values = [UInt16](unsafeUninitializedCapacity: layers * 2 * tokens.count * kvDim) { _, n in
                n = layers * 2 * tokens.count * kvDim
            }
            needed = windows?.starts(tokens: tokens.count) ?? [Int](repeating: 0, count: layers)
            started = [Int?](repeating: nil, count: layers)
            filled = [Int](repeating: 0, count: layers)
        }

        var bytes: Int { values.count * 2 }

        /// Byte offset in `values` of the K rows of `layer` from position `start`; the V rows follow one part later.
        func kOffset(layer: Int, start: Int) -> Int { (layer * 2 * tokens.count + start) * kvDim * 2 }
        var partBytes: Int { tokens.count * kvDim * 2 }
    }

    /// The layer frame whose values are arriving now; `assembly` nil when they are to be dropped.
    private struct CurrentLayer {
        let header: KVLayerHeader
        let assembly: Assembly?
        var received = 0
        /// The checksum so far: of the K rows, then (seeded with theirs) of the V rows.
        var hash: tk_hash_state

        init(header: KVLayerHeader, assembly: Assembly?) {
            self.header = header
            self.assembly = assembly
            hash = tk_hash_state()
            tk_hash_init(&hash, 0)
        }
    }

    let node: KVNodeState
    /// The transfers arriving on this connection. Their reservations are counted against the peer's host in
    /// `begin`; whatever removes one (delivered, refused, cancelled, expired, the connection closed) gives its
    /// bytes back here.
    private var arriving: [String: Assembly] = [:] {
        didSet {
            let released = Self.bytes(oldValue) - Self.bytes(arriving)
            if released > 0, let peerHost { node.release(host: peerHost, bytes: released) }
        }
    }
    private static func bytes(_ transfers: [String: Assembly]) -> Int { transfers.values.reduce(0) { $0 + $1.bytes } }
    /// The peer's IP address, known from the first begin frame on.
    private var peerHost: String?
    /// False once the connection closed: pulls still waiting for their KV then send nothing.
    private let connectionOpen = NIOLockedValueBox(true)
    private var current: CurrentLayer?
    /// Transfers refused recently: their remaining frames are dropped quietly.
    private var refused: [String] = []

    init(node: KVNodeState) { self.node = node }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .layer(let header): startLayer(context, header)
        case .values(let piece): receive(context, piece)
        case .frame(let frame): receive(context, frame)
        }
    }

    private func receive(_ context: ChannelHandlerContext, _ frame: KVFrame) {
        switch frame {
        case .begin(let id, let layers, let kvDim, let fp, let tokens, let follows):
            begin(
                context, id, layers: layers, kvDim: kvDim, fingerprint: fp, tokens: tokens, firstTokenFollows: follows)
        case .layer(let id, let layer, let start, let count, let kvDim, let checksum, let values):
            // The decoder streams layer frames; a whole one is taken the same way.
            startLayer(
                context,
                KVLayerHeader(
                    requestId: id, layer: layer, tokenStart: start, tokenCount: count, kvDim: kvDim,
                    checksum: checksum, valueBytes: values.count * 2))
            values.withUnsafeBytes { receive(context, ByteBuffer(bytes: $0)) }
        case .cancel(let id, let reason):
            // A cancel always comes before the transfer completes, whether or not its begin frame was sent.
            arriving[id] = nil
            node.inbox.reject(id, reason: "the prefill instance abandoned the transfer: \(reason)")
        case .ack(let id, let accepted, let message):
            let ack: KVAck = accepted ? .accepted : .refused(message)
            if !node.acks.resolve(id, ack), !accepted {
                // Nobody sent this: it answers one of our pulls (the producer has no KV for it).
                node.inbox.reject(id, reason: "the prefill instance refused the pull: \(message)")
            }
        case .pull(let id):
            serve(pull: id, on: context.channel)
        case .first(let id, let token):
            guard let a = arriving[id], a.awaitsFirstToken, a.firstToken == nil else {
                if !refused.contains(id) { refuse(context, id, "a first token arrived without its transfer") }
                return
            }
            a.firstToken = token
            deliverIfComplete(context, id, a)
        }
    }

    private func begin(
        _ context: ChannelHandlerContext, _ id: String, layers: Int, kvDim: Int, fingerprint: UInt64, tokens: [Int32],
        firstTokenFollows: Bool
    ) {
        guard fingerprint == node.fingerprint else {
            return refuse(context, id, "the KV comes from another model (fingerprint mismatch)")
        }
        guard layers > 0, layers <= 4096, kvDim > 0, kvDim <= 65_536, !tokens.isEmpty, tokens.count <= 1 << 24 else {
            return refuse(context, id, "the transfer's shape is invalid")
        }
        guard arriving[id] == nil else {
            return refuse(context, id, "a second begin frame for a transfer already arriving")
        }
        let bytes = layers * 2 * tokens.count * kvDim * 2
        // Beyond its first, the transfers still arriving from one host, over however many connections, may hold
        // only its share of the buffer (a peer that proved the cluster secret, all of it), so that begin frames
        // alone cannot reserve the whole buffer.
        let host = peerHost ?? context.channel.remoteAddress?.ipAddress ?? "unknown"
        peerHost = host
        guard node.reserve(host: host, bytes: bytes) else {
            return refuse(
                context, id,
                "the transfer (\(bytes) bytes) would take \(host) past its share of kv_buffer_size (\(node.hostShare) bytes)"
            )
        }
        guard node.inbox.reserve(id, bytes: bytes) else {
            node.release(host: host, bytes: bytes)
            return refuse(context, id, "the transfer (\(bytes) bytes) does not fit in the free kv_buffer_size")
        }
        arriving[id] = Assembly(
            layers: layers, kvDim: kvDim, tokens: tokens, awaitsFirstToken: firstTokenFollows,
            windows: node.windows.flatMap { $0.windows.count == layers ? $0 : nil })
        // A transfer that stalls gives its room back after the lease.
        let ttl = node.inbox.ttl
        context.eventLoop.assumeIsolated().scheduleTask(in: .milliseconds(Int64(ttl * 1000))) {
            if self.arriving.removeValue(forKey: id) != nil {
                self.node.inbox.reject(id, reason: "the transfer did not complete within \(ttl) s")
            }
        }
    }

    /// A layer frame's header: checks that it fits its transfer; its values follow.
    private func startLayer(_ context: ChannelHandlerContext, _ h: KVLayerHeader) {
        let id = h.requestId
        current = CurrentLayer(header: h, assembly: nil)
        guard let a = arriving[id] else {
            if !refused.contains(id) { refuse(context, id, "a layer arrived without its begin frame") }
            return
        }
        guard node.inbox.progressed(id) else {
            // Expired, taken over, or its request was aborted: the sender hears so (inbox.reject leaves an
            // abandoned entry as it is).
            refuse(context, id, "the request no longer waits for this KV")
            return
        }
        // A layer's frames follow one another; its first may start anywhere up to the first position it must carry.
        guard h.layer < a.layers, h.kvDim == a.kvDim, h.tokenCount > 0,
            a.started[h.layer] == nil ? h.tokenStart <= a.needed[h.layer] : h.tokenStart == a.filled[h.layer],
            h.tokenStart + h.tokenCount <= a.tokens.count, h.valueBytes == 2 * 2 * h.tokenCount * h.kvDim
        else {
            return refuse(
                context, id,
                "layer \(h.layer) positions \(h.tokenStart)..<\(h.tokenStart + h.tokenCount) do not fit the transfer")
        }
        current = CurrentLayer(header: h, assembly: a)
    }

    /// The next piece of the current layer frame's values, copied once, straight into the K or V rows it belongs to.
    private func receive(_ context: ChannelHandlerContext, _ piece: ByteBuffer) {
        guard var c = current else { return }
        let h = c.header
        if let a = c.assembly {
            let kBytes = h.valueBytes / 2
            let k = a.kOffset(layer: h.layer, start: h.tokenStart)
            let from = c.received
            a.values.withUnsafeMutableBytes { out in
                piece.withUnsafeReadableBytes { src in
                    // The part of the piece in the K rows, then the part in the V rows, checksummed as copied.
                    let inK = max(0, min(src.count, kBytes - from))
                    if inK > 0 {
                        tk_hash_copy_update(&c.hash, out.baseAddress! + k + from, src.baseAddress!, inK)
                        if from + inK == kBytes { tk_hash_init(&c.hash, tk_hash_final(&c.hash)) }
                    }
                    if inK < src.count {
                        tk_hash_copy_update(
                            &c.hash, out.baseAddress! + k + a.partBytes + from + inK - kBytes, src.baseAddress! + inK,
                            src.count - inK)
                    }
                }
            }
        }
        c.received += piece.readableBytes
        guard c.received >= h.valueBytes else {
            current = c
            return
        }
        current = nil
        if let a = c.assembly { finishLayer(context, h, a, checksum: tk_hash_final(&c.hash)) }
    }

    /// Every value of a layer frame is in place: checks the checksum taken as they were copied, and delivers the
    /// transfer once complete.
    private func finishLayer(_ context: ChannelHandlerContext, _ h: KVLayerHeader, _ a: Assembly, checksum sum: UInt64)
    {
        let id = h.requestId
        guard arriving[id] === a else { return }  // refused, cancelled or expired meanwhile
        guard sum == h.checksum else { return refuse(context, id, "layer \(h.layer) failed its checksum") }
        if a.started[h.layer] == nil { a.started[h.layer] = h.tokenStart }
        a.filled[h.layer] = h.tokenStart + h.tokenCount
        if a.filled[h.layer] == a.tokens.count { a.completeLayers += 1 }
        deliverIfComplete(context, id, a)
    }

    /// Delivers the transfer once every layer (and the first token, when one follows) is in.
    private func deliverIfComplete(_ context: ChannelHandlerContext, _ id: String, _ a: Assembly) {
        guard a.completeLayers == a.layers, !a.awaitsFirstToken || a.firstToken != nil else { return }
        arriving[id] = nil
        let payload = KVPayload(
            tokens: a.tokens, layerCount: a.layers, kvDim: a.kvDim, fingerprint: node.fingerprint, values: a.values,
            firstToken: a.firstToken, layerStarts: a.started.map { $0 ?? 0 })
        a.values = []
        if node.inbox.deliver(payload, for: id) {
            acknowledge(context, id, accepted: true, message: "ok")
        } else {
            acknowledge(context, id, accepted: false, message: "no room left in kv_buffer_size")
        }
    }

    private func refuse(_ context: ChannelHandlerContext, _ id: String, _ reason: String) {
        node.logger.warning("KV transfer for \(id) refused: \(reason)")
        refused.append(id)
        if refused.count > 256 { refused.removeFirst(refused.count - 256) }
        arriving[id] = nil
        node.inbox.reject(id, reason: reason)
        acknowledge(context, id, accepted: false, message: reason)
    }

    private func acknowledge(_ context: ChannelHandlerContext, _ id: String, accepted: Bool, message: String) {
        var buffer = context.channel.allocator.buffer(capacity: 64)
        KVFrame.ack(requestId: id, accepted: accepted, message: message).write(into: &buffer)
        context.writeAndFlush(wrapOutboundOut(buffer), promise: nil)
    }

    /// Sends the KV a decode instance asks for, once its prefill has put it in the outbox (waiting up to the
    /// transfer deadline), or a refusal.
    private func serve(pull id: String, on channel: any Channel) {
        let node = node
        let open = connectionOpen
        // The channel is held weakly: a pull waiting on a connection that closed keeps nothing of it alive.
        Task { [weak channel] in
            let arrival = await node.outbox.wait(for: id, timeout: node.transferTimeout)
            // A connection closed meanwhile gets nothing (and its channel is not touched again).
            guard let channel, open.withLockedValue({ $0 }) else { return }
            switch arrival {
            case .payload(let payload):
                let start = ContinuousClock.now
                do {
                    try await KVConnection(channel: channel, node: node).transfer(payload, requestId: id)
                    node.report(.sent(bytes: payload.carriedBytes, seconds: seconds(since: start)))
                } catch {
                    node.logger.warning("KV pull for \(id) failed: \(error)")
                    node.report(.sendFailed("send"))
                }
            case .rejected(let why):
                node.logger.warning("KV pull for \(id) refused: \(why)")
                KVConnection(channel: channel, node: node).send(.ack(requestId: id, accepted: false, message: why))
            case .timedOut, .abandoned:
                node.logger.warning("KV pull for \(id) refused: no KV for it arrived here in time")
                KVConnection(channel: channel, node: node).send(
                    .ack(requestId: id, accepted: false, message: KVFrame.notYetOffered))
            }
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        connectionOpen.withLockedValue { $0 = false }
        for id in arriving.keys { node.inbox.reject(id, reason: "the KV connection closed mid-transfer") }
        arriving = [:]
        node.acks.connectionClosed(ObjectIdentifier(context.channel), reason: "the KV connection closed")
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        node.logger.warning("KV connection closed: \(error)")
        context.close(promise: nil)
    }
}
