import AsyncHTTPClient
import Discovery
import Foundation
import Hummingbird
import Logging
import NIOCore
import ServiceLifecycle
import Testing

/// A port nothing listens on now, for ZMQ ROUTERs and fixed-port processes.
func freePort() -> Int {
    for _ in 0..<100 {
        let p = Int.random(in: 20_000..<60_000)
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(p).bigEndian)
        let ok = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
            }
        }
        close(fd)
        if ok { return p }
    }
    return 45_678
}

/// Waits until the proxy's /health lists `prefill` and `decode` instances.
func waitForInstances(_ proxy: ServerProcess, prefill: Int, decode: Int) async throws {
    for _ in 0..<300 {
        if let instances = try await proxy.get("/health").json?["instances"] as? [[String: Any]],
            instances.filter({ $0["role"] as? String == "prefill" }).count == prefill,
            instances.filter({ $0["role"] as? String == "decode" }).count == decode
        {
            return
        }
        try await Task.sleep(for: .milliseconds(50))
    }
    throw TestFailure("instances did not register:\n\(proxy.logText)")
}

/// An HTTP stub standing in for a vLLM instance: it records each request and answers a fixed completion.
final class StubInstance: @unchecked Sendable {
    struct Seen {
        let requestId: String?
        let authorization: String?
        let body: [String: Any]
    }

    private let lock = NSLock()
    private var seen: [Seen] = []
    private(set) var port = 0
    private var task: Task<Void, any Error>?
    private var group: ServiceGroup?
    /// How long the stub takes to answer.
    var delay: Duration = .zero

    var requests: [Seen] {
        lock.lock()
        defer { lock.unlock() }
        return seen
    }

    private func record(_ s: Seen) {
        lock.lock()
        seen.append(s)
        lock.unlock()
    }

    func start() async throws {
        let router = Router()
        router.post("/v1/completions") { request, _ -> Response in
            var request = request
            let body = try await request.collectBody(upTo: 1 << 20)
            let object =
                (try? JSONSerialization.jsonObject(with: Data(body.readableBytesView)) as? [String: Any]) ?? [:]
            self.record(
                Seen(
                    requestId: request.headers.first { $0.name.canonicalName == "x-request-id" }?.value,
                    authorization: request.headers.first { $0.name.canonicalName == "authorization" }?.value,
                    body: object))
            try await Task.sleep(for: self.delay)
            var headers = HTTPFields()
            headers[.contentType] = "application/json"
            let answer =
                #"{"id":"cmpl-stub","object":"text_completion","choices":[{"index":0,"text":" stub","finish_reason":"length"}]}"#
            return Response(status: .ok, headers: headers, body: ResponseBody(byteBuffer: ByteBuffer(string: answer)))
        }
        let bound = LockedBox<Int>()
        let app = Application(
            router: router, configuration: .init(address: .hostname("127.0.0.1", port: 0)),
            onServerRunning: { bound.set($0.localAddress?.port ?? 0) })
        // Run as a service group so that stop() shuts the server down gracefully: cancelling its task instead can
        // drop a connection accepted but not yet served, which swift-nio treats as a fatal error (seen once under
        // the whole suite).
        let group = ServiceGroup(
            configuration: .init(services: [app], gracefulShutdownSignals: [], logger: Logger(label: "stub")))
        self.group = group
        task = Task { try await group.run() }
        for _ in 0..<200 where bound.value == nil { try await Task.sleep(for: .milliseconds(10)) }
        port = try #require(bound.value)
    }

    func stop() {
        guard let group else { return }
        Task { await group.triggerGracefulShutdown() }
    }
}

final class LockedBox<T>: @unchecked Sendable {
    private var stored: T?
    private let lock = NSLock()
    func set(_ v: T) {
        lock.lock()
        stored = v
        lock.unlock()
    }
    var value: T? {
        lock.lock()
        defer { lock.unlock() }
        return stored
    }
}

@Suite(.serialized) struct ProxyTests {
    @Test func frontsAStandInForVLLMInstancesExactlyAsVLLMsProxyWould() async throws {
        let stub = StubInstance()
        try await stub.start()
        defer { stub.stop() }
        let discovery = freePort()
        let proxy = try await ServerProcess.proxy(discoveryPort: discovery)
        defer { #expect(proxy.stop() == 0) }
        // Registered exactly as vLLM's P2P engine does: a DEALER whose identity is its zmq_address, msgpack pings.
        let hub = HostPort(host: "127.0.0.1", port: discovery)
        let http = HostPort(host: "127.0.0.1", port: stub.port)
        let pingP = InstanceRegistration(
            ping: .init(role: .prefill, httpAddress: http, zmqAddress: HostPort(host: "127.0.0.1", port: 21001)),
            proxy: hub, interval: 0.5)
        let pingD = InstanceRegistration(
            ping: .init(role: .decode, httpAddress: http, zmqAddress: HostPort(host: "127.0.0.1", port: 21002)),
            proxy: hub, interval: 0.5)
        try pingP.start()
        try pingD.start()
        defer {
            pingP.stop()
            pingD.stop()
        }
        // A malformed message and an unknown one are logged and ignored; the listener goes on.
        let stray = try ZMQSocket(.dealer)
        try stray.connect(hub)
        for message in [[0xc1, 0x00], MessagePackValue.stringMap([("type", "X"), ("http_address", "h:1")]).encoded()] {
            // A send does not block: repeat until the connection is up and it is taken.
            for _ in 0..<200 where try !stray.send([message]) { try await Task.sleep(for: .milliseconds(10)) }
        }
        try await waitForInstances(proxy, prefill: 1, decode: 1)
        let body =
            #"{"model":"m","prompt":"Hello","max_tokens":20,"temperature":0.5,"stream_options":{"include_usage":true}}"#
        let reply = try await proxy.post("/v1/completions", body, headers: [("Authorization", "Bearer client-key")])
        #expect(reply.status == .ok)
        #expect(reply.json?["id"] as? String == "cmpl-stub")
        let seen = stub.requests
        #expect(seen.count == 2)
        guard seen.count == 2 else { return }
        let id = try #require(seen[0].requestId)
        #expect(seen[1].requestId == id, "P and D get the same id")
        #expect(
            seen.map(\.authorization) == ["Bearer client-key", "Bearer client-key"], "the client's key is passed on")
        #expect(proxy.logText.contains("discovery: ignored"))
        let parsed = try #require(DisaggregatedRequestID(id))
        #expect(parsed.prefill == HostPort(host: "127.0.0.1", port: 21001))
        #expect(parsed.decode == HostPort(host: "127.0.0.1", port: 21002))
        #expect(parsed.uuid.count == 32)
        #expect(seen[0].body["max_tokens"] as? Int == 1)
        #expect(seen[0].body["stream"] as? Bool == false)
        #expect(seen[0].body["stream_options"] == nil)
        #expect(seen[0].body["prompt"] as? String == "Hello")
        let original = try JSONSerialization.jsonObject(with: Data(body.utf8)) as? NSDictionary
        #expect(NSDictionary(dictionary: seen[1].body) == original, "D gets the original body")
        #expect(proxy.logText.contains("handle_request count: 1, [HTTP:\(http), ZMQ:127.0.0.1:21001] 👉"))
    }

    @Test func aClientLeavingDuringPrefillCancelsTheRequestBeforeTheDecode() async throws {
        let stub = StubInstance()
        // A prefill far longer than the proxy needs to see the client go, even on a loaded machine.
        stub.delay = .seconds(20)
        try await stub.start()
        defer { stub.stop() }
        let discovery = freePort()
        let proxy = try await ServerProcess.proxy(discoveryPort: discovery)
        defer { #expect(proxy.stop() == 0) }
        let hub = HostPort(host: "127.0.0.1", port: discovery)
        let http = HostPort(host: "127.0.0.1", port: stub.port)
        let pings = [RegistrationPing.Role.prefill, .decode].enumerated().map { i, role in
            InstanceRegistration(
                ping: .init(role: role, httpAddress: http, zmqAddress: HostPort(host: "127.0.0.1", port: 21010 + i)),
                proxy: hub, interval: 0.5)
        }
        for p in pings { try p.start() }
        defer { for p in pings { p.stop() } }
        try await waitForInstances(proxy, prefill: 1, decode: 1)
        let client = Task { try await proxy.post("/v1/completions", #"{"prompt":"Hi","max_tokens":5}"#) }
        for _ in 0..<500 where stub.requests.isEmpty { try await Task.sleep(for: .milliseconds(20)) }
        client.cancel()  // The client goes away while the prefill is still running.
        _ = try? await client.value
        // The proxy gives the request up (counted as client_gone) while the prefill still runs.
        var metrics = ""
        try await waitFor("the request counted as client_gone", timeout: 19, detail: { metrics }) {
            metrics = try await proxy.get("/metrics").body
            return metricValue(metrics, #"tandem_proxy_requests_total{outcome="client_gone"}"#) == 1
        }
        #expect(stub.requests.count == 1, "the decode request is never sent")
        let health = try await proxy.get("/health").json?["instances"] as? [[String: Any]]
        #expect(health?.allSatisfy { $0["in_flight"] as? Int == 0 } == true, "nothing left in flight")
    }

    @Test func noInstancesIsA503AndADeadPrefillIsRetriedThenA502() async throws {
        let discovery = freePort()
        let proxy = try await ServerProcess.proxy(discoveryPort: discovery)
        defer { #expect(proxy.stop() == 0) }
        let none = try await proxy.post("/v1/completions", #"{"prompt":"Hi","max_tokens":2}"#)
        #expect(none.status.code == 503)
        #expect((none.json?["error"] as? [String: Any])?["message"] as? String != nil)

        // A prefill instance that pings but does not answer HTTP, and a real decode instance.
        let hub = HostPort(host: "127.0.0.1", port: discovery)
        let deadP = InstanceRegistration(
            ping: .init(
                role: .prefill, httpAddress: HostPort(host: "127.0.0.1", port: freePort()),
                zmqAddress: HostPort(host: "127.0.0.1", port: 21003)), proxy: hub, interval: 0.5)
        try deadP.start()
        defer { deadP.stop() }
        let d = try await ServerProcess.instance(role: "kv_consumer", kvPort: freePort(), discoveryPort: discovery)
        defer { #expect(d.stop() == 0) }
        try await waitForInstances(proxy, prefill: 1, decode: 1)
        let failed = try await proxy.post("/v1/completions", #"{"prompt":"Hi","max_tokens":2}"#)
        #expect(failed.status.code == 502)
        let message = (failed.json?["error"] as? [String: Any])?["message"] as? String ?? ""
        #expect(message.contains("prefill"), "\(failed.body)")

        // With a live prefill instance as well, the request is retried there and succeeds.
        let p = try await ServerProcess.instance(role: "kv_producer", kvPort: freePort(), discoveryPort: discovery)
        defer { #expect(p.stop() == 0) }
        try await waitForInstances(proxy, prefill: 2, decode: 1)
        for _ in 0..<2 {
            let ok = try await proxy.post("/v1/completions", #"{"prompt":"Hi","max_tokens":2}"#)
            #expect(ok.status == .ok, "\(ok.body)")
        }
        #expect(try await proxy.get("/metrics").body.contains("tandem_proxy_retries_total{stage=\"prefill\"}"))
    }

    /// In vLLM's order (`--pd-flow sequential`) a stream cannot move: it ends with an error event. (The default,
    /// overlapped flow moves it to another decode instance: `ResumeTests`.)
    @Test func killingADecodeInstanceUnderLoadFailsCleanlyAndTheOtherTakesOver() async throws {
        let discovery = freePort()
        let proxy = try await ServerProcess.proxy(
            discoveryPort: discovery, ttl: "6s", extra: ["--pd-flow", "sequential"])
        defer { #expect(proxy.stop() == 0) }
        let p = try await ServerProcess.instance(role: "kv_producer", kvPort: freePort(), discoveryPort: discovery)
        defer { #expect(p.stop() == 0) }
        let d1 = try await ServerProcess.instance(role: "kv_consumer", kvPort: freePort(), discoveryPort: discovery)
        let d2 = try await ServerProcess.instance(role: "kv_consumer", kvPort: freePort(), discoveryPort: discovery)
        defer { #expect(d2.stop() == 0) }
        try await waitForInstances(proxy, prefill: 1, decode: 2)
        let long = #"{"prompt":"Tell me a story.","max_tokens":200,"ignore_eos":true,"stream":true}"#
        // Four long streams: round robin puts two on each decode instance. Each notes when it ended.
        let load = (0..<4).map { _ in
            Task { () -> (HTTPReply, Date) in (try await proxy.post("/v1/completions", long), Date()) }
        }
        // Wait until both decode instances are generating (their own metrics show running requests); until then the
        // requests may still be in their prefill, and a kill would only test the retry.
        var spread = false
        for _ in 0..<600 where !spread {
            let r1 = metricValue(try await d1.get("/metrics").body, "vllm:num_requests_running") ?? 0
            let r2 = metricValue(try await d2.get("/metrics").body, "vllm:num_requests_running") ?? 0
            spread = r1 > 0 && r2 > 0
            if !spread { try await Task.sleep(for: .milliseconds(50)) }
        }
        #expect(spread, "the load reaches both decode instances")
        let killedAt = Date()
        d1.kill9()
        var outcomes: [String] = []
        for t in load {
            let (reply, endedAt) = try await t.value
            #expect(!(reply.status == .ok && reply.body.isEmpty), "never an empty 200")
            if reply.body.contains("\"error\"") {
                outcomes.append("error event")
                // The streams of the killed instance end at once; they do not wait for any timeout.
                #expect(endedAt.timeIntervalSince(killedAt) < 15, "nothing hangs")
            } else {
                outcomes.append("completed")
            }
        }
        #expect(outcomes.contains("error event"), "the streams on the killed instance end with an error: \(outcomes)")
        // Before the TTL removes it, requests routed to the dead instance are retried on the live one.
        for _ in 0..<2 {
            let reply = try await proxy.post("/v1/completions", #"{"prompt":"Hi","max_tokens":3}"#)
            #expect(reply.status == .ok, "\(reply.body)")
        }
        // Once the TTL removed the dead decode instance, new requests all succeed on the other.
        try await waitForInstances(proxy, prefill: 1, decode: 1)
        for _ in 0..<4 {
            let reply = try await proxy.post("/v1/completions", #"{"prompt":"Hi","max_tokens":3}"#)
            #expect(reply.status == .ok, "\(reply.body)")
            #expect(reply.json?.firstChoice?["text"] as? String != nil)
        }
        #expect(proxy.logText.contains("Remove decode"))
        let models = try await proxy.get("/v1/models").json
        #expect((models?["data"] as? [[String: Any]])?.first?["id"] as? String == "default")
    }
}

/// Starts `tandem up ARGUMENTS` and waits until it says it is up (or exits); returns it and its output.
func startUp(_ arguments: [String]) async throws -> (Process, LogBuffer) {
    let up = Process()
    up.executableURL = TandemBinary.url
    up.arguments = ["up"] + arguments
    let out = Pipe()
    up.standardOutput = out
    up.standardError = out
    let log = LogBuffer()
    out.fileHandleForReading.readabilityHandler = { log.append($0.availableData) }
    try up.run()
    for _ in 0..<600 where !log.text.contains("Tandem is up") && up.isRunning {
        try await Task.sleep(for: .milliseconds(100))
    }
    #expect(log.text.contains("Tandem is up"), "\(log.text)")
    return (up, log)
}

/// `tandem up` on this machine, IPv4 and IPv6: the runbook's four requests give what a colocated instance gives.
@Suite(.serialized) struct UpTests {
    static let runbookRequests = [
        #"{"model":"default","prompt":"Hello world","max_tokens":10}"#,
        #"{"model":"default","prompt":"What is the capital of France?","max_tokens":8}"#,
        #"{"model":"default","prompt":"def fibonacci(n):\n    if n <= 1:\n        return n\n    else:\n        return","max_tokens":12}"#,
        #"{"model":"default","prompt":"Once upon a time in a magical forest, there lived a wise old dragon who","max_tokens":20}"#,
    ]

    /// `::` stands for `tandem up` without `--host`: it listens dual-stack and answers on both loopbacks. A
    /// specific `--host` is the address every instance advertises.
    @Test(arguments: ["127.0.0.1", "::1", "::"])
    func runbookRequestsThroughUpMatchAColocatedInstance(host: String) async throws {
        // vLLM's default temperature is 1 (sampled); compare greedily so the two runs are comparable.
        let bodies = Self.runbookRequests.map { $0.replacingOccurrences(of: "}", with: ",\"temperature\":0}") }
        let colocated = try await ServerProcess(host: host == "::" ? "::1" : host)
        var expected: [String] = []
        for b in bodies {
            expected.append(try await colocated.post("/v1/completions", b).json?.firstChoice?["text"] as? String ?? "?")
        }
        colocated.stop()

        let logs = FileManager.default.temporaryDirectory.appendingPathComponent("tandem-up-\(UUID().uuidString)")
        let proxyPort = freePort()
        let (up, log) = try await startUp(
            (host == "::" ? [] : ["--host", host]) + [
                "--proxy-port", "\(proxyPort)", "--discovery-port", "\(freePort())", "--first-port",
                "\(freePort())", "--log-dir", logs.path,
            ])
        defer { if up.isRunning { up.terminate() } }
        let bases =
            host == "::"
            ? ["http://[::1]:\(proxyPort)", "http://127.0.0.1:\(proxyPort)"]
            : [host.contains(":") ? "http://[\(host)]:\(proxyPort)" : "http://\(host):\(proxyPort)"]
        for (i, (b, want)) in zip(bodies, expected).enumerated() {
            var request = HTTPClientRequest(url: bases[i % bases.count] + "/v1/completions")
            request.method = .POST
            request.body = .bytes(ByteBuffer(string: b))
            let response = try await HTTPClient.shared.execute(request, timeout: .seconds(60))
            let text = String(buffer: try await response.body.collect(upTo: 1 << 20))
            #expect(response.status == .ok, "\(text)")
            let object = try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any]
            #expect(object?.firstChoice?["text"] as? String == want, "\(b)")
        }
        // The sample `up` prints, and the README's, are answered with text (a new user's first request).
        let readme = try String(
            contentsOf: URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent(
                "../../README.md"), encoding: .utf8)
        for (source, text) in [("up", log.text), ("README", readme)] {
            guard let start = text.range(of: "/v1/chat/completions -H 'Content-Type: application/json'"),
                let body = text[start.upperBound...].range(of: #"-d '(\{[^']*\})'"#, options: .regularExpression)
            else {
                Issue.record("\(source) prints no sample chat request")
                continue
            }
            let json = String(text[body].dropFirst(4).dropLast())
            var request = HTTPClientRequest(url: bases[0] + "/v1/chat/completions")
            request.method = .POST
            request.body = .bytes(ByteBuffer(string: json))
            let response = try await HTTPClient.shared.execute(request, timeout: .seconds(60))
            let reply = String(buffer: try await response.body.collect(upTo: 1 << 20))
            let object = try JSONSerialization.jsonObject(with: Data(reply.utf8)) as? [String: Any]
            let message = object?.firstChoice?["message"] as? [String: Any]
            let content = (message?["content"] as? String ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
            #expect(response.status == .ok && !content.isEmpty, "\(source)'s sample got: \(reply)")
        }
        kill(up.processIdentifier, SIGINT)
        up.waitUntilExit()
        #expect(up.terminationStatus == 0, "\(log.text)")
        #expect(log.text.contains("stopping: interrupted (Ctrl-C)"))
        let proxyLog = try String(contentsOf: logs.appendingPathComponent("proxy.log"), encoding: .utf8)
        #expect(proxyLog.contains("handle_request count: 4, [HTTP:"), "\(proxyLog)")
        #expect(proxyLog.contains("👉"))
        let advertised = host == "::" ? "[::1]" : HostPort(host: host, port: 0).description.dropLast(2)
        #expect(proxyLog.contains("Add prefill [HTTP:\(advertised):"), "\(proxyLog)")
        #expect(proxyLog.contains("Add decode [HTTP:\(advertised):"), "\(proxyLog)")
        try? FileManager.default.removeItem(at: logs)
    }

    @Test func upStopsEverythingWhenAChildDies() async throws {
        let logs = FileManager.default.temporaryDirectory.appendingPathComponent("tandem-up-\(UUID().uuidString)")
        let first = freePort()
        let (up, log) = try await startUp([
            "--proxy-port", "\(freePort())", "--discovery-port", "\(freePort())", "--first-port", "\(first)",
            "--log-dir", logs.path,
        ])
        defer { if up.isRunning { up.terminate() } }
        // Kill the decode instance (the one on the second port pair) as a crash would.
        let pgrep = Process()
        pgrep.executableURL = URL(fileURLWithPath: "/usr/bin/pkill")
        pgrep.arguments = ["-KILL", "-f", "serve .* --port \(first + 2) "]
        try pgrep.run()
        pgrep.waitUntilExit()
        up.waitUntilExit()
        #expect(up.terminationStatus != 0)
        #expect(log.text.contains("stopping: decode1 exited unexpectedly"), "\(log.text)")
        let leftovers = Process()
        leftovers.executableURL = URL(fileURLWithPath: "/usr/bin/pgrep")
        leftovers.arguments = ["-f", "--", "--log-dir \(logs.path)|--port \(first) "]
        try leftovers.run()
        leftovers.waitUntilExit()
        #expect(leftovers.terminationStatus == 1, "no process of this deployment is left")
        try? FileManager.default.removeItem(at: logs)
    }
}
