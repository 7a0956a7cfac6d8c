import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Sends `bytes` on a fresh loopback connection (then half-closes it when `halfClose`), and reads until the server
/// closes or `timeout` seconds pass: the seconds that took, whether the server closed, and what it sent.
func rawExchange(port: Int, _ bytes: String, halfClose: Bool = false, timeout: Int = 10) -> (
    seconds: Double, closed: Bool, reply: String
) {
    let fd = connectLoopback(port: port, receiveTimeout: timeout)
    defer { close(fd) }
    _ = bytes.withCString { send(fd, $0, strlen($0), Int32(MSG_NOSIGNAL)) }
    if halfClose { shutdown(fd, Int32(SHUT_WR)) }
    let start = Date()
    var got = [UInt8]()
    var buffer = [UInt8](repeating: 0, count: 4096)
    var closed = false
    while true {
        let n = recv(fd, &buffer, buffer.count, 0)
        if n == 0 { closed = true }
        if n <= 0 { break }
        got += buffer[0..<n]
    }
    return (Date().timeIntervalSince(start), closed, String(decoding: got, as: UTF8.self))
}

/// Slow and broken clients: a half-sent header is closed after `--client-timeout`, and a body that cannot be read
/// (malformed chunked encoding, cut short) is a 400 with an OpenAI error, on an instance and on the proxy.
@Suite(.serialized) struct SlowClientTests {
    static let halfHeader = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: appl"
    static let badChunks =
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n"
    static let cutShort =
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 50\r\n\r\n{\"prompt\":"

    func check(port: Int) {
        let slow = rawExchange(port: port, Self.halfHeader)
        #expect(slow.closed && slow.seconds < 5, "a half-sent header is closed after the 1 s timeout: \(slow)")
        for (name, bytes, half) in [("malformed chunks", Self.badChunks, false), ("cut short", Self.cutShort, true)] {
            let r = rawExchange(port: port, bytes, halfClose: half)
            #expect(r.reply.hasPrefix("HTTP/1.1 400"), "\(name): \(r.reply)")
            #expect(!r.reply.contains(" 500 "), "\(name): \(r.reply)")
        }
    }

    @Test func anInstance() async throws {
        let server = try await ServerProcess(["--client-timeout", "1"])
        defer { #expect(server.stop() == 0) }
        check(port: server.port)
    }

    @Test func theProxy() async throws {
        let proxy = try await ServerProcess.proxy(discoveryPort: freePort(), extra: ["--client-timeout", "1"])
        defer { #expect(proxy.stop() == 0) }
        check(port: proxy.port)
    }
}
