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

/// Sends `head`, then one byte every 200 ms (a client trickling its body), until the server answers or closes or
/// `timeout` seconds pass: the seconds that took, whether the server closed, and what it sent.
func trickleExchange(port: Int, _ head: String, timeout: Double = 10) -> (seconds: Double, closed: Bool, reply: String)
{
    let fd = connectLoopback(port: port, receiveTimeout: 1)
    defer { close(fd) }
    _ = head.withCString { send(fd, $0, strlen($0), Int32(MSG_NOSIGNAL)) }
    let start = Date()
    var got = [UInt8]()
    var buffer = [UInt8](repeating: 0, count: 4096)
    var closed = false
    while !closed, Date().timeIntervalSince(start) < timeout {
        var byte = UInt8(ascii: "x")
        if got.isEmpty, send(fd, &byte, 1, Int32(MSG_NOSIGNAL)) < 0 { break }
        var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&poller, 1, 200) > 0 else { continue }  // the client's pace: a byte per 200 ms
        let n = recv(fd, &buffer, buffer.count, 0)
        if n <= 0 { closed = true } else { got += buffer[0..<n] }
    }
    return (Date().timeIntervalSince(start), closed, String(decoding: got, as: UTF8.self))
}

/// Slow and broken clients: a half-sent header is closed after `--client-timeout`, a request trickled a byte at a
/// time is cut when it has not arrived whole by then (408), and a body that cannot be read (malformed chunked
/// encoding, cut short) or a request that cannot be parsed is a 400 with an OpenAI error, on an instance and on the
/// proxy.
@Suite(.serialized) struct SlowClientTests {
    static let halfHeader = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: appl"
    static let badChunks =
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n"
    static let garbage = "GARBAGE\r\n\r\n"
    static let trickledBody =
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
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
        // A request line that cannot be parsed gets an OpenAI error object too, not a bare 400.
        let garbage = rawExchange(port: port, Self.garbage)
        #expect(garbage.reply.hasPrefix("HTTP/1.1 400") && garbage.reply.contains(#"{"error":{"#), "\(garbage)")
        // A body trickled a byte every 200 ms never goes silent, yet must arrive whole within the 1 s timeout.
        let trickled = trickleExchange(port: port, Self.trickledBody)
        #expect(trickled.reply.hasPrefix("HTTP/1.1 408"), "a trickled body is answered 408: \(trickled)")
        #expect(trickled.reply.contains(#""code":408"#), "\(trickled)")
        #expect(trickled.closed && trickled.seconds < 8, "and closed within the timeout: \(trickled)")
        // So is a header trickled a byte at a time (no answer is owed: the request never began).
        let header = trickleExchange(port: port, "POST /v1/completions HTTP/1.1\r\nX-Slow: ")
        #expect(header.closed && header.seconds < 8, "a trickled header is closed within the timeout: \(header)")
    }

    @Test func anInstance() async throws {
        let server = try await ServerProcess(["--client-timeout", "1"])
        defer { #expect(server.stop() == 0) }
        check(port: server.port)
    }

    /// `--max-connections 3`: three idle connections are kept, a fourth is closed at once, and once one of the three
    /// leaves a new client is served again.
    @Test func aProcessKeepsAtMostItsConnectionLimit() async throws {
        let server = try await ServerProcess(["--max-connections", "3"])
        defer { #expect(server.stop() == 0) }
        // Open connections until one is refused (closed at once): the process is then at its limit. The test
        // harness's own keep-alive connection (from the health wait) may hold one of the three.
        var held: [Int32] = []
        defer { for fd in held { close(fd) } }
        while held.count < 4 {
            let fd = connectLoopback(port: server.port, receiveTimeout: 1)
            var byte: UInt8 = 0
            guard fd >= 0, recv(fd, &byte, 1, 0) < 0 else {  // closed (0) rather than silent (-1, timed out)
                if fd >= 0 { close(fd) }
                break
            }
            held.append(fd)
        }
        #expect((2...3).contains(held.count), "kept \(held.count) idle connections under a limit of 3")
        let extra = rawExchange(port: server.port, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n", timeout: 5)
        #expect(
            extra.reply.isEmpty && extra.seconds < 2, "the fourth connection is closed (or reset) unanswered: \(extra)")
        close(held.removeLast())
        var status = 0
        let served = Date().addingTimeInterval(5)
        while status != 200, Date() < served {
            status = rawHTTPStatus(port: server.port, method: "GET", path: "/health", timeout: 5)
        }
        #expect(status == 200, "a new client is served once a connection left")
    }

    @Test func theProxy() async throws {
        let proxy = try await ServerProcess.proxy(discoveryPort: freePort(), extra: ["--client-timeout", "1"])
        defer { #expect(proxy.stop() == 0) }
        check(port: proxy.port)
    }
}
