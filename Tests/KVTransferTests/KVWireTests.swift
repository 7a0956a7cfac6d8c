import Discovery
import Engine
import Foundation
import KVTransfer
import Logging
import NIOCore
import NIOEmbedded
import Testing

func samplePayload(tokens: Int = 5, layers: Int = 3, kvDim: Int = 8, fingerprint: UInt64 = 42) -> KVPayload {
    KVPayload(
        tokens: (0..<tokens).map { Int32($0 + 100) }, layerCount: layers, kvDim: kvDim, fingerprint: fingerprint,
        values: (0..<(layers * 2 * tokens * kvDim)).map { UInt16(truncatingIfNeeded: $0 &* 2_654_435_761) })
}

/// Whether `condition` holds within `timeout` seconds, checked every few milliseconds (a wait for a state, not a
/// fixed sleep).
func eventually(timeout: Double = 5, _ condition: () -> Bool) async -> Bool {
    let deadline = ContinuousClock.now + .milliseconds(Int(timeout * 1000))
    while !condition() {
        guard ContinuousClock.now < deadline else { return false }
        try? await Task.sleep(for: .milliseconds(5))
    }
    return true
}

@Suite struct KVWireTests {
    @Test func framesRoundTripThroughBytes() throws {
        let payload = samplePayload()
        let frames =
            KVFrame.frames(for: payload, requestId: "r1") + [
                .ack(requestId: "r1", accepted: false, message: "no"), .cancel(requestId: "r1", reason: "gone"),
                .pull(requestId: "r1"),
            ]
        var buffer = ByteBuffer()
        for f in frames { f.write(into: &buffer) }
        var parsed: [KVFrame] = []
        // Fed a few bytes at a time, as TCP may deliver them.
        var pending = ByteBuffer()
        while buffer.readableBytes > 0 {
            var piece = buffer.readSlice(length: min(7, buffer.readableBytes))!
            pending.writeBuffer(&piece)
            while let f = try KVFrameDecoder.parse(&pending, maxFrameBytes: 1 << 20) { parsed.append(f) }
        }
        #expect(parsed == frames)
    }

    /// On a connection, layer frames come up as a header and their values in the pieces they arrived in (no
    /// gathering copy); joined, the pieces are the frame's values, and control frames come whole between them.
    @Test func decoderStreamsLayerValuesInPieces() throws {
        let payload = samplePayload(tokens: 40, layers: 2, kvDim: 16)
        let frames =
            KVFrame.frames(for: payload, requestId: "r1") + [.ack(requestId: "r1", accepted: true, message: "")]
        var bytes = ByteBuffer()
        for f in frames { f.write(into: &bytes) }
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(KVFrameDecoder(maxFrameBytes: 1 << 20)))
        while bytes.readableBytes > 0 {
            try channel.writeInbound(bytes.readSlice(length: min(101, bytes.readableBytes))!)
        }
        var rebuilt: [KVFrame] = []
        var header: KVLayerHeader?
        var values = ByteBuffer()
        var pieces = 0
        while let m = try channel.readInbound(as: KVInbound.self) {
            switch m {
            case .frame(let f): rebuilt.append(f)
            case .layer(let h): header = h
            case .values(var piece):
                pieces += 1
                values.writeBuffer(&piece)
                if let h = header, values.readableBytes == h.valueBytes {
                    let v = values.readBytes(length: h.valueBytes)!.withUnsafeBytes {
                        Array($0.bindMemory(to: UInt16.self))
                    }
                    rebuilt.append(
                        .layer(
                            requestId: h.requestId, layer: h.layer, tokenStart: h.tokenStart, tokenCount: h.tokenCount,
                            kvDim: h.kvDim, checksum: h.checksum, values: v))
                    header = nil
                }
            }
        }
        #expect(rebuilt == frames)
        #expect(pieces > 2 * payload.layerCount, "values came in the pieces they arrived in")
        _ = try channel.finish()
    }

    @Test func badBytesAreRefused() {
        var wrongMagic = ByteBuffer(bytes: [0, 1, 2, 3, 1] + [UInt8](repeating: 0, count: 8))
        #expect(throws: KVWireError.self) { try KVFrameDecoder.parse(&wrongMagic, maxFrameBytes: 100) }
        var huge = ByteBuffer()
        KVFrame.ack(requestId: String(repeating: "x", count: 500), accepted: true, message: "").write(into: &huge)
        #expect(throws: KVWireError.self) { try KVFrameDecoder.parse(&huge, maxFrameBytes: 100) }
        var unknown = ByteBuffer()
        unknown.writeInteger(UInt32(0x544B_5631))
        unknown.writeInteger(UInt8(9))
        unknown.writeInteger(UInt64(0))
        #expect(throws: KVWireError.self) { try KVFrameDecoder.parse(&unknown, maxFrameBytes: 100) }
    }

    @Test func inboxTimesOutHoldsBoundedBytesAndExpires() async {
        let inbox = KVInbox(capacityBytes: samplePayload().byteCount * 2, ttl: 0.2)
        if case .timedOut = await inbox.wait(for: "missing", timeout: 0.05) {
        } else {
            Issue.record("expected a timeout")
        }
        // Delivered before the request asks: held, then taken.
        inbox.deliver(samplePayload(), for: "a")
        #expect(inbox.bytesInUse == samplePayload().byteCount)
        if case .payload(let p) = await inbox.wait(for: "a", timeout: 1) {
            #expect(p == samplePayload())
        } else {
            Issue.record("expected the payload")
        }
        #expect(inbox.bytesInUse == 0)
        // Delivered while the request waits.
        async let waiting = inbox.wait(for: "b", timeout: 5)
        try? await Task.sleep(for: .milliseconds(50))
        inbox.deliver(samplePayload(), for: "b")
        if case .payload = await waiting {} else { Issue.record("expected the payload") }
        // Over capacity, the oldest goes first; unclaimed entries expire.
        for id in ["c", "d", "e"] { inbox.deliver(samplePayload(), for: id) }
        #expect(inbox.bytesInUse == 2 * samplePayload().byteCount)
        if case .timedOut = await inbox.wait(for: "c", timeout: 0.01) {} else { Issue.record("c should be gone") }
        #expect(await eventually { inbox.bytesInUse == 0 }, "the unclaimed entries expired")
        inbox.reject("f", reason: "x")
        if case .rejected = await inbox.wait(for: "f", timeout: 1) {} else { Issue.record("expected the rejection") }
    }

    /// An overlapped decode waits `before` longer for its transfer to begin; once it began, the deadline is its own
    /// again, counted from the transfer's last progress.
    @Test func aWaitGetsLongerToBeginThenItsOwnDeadlineFromTheLastProgress() async {
        let inbox = KVInbox(capacityBytes: 1 << 20, ttl: 30)
        let clock = ContinuousClock()
        // Nothing begins: the whole allowance is waited.
        var start = clock.now
        if case .timedOut = await inbox.wait(for: "a", timeout: 0.1, before: 0.4) {} else { Issue.record("a") }
        #expect(clock.now - start >= .milliseconds(500))
        // It begins at once: `before` no longer counts, the deadline is `timeout` from the begin frame.
        start = clock.now
        async let b = inbox.wait(for: "b", timeout: 0.3, before: 30)
        #expect(await eventually { inbox.isWaitedFor("b") })
        #expect(inbox.reserve("b", bytes: 100))
        if case .timedOut = await b {} else { Issue.record("b") }
        #expect(clock.now - start < .seconds(20), "not the 30 s allowance")
        // Progress, made again and again for 3 s, keeps a transfer alive past its 1 s deadline; then delivery ends
        // the wait.
        async let c = inbox.wait(for: "c", timeout: 1, before: 30)
        #expect(await eventually { inbox.isWaitedFor("c") })
        #expect(inbox.reserve("c", bytes: 100))
        #expect(await !eventually(timeout: 3) { !inbox.progressed("c") }, "the reservation never lapsed")
        #expect(inbox.isWaitedFor("c"))
        inbox.deliver(samplePayload(), for: "c")
        if case .payload = await c {} else { Issue.record("c: progress kept the wait alive past 1 s") }
    }

    @Test func reservationsCountUntilDeliveredAndEvictOnlyCompletePayloads() async {
        let size = samplePayload().byteCount
        let inbox = KVInbox(capacityBytes: size * 2, ttl: 0.3)
        #expect(inbox.reserve("a", bytes: size))
        #expect(inbox.isArriving("a"))
        inbox.deliver(samplePayload(), for: "b")
        #expect(inbox.bytesInUse == 2 * size)
        // Room for a third transfer comes from the complete payload, never from one still arriving.
        #expect(inbox.reserve("c", bytes: size))
        #expect(inbox.isArriving("a") && inbox.isArriving("c"))
        #expect(!inbox.reserve("d", bytes: size), "both are arriving: no room")
        inbox.deliver(samplePayload(), for: "a")
        #expect(!inbox.isArriving("a"))
        #expect(inbox.bytesInUse == 2 * size)
        inbox.reject("c", reason: "abandoned")
        #expect(inbox.bytesInUse == size)
        // A stalled reservation gives its room back after the lease.
        #expect(inbox.reserve("e", bytes: size))
        #expect(await eventually { inbox.bytesInUse == 0 })
        #expect(!inbox.isArriving("e"))
    }

    @Test func theSendBudgetQueuesSendersAndNeverLendsMoreThanItHas() async {
        let budget = KVSendBudget(capacity: 100)
        #expect(await budget.acquire(60, timeout: 1))
        #expect(!budget.tryAcquire(60))
        #expect(!(await budget.acquire(101, timeout: 5)), "more than the whole budget fails at once")
        async let second = budget.acquire(60, timeout: 5)
        try? await Task.sleep(for: .milliseconds(50))
        #expect(budget.inUse == 60)
        budget.release(60)
        #expect(await second)
        #expect(budget.inUse == 60)
        #expect(!(await budget.acquire(50, timeout: 0.05)), "times out while the budget stays spent")
        budget.release(60)
        #expect(budget.inUse == 0)
    }
}

/// A plain blocking TCP client, to send hand-made bytes.
final class Socket {
    let fd: Int32

    init(host: String, port: Int) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        inet_pton(AF_INET, host, &addr.sin_addr)
        let ok = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
            }
        }
        guard ok else { throw ConnectFailed() }
    }

    func write(_ bytes: [UInt8]) { _ = bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, 0) } }
    func close() { Glibc.close(fd) }
}
struct ConnectFailed: Error {}
