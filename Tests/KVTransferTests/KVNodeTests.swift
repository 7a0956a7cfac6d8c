import Discovery
import Engine
import Foundation
import KVTransfer
import Logging
import NIOCore
import Testing

/// Collects the events a node reports.
final class EventLog: @unchecked Sendable {
    private let lock = NSLock()
    private var events: [KVTransferEvent] = []
    func add(_ e: KVTransferEvent) { lock.withLock { events.append(e) } }
    var sent: Int { lock.withLock { events.filter { if case .sent = $0 { true } else { false } }.count } }
    var failures: [String] {
        lock.withLock { events.compactMap { if case .sendFailed(let r) = $0 { r } else { nil } } }
    }
}

func makeNode(
    host: String = "127.0.0.1", port: Int = 0, fingerprint: UInt64 = 42, buffer: Int = 1 << 24, ttl: Double = 60,
    timeout: Double = 5, log: EventLog? = nil, secret: String? = nil, tls: KVTLS? = nil,
    windows: KVTransferWindows? = nil
) async throws -> KVNode {
    try await KVNode(
        bind: HostPort(host: host, port: port), fingerprint: fingerprint, bufferBytes: buffer, ttl: ttl,
        transferTimeout: timeout, windows: windows, connectTimeout: 1, clusterSecret: secret.map { Array($0.utf8) },
        tls: tls,
        logger: Logger(label: "test")
    ) { log?.add($0) }
}

func expectPayload(_ arrival: KVArrival, _ want: KVPayload, _ comment: Comment? = nil) {
    if case .payload(let p) = arrival { #expect(p == want, comment) } else { Issue.record("got \(arrival)") }
}

func expectRejected(_ arrival: KVArrival, containing text: String) {
    if case .rejected(let why) = arrival {
        #expect(why.contains(text), "\(why)")
    } else {
        Issue.record("expected a rejection, got \(arrival)")
    }
}

/// Two KV nodes on loopback: a producer and a consumer, as two instances run them.
@Suite struct KVNodeTests {
    /// A 512-token prompt's KV of the default model's shape (11.8 MB, layer frames far larger than one read)
    /// arrives bit for bit, by PUT and by PUT_ASYNC slices that straddle reads.
    @Test func aLargeTransferArrivesExactly() async throws {
        let producer = try await makeNode(timeout: 30)
        let consumer = try await makeNode(timeout: 30)
        let peer = HostPort(host: "127.0.0.1", port: consumer.port)
        let big = samplePayload(tokens: 512, layers: 30, kvDim: 192)
        try await producer.send(big, requestId: "big", to: peer)
        expectPayload(await consumer.inbox.wait(for: "big", timeout: 5), big)
        let stream = producer.stream(requestId: "sliced", tokens: big.tokens, layerCount: 30, kvDim: 192, to: peer)
        for start in stride(from: 0, to: 512, by: 100) {
            let n = min(100, 512 - start)
            for layer in 0..<30 {
                let k = big.offset(layer: layer, value: false) + start * 192
                let v = big.offset(layer: layer, value: true) + start * 192
                stream.push(
                    KVLayerSlice(
                        layer: layer, tokenStart: start, tokenCount: n, kvDim: 192,
                        values: Array(big.values[k..<k + n * 192] + big.values[v..<v + n * 192])))
            }
        }
        stream.end(complete: true) {}
        expectPayload(await consumer.inbox.wait(for: "sliced", timeout: 5), big)
        await producer.close()
        await consumer.close()
    }

    @Test(arguments: ["127.0.0.1", "::1"])
    func putSharesOneConnectionAndRefusesAnotherModel(host: String) async throws {
        // A deadline for a loaded machine (the suite runs model processes alongside): this test is not about it.
        let producer = try await makeNode(host: host, timeout: 30)
        let consumer = try await makeNode(host: host, timeout: 30)
        let peer = HostPort(host: host, port: consumer.port)
        for i in 0..<5 {
            try await producer.send(samplePayload(tokens: 3 + i), requestId: "r\(i)", to: peer)
        }
        #expect(producer.connectionCount == 1, "one persistent connection per peer")
        for i in 0..<5 {
            expectPayload(await consumer.inbox.wait(for: "r\(i)", timeout: 1), samplePayload(tokens: 3 + i))
        }
        // Another model's KV is refused, and the sender hears why.
        let other = try await makeNode(host: host, fingerprint: 7)
        await #expect(throws: KVSendError.self) {
            try await other.send(samplePayload(fingerprint: 7), requestId: "other", to: peer)
        }
        expectRejected(await consumer.inbox.wait(for: "other", timeout: 1), containing: "model")
        #expect(consumer.bufferedBytes == 0 && producer.bufferedBytes == 0)
        await consumer.close()
        // Nobody listening: the send fails on the refused connection, not on the 30 s deadline.
        let start = Date()
        let refused = await #expect(throws: KVSendError.self) {
            try await producer.send(samplePayload(), requestId: "x", to: peer)
        }
        #expect(refused?.description.contains("cannot connect") == true)
        #expect(Date().timeIntervalSince(start) < 15, "well inside the node's 30 s deadline")
        #expect(producer.bufferedBytes == 0)
        await producer.close()
        await other.close()
    }

    @Test func aBrokenConnectionIsRedialed() async throws {
        let producer = try await makeNode()
        var consumer = try await makeNode()
        let port = consumer.port
        let peer = HostPort(host: "127.0.0.1", port: port)
        try await producer.send(samplePayload(), requestId: "before", to: peer)
        await consumer.close()
        consumer = try await makeNode(port: port)
        try await producer.send(samplePayload(), requestId: "after", to: peer)
        expectPayload(await consumer.inbox.wait(for: "after", timeout: 1), samplePayload())
        await producer.close()
        await consumer.close()
    }

    @Test func streamedSlicesAssembleToThePayload() async throws {
        let log = EventLog()
        let producer = try await makeNode(log: log)
        let consumer = try await makeNode()
        let payload = samplePayload(tokens: 7, layers: 3, kvDim: 8)
        let stream = producer.stream(
            requestId: "s", tokens: payload.tokens, layerCount: 3, kvDim: 8,
            to: HostPort(host: "127.0.0.1", port: consumer.port))
        // Chunks of a prefill: positions 0..<3 for every layer, then 3..<7.
        for range in [0..<3, 3..<7] {
            for layer in 0..<3 { stream.push(slice(of: payload, layer: layer, range: range)) }
        }
        stream.end(complete: true) {}
        expectPayload(await consumer.inbox.wait(for: "s", timeout: 2), payload)
        for _ in 0..<50 where log.sent == 0 { try await Task.sleep(for: .milliseconds(20)) }
        #expect(log.sent == 1)
        #expect(producer.bufferedBytes == 0 && consumer.bufferedBytes == 0)
        await producer.close()
        await consumer.close()
    }

    @Test func aStreamThatOverrunsItsBufferOrIsAbortedIsCancelledAtOnce() async throws {
        let log = EventLog()
        let payload = samplePayload(tokens: 7, layers: 3, kvDim: 8)
        let small = try await makeNode(buffer: 200, log: log)  // one slice of 7 positions is 224 bytes of KV
        let consumer = try await makeNode()
        let peer = HostPort(host: "127.0.0.1", port: consumer.port)
        let overrun = small.stream(requestId: "o", tokens: payload.tokens, layerCount: 3, kvDim: 8, to: peer)
        overrun.push(slice(of: payload, layer: 0, range: 0..<7))
        overrun.end(complete: true) {}
        // "abandoned" comes only from the producer's cancel frame; the consumer's own deadline would say timed out.
        expectRejected(await consumer.inbox.wait(for: "o", timeout: 60), containing: "abandoned")
        #expect(log.failures == ["backpressure"])
        let producer = try await makeNode()
        let aborted = producer.stream(requestId: "a", tokens: payload.tokens, layerCount: 3, kvDim: 8, to: peer)
        aborted.push(slice(of: payload, layer: 0, range: 0..<7))
        // Abort once the stream's connection is open, so the cancel goes out on it.
        for _ in 0..<1000 where producer.connectionCount == 0 { try await Task.sleep(for: .milliseconds(5)) }
        aborted.end(complete: false) {}
        expectRejected(await consumer.inbox.wait(for: "a", timeout: 60), containing: "abandoned")
        #expect(small.bufferedBytes == 0 && producer.bufferedBytes == 0 && consumer.bufferedBytes == 0)
        for n in [small, producer, consumer] { await n.close() }
    }

    @Test func getKeepsTheKVUntilPulledAndRefusesWhatItDoesNotHave() async throws {
        let producer = try await makeNode(ttl: 30, timeout: 3)
        let consumer = try await makeNode(timeout: 30)
        let peer = HostPort(host: "127.0.0.1", port: producer.port)
        let payload = samplePayload()
        #expect(producer.offer(payload, requestId: "g"))
        #expect(producer.bufferedBytes == payload.byteCount)
        expectPayload(await consumer.pull("g", from: peer), payload)
        // The send budget is given back once the socket took the last frame, which may be just after it arrived.
        #expect(await eventually { producer.bufferedBytes == 0 })
        // Pulled before the prefill has finished: the producer waits for it.
        async let early = consumer.pull("late", from: peer)
        try await Task.sleep(for: .milliseconds(100))
        #expect(producer.offer(payload, requestId: "late"))
        expectPayload(await early, payload)
        // Never offered: refused once the producer's deadline (3 s) passes, before the consumer's (30 s) would have
        // ended the wait as a timeout.
        let start = Date()
        expectRejected(await consumer.pull("missing", from: peer), containing: "refused")
        #expect(Date().timeIntervalSince(start) < 29)
        #expect(producer.bufferedBytes == 0)
        #expect(consumer.bufferedBytes == 0)
        // Never pulled: the lease ends and the outbox is empty again.
        let leased = try await makeNode(ttl: 0.3)
        #expect(leased.offer(payload, requestId: "unclaimed"))
        #expect(leased.bufferedBytes == payload.byteCount)
        #expect(await eventually { leased.bufferedBytes == 0 }, "the lease ended")
        for n in [producer, consumer, leased] { await n.close() }
    }

    @Test func aCorruptedLayerIsRefused() async throws {
        let consumer = try await makeNode()
        var frames = KVFrame.frames(for: samplePayload(), requestId: "bad")
        if case .layer(let id, let layer, let start, let count, let kvDim, let checksum, var values) = frames[2] {
            values[3] ^= 0x40
            frames[2] = .layer(
                requestId: id, layer: layer, tokenStart: start, tokenCount: count, kvDim: kvDim, checksum: checksum,
                values: values)
        }
        var bytes = ByteBuffer()
        for f in frames { f.write(into: &bytes) }
        let socket = try Socket(host: "127.0.0.1", port: consumer.port)
        socket.write(Array(bytes.readableBytesView))
        expectRejected(await consumer.inbox.wait(for: "bad", timeout: 2), containing: "checksum")
        #expect(consumer.bufferedBytes == 0)
        socket.close()
        await consumer.close()
    }
}

/// One layer's slice of a payload.
func slice(of p: KVPayload, layer: Int, range: Range<Int>) -> KVLayerSlice {
    let k = p.offset(layer: layer, value: false)
    let v = p.offset(layer: layer, value: true)
    let values =
        Array(p.values[k + range.lowerBound * p.kvDim..<k + range.upperBound * p.kvDim])
        + Array(p.values[v + range.lowerBound * p.kvDim..<v + range.upperBound * p.kvDim])
    return KVLayerSlice(
        layer: layer, tokenStart: range.lowerBound, tokenCount: range.count, kvDim: p.kvDim, values: values)
}
