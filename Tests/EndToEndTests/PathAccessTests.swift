import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Sends one HTTP/1.1 request exactly as written (no client normalizes its path) and returns the status code, or 0
/// when no status line came within `timeout` seconds.
func rawHTTPStatus(
    port: Int, method: String, path: String, headers: [String] = [], body: String = "", timeout: Int = 30
)
    -> Int
{
    let fd = connectLoopback(port: port, receiveTimeout: timeout)
    guard fd >= 0 else { return 0 }
    defer { close(fd) }
    var text = "\(method) \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
    for h in headers { text += h + "\r\n" }
    if !body.isEmpty { text += "Content-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n" }
    text += "\r\n" + body
    _ = text.withCString { send(fd, $0, strlen($0), 0) }
    var buffer = [UInt8](repeating: 0, count: 4096)
    var got = [UInt8]()
    while !got.contains(10) {
        let n = recv(fd, &buffer, buffer.count, 0)
        if n <= 0 { break }
        got += buffer[0..<n]
    }
    let line = String(decoding: got.prefix { $0 != 10 }, as: UTF8.self)
    let parts = line.split(separator: " ")
    return parts.count >= 2 ? Int(parts[1]) ?? 0 : 0
}

/// Opens a connection to `port` on loopback and sends one HTTP/1.1 request on it; the caller closes the returned
/// descriptor to leave, as a client that gives up does.
func openRawRequest(port: Int, method: String, path: String, body: String) -> Int32 {
    let fd = connectLoopback(port: port)
    let text =
        "\(method) \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + "Content-Length: \(body.utf8.count)\r\n\r\n\(body)"
    _ = text.withCString { send(fd, $0, strlen($0), Int32(MSG_NOSIGNAL)) }
    return fd
}

/// `--api-key` cannot be walked around: every route of an instance and of the proxy, asked for in canonical form
/// and in the forms that once skipped the check (`//v1/...`, `/v1//...`, `/./v1/...`, percent-encoded), answers 401
/// without the key on `/v1` paths and 404 for every non-canonical form, key or not; open routes stay open.
@Suite(.serialized) struct PathAccessTests {
    static let routes: [(method: String, path: String, body: String)] = [
        ("POST", "/v1/completions", #"{"prompt":"Hi","max_tokens":1}"#),
        ("POST", "/v1/chat/completions", #"{"messages":[{"role":"user","content":"Hi"}],"max_tokens":1}"#),
        ("GET", "/v1/models", ""),
    ]
    static let openRoutes: [(method: String, path: String, body: String)] = [
        ("GET", "/health", ""), ("GET", "/metrics", ""),
    ]
    static let instanceOpenRoutes: [(method: String, path: String, body: String)] = [
        ("GET", "/version", ""), ("POST", "/tokenize", #"{"prompt":"Hi"}"#),
        ("POST", "/detokenize", #"{"tokens":[1,2]}"#),
    ]

    /// The ways of writing `path` that are not canonical.
    static func variants(_ path: String) -> [String] {
        let rest = path.dropFirst()
        let first = rest.prefix { $0 != "/" }
        let tail = rest.dropFirst(first.count)
        return [
            "/" + path, path.replacingOccurrences(of: "/", with: "//"), "/." + path, "/x/.." + path, path + "/",
            "/" + first.prefix(1) + "%" + String(first.utf8.dropFirst().first!, radix: 16) + first.dropFirst(2) + tail,
            "/" + first + "%2F" + tail.dropFirst(),
        ]
    }

    func check(port: Int, routes: [(method: String, path: String, body: String)], open: Bool, key: String) {
        for r in routes {
            let bare = rawHTTPStatus(port: port, method: r.method, path: r.path, body: r.body)
            let keyed = rawHTTPStatus(
                port: port, method: r.method, path: r.path, headers: ["Authorization: Bearer \(key)"], body: r.body)
            if open {
                #expect(bare != 401 && bare != 404 && bare != 0, "\(r.path) stays open: \(bare)")
            } else {
                #expect(bare == 401, "\(r.path) without the key: \(bare)")
                #expect(keyed != 401 && keyed != 404 && keyed != 0, "\(r.path) with the key: \(keyed)")
            }
            for v in Self.variants(r.path) {
                let s = rawHTTPStatus(port: port, method: r.method, path: v, body: r.body)
                #expect(s == 404, "\(r.method) \(v) without the key: \(s)")
                let k = rawHTTPStatus(
                    port: port, method: r.method, path: v, headers: ["Authorization: Bearer \(key)"], body: r.body)
                #expect(k == 404, "\(r.method) \(v) with the key: \(k)")
            }
        }
    }

    @Test func anInstanceRefusesEveryWayAroundItsKey() async throws {
        let server = try await ServerProcess(["--api-key", "sekrit"])
        defer { #expect(server.stop() == 0) }
        check(port: server.port, routes: Self.routes, open: false, key: "sekrit")
        check(port: server.port, routes: Self.openRoutes + Self.instanceOpenRoutes, open: true, key: "sekrit")
    }

    @Test func theProxyRefusesEveryWayAroundItsKey() async throws {
        let proxy = try await ServerProcess.proxy(discoveryPort: freePort(), extra: ["--api-key", "sekrit"])
        defer { #expect(proxy.stop() == 0) }
        // No instances: a keyed request that reaches a route gets 503; what matters is that it is not 401 or 404.
        check(port: proxy.port, routes: Self.routes, open: false, key: "sekrit")
        check(port: proxy.port, routes: Self.openRoutes, open: true, key: "sekrit")
    }
}
