import Discovery
import Foundation
import KVTransfer
import Server
import Testing

/// Every input in the committed fuzz corpora (Tests/Fuzz/Corpus, grown by scripts/fuzz.sh) replayed through its
/// harness in the ordinary build: a crash or a failed check there is a failing test, and a decoder change that
/// breaks on an input the fuzzer once found is caught without libFuzzer.
@Suite struct FuzzCorpusTests {
    static let corpus = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Fuzz/Corpus")

    static func inputs(_ target: String) throws -> [(String, [UInt8])] {
        let dir = corpus.appendingPathComponent(target)
        let names = try FileManager.default.contentsOfDirectory(atPath: dir.path).sorted()
        return try names.map { ($0, Array(try Data(contentsOf: dir.appendingPathComponent($0)))) }
    }

    @Test func kvFrames() throws {
        let inputs = try Self.inputs("kv-frames")
        #expect(inputs.count >= 2)
        for (name, bytes) in inputs {
            let delivered = KVReceiveFuzzing.receive(bytes)
            if name == "transfer.bin" { #expect(delivered > 0, "the seed transfer is delivered whole") }
        }
    }

    @Test func msgpack() throws {
        let inputs = try Self.inputs("msgpack")
        #expect(inputs.count >= 3)
        for (_, bytes) in inputs { RegistrationFuzzing.receive(bytes) }
    }

    @Test func requestFields() throws {
        let inputs = try Self.inputs("request-fields")
        #expect(inputs.count >= 6)
        for (_, bytes) in inputs { RequestFieldsFuzzing.parse(bytes) }
    }
}
