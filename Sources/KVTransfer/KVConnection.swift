import Engine
import NIOCore

/// Why a KV send failed.
public struct KVSendError: Error, CustomStringConvertible {
    public let description: String
    /// The connection died under the send: a fresh connection may succeed.
    public let connectionLost: Bool

    init(_ description: String, connectionLost: Bool = false) {
        self.description = description
        self.connectionLost = connectionLost
    }
}

/// Frames going out on one KV connection. Data frames take their bytes from the node's send budget before they are
/// queued and give them back once written to the socket.
struct KVConnection: Sendable {
    let channel: any Channel
    let node: KVNodeState

    private func encode(_ frame: KVFrame) -> ByteBuffer {
        var capacity = 64
        if case .begin(let id, _, _, _, let tokens, _) = frame { capacity = 64 + id.utf8.count + 4 * tokens.count }
        var buffer = channel.allocator.buffer(capacity: capacity)
        frame.write(into: &buffer)
        return buffer
    }

    /// Sends a small control frame (ack, cancel, pull), outside the budget.
    func send(_ frame: KVFrame) {
        channel.writeAndFlush(encode(frame), promise: nil)
    }

    /// Queues a data frame once its bytes fit in the budget, waiting up to `timeout` seconds.
    func write(_ frame: KVFrame, timeout: Double) async throws {
        try await write(encode(frame), timeout: timeout)
    }

    /// Queues an encoded data frame once its bytes fit in the budget, waiting up to `timeout` seconds.
    func write(_ buffer: ByteBuffer, timeout: Double) async throws {
        let n = buffer.readableBytes
        guard await node.budget.acquire(n, timeout: timeout) else {
            throw KVSendError("the send buffer (kv_buffer_size \(node.budget.capacity) bytes) stayed full")
        }
        let budget = node.budget
        channel.writeAndFlush(buffer).whenComplete { _ in budget.release(n) }
    }

    /// Queues a data frame if its bytes fit in the budget now; false when they do not.
    func tryWrite(_ frame: KVFrame) -> Bool {
        let buffer = encode(frame)
        let n = buffer.readableBytes
        guard node.budget.tryAcquire(n) else { return false }
        let budget = node.budget
        channel.writeAndFlush(buffer).whenComplete { _ in budget.release(n) }
        return true
    }

    /// Registers for the ack of `requestId` on this connection; throws when the connection is already gone.
    func expectAck(_ requestId: String) throws {
        node.acks.register(requestId, connection: ObjectIdentifier(channel))
        guard channel.isActive else {
            node.acks.forget(requestId)
            throw KVSendError("the KV connection is closed", connectionLost: true)
        }
    }

    /// Waits for the ack of `requestId` and turns a refusal into an error.
    func awaitAck(_ requestId: String, timeout: Double) async throws {
        switch await node.acks.wait(requestId, timeout: timeout) {
        case .accepted: return
        case .refused(let why): throw KVSendError("refused: \(why)")
        case .lost(let why): throw KVSendError(why, connectionLost: true)
        case .timedOut: throw KVSendError("no ack within \(timeout) s")
        }
    }

    /// Sends a whole payload (begin, then one frame per layer) and waits for its ack, all within `timeout`.
    func transfer(_ payload: KVPayload, requestId: String, timeout: Double? = nil) async throws {
        let timeout = timeout ?? node.transferTimeout
        let deadline = ContinuousClock.now + .milliseconds(Int(timeout * 1000))
        try expectAck(requestId)
        do {
            try await write(
                .begin(
                    requestId: requestId, layerCount: payload.layerCount, kvDim: payload.kvDim,
                    fingerprint: payload.fingerprint, tokens: payload.tokens), timeout: remaining(deadline))
            // Each layer's frame is written straight from the payload into a buffer of its exact size, on the
            // connection's event loop just before it goes to the socket (so that one thread copies and sends).
            let budget = node.budget
            for layer in 0..<payload.layerCount {
                let frameBytes = KVFrame.layerFrameBytes(of: payload, layer: layer, requestId: requestId)
                guard await budget.acquire(frameBytes, timeout: remaining(deadline)) else {
                    throw KVSendError("the send buffer (kv_buffer_size \(budget.capacity) bytes) stayed full")
                }
                let channel = channel
                channel.eventLoop.execute {
                    var buffer = channel.allocator.buffer(capacity: frameBytes)
                    KVFrame.writeLayer(of: payload, layer: layer, requestId: requestId, into: &buffer)
                    channel.writeAndFlush(buffer).whenComplete { _ in budget.release(frameBytes) }
                }
            }
        } catch {
            node.acks.forget(requestId)
            send(.cancel(requestId: requestId, reason: "\(error)"))
            throw error
        }
        try await awaitAck(requestId, timeout: remaining(deadline))
    }
}

/// Seconds left until `deadline` (at least a millisecond).
func remaining(_ deadline: ContinuousClock.Instant) -> Double {
    let d = deadline - .now
    return max(0.001, Double(d.components.seconds) + Double(d.components.attoseconds) * 1e-18)
}
