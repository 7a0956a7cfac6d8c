import Foundation
import NIOConcurrencyHelpers

/// Child processes of `tandem up`: started with their output in log files, watched, and stopped together.
final class ProcessSupervisor: @unchecked Sendable {
    enum StopReason: CustomStringConvertible {
        case signal(Int32)
        case childDied(name: String, status: Int32)

        var description: String {
            switch self {
            case .signal(let s): return s == SIGINT ? "interrupted (Ctrl-C)" : "received signal \(s)"
            case .childDied(let name, let status): return "\(name) exited unexpectedly with status \(status)"
            }
        }
    }

    let executable: String
    private var children: [(name: String, process: Process, log: String)] = []
    private let lock = NSLock()

    /// The last signal received, set from a signal handler's queue.
    private let received = NIOLockedValueBox<Int32?>(nil)
    private var sources: [any DispatchSourceSignal] = []

    /// Takes over SIGINT and SIGTERM at once, so a Ctrl-C at any moment (startup included) stops the children.
    init(executable: String) {
        self.executable = executable
        signal(SIGINT, SIG_IGN)
        signal(SIGTERM, SIG_IGN)
        let received = received
        sources = [SIGINT, SIGTERM].map { sig in
            let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            source.setEventHandler { received.withLockedValue { $0 = sig } }
            source.resume()
            return source
        }
    }

    /// The signal received, if any.
    var signalReceived: Int32? { received.withLockedValue { $0 } }

    /// Starts `program` (else this `tandem`) with `arguments`, its output to `log`.
    func start(name: String, program: String? = nil, arguments: [String], log: String) throws {
        _ = FileManager.default.createFile(atPath: log, contents: nil)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
        let process = Process()
        process.executableURL = URL(fileURLWithPath: program ?? executable)
        process.arguments = arguments
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
        lock.lock()
        children.append((name, process, log))
        lock.unlock()
    }

    /// The first child that is no longer running.
    func deadChild() -> String? { firstDead()?.name }

    private func firstDead() -> (name: String, process: Process, log: String)? {
        lock.lock()
        defer { lock.unlock() }
        return children.first { !$0.process.isRunning }
    }

    func logTail(_ name: String, lines: Int = 15) -> String {
        lock.lock()
        let log = children.first { $0.name == name }?.log
        lock.unlock()
        guard let log, let text = try? String(contentsOfFile: log, encoding: .utf8) else { return "" }
        return text.split(separator: "\n", omittingEmptySubsequences: false).suffix(lines).joined(separator: "\n")
    }

    /// Waits for SIGINT/SIGTERM or for a child to die.
    func waitForStop() async -> StopReason {
        while true {
            if let sig = received.withLockedValue({ $0 }) { return .signal(sig) }
            if let dead = firstDead() {
                say(logTail(dead.name))
                return .childDied(name: dead.name, status: dead.process.terminationStatus)
            }
            try? await Task.sleep(for: .milliseconds(100))
        }
    }

    /// SIGTERM to every child still running, then SIGKILL to any still there after 10 s.
    func stopAll() {
        lock.lock()
        let all = children
        lock.unlock()
        for c in all.reversed() where c.process.isRunning { c.process.terminate() }
        let deadline = Date().addingTimeInterval(10)
        for c in all {
            while c.process.isRunning && Date() < deadline { usleep(50_000) }
            if c.process.isRunning { kill(c.process.processIdentifier, SIGKILL) }
        }
    }
}

/// Writes a line to standard output at once (unbuffered, so a supervising process sees it while we run).
func say(_ text: String) {
    FileHandle.standardOutput.write(Data((text + "\n").utf8))
}
