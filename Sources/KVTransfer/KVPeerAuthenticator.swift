import Crypto
import Discovery
import Foundation
import NIOCore

/// The cluster secret's guard on a KV connection, first in its pipeline (both ends run it).
///
/// 1. **Handshake.** Each end sends a hello frame with a fresh 32-byte nonce, then a proof: HMAC-SHA256 under the
///    secret of ("tandem-kv-proof", the peer's nonce, its own). Each end checks the other's proof; until both are
///    checked nothing else is accepted or sent, and `authenticated` is completed (a dialer hands out the connection
///    only then, so KV goes only to a peer that proved the secret). A peer that has not proved it within the
///    deadline, or sends anything else first, is disconnected.
/// 2. **A MAC on every frame.** Every frame that goes out is followed by a MAC frame: HMAC-SHA256, under a key for
///    that direction derived from both nonces, of the frame's sequence number and all its bytes. Arriving frames are
///    passed on as their bytes come, except each frame's last byte, which is held until its MAC is checked: no
///    frame is complete for the decoder (no control frame acts, no transfer is delivered) before it is proven. A bad
///    or missing MAC closes the connection, which fails the transfers on it.
final class KVPeerAuthenticator: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    static let helloType: UInt8 = 6
    static let proofType: UInt8 = 7
    static let macType: UInt8 = 8
    static let macBytes = 32

    private enum State {
        case awaitingHello
        case awaitingProof(peerNonce: [UInt8])
        /// Authenticated; within a data frame when `frameLeft` > 0, or reading its MAC frame when `inMAC`.
        case open
    }

    private let secret: SymmetricKey
    private let ownNonce: [UInt8]
    private let handshakeTimeout: TimeAmount
    let authenticated: EventLoopPromise<Void>
    private var state = State.awaitingHello
    private var pending = ByteBuffer()
    private var sendKey: SymmetricKey?
    private var receiveKey: SymmetricKey?
    private var sendSeq: UInt64 = 0
    private var receiveSeq: UInt64 = 0
    /// The arriving data frame: bytes still to come (header included), its MAC so far, its held last byte.
    private var header = ByteBuffer()
    private var frameLeft = 0
    private var inMAC = false
    private var mac: HMAC<SHA256>?
    private var held: ByteBuffer?
    private var settled = false
    private var deadline: Scheduled<Void>?

    init(secret: [UInt8], eventLoop: any EventLoop, handshakeTimeout: TimeAmount) {
        self.secret = SymmetricKey(data: secret)
        ownNonce = (0..<32).map { _ in UInt8.random(in: 0...255) }
        self.handshakeTimeout = handshakeTimeout
        authenticated = eventLoop.makePromise()
    }

    // MARK: - Handshake

    func channelActive(context: ChannelHandlerContext) {
        sendControl(context, type: Self.helloType, body: ownNonce)
        deadline = context.eventLoop.assumeIsolated().scheduleTask(in: handshakeTimeout) {
            self.settle(.failure(KVSendError("the KV peer did not prove the cluster secret in time")))
            context.close(promise: nil)
        }
        context.fireChannelActive()
    }

    private func sendControl(_ context: ChannelHandlerContext, type: UInt8, body: [UInt8]) {
        var b = context.channel.allocator.buffer(capacity: KVFrame.headerBytes + body.count)
        b.writeInteger(KVFrame.magic)
        b.writeInteger(type)
        b.writeInteger(UInt64(body.count))
        b.writeBytes(body)
        context.writeAndFlush(wrapOutboundOut(b), promise: nil)
    }

    private func proof(from: [UInt8], to: [UInt8]) -> [UInt8] {
        var h = HMAC<SHA256>(key: secret)
        h.update(data: Array("tandem-kv-proof".utf8))
        h.update(data: from)
        h.update(data: to)
        return Array(h.finalize())
    }

    private func directionKey(_ first: [UInt8], _ second: [UInt8]) -> SymmetricKey {
        var h = HMAC<SHA256>(key: secret)
        h.update(data: Array("tandem-kv-frames".utf8))
        h.update(data: first)
        h.update(data: second)
        return SymmetricKey(data: Array(h.finalize()))
    }

    /// One whole handshake frame of `type` from `pending`, or nil when more bytes are needed.
    private func handshakeFrame(_ type: UInt8) throws -> [UInt8]? {
        guard pending.readableBytes >= KVFrame.headerBytes else { return nil }
        let at = pending.readerIndex
        guard pending.getInteger(at: at, as: UInt32.self) == KVFrame.magic,
            pending.getInteger(at: at + 4, as: UInt8.self) == type,
            pending.getInteger(at: at + 5, as: UInt64.self) == 32
        else { throw KVWireError("the KV peer did not open with Tandem's authenticated handshake") }
        guard pending.readableBytes >= KVFrame.headerBytes + 32 else { return nil }
        pending.moveReaderIndex(forwardBy: KVFrame.headerBytes)
        return pending.readBytes(length: 32)
    }

    private func handshake(_ context: ChannelHandlerContext) throws {
        if case .awaitingHello = state, let nonce = try handshakeFrame(Self.helloType) {
            state = .awaitingProof(peerNonce: nonce)
            sendControl(context, type: Self.proofType, body: proof(from: nonce, to: ownNonce))
        }
        if case .awaitingProof(let peerNonce) = state, let got = try handshakeFrame(Self.proofType) {
            let want = proof(from: ownNonce, to: peerNonce)
            guard constantTimeEqual(got, want) else {
                throw KVWireError("the KV peer does not know the cluster secret")
            }
            sendKey = directionKey(ownNonce, peerNonce)
            receiveKey = directionKey(peerNonce, ownNonce)
            state = .open
            settle(.success(()))
        }
    }

    // MARK: - Inbound

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        do {
            if case .open = state {
                try receive(context, &bytes)
                return
            }
            pending.writeBuffer(&bytes)
            try handshake(context)
            if case .open = state, pending.readableBytes > 0 {
                var rest = pending
                pending = ByteBuffer()
                try receive(context, &rest)
            }
        } catch {
            context.fireErrorCaught(error)
            context.close(promise: nil)
        }
    }

    private func receive(_ context: ChannelHandlerContext, _ bytes: inout ByteBuffer) throws {
        while bytes.readableBytes > 0 {
            if inMAC {
                var piece = bytes.readSlice(
                    length: min(bytes.readableBytes, KVFrame.headerBytes + Self.macBytes - header.readableBytes))!
                header.writeBuffer(&piece)
                guard header.readableBytes == KVFrame.headerBytes + Self.macBytes else { return }
                try checkMAC(context)
                continue
            }
            if frameLeft == 0 {
                // A new frame: its header first, to learn its length.
                var piece = bytes.readSlice(
                    length: min(bytes.readableBytes, KVFrame.headerBytes - header.readableBytes))!
                header.writeBuffer(&piece)
                guard header.readableBytes == KVFrame.headerBytes else { return }
                guard header.getInteger(at: header.readerIndex, as: UInt32.self) == KVFrame.magic,
                    let length = header.getInteger(at: header.readerIndex + 5, as: UInt64.self), length > 0,
                    length < UInt64(Int.max / 2)
                else { throw KVWireError("not a Tandem KV frame (bad magic)") }
                var m = HMAC<SHA256>(key: receiveKey!)
                withUnsafeBytes(of: receiveSeq.bigEndian) { m.update(data: $0) }
                header.withUnsafeReadableBytes { m.update(data: $0) }
                mac = m
                frameLeft = Int(length)
                context.fireChannelRead(wrapInboundOut(header))
                header = ByteBuffer()
                continue
            }
            let n = min(frameLeft, bytes.readableBytes)
            var piece = bytes.readSlice(length: n)!
            piece.withUnsafeReadableBytes { mac!.update(data: $0) }
            frameLeft -= n
            if frameLeft == 0 {
                // Hold the frame's last byte until its MAC is checked.
                held = piece.getSlice(at: piece.writerIndex - 1, length: 1)
                piece.moveWriterIndex(to: piece.writerIndex - 1)
                inMAC = true
            }
            if piece.readableBytes > 0 { context.fireChannelRead(wrapInboundOut(piece)) }
        }
    }

    private func checkMAC(_ context: ChannelHandlerContext) throws {
        let at = header.readerIndex
        guard header.getInteger(at: at, as: UInt32.self) == KVFrame.magic,
            header.getInteger(at: at + 4, as: UInt8.self) == Self.macType,
            header.getInteger(at: at + 5, as: UInt64.self) == UInt64(Self.macBytes),
            let got = header.getBytes(at: at + KVFrame.headerBytes, length: Self.macBytes)
        else { throw KVWireError("a KV frame came without its MAC") }
        guard constantTimeEqual(got, Array(mac!.finalize())) else {
            throw KVWireError("a KV frame failed its MAC (forged or rewritten)")
        }
        receiveSeq += 1
        inMAC = false
        mac = nil
        header = ByteBuffer()
        if let held { context.fireChannelRead(wrapInboundOut(held)) }
        held = nil
    }

    // MARK: - Outbound

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        guard let key = sendKey else {
            promise?.fail(KVSendError("the KV connection is not authenticated yet"))
            return
        }
        let frame = unwrapOutboundIn(data)
        var m = HMAC<SHA256>(key: key)
        withUnsafeBytes(of: sendSeq.bigEndian) { m.update(data: $0) }
        frame.withUnsafeReadableBytes { m.update(data: $0) }
        sendSeq += 1
        var trailer = context.channel.allocator.buffer(capacity: KVFrame.headerBytes + Self.macBytes)
        trailer.writeInteger(KVFrame.magic)
        trailer.writeInteger(Self.macType)
        trailer.writeInteger(UInt64(Self.macBytes))
        trailer.writeBytes(Array(m.finalize()))
        context.write(wrapOutboundOut(frame), promise: nil)
        context.write(wrapOutboundOut(trailer), promise: promise)
    }

    func channelInactive(context: ChannelHandlerContext) {
        settle(.failure(KVSendError("the KV connection closed during its handshake", connectionLost: true)))
        context.fireChannelInactive()
    }

    private func settle(_ result: Result<Void, any Error>) {
        guard !settled else { return }
        settled = true
        deadline?.cancel()
        authenticated.completeWith(result)
    }
}
