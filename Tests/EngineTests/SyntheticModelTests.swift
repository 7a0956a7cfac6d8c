import Engine
import Foundation
import GGUF
import Testing

/// Small GGUF files written by the test: tokenizer variants and model errors that the default model cannot show.
@Suite struct SyntheticModelTests {
    func write(_ w: GGUFWriter) throws -> String {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent(
            "tandem-synth-\(UUID().uuidString).gguf")
        try Data(w.serialize()).write(to: url)
        return url.path
    }

    /// Loading the file at `path` fails with a `ModelError` whose message contains `name`.
    func expectModelError(_ path: String, naming name: String) throws {
        do {
            _ = try TransformerModel(path: path, threads: 1)
            Issue.record("expected an error")
        } catch let error as ModelError {
            #expect(error.description.contains(name))
        }
    }

    @Test func unsupportedArchitectureIsRefusedByName() throws {
        var w = GGUFWriter()
        w.add("general.architecture", .string("gptneox"))
        try expectModelError(try write(w), naming: "gptneox")
    }

    @Test func missingTensorIsNamed() throws {
        var w = GGUFWriter()
        w.add("general.architecture", .string("llama"))
        for (k, v) in [
            ("block_count", 1), ("embedding_length", 32), ("attention.head_count", 2), ("feed_forward_length", 64),
            ("vocab_size", 4),
        ] {
            w.add("llama.\(k)", .uint32(UInt32(v)))
        }
        try expectModelError(try write(w), naming: "token_embd.weight")
    }

    @Test func sentencePieceTokenizer() throws {
        var w = GGUFWriter()
        w.add("tokenizer.ggml.model", .string("llama"))
        let pieces =
            ["<unk>", "<s>", "</s>", "▁", "h", "e", "l", "o", "▁h", "el", "lo", "▁hel", "▁hello", "w"]
            + (0..<256).map { String(format: "<0x%02X>", $0) }
        var types = [2, 3, 3] + [Int](repeating: 1, count: 11) + [Int](repeating: 6, count: 256)
        types[13] = 1
        let scores: [Float] = pieces.indices.map { i in i >= 8 && i <= 12 ? Float(i) : 0 }
        w.add("tokenizer.ggml.tokens", .array(pieces.map { .string($0) }))
        w.add("tokenizer.ggml.token_type", .array(types.map { .int32(Int32($0)) }))
        w.add("tokenizer.ggml.scores", .array(scores.map { .float32($0) }))
        w.add("tokenizer.ggml.bos_token_id", .uint32(1))
        w.add("tokenizer.ggml.eos_token_id", .uint32(2))
        let file = try GGUFFile(path: try write(w))
        let t = try Tokenizer(file: file)
        #expect(t.addBOS)
        let ids = t.encode("hello w!")
        // BOS, "▁hello", "▁", "w", then "!" (no piece) as its byte token.
        #expect(ids == [1, 12, 3, 13, Int32(14 + 0x21)])
        #expect(t.decode(ids) == "hello w!")
    }

    @Test func llama3AndQwen2PreTokenizers() {
        let llama3 = PreTokenizer(ggufName: "llama-bpe")
        #expect(
            llama3.split("I'M 12345 apples!!\n\n  ok") == [
                "I", "'M", " ", "123", "45", " apples", "!!\n\n", " ", " ok",
            ])
        #expect(PreTokenizer(ggufName: "qwen2").split("x 123") == ["x", " ", "1", "2", "3"])
        #expect(PreTokenizer(ggufName: "gpt-2").split("I'm  fine") == ["I", "'m", " ", " fine"])
        #expect(PreTokenizer(ggufName: "smollm").split("a1 22") == ["a", "1", " ", "2", "2"])
    }
}
