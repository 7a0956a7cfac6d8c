import Engine
import Foundation
import ModelStore
import Testing

/// The default model, fetched into the cache once per test process.
enum TestModel {
    static let path: String = {
        let store = ModelStore()
        return try! store.resolve("default")
    }()
    static let shared: TransformerModel = try! TransformerModel(path: path, threads: 2)
}

/// Logits of the default model against llama.cpp's. Every kernel rounds as ggml's AVX-512 build does, so the logits
/// are llama.cpp's bit for bit; the golden log-probabilities differ from ours only by llama-server's normalization
/// (about 1e-4, the same for every token of a prompt). See docs/benchmarks.md ("Numerics").
@Suite struct ForwardGoldenTests {
    @Test func firstPositionTop5AgreesWithLlamaCpp() throws {
        let model = TestModel.shared
        var errors: [Double] = []
        for g in Golden.shared.generations {
            let cache = PagedKVCache(
                layerCount: model.config.layerCount, blockCount: 32, blockSize: 16, kvDim: model.config.kvDim)
            let chunk = SequenceChunk(
                tokens: g.prompt_ids.map(Int32.init), startPosition: 0, blockTable: (0..<32).map(Int32.init),
                wantsLogits: true, promptLength: g.prompt_ids.count)
            let logits = try #require(model.forward([chunk], cache: cache)[0])
            let ours = Sampler.logprob(of: 0, in: logits, top: 5)
            // The most likely token is the same, and llama.cpp's top 3 are among our top 5.
            #expect(Int(ours.top[0].id) == g.firstTop5[0].id, "\(g.name)")
            #expect(Set(g.firstTop5.prefix(3).map(\.id)).isSubset(of: ours.top.map { Int($0.id) }), "\(g.name)")
            for top in g.firstTop5 {
                let mine = Double(Sampler.logprob(of: Int32(top.id), in: logits, top: 0).logprob)
                errors.append(abs(mine - top.logprob))
            }
        }
        let mean = errors.reduce(0, +) / Double(errors.count)
        let within = errors.filter { $0 < 0.1 }.count
        print("top-5 logprobs: mean |error| \(mean), max \(errors.max()!), \(within) of \(errors.count) within 0.1")
        #expect(errors.max()! < 1e-3)
    }
}

@Suite struct GreedyGoldenTests {
    /// Greedy generations of all 32 golden tokens: every one equals llama.cpp's. (Were one to differ, llama.cpp's
    /// token must have been within 0.1 logprob of ours there.)
    @Test func greedyOutputsMatchLlamaCpp() throws {
        let generator = Generator(model: TestModel.shared, tokenizer: TestTokenizer.shared)
        var matching16 = 0
        var matchingAll = 0
        for g in Golden.shared.generations {
            var params = SamplingParams.greedy(maxTokens: g.output_ids.count)
            params.logprobs = 5
            let result = try generator.generate(prompt: g.prompt_ids.map(Int32.init), params: params)
            let ours = result.tokenIds.map(Int.init)
            let expected = g.output_ids
            if ours.prefix(16) == expected.prefix(16) { matching16 += 1 }
            if ours == expected {
                matchingAll += 1
                continue
            }
            // Where we differ, llama.cpp's choice must have been a near tie for us.
            let k = zip(ours, expected).prefix { $0 == $1 }.count
            let at = result.logprobs[k]
            let theirs = at.top.first { Int($0.id) == expected[k] }
            print(
                "\(g.name): differs at \(k): ours \(ours[k]) (\(at.logprob)), llama.cpp \(expected[k]) (\(String(describing: theirs?.logprob)))"
            )
            let gap = theirs.map { at.logprob - $0.logprob }
            #expect(gap != nil && gap! <= 0.1, "\(g.name) at \(k): gap \(String(describing: gap))")
        }
        let total = Golden.shared.generations.count
        print("greedy: \(matching16) of \(total) match llama.cpp for 16 tokens, \(matchingAll) for all 32")
        #expect(matching16 == total)
        #expect(matchingAll == total)
    }
}
