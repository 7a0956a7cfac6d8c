import AsyncHTTPClient
import Foundation
import NIOCore
import NIOFoundationCompat
import Testing

/// The hosts of `scripts/hosts.sh`: network namespaces on one bridge, each a separate machine as far as the network
/// goes, with this test process as the client on the bridge. Needs root; `down()` removes everything, and `up`
/// first removes whatever an earlier run left.
final class TestHosts: @unchecked Sendable {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()
    static let script = root.appendingPathComponent("scripts/hosts.sh").path
    /// Root and `ip` are what the harness needs; CI runs as root.
    static let available = getuid() == 0 && FileManager.default.isExecutableFile(atPath: "/usr/sbin/ip")

    let count: Int
    let dualStack: Bool
    private let lock = NSLock()
    private var processes: [HostProcess] = []

    init(_ count: Int, dualStack: Bool = false) async throws {
        self.count = count
        self.dualStack = dualStack
        try await Self.script(["up", "\(count)"] + (dualStack ? ["--dual-stack"] : []))
    }

    /// Stops every process started here (SIGKILL), then removes the hosts and the bridge.
    func down() async {
        let all = lock.withLock { processes }
        for p in all { p.kill(SIGCONT) }
        for p in all { p.kill(SIGKILL) }
        _ = try? await Self.script(["down"])
    }

    func address(_ host: Int, ipv4: Bool = false) -> String { ipv4 ? "198.18.7.\(host)" : "fd00:7a::\(host)" }

    /// `http://ADDRESS:PORT` of a host, IPv6 bracketed.
    func url(_ host: Int, port: Int, ipv4: Bool = false) -> String {
        ipv4 ? "http://\(address(host, ipv4: true)):\(port)" : "http://[\(address(host))]:\(port)"
    }

    func link(_ host: Int, up: Bool) async throws { try await Self.script(["link", "\(host)", up ? "up" : "down"]) }
    func limit(_ host: Int, rate: String) async throws { try await Self.script(["limit", "\(host)", rate]) }

    /// Bytes that host's link received and sent so far.
    func bytes(_ host: Int) async throws -> (received: Int, sent: Int) {
        let parts = try await Self.script(["bytes", "\(host)"]).split(separator: " ").compactMap {
            Int($0.trimmingCharacters(in: .whitespacesAndNewlines))
        }
        guard parts.count == 2 else { throw HostsFailure("hosts.sh bytes gave \(parts)") }
        return (parts[0], parts[1])
    }

    /// GET `path` from a port on a host's own loopback (from inside the host, so it works with the host's link
    /// down), through bash's /dev/tcp; the body.
    func localGet(_ host: Int, port: Int, path: String) async throws -> String {
        let http = try await Self.script([
            "exec", "\(host)", "timeout", "5", "bash", "-c",
            "exec 3<>/dev/tcp/127.0.0.1/\(port); printf 'GET \(path) HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n' >&3; exec cat <&3",
        ])
        guard let split = http.range(of: "\r\n\r\n") else { throw HostsFailure("no HTTP answer: \(http)") }
        return String(http[split.upperBound...])
    }

    /// Runs `tandem ARGUMENTS` on a host, pinned to its CPU; waits until it logs that it listens and, when `health`
    /// is given, until that path answers 200.
    func start(_ host: Int, _ name: String, _ arguments: [String], healthPort: Int?) async throws -> HostProcess {
        let p = try HostProcess(
            name: name, host: host, arguments: ["exec", "\(host)", TandemBinary.path] + arguments)
        lock.withLock { processes.append(p) }
        try await p.waitForLog("listening on", timeout: 60)
        if let healthPort {
            let url = self.url(host, port: healthPort) + "/health"
            try await poll("\(name) healthy", timeout: 60) { (try? await httpGet(url))?.status == 200 }
        }
        return p
    }

    /// Runs the script and returns its standard output; throws with its error output when it fails.
    @discardableResult
    static func script(_ arguments: [String]) async throws -> String {
        try await offThePool {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/bin/bash")
            p.arguments = [script] + arguments
            let out = Pipe()
            let err = Pipe()
            p.standardOutput = out
            p.standardError = err
            try p.run()
            let output = out.fileHandleForReading.readDataToEndOfFile()
            let error = err.fileHandleForReading.readDataToEndOfFile()
            p.waitUntilExit()
            guard p.terminationStatus == 0 else {
                throw HostsFailure(
                    "hosts.sh \(arguments.joined(separator: " ")) failed: \(String(decoding: error, as: UTF8.self))")
            }
            return String(decoding: output, as: UTF8.self)
        }
    }
}

/// A `tandem` process on one host; its standard error is kept for the test to read.
final class HostProcess: @unchecked Sendable {
    let name: String
    let host: Int
    let process = Process()
    private let log = LogBuffer()
    /// Signalled by the process's termination handler.
    private let exit = NSCondition()

    init(name: String, host: Int, arguments: [String]) throws {
        self.name = name
        self.host = host
        process.executableURL = URL(fileURLWithPath: "/bin/bash")
        process.arguments = [TestHosts.script] + arguments
        let err = Pipe()
        process.standardError = err
        process.standardOutput = err
        let log = log
        err.fileHandleForReading.readabilityHandler = { log.append($0.availableData) }
        let exit = exit
        process.terminationHandler = { _ in exit.withLock { exit.broadcast() } }
        try process.run()
    }

    var logText: String { log.text }
    var isRunning: Bool { process.isRunning }

    func waitForLog(_ text: String, timeout: Double) async throws {
        try await poll("\(name) logs '\(text)'", timeout: timeout, detail: { self.logText }) {
            guard self.process.isRunning else { throw HostsFailure("\(self.name) exited:\n\(self.logText)") }
            return self.logText.contains(text)
        }
    }

    func kill(_ signal: Int32) {
        if process.isRunning { _ = Foundation.kill(process.processIdentifier, signal) }
    }

    /// Sends SIGTERM and waits (off the pool) up to `timeout` seconds for the exit; the seconds it took, or nil
    /// when it had not exited by then (it is then killed).
    func terminate(timeout: Double = 10) async -> Double? {
        let start = Date()
        kill(SIGTERM)
        let deadline = start.addingTimeInterval(timeout)
        let exited =
            (try? await offThePool { () -> Bool in
                self.exit.withLock {
                    while self.process.isRunning { if !self.exit.wait(until: deadline) { break } }
                    return !self.process.isRunning
                }
            }) ?? false
        if !exited { kill(SIGKILL) }
        return exited ? Date().timeIntervalSince(start) : nil
    }
}

/// The `tandem` binary next to the test bundle.
enum TandemBinary {
    static var path: String {
        let products = Bundle.main.bundleURL.deletingLastPathComponent()
        let candidates =
            [products.appendingPathComponent("tandem").path]
            + ProcessInfo.processInfo.arguments.prefix(1).map {
                URL(fileURLWithPath: $0).deletingLastPathComponent().appendingPathComponent("tandem").path
            }
        return candidates.first { FileManager.default.isExecutableFile(atPath: $0) } ?? candidates[0]
    }
}

struct HostsFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Waits until `condition` holds, checking every 50 ms; throws after `timeout` seconds.
func poll(
    _ what: String, timeout: Double, detail: () -> String = { "" }, _ condition: () async throws -> Bool
) async throws {
    let deadline = Date().addingTimeInterval(timeout)
    while true {
        if try await condition() { return }
        guard Date() < deadline else {
            throw HostsFailure("timed out after \(timeout) s waiting for: \(what)\n\(detail())")
        }
        try await Task.sleep(for: .milliseconds(50))
    }
}

/// Bytes a child process writes, readable as text while it runs.
final class LogBuffer: @unchecked Sendable {
    private var data = Data()
    private let lock = NSLock()

    func append(_ d: Data) { lock.withLock { data.append(d) } }
    var text: String { lock.withLock { String(decoding: data, as: UTF8.self) } }
}

/// Runs blocking work on a thread of its own, off Swift's cooperative pool.
func offThePool<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        Thread { continuation.resume(with: Result { try work() }) }.start()
    }
}

/// A status and a body.
struct Reply: Sendable {
    let status: Int
    let body: String

    var json: [String: Any]? { try? JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any] }
    var text: String? { ((json?["choices"] as? [[String: Any]])?.first)?["text"] as? String }
    var id: String? { json?["id"] as? String }
}

func httpGet(_ url: String, timeout: Int64 = 10) async throws -> Reply {
    let response = try await HTTPClient.shared.execute(HTTPClientRequest(url: url), timeout: .seconds(timeout))
    let body = try await response.body.collect(upTo: 16 << 20)
    return Reply(status: Int(response.status.code), body: String(buffer: body))
}

func httpPost(_ url: String, _ body: String, timeout: Int64 = 120) async throws -> Reply {
    var request = HTTPClientRequest(url: url)
    request.method = .POST
    request.headers.add(name: "Content-Type", value: "application/json")
    request.body = .bytes(ByteBuffer(string: body))
    let response = try await HTTPClient.shared.execute(request, timeout: .seconds(timeout))
    let collected = try await response.body.collect(upTo: 16 << 20)
    return Reply(status: Int(response.status.code), body: String(buffer: collected))
}

/// A metric's value in Prometheus text (the first sample whose name and labels start with `name`).
func metricValue(_ text: String, _ name: String) -> Double? {
    for line in text.split(separator: "\n") where line.hasPrefix(name + "{") || line.hasPrefix(name + " ") {
        if let v = line.split(separator: " ").last.flatMap({ Double($0) }) { return v }
    }
    return nil
}

func jsonString(_ s: String) -> String {
    let data = try! JSONSerialization.data(withJSONObject: [s], options: [.fragmentsAllowed])
    return String(String(decoding: data, as: UTF8.self).dropFirst().dropLast())
}
