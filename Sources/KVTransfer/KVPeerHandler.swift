import Discovery
import Engine
import Logging
import NIOCore

/// What every connection of one instance's KV node shares.
final class KVNodeState: Sendable {
    let fingerprint: UInt64
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
        fingerprint: UInt64, bufferBytes: Int, ttl: Double, transferTimeout: Double, logger: Logger,
        report: @escaping @Sendable (KVTransferEvent) -> Void
    ) {
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
    typealias InboundIn = KVFrame
    typealias OutboundOut = ByteBuffer

    private struct Assembly {
        let layers: Int
        let kvDim: Int
        let tokens: [Int32]
        var values: [UInt16]
        /// Per layer, how many positions have arrived.
        var filled: [Int]
        var completeLayers = 0
    }

    let node: KVNodeState
    private var arriving: [String: Assembly] = [:]
    /// Transfers refused recently: their remaining frames are dropped quietly.
    private var refused: [String] = []

    init(node: KVNodeState) { self.node = node }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        switch frame {
        case .begin(let id, let layers, let kvDim, let fp, let tokens):
            begin(context, id, layers: layers, kvDim: kvDim, fingerprint: fp, tokens: tokens)
        case .layer(let id, let layer, let start, let count, let kvDim, let checksum, let values):
            receiveLayer(context, id, layer, start, count, kvDim, checksum, values)
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
        }
    }

    private func begin(
        _ context: ChannelHandlerContext, _ id: String, layers: Int, kvDim: Int, fingerprint: UInt64, tokens: [Int32]
    ) {
        guard fingerprint == node.fingerprint else {
            return refuse(context, id, "the KV comes from another model (fingerprint mismatch)")
        }
        guard layers > 0, layers <= 4096, kvDim > 0, kvDim <= 65_536, !tokens.isEmpty, tokens.count <= 1 << 24 else {
            return refuse(context, id, "the transfer's shape is invalid")
        }
        let bytes = layers * 2 * tokens.count * kvDim * 2
        guard node.inbox.reserve(id, bytes: bytes) else {
            return refuse(context, id, "the transfer (\(bytes) bytes) does not fit in the free kv_buffer_size")
        }
        arriving[id] = Assembly(
            layers: layers, kvDim: kvDim, tokens: tokens,
            values: [UInt16](repeating: 0, count: layers * 2 * tokens.count * kvDim),
            filled: [Int](repeating: 0, count: layers))
        // A transfer that stalls gives its room back after the lease.
        let ttl = node.inbox.ttl
        context.eventLoop.assumeIsolated().scheduleTask(in: .milliseconds(Int64(ttl * 1000))) {
            if self.arriving.removeValue(forKey: id) != nil {
                self.node.inbox.reject(id, reason: "the transfer did not complete within \(ttl) s")
            }
        }
    }

    private func receiveLayer(
        _ context: ChannelHandlerContext, _ id: String, _ layer: Int, _ start: Int, _ count: Int, _ kvDim: Int,
        _ checksum: UInt64, _ values: [UInt16]
    ) {
        guard var a = arriving[id] else {
            if !refused.contains(id) { refuse(context, id, "a layer arrived without its begin frame") }
            return
        }
        guard node.inbox.isArriving(id) else {
            arriving[id] = nil  // expired or taken over
            return
        }
        guard layer < a.layers, kvDim == a.kvDim, count > 0, start == a.filled[layer],
            start + count <= a.tokens.count, values.count == 2 * count * kvDim
        else {
            return refuse(context, id, "layer \(layer) positions \(start)..<\(start + count) do not fit the transfer")
        }
        guard KVFrame.checksum(values[...]) == checksum else {
            return refuse(context, id, "layer \(layer) failed its checksum")
        }
        arriving[id] = nil  // edit without copying
        let perPart = a.tokens.count * kvDim
        let n = count * kvDim
        a.values.withUnsafeMutableBufferPointer { out in
            values.withUnsafeBufferPointer { v in
                let k = out.baseAddress! + layer * 2 * perPart + start * kvDim
                k.update(from: v.baseAddress!, count: n)
                (k + perPart).update(from: v.baseAddress! + n, count: n)
            }
        }
        a.filled[layer] += count
        if a.filled[layer] == a.tokens.count { a.completeLayers += 1 }
        guard a.completeLayers == a.layers else {
            arriving[id] = a
            return
        }
        let payload = KVPayload(
            tokens: a.tokens, layerCount: a.layers, kvDim: a.kvDim, fingerprint: node.fingerprint, values: a.values)
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
        Task {
            switch await node.outbox.wait(for: id, timeout: node.transferTimeout) {
            case .payload(let payload):
                let start = ContinuousClock.now
                do {
                    try await KVConnection(channel: channel, node: node).transfer(payload, requestId: id)
                    node.report(.sent(bytes: payload.byteCount, seconds: seconds(since: start)))
                } catch {
                    node.logger.warning("KV pull for \(id) failed: \(error)")
                    node.report(.sendFailed("send"))
                }
            case .rejected(let why):
                node.logger.warning("KV pull for \(id) refused: \(why)")
                KVConnection(channel: channel, node: node).send(.ack(requestId: id, accepted: false, message: why))
            case .timedOut:
                node.logger.warning("KV pull for \(id) refused: no KV for it arrived here in time")
                KVConnection(channel: channel, node: node).send(
                    .ack(requestId: id, accepted: false, message: "no KV for this request here"))
            }
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
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
