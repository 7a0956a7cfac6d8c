import Engine
import Foundation
import ModelStore
import Testing

/// llama.cpp's tokenizations, greedy generations and first-position top-5 for Gemma 3 270M Q4_K_M (test fixture,
/// converted from the reference file: its id lists parsed from text into arrays).
struct GemmaGolden: Decodable {
    struct Generation: Decodable {
        let name: String
        let prompt_text: String
        let prompt_ids: [Int]
        let output_ids: [Int]
        let top_logprobs_first: [Golden.TopToken]
    }
    let generations: [Generation]
    let tokenize: [Golden.Tokenization]

    static let shared: GemmaGolden = Fixture.load("gemma-3-270m-q4_k_m")
}

/// llama.cpp's first-position logits for the golden prompts, as fingerprints: FNV-1a 64 over all of them, and the top
/// 5 with their bits (test fixture made by `scripts/llama-logits.cpp`).
struct GemmaLogits: Decodable {
    struct Top: Decodable {
        let id: Int
        let logit_bits: UInt32
    }
    struct Prompt: Decodable {
        let name: String
        let fnv1a64: String
        let top5: [Top]
    }
    let prompts: [Prompt]

    static let shared: GemmaLogits = Fixture.load("gemma-3-270m-q4_k_m-logits")
}

/// Gemma 3 270M, fetched into the cache once per test process (`tandem model fetch gemma3-270m`).
enum GemmaModel {
    static let shared: TransformerModel = try! TransformerModel(
        path: try! ModelStore().resolve("gemma3-270m"), threads: 2)
    static let tokenizer: Tokenizer = try! Tokenizer(file: shared.file)
}

/// The second model family against llama.cpp: the 262k SentencePiece vocabulary, sliding-window attention, and the
/// K-quant matrices.
@Suite(.serialized) struct GemmaGoldenTests {
    @Test func tokenizationIsLlamaCppsForEveryStringAndPrompt() {
        let t = GemmaModel.tokenizer
        #expect(t.vocabularySize == 262_144)
        for entry in GemmaGolden.shared.tokenize {
            #expect(t.encode(entry.text).map(Int.init) == entry.ids, "\(entry.text.debugDescription)")
        }
        for g in GemmaGolden.shared.generations {
            #expect(t.encode(g.prompt_text).map(Int.init) == g.prompt_ids, "\(g.name)")
        }
        #expect(t.endOfGenerationIds.contains(1) && t.endOfGenerationIds.contains(106))
    }

    /// How fast the 262k-token SentencePiece encoder is on a prompt of about 4,000 tokens (printed for
    /// docs/benchmarks.md, not asserted: speed is measured by benchmarks). The text mixes the golden prompts' prose,
    /// code, chat markup and Spanish; its ids must give it back.
    @Test func tokenizingAFourThousandTokenPrompt() {
        let t = GemmaModel.tokenizer
        let piece = GemmaGolden.shared.generations.map(\.prompt_text).joined(separator: "\n")
        var text = ""
        while t.encode(text).count < 4_000 { text += piece + "\n" }
        let clock = ContinuousClock()
        var ids: [Int32] = []
        var best = Duration.seconds(3600)
        for _ in 0..<5 {
            let took = clock.measure { ids = t.encode(text) }
            best = min(best, took)
        }
        let ms = Double(best.components.attoseconds) / 1e15 + Double(best.components.seconds) * 1e3
        print("gemma3 tokenizer: \(ids.count) tokens in \(ms) ms, \(ms / Double(ids.count) * 100) ms per 100 tokens")
        #expect(ids.count >= 4_000 && ids.first == 2)
        #expect(t.decode(Array(ids.dropFirst()), renderSpecial: true) == text, "the ids give the text back")
    }

    /// First-position logits for the golden prompts, bitwise llama.cpp's: FNV-1a 64 over all 262,144 of them, and the
    /// top 5 with their bits (fixture from `scripts/llama-logits.cpp`, llama.cpp cutting each prompt as llama-server
    /// does; it reproduces the golden file's llama-server log-probabilities exactly).
    @Test func firstPositionLogitsAreLlamaCppsBitForBit() throws {
        let model = GemmaModel.shared
        let reference = GemmaLogits.shared.prompts
        #expect(reference.count == GemmaGolden.shared.generations.count)
        for (g, want) in zip(GemmaGolden.shared.generations, reference) {
            let logits = try #require(model.forward([Self.promptChunk(g)], cache: Self.cache(model))[0])
            var hash = FNV1a()
            logits.withUnsafeBytes { hash.mix($0) }
            #expect(hash.value == UInt64(want.fnv1a64, radix: 16), "\(g.name)")
            for t in want.top5 {
                #expect(logits[t.id].bitPattern == t.logit_bits, "\(g.name): token \(t.id)")
            }
        }
    }

    /// First-position top-5 log-probabilities against llama-server's: the logits being llama.cpp's, each prompt's five
    /// errors are one constant, the rounding of llama-server's float sum over the vocabulary (its softmax normalizer),
    /// well within the 0.05 the issue asks.
    @Test func firstPositionTop5AgainstLlamaCpp() throws {
        let model = GemmaModel.shared
        var errors: [Double] = []
        var sameTop = 0
        for g in GemmaGolden.shared.generations {
            let logits = try #require(model.forward([Self.promptChunk(g)], cache: Self.cache(model))[0])
            let ours = Sampler.logprob(of: 0, in: logits, top: 5)
            if ours.top.map({ Int($0.id) }) == g.top_logprobs_first.map(\.id) { sameTop += 1 }
            let mine = g.top_logprobs_first.prefix(5).map {
                Double(Sampler.logprob(of: Int32($0.id), in: logits, top: 0).logprob) - $0.logprob
            }
            print("gemma3 \(g.name) (\(g.prompt_ids.count) tokens): logprob - llama.cpp's \(mine)")
            #expect(mine.allSatisfy { abs($0 - mine[0]) < 1e-5 } && abs(mine[0]) < 2e-3, "\(g.name): \(mine)")
            errors += mine.map(abs)
        }
        let mean = errors.reduce(0, +) / Double(errors.count)
        print("gemma3 top-5 logprobs: mean |error| \(mean), max \(errors.max()!); same top 5 for \(sameTop) of 8")
        #expect(sameTop == 8)
        #expect(errors.max()! < 0.05)
    }

    static func cache(_ model: TransformerModel) -> PagedKVCache {
        PagedKVCache(layerCount: model.config.layerCount, blockCount: 8, blockSize: 16, kvDim: model.config.kvDim)
    }

    static func promptChunk(_ g: GemmaGolden.Generation) -> SequenceChunk {
        SequenceChunk(
            tokens: g.prompt_ids.map(Int32.init), startPosition: 0, blockTable: (0..<8).map(Int32.init),
            wantsLogits: true, promptLength: g.prompt_ids.count)
    }

    /// Greedy decoding of the golden prompts (32 tokens each) against llama.cpp's.
    @Test func greedyOutputsAgainstLlamaCpp() throws {
        let generator = Generator(model: GemmaModel.shared, tokenizer: GemmaModel.tokenizer)
        var matching16 = 0
        var matchingAll = 0
        for g in GemmaGolden.shared.generations {
            let result = try generator.generate(
                prompt: g.prompt_ids.map(Int32.init), params: .greedy(maxTokens: g.output_ids.count))
            let ours = result.tokenIds.map(Int.init)
            if ours.prefix(16) == g.output_ids.prefix(16) { matching16 += 1 }
            if ours == g.output_ids { matchingAll += 1 }
            if ours != g.output_ids {
                let k = zip(ours, g.output_ids).prefix { $0 == $1 }.count
                print("gemma3 \(g.name): differs from llama.cpp at token \(k)")
            }
        }
        print("gemma3 greedy: \(matching16) of 8 match llama.cpp for 16 tokens, \(matchingAll) for all 32")
        #expect(matchingAll == 8)
    }
}
