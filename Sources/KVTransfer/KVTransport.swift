import Discovery
import Engine
import Foundation
import Logging
import NIOCore
import NIOPosix

/// The consumer's side: a TCP server on the KV port that takes transfers (a begin frame, then every layer), checks
/// the model fingerprint, shape and each layer's checksum, files the KV in the inbox, and answers with an ack.
public final class KVReceiver: Sendable {
    public let inbox: KVInbox
    let channel: any Channel

    public var port: Int { channel.localAddress?.port ?? 0 }

    public init(bind: HostPort, inbox: KVInbox, fingerprint: UInt64, logger: Logger) async throws {
        self.inbox = inbox
        let maxFrame = max(1 << 20, inbox.capacityBytes)
        channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { child in
                child.eventLoop.makeCompletedFuture {
                    try child.pipeline.syncOperations.addHandler(
                        ByteToMessageHandler(KVFrameDecoder(maxFrameBytes: maxFrame)))
                    try child.pipeline.syncOperations.addHandler(
                        TransferAssembler(inbox: inbox, fingerprint: fingerprint, logger: logger))
                }
            }
            .bind(host: bind.host, port: bind.port).get()
    }

    public func close() async { try? await channel.close() }
}

/// Collects one connection's frames into payloads.
final class TransferAssembler: ChannelInboundHandler {
    typealias InboundIn = KVFrame
    typealias OutboundOut = ByteBuffer

    let inbox: KVInbox
    let fingerprint: UInt64
    let logger: Logger
    private var current: (id: String, layers: Int, kvDim: Int, tokens: [Int32], values: [UInt16], seen: Set<Int>)?
    private var failed: Set<String> = []

    init(inbox: KVInbox, fingerprint: UInt64, logger: Logger) {
        self.inbox = inbox
        self.fingerprint = fingerprint
        self.logger = logger
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .begin(let id, let layers, let kvDim, let fp, let tokens):
            guard fp == fingerprint else {
                refuse(context, id, "the KV comes from another model (fingerprint mismatch)")
                return
            }
            guard layers > 0, layers <= 4096, kvDim > 0, kvDim <= 65_536, !tokens.isEmpty,
                layers * 2 * tokens.count * kvDim * 2 <= inbox.capacityBytes
            else {
                refuse(context, id, "the transfer's shape is invalid or larger than kv_buffer_size")
                return
            }
            current = (id, layers, kvDim, tokens, [UInt16](repeating: 0, count: layers * 2 * tokens.count * kvDim), [])
        case .layer(let id, let layer, let start, let count, let kvDim, let checksum, let values):
            if failed.contains(id) { return }
            guard var c = current, c.id == id else {
                refuse(context, id, "a layer arrived without its begin frame")
                return
            }
            guard layer < c.layers, start == 0, count == c.tokens.count, kvDim == c.kvDim,
                values.count == 2 * count * kvDim
            else {
                refuse(context, id, "layer \(layer) does not match the transfer's shape")
                return
            }
            guard KVFrame.checksum(values[...]) == checksum else {
                refuse(context, id, "layer \(layer) failed its checksum")
                return
            }
            current = nil  // avoid a copy of the values while editing
            c.values.replaceSubrange(layer * values.count..<(layer + 1) * values.count, with: values)
            c.seen.insert(layer)
            if c.seen.count == c.layers {
                inbox.deliver(
                    KVPayload(
                        tokens: c.tokens, layerCount: c.layers, kvDim: c.kvDim, fingerprint: fingerprint,
                        values: c.values), for: id)
                acknowledge(context, id, accepted: true, message: "ok")
            } else {
                current = c
            }
        case .ack:
            break
        }
    }

    private func refuse(_ context: ChannelHandlerContext, _ id: String, _ reason: String) {
        logger.warning("KV transfer for \(id) refused: \(reason)")
        failed.insert(id)
        if current?.id == id { current = nil }
        inbox.reject(id, reason: reason)
        acknowledge(context, id, accepted: false, message: reason)
    }

    private func acknowledge(_ context: ChannelHandlerContext, _ id: String, accepted: Bool, message: String) {
        var buffer = context.channel.allocator.buffer(capacity: 64)
        KVFrame.ack(requestId: id, accepted: accepted, message: message).write(into: &buffer)
        context.writeAndFlush(wrapOutboundOut(buffer), promise: nil)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        logger.warning("KV connection closed: \(error)")
        if let c = current { inbox.reject(c.id, reason: "the connection failed: \(error)") }
        context.close(promise: nil)
    }
}

/// Why a send failed.
public struct KVSendError: Error, CustomStringConvertible {
    public let description: String
}

/// The producer's side: sends a payload to the consumer named in the request id and waits for its ack.
public enum KVSender {
    public static func send(
        _ payload: KVPayload, requestId: String, to peer: HostPort, connectTimeout: Double, timeout: Double
    ) async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        let promise = group.next().makePromise(of: KVFrame.self)
        let channel: any Channel
        do {
            channel = try await ClientBootstrap(group: group)
                .connectTimeout(.milliseconds(Int64(connectTimeout * 1000)))
                .channelInitializer { ch in
                    ch.eventLoop.makeCompletedFuture {
                        try ch.pipeline.syncOperations.addHandler(
                            ByteToMessageHandler(KVFrameDecoder(maxFrameBytes: 1 << 20)))
                        try ch.pipeline.syncOperations.addHandler(AckWaiter(promise: promise))
                    }
                }
                .connect(host: peer.host, port: peer.port).get()
        } catch {
            promise.fail(error)
            throw KVSendError(description: "cannot connect to \(peer): \(error)")
        }
        let timer = channel.eventLoop.scheduleTask(in: .milliseconds(Int64(timeout * 1000))) {
            channel.close(promise: nil)
        }
        defer {
            timer.cancel()
            channel.close(promise: nil)
        }
        for frame in KVFrame.frames(for: payload, requestId: requestId) {
            var buffer = channel.allocator.buffer(capacity: 64 + payload.byteCount / max(1, payload.layerCount))
            frame.write(into: &buffer)
            channel.write(buffer, promise: nil)
        }
        channel.flush()
        let reply: KVFrame
        do {
            reply = try await promise.futureResult.get()
        } catch {
            throw KVSendError(description: "no answer from \(peer) within \(timeout) s: \(error)")
        }
        guard case .ack(_, true, _) = reply else {
            if case .ack(_, _, let message) = reply { throw KVSendError(description: "\(peer) refused: \(message)") }
            throw KVSendError(description: "unexpected reply from \(peer)")
        }
    }
}

/// Completes the promise with the first ack, or fails it when the connection ends first.
final class AckWaiter: ChannelInboundHandler {
    typealias InboundIn = KVFrame
    private var promise: EventLoopPromise<KVFrame>?

    init(promise: EventLoopPromise<KVFrame>) { self.promise = promise }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        promise?.succeed(unwrapInboundIn(data))
        promise = nil
    }

    func channelInactive(context: ChannelHandlerContext) {
        promise?.fail(KVSendError(description: "the connection closed before an ack"))
        promise = nil
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        promise?.fail(error)
        promise = nil
        context.close(promise: nil)
    }
}
