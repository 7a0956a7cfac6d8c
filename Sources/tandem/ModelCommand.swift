import ArgumentParser
import Foundation
import ModelStore

/// `tandem model`: manage the default model in the local cache.
struct ModelCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "model",
        abstract: "Manage the default model (SmolLM2-135M-Instruct Q4_1) in the cache ($TANDEM_HOME).",
        subcommands: [Fetch.self, Path.self])

    struct Fetch: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Download and verify the default model if it is missing or corrupt; print its path.")
        func run() throws {
            let store = ModelStore()
            let outcome = try store.fetch(log: { Stderr.print($0) })
            switch outcome {
            case .alreadyPresent: Stderr.print("model already present and verified")
            case .downloaded: Stderr.print("model downloaded and verified")
            case .replacedCorrupt(let reason): Stderr.print("cached model was corrupt (\(reason)); replaced")
            }
            print(store.modelPath.path)
        }
    }

    struct Path: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print where the default model is (or will be) cached.")
        func run() throws { print(ModelStore().modelPath.path) }
    }
}

/// Writes diagnostics to standard error.
enum Stderr {
    static func print(_ message: String) {
        FileHandle.standardError.write(Data((message + "\n").utf8))
    }
}
