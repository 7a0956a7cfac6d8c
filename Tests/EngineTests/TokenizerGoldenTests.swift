import Engine
import GGUF
import Testing

enum TestTokenizer {
    static let shared: Tokenizer = try! Tokenizer(file: TestModel.shared.file)
}

/// The default model's tokenizer gives exactly llama.cpp's ids.
@Suite struct TokenizerGoldenTests {
    @Test func tokenizeEntriesMatchLlamaCpp() {
        for entry in Golden.shared.tokenize {
            let ids = TestTokenizer.shared.encode(entry.text).map(Int.init)
            #expect(ids == entry.ids, "\(entry.text.debugDescription)")
        }
    }

    @Test func generationPromptsMatchLlamaCpp() {
        for g in Golden.shared.generations {
            let ids = TestTokenizer.shared.encode(g.prompt_text).map(Int.init)
            #expect(ids == g.prompt_ids, "\(g.name)")
        }
    }

    @Test func decodeRoundTrips() {
        for entry in Golden.shared.tokenize where !entry.text.contains("<|") {
            let ids = TestTokenizer.shared.encode(entry.text)
            #expect(TestTokenizer.shared.decode(ids) == entry.text)
        }
        let t = TestTokenizer.shared
        #expect(t.decode(t.encode("<|im_start|>user"), renderSpecial: true) == "<|im_start|>user")
        #expect(t.decode(t.encode("<|im_start|>user")) == "user")
        #expect(t.endOfGenerationIds.contains(2))
        #expect(t.encode("<|im_start|>", parseSpecial: false).count > 1)
    }

    @Test func incrementalDecoderHoldsBackPartialCharacters() {
        var decoder = IncrementalDecoder()
        let bytes = Array("é€😀".utf8)
        var text = ""
        for b in bytes {
            let piece = decoder.append([b])
            #expect(piece.unicodeScalars.allSatisfy { $0 != "\u{FFFD}" })
            text += piece
        }
        text += decoder.flush()
        #expect(text == "é€😀")
        var broken = IncrementalDecoder()
        #expect(broken.append([0xE2, 0x82]) == "")
        #expect(broken.flush() == "\u{FFFD}")
    }
}
