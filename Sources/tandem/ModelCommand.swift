import ArgumentParser
import Foundation
import ModelStore

/// `tandem model`: the models Tandem knows by name, in the local cache.
struct ModelCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "model",
        abstract: "Fetch, locate and list the models Tandem knows by name, cached in $TANDEM_HOME.",
        subcommands: [Fetch.self, Path.self, List.self])

    /// The store for `name`, or a clear error listing the known names.
    static func store(_ name: String) throws -> ModelStore {
        guard let spec = ModelRegistry.spec(named: name) else {
            throw ValidationError("no model is called '\(name)'; known models: \(ModelRegistry.names)")
        }
        return ModelStore().holding(spec)
    }

    struct Fetch: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Download and verify a model if it is missing or corrupt; print its path.")
        @Argument(help: "The model's name (see `tandem model list`).") var name = "default"

        func run() throws {
            let store = try ModelCommand.store(name)
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
            abstract: "Print where a model is (or will be) cached.")
        @Argument(help: "The model's name (see `tandem model list`).") var name = "default"

        func run() throws { print(try ModelCommand.store(name).modelPath.path) }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List the models Tandem knows by name, and whether each is cached.")

        func run() throws {
            for spec in ModelRegistry.models {
                let store = ModelStore().holding(spec)
                let cached = FileManager.default.fileExists(atPath: store.modelPath.path) ? "cached" : "not cached"
                print("\(spec.name)\t\(spec.summary)\t\(cached)\t\(store.modelPath.path)")
            }
        }
    }
}

/// Writes diagnostics to standard error.
enum Stderr {
    static func print(_ message: String) {
        FileHandle.standardError.write(Data((message + "\n").utf8))
    }
}
