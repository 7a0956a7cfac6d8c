import Discovery
import Foundation
import Testing

/// The real `openai` Python client (3.57, from PyPI; `scripts/peers.sh` installs it into `.build/peers`) against a
/// colocated instance and through the proxy: everyday calls parse into the client's types and mean what they say
/// (`Fixtures/openai_client_checks.py` makes them and reports each one).
@Suite(.serialized) struct OpenAIClientTests {
    static var python: URL {
        var dir = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { dir.deleteLastPathComponent() }
        return dir.appendingPathComponent(".build/peers/bin/python")
    }

    static var script: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent(
            "Fixtures/openai_client_checks.py")
    }

    /// Runs the checks against `base` (on a thread of its own: the client takes seconds, and the suite's other tests
    /// need the cooperative pool); each check's name, whether it held, and what it saw.
    func checks(_ base: String, mode: String) async throws -> [String: (ok: Bool, detail: String)] {
        try await onThread { try Self.runChecks(base, mode: mode) }
    }

    static func runChecks(_ base: String, mode: String) throws -> [String: (ok: Bool, detail: String)] {
        guard FileManager.default.isExecutableFile(atPath: python.path) else {
            throw TestFailure("the peers' venv is not at \(python.path): run scripts/peers.sh")
        }
        let process = Process()
        process.executableURL = python
        process.arguments = [script.path, base, mode]
        let out = Pipe()
        let err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        let output = out.fileHandleForReading.readDataToEndOfFile()
        let errors = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        guard process.terminationStatus == 0,
            let object = try JSONSerialization.jsonObject(with: output) as? [String: [String: Any]]
        else { throw TestFailure("the openai client checks failed (\(process.terminationStatus)):\n\(errors)") }
        return object.mapValues { ($0["ok"] as? Bool ?? false, $0["detail"] as? String ?? "") }
    }

    @Test func aColocatedInstance() async throws {
        let server = try await ServerProcess()
        defer { #expect(server.stop() == 0) }
        let results = try await checks(server.baseURL, mode: "colocated")
        #expect(results.count == 21, "\(results.keys.sorted())")
        for (name, result) in results.sorted(by: { $0.key < $1.key }) {
            #expect(result.ok, "\(name): \(result.detail)")
        }
    }

    @Test func throughTheProxy() async throws {
        let cluster = try await ResumeTests.Cluster.start(decodes: 1, colocated: false)
        defer { cluster.stop() }
        let results = try await checks(cluster.proxy.baseURL, mode: "proxy")
        #expect(results.count == 21, "\(results.keys.sorted())")
        for (name, result) in results.sorted(by: { $0.key < $1.key }) {
            #expect(result.ok, "\(name): \(result.detail)")
        }
    }
}
