import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// The anchor of `tandem bench-kv`: a plain TCP stream over loopback, one socket pair, `send` of large chunks on one
/// thread and `recv` into a reused buffer on another, then a one-byte reply, with nothing else (no framing,
/// checksums or copies). What any transfer over the same sockets can at best approach.
final class PlainTCPStream {
    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    private let client: Int32
    private let bytes: Int
    private let data: UnsafeMutableRawPointer

    /// Connects a socket pair over loopback for transfers of `bytes`, with a receiver thread on the far end.
    init(bytes: Int) throws {
        self.bytes = bytes
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard listener >= 0 else { throw Failure(description: "socket: \(errno)") }
        defer { close(listener) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = 0
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        try withUnsafeMutablePointer(to: &addr) { p in
            try p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                guard bind(listener, sa, len) == 0, listen(listener, 1) == 0,
                    getsockname(listener, sa, &len) == 0
                else { throw Failure(description: "bind/listen: \(errno)") }
            }
        }
        let client = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        self.client = client
        try withUnsafePointer(to: &addr) { p in
            try p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                guard connect(client, sa, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 else {
                    throw Failure(description: "connect: \(errno)")
                }
            }
        }
        let server = accept(listener, nil, nil)
        guard server >= 0 else { throw Failure(description: "accept: \(errno)") }
        var one: Int32 = 1
        for fd in [client, server] {
            setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        }
        // The receiver: reads `bytes`, answers one byte, until the connection closes.
        let receiver = Thread {
            let buffer = UnsafeMutableRawPointer.allocate(byteCount: 1 << 20, alignment: 64)
            defer {
                buffer.deallocate()
                close(server)
            }
            while true {
                var left = bytes
                while left > 0 {
                    let n = recv(server, buffer, min(left, 1 << 20), 0)
                    if n <= 0 { return }
                    left -= n
                }
                var ack: UInt8 = 1
                _ = send(server, &ack, 1, 0)
            }
        }
        receiver.start()
        data = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
        memset(data, 0x5a, bytes)
    }

    deinit {
        close(client)
        data.deallocate()
    }

    /// Seconds for one transfer of `bytes`: first byte sent to the reply received.
    func transfer() throws -> Double {
        do {
            let start = ContinuousClock.now
            var sent = 0
            while sent < bytes {
                let n = send(client, data + sent, min(bytes - sent, 1 << 20), 0)
                guard n > 0 else { throw Failure(description: "send: \(errno)") }
                sent += n
            }
            var ack: UInt8 = 0
            guard recv(client, &ack, 1, 0) == 1 else { throw Failure(description: "no reply") }
            let d = ContinuousClock.now - start
            return Double(d.components.seconds) + Double(d.components.attoseconds) * 1e-18
        }
    }
}
