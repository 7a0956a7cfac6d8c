import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import Testing

/// A `tandem serve` process on a free port, for tests over real HTTP. Stopped with SIGTERM by `stop()`.
final class ServerProcess: @unchecked Sendable {
    let process = Process()
    let host: String
    private(set) var port = 0
    private let log = LogBuffer()
    private let exited = DispatchSemaphore(value: 0)

    /// Starts `tandem serve MODEL --host HOST --port 0 EXTRA...` and waits until it is healthy.
    convenience init(host: String = "127.0.0.1", model: String = "default", _ extra: [String] = []) async throws {
        try await self.init(arguments: ["serve", model, "--host", host, "--port", "0"] + extra, host: host)
    }

    /// Starts `tandem ARGUMENTS` (a server that logs "listening on http://…:PORT"), or another server
    /// `executable` that listens on `knownPort`, and waits until `/health` is 200 (or, with `readyLine`, until its log
    /// has that line: a router with no instances yet is not healthy).
    init(
        arguments: [String], host: String, executable: URL = TandemBinary.url, knownPort: Int? = nil,
        readyLine: String? = nil
    ) async throws {
        self.host = host
        port = knownPort ?? 0
        process.executableURL = executable
        process.arguments = arguments
        let err = Pipe()
        process.standardError = err
        process.standardOutput = knownPort == nil ? FileHandle.nullDevice : err
        let log = log
        err.fileHandleForReading.readabilityHandler = { handle in log.append(handle.availableData) }
        let exited = exited
        process.terminationHandler = { _ in exited.signal() }
        try process.run()
        let deadline = Date().addingTimeInterval(60)
        while port == 0 {
            guard process.isRunning, Date() < deadline else {
                throw TestFailure("the server did not start:\n\(log.text)")
            }
            if let range = log.text.range(of: #"listening on http://\S+:(\d+)"#, options: .regularExpression) {
                port = Int(log.text[range].split(separator: ":").last!)!
            } else {
                try await Task.sleep(for: .milliseconds(20))
            }
        }
        if let readyLine {
            let process = process
            try await waitFor("the server to log \(readyLine)", timeout: 60, detail: { log.text }) {
                guard process.isRunning else { throw TestFailure("the server exited:\n\(log.text)") }
                return log.text.contains(readyLine)
            }
            return
        }
        while (try? await get("/health").status) != .ok {
            guard process.isRunning else { throw TestFailure("the server exited:\n\(log.text)") }
            guard Date() < deadline else { throw TestFailure("the server never became healthy:\n\(log.text)") }
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    var baseURL: String { host.contains(":") ? "http://[\(host)]:\(port)" : "http://\(host):\(port)" }
    var logText: String { log.text }

    /// SIGTERM, then SIGKILL if the process has not exited after `grace` seconds; returns its exit status.
    @discardableResult func stop(grace: Double = 15) -> Int32 {
        if process.isRunning {
            process.terminate()
            if exited.wait(timeout: .now() + grace) == .timedOut { kill(process.processIdentifier, SIGKILL) }
        }
        process.waitUntilExit()
        return process.terminationStatus
    }

    deinit { if process.isRunning { process.terminate() } }

    /// Kills the process at once (SIGKILL), as a crash would.
    func kill9() {
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    /// A `tandem proxy` on a free HTTP port, its discovery ROUTER on `discoveryPort`.
    static func proxy(
        host: String = "127.0.0.1", discoveryPort: Int, ttl: String = "5s", extra: [String] = []
    ) async throws -> ServerProcess {
        try await ServerProcess(
            arguments: [
                "proxy", "--host", host, "--port", "0", "--discovery-host", host, "--discovery-port",
                "\(discoveryPort)",
                "--instance-ttl", ttl,
            ] + extra, host: host)
    }

    /// A `tandem serve` instance with a KV role, registering with the proxy at `discoveryPort` when one is given;
    /// `extra` adds keys to `kv_connector_extra_config` (for example `"kv_transfer_timeout_s":1`).
    static func instance(
        host: String = "127.0.0.1", model: String = "default", role: String, kvPort: Int, discoveryPort: Int? = nil,
        sendType: String = "PUT", extra: String = "", arguments: [String] = []
    ) async throws -> ServerProcess {
        var extraConfig = "\"kv_host\":\"\(host)\",\"send_type\":\"\(sendType)\""
        if let discoveryPort { extraConfig += ",\"proxy_ip\":\"\(host)\",\"proxy_port\":\"\(discoveryPort)\"" }
        if !extra.isEmpty { extraConfig += "," + extra }
        let config = """
            {"kv_connector":"P2pNcclConnector","kv_role":"\(role)","kv_port":"\(kvPort)",\
            "kv_connector_extra_config":{\(extraConfig)}}
            """
        return try await ServerProcess(host: host, model: model, ["--kv-transfer-config", config] + arguments)
    }

    func get(_ path: String) async throws -> HTTPReply {
        try await send(HTTPClientRequest(url: baseURL + path))
    }

    func post(_ path: String, _ body: String, headers: [(String, String)] = []) async throws -> HTTPReply {
        var request = HTTPClientRequest(url: baseURL + path)
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/json")
        for (k, v) in headers { request.headers.add(name: k, value: v) }
        request.body = .bytes(ByteBuffer(string: body))
        return try await send(request)
    }

    private func send(_ request: HTTPClientRequest) async throws -> HTTPReply {
        let response = try await HTTPClient.shared.execute(request, timeout: .seconds(120))
        let body = try await response.body.collect(upTo: 64 << 20)
        return HTTPReply(
            status: response.status, contentType: response.headers.first(name: "Content-Type") ?? "",
            body: String(buffer: body))
    }
}

/// A status, content type and body.
struct HTTPReply {
    let status: HTTPResponseStatus
    let contentType: String
    let body: String

    var json: [String: Any]? {
        try? JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any]
    }

    /// The `data:` payloads of a server-sent-event body, `[DONE]` excluded.
    var events: [[String: Any]] {
        body.components(separatedBy: "\n\n").compactMap { block in
            guard block.hasPrefix("data: "), block != "data: [DONE]" else { return nil }
            return try? JSONSerialization.jsonObject(with: Data(block.dropFirst(6).utf8)) as? [String: Any]
        }
    }
}

struct TestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Bytes a child process writes, readable as text while it runs.
final class LogBuffer: @unchecked Sendable {
    private var data = Data()
    private let lock = NSLock()

    func append(_ d: Data) {
        lock.lock()
        data.append(d)
        lock.unlock()
    }

    var text: String {
        lock.lock()
        defer { lock.unlock() }
        return String(decoding: data, as: UTF8.self)
    }
}

/// Runs blocking work (waiting for a child process) on a thread of its own. Swift's cooperative pool has as many
/// threads as cores (two here); a test that blocks one of them stalls every other test running in parallel.
func offThePool<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        Thread { continuation.resume(with: Result { try work() }) }.start()
    }
}

/// Waits until `condition` holds, checked every 20 ms, or throws after `timeout` seconds naming what it waited for
/// (and `detail`, such as a log).
func waitFor(
    _ what: String, timeout: Double, detail: () -> String = { "" }, _ condition: () async throws -> Bool
) async throws {
    let deadline = ContinuousClock.now + .milliseconds(Int(timeout * 1000))
    while try await !condition() {
        guard ContinuousClock.now < deadline else {
            throw TestFailure("timed out after \(timeout) s waiting for \(what)\n\(detail())")
        }
        try await Task.sleep(for: .milliseconds(20))
    }
}
