import Discovery
import Engine
import Foundation
import KVTransfer
import NIOCore
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// A plain TCP socket on loopback, for playing a peer that does not know the cluster secret.
final class RawSocket: @unchecked Sendable {
    let fd: Int32

    /// Connects to `port`.
    init?(connectTo port: Int) {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = RawSocket.loopback(port)
        let ok = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard ok == 0 else {
            close(fd)
            return nil
        }
    }

    init(fd: Int32) { self.fd = fd }

    static func loopback(_ port: Int) -> sockaddr_in {
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        return addr
    }

    deinit { close(fd) }

    /// A listening socket on a free loopback port: its descriptor and port.
    static func listen() -> (Int32, Int) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = loopback(0)
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                _ = bind(fd, $0, len)
                _ = Glibc.listen(fd, 4)
                _ = getsockname(fd, $0, &len)
            }
        }
        return (fd, Int(UInt16(bigEndian: addr.sin_port)))
    }

    func send(_ buffer: ByteBuffer) {
        buffer.withUnsafeReadableBytes { _ = Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    }

    /// Everything the peer sends until it closes or `seconds` pass with nothing new.
    func drain(seconds: Int) -> [UInt8] {
        var tv = timeval(tv_sec: seconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var got: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65_536)
        while true {
            let n = recv(fd, &buffer, buffer.count, 0)
            if n <= 0 { return got }
            got += buffer[0..<n]
        }
    }
}

/// A plain TCP listener on loopback that counts the bytes it is sent (a stranger's port a request id could name).
final class CountingListener: @unchecked Sendable {
    let port: Int
    private let fd: Int32
    private let lock = NSLock()
    private var received = 0
    var bytes: Int { lock.withLock { received } }

    init() {
        (fd, port) = RawSocket.listen()
        Thread {
            while true {
                let c = accept(self.fd, nil, nil)
                if c < 0 { return }
                let peer = RawSocket(fd: c)
                let n = peer.drain(seconds: 3).count
                self.lock.withLock { self.received += n }
            }
        }.start()
    }

    deinit { shutdown(fd, Int32(SHUT_RDWR)) }
}

/// A relay on loopback between a KV node and `target` that flips one bit of the byte at `flipAt` in the stream
/// towards the target: a man in the middle rewriting KV (or token ids) after the handshake. It keeps what it
/// passed towards the target (`captured`): what a reader of the link sees.
final class TamperingRelay: @unchecked Sendable {
    let port: Int
    private let fd: Int32
    private static let lock = NSLock()
    nonisolated(unsafe) private static var seen: [Int: [UInt8]] = [:]
    /// The bytes relayed towards the target so far.
    var captured: [UInt8] { Self.lock.withLock { Self.seen[port] ?? [] } }

    init(to target: Int, flipAt: Int?) {
        (fd, port) = RawSocket.listen()
        Thread {
            while true {
                let c = accept(self.fd, nil, nil)
                if c < 0 { return }
                guard let upstream = RawSocket(connectTo: target) else { return }
                let client = RawSocket(fd: c)
                Self.pump(from: client, to: upstream, flipAt: flipAt, record: self.port)
                Self.pump(from: upstream, to: client, flipAt: nil, record: nil)
            }
        }.start()
    }

    private static func pump(from: RawSocket, to: RawSocket, flipAt: Int?, record: Int?) {
        Thread {
            var buffer = [UInt8](repeating: 0, count: 65_536)
            var at = 0
            while true {
                let n = recv(from.fd, &buffer, buffer.count, 0)
                if n <= 0 { break }
                if let f = flipAt, f >= at, f < at + n { buffer[f - at] ^= 0x01 }
                if let record { lock.withLock { seen[record, default: []] += buffer[0..<n] } }
                at += n
                if buffer.withUnsafeBytes({ Glibc.send(to.fd, $0.baseAddress, n, Int32(MSG_NOSIGNAL)) }) < 0 { break }
            }
            shutdown(to.fd, Int32(SHUT_WR))
            shutdown(from.fd, Int32(SHUT_RD))
        }.start()
    }

    deinit { shutdown(fd, Int32(SHUT_RDWR)) }
}

/// The cluster secret on the KV plane: instances that share it move KV as before; nobody without it can put KV
/// into a decode (so nobody can poison its prefix cache) or reserve its buffer, and a prefill sends KV to no one
/// who has not proved it.
@Suite struct KVAuthenticationTests {
    let secret = "a cluster secret of some length"

    @Test func instancesWithTheSecretMoveKVByEverySendType() async throws {
        // A deadline for a loaded machine (the suite runs model processes alongside): this test is not about it.
        let producer = try await makeNode(timeout: 30, secret: secret)
        let consumer = try await makeNode(timeout: 30, secret: secret)
        let peer = HostPort(host: "127.0.0.1", port: consumer.port)
        let big = samplePayload(tokens: 512, layers: 30, kvDim: 192)
        try await producer.send(big, requestId: "put", to: peer)
        expectPayload(await consumer.inbox.wait(for: "put", timeout: 5), big)
        // GET: the consumer dials the producer, proves the secret, pulls.
        #expect(producer.offer(samplePayload(), requestId: "get"))
        expectPayload(
            await consumer.pull("get", from: HostPort(host: "127.0.0.1", port: producer.port)), samplePayload())
        await producer.close()
        await consumer.close()
    }

    @Test func aPeerWithAnotherSecretGetsAndGivesNothing() async throws {
        let producer = try await makeNode(secret: "not the cluster secret at all")
        let consumer = try await makeNode(secret: secret)
        await #expect(throws: KVSendError.self) {
            try await producer.send(
                samplePayload(), requestId: "r", to: HostPort(host: "127.0.0.1", port: consumer.port))
        }
        #expect(consumer.inbox.bytesInUse == 0)
        await producer.close()
        await consumer.close()
    }

    /// Defects 1 and 6 of the security review: forged KV frames with the right fingerprint, and begin frames that
    /// reserve the buffer, from a peer without the secret: nothing is reserved, nothing is filed, the connection is
    /// closed.
    @Test func forgedFramesWithoutTheSecretAreRefusedAndReserveNothing() async throws {
        let consumer = try await makeNode(fingerprint: 42, secret: secret)
        let raw = try #require(RawSocket(connectTo: consumer.port))
        var bytes = ByteBuffer()
        for i in 0..<6 {
            KVFrame.begin(requestId: "junk\(i)", layerCount: 30, kvDim: 192, fingerprint: 42, tokens: Array(0..<8000))
                .write(into: &bytes)
        }
        for f in KVFrame.frames(for: samplePayload(fingerprint: 42), requestId: "forged") { f.write(into: &bytes) }
        raw.send(bytes)
        let answer = raw.drain(seconds: 5)  // the hello, then the close
        #expect(answer.count <= 13 + 32, "only the handshake's hello came back: \(answer.count) bytes")
        #expect(consumer.inbox.bytesInUse == 0, "six junk begin frames reserved nothing")
        if case .payload = await consumer.inbox.wait(for: "forged", timeout: 0.5) {
            Issue.record("forged KV was filed")
        }
        await consumer.close()
    }

    /// One bit changed in flight, after both ends proved the secret (in a value, or a token id of the begin frame):
    /// the frame's MAC fails, the connection is closed, nothing is filed, the sender hears of it.
    @Test(arguments: [200, 5000])
    func aRewrittenFrameIsRefused(flipAt: Int) async throws {
        let producer = try await makeNode(secret: secret)
        let consumer = try await makeNode(secret: secret)
        let relay = TamperingRelay(to: consumer.port, flipAt: flipAt)
        await #expect(throws: KVSendError.self) {
            try await producer.send(
                samplePayload(tokens: 64), requestId: "tampered", to: HostPort(host: "127.0.0.1", port: relay.port))
        }
        if case .payload = await consumer.inbox.wait(for: "tampered", timeout: 0.5) {
            Issue.record("rewritten KV was filed")
        }
        #expect(consumer.inbox.bytesInUse == 0)
        await producer.close()
        await consumer.close()
    }

    /// Without a secret, one connection's begin frames reserve at most a quarter of the buffer, what they reserved
    /// goes back when the connection closes, and other peers' transfers still fit meanwhile.
    @Test func withoutASecretAHostReservesOnlyItsShare() async throws {
        let buffer = 1 << 24
        let consumer = try await makeNode(fingerprint: 42, buffer: buffer)
        let producer = try await makeNode(fingerprint: 42)
        // Two connections from one host (127.0.0.1), six junk begins of 2.3 MB each on each: together they hold
        // at most a quarter of the buffer (one connection alone could take a quarter before).
        var raws = [
            try #require(RawSocket(connectTo: consumer.port)), try #require(RawSocket(connectTo: consumer.port)),
        ]
        for (c, raw) in raws.enumerated() {
            var bytes = ByteBuffer()
            for i in 0..<6 {
                KVFrame.begin(
                    requestId: "junk\(c)-\(i)", layerCount: 30, kvDim: 192, fingerprint: 42, tokens: Array(0..<100)
                ).write(into: &bytes)
            }
            raw.send(bytes)
            _ = raw.drain(seconds: 1)  // the refusals' acks
        }
        #expect(
            consumer.inbox.bytesInUse > 0 && consumer.inbox.bytesInUse <= buffer / 4, "\(consumer.inbox.bytesInUse)")
        try await producer.send(
            samplePayload(tokens: 64, fingerprint: 42), requestId: "real",
            to: HostPort(host: "127.0.0.1", port: consumer.port))
        expectPayload(await consumer.inbox.wait(for: "real", timeout: 2), samplePayload(tokens: 64, fingerprint: 42))
        raws = []  // closes the junk connections
        #expect(await eventually { consumer.inbox.bytesInUse == 0 }, "the closed connections' reservations went back")
        await producer.close()
        await consumer.close()
    }

    /// Defect 2: a prefill told (by a request id) to push KV to some listener that does not know the secret sends
    /// it nothing but its hello.
    @Test func noKVGoesToAListenerWithoutTheSecret() async throws {
        let stranger = CountingListener()
        let producer = try await makeNode(secret: secret)
        await #expect(throws: KVSendError.self) {
            try await producer.send(
                samplePayload(tokens: 64), requestId: "exfil", to: HostPort(host: "127.0.0.1", port: stranger.port))
        }
        // One hello per attempt (the send redials once), and nothing more.
        #expect(stranger.bytes <= 2 * (13 + 32), "\(stranger.bytes) bytes reached the stranger")
        await producer.close()
    }
}
