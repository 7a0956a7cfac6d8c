import Discovery
import Engine
import Foundation
import NIOCore

/// A PUT_ASYNC transfer: the engine pushes a prefill step's KV in a few groups of layers while the pass goes on, and
/// each goes out on the peer's connection at once, overlapping the transfer with the rest of the prefill.
///
/// `push` never blocks the engine: a slice whose bytes do not fit in the send budget (`kv_buffer_size`) abandons the
/// transfer instead, and a cancel frame tells the consumer to recompute. Slices pushed while the connection is still
/// being made wait in a queue that holds their budget.
public final class KVStream: KVLayerSink, @unchecked Sendable {
    private enum State {
        case connecting(queued: [(buffer: ByteBuffer, bytes: Int)])
        case open(KVConnection)
        case failed
    }

    let node: KVNode
    public let requestId: String
    let peer: HostPort
    private let lock = NSLock()
    private var state = State.connecting(queued: [])
    private var ended: Bool?
    /// Ended by `withhold`: no cancel goes out either.
    private var withheld = false
    private var endWaiter: CheckedContinuation<Bool, Never>?
    private let start = ContinuousClock.now
    private let bytes: Int
    private let begin: KVFrame

    init(node: KVNode, requestId: String, peer: HostPort, begin: KVFrame, bytes: Int) {
        self.node = node
        self.requestId = requestId
        self.peer = peer
        self.bytes = bytes
        self.begin = begin
        Task { await self.drive() }
    }

    /// A slice's frame, written from the slice's values into a buffer of its exact size.
    private func encode(_ slice: KVLayerSlice) -> ByteBuffer {
        var buffer = ByteBufferAllocator().buffer(
            capacity: KVFrame.layerFrameBytes(requestId: requestId, valueBytes: slice.byteCount))
        KVFrame.writeLayer(
            requestId: requestId, layer: slice.layer, tokenStart: slice.tokenStart, tokenCount: slice.tokenCount,
            kvDim: slice.kvDim, values: slice.values, into: &buffer)
        return buffer
    }

    /// Hands one layer slice over for sending (called on the engine thread).
    public func push(_ slice: KVLayerSlice) { send(encode(slice)) }

    /// A hand-off prefill's first token, after its last layer: it completes the transfer (`firstTokenFollows`).
    public func firstToken(_ token: Int32) {
        var buffer = ByteBufferAllocator().buffer(capacity: 32 + requestId.utf8.count)
        KVFrame.first(requestId: requestId, token: token).write(into: &buffer)
        send(buffer)
    }

    /// Queues a frame, or writes it when the connection is open; a frame over the send budget abandons the transfer.
    private func send(_ buffer: ByteBuffer) {
        let n = buffer.readableBytes
        let budget = node.budget
        lock.lock()
        switch state {
        case .failed:
            lock.unlock()
        case .connecting(var queued):
            guard budget.tryAcquire(n) else {
                lock.unlock()
                return fail("the send buffer (kv_buffer_size) is full", reason: "backpressure")
            }
            queued.append((buffer, n))
            state = .connecting(queued: queued)
            lock.unlock()
        case .open(let c):
            lock.unlock()
            guard budget.tryAcquire(n) else {
                return fail("the send buffer (kv_buffer_size) is full", reason: "backpressure")
            }
            c.channel.writeAndFlush(buffer).whenComplete { _ in budget.release(n) }
        }
    }

    /// The prefill is over: `complete` when every layer of every prompt position was pushed, false when it was
    /// aborted (the transfer is then cancelled). The prefill answers at once, without waiting for the ack.
    public func end(complete: Bool, answer: @escaping @Sendable () -> Void) {
        answer()
        if !complete { fail("the prefill was aborted", reason: nil) }
        lock.lock()
        ended = complete
        let waiter = endWaiter
        endWaiter = nil
        lock.unlock()
        waiter?.resume(returning: complete)
    }

    /// The prefill's first token ended its request: the consumer hears nothing more (a cancel would make it
    /// recompute), and the proxy cancels its waiting decode. Queued slices give their budget back.
    public func withhold(answer: @escaping @Sendable () -> Void) {
        answer()
        lock.lock()
        let previous = state
        state = .failed
        ended = false
        withheld = true
        let waiter = endWaiter
        endWaiter = nil
        lock.unlock()
        if case .connecting(let queued) = previous {
            for q in queued { node.budget.release(q.bytes) }
        }
        node.state.acks.forget(requestId)
        waiter?.resume(returning: false)
    }

    private func waitForEnd() async -> Bool {
        await withCheckedContinuation { continuation in
            lock.lock()
            if let ended {
                lock.unlock()
                continuation.resume(returning: ended)
            } else {
                endWaiter = continuation
                lock.unlock()
            }
        }
    }

    private func drive() async {
        let c: KVConnection
        do {
            c = try await node.connection(to: peer)
            try c.expectAck(requestId)
        } catch {
            return fail("\(error)", reason: "send")
        }
        guard open(c) else {
            node.state.acks.forget(requestId)
            if !lock.withLock({ withheld }) {
                c.send(.cancel(requestId: requestId, reason: "abandoned before it began"))
            }
            return
        }
        guard await waitForEnd() else { return }
        do {
            try await c.awaitAck(requestId, timeout: node.state.transferTimeout)
            node.state.report(.sent(bytes: bytes, seconds: seconds(since: start)))
        } catch {
            node.state.logger.warning("KV stream for \(requestId) to \(peer) failed: \(error)")
            node.state.report(.sendFailed("send"))
        }
    }

    /// Sends the begin frame and the queued slices, and lets later slices go out directly. False when the transfer
    /// failed meanwhile.
    private func open(_ c: KVConnection) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        guard case .connecting(let queued) = state else { return false }
        c.send(begin)
        let budget = node.budget
        for q in queued {
            c.channel.writeAndFlush(q.buffer).whenComplete { _ in budget.release(q.bytes) }
        }
        state = .open(c)
        return true
    }

    /// Abandons the transfer: gives back the budget of queued slices and tells the consumer.
    private func fail(_ why: String, reason: String?) {
        lock.lock()
        let previous = state
        state = .failed
        lock.unlock()
        switch previous {
        case .failed: return
        case .connecting(let queued):
            for q in queued { node.budget.release(q.bytes) }
        case .open(let c):
            node.state.acks.forget(requestId)
            c.send(.cancel(requestId: requestId, reason: why))
        }
        if let reason {
            node.state.logger.warning("KV stream for \(requestId) to \(peer) abandoned: \(why)")
            node.state.report(.sendFailed(reason))
        }
    }
}
