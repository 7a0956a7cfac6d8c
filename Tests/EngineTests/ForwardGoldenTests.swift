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

@Suite struct ForwardGoldenTests {
    @Test func firstPositionTop5MatchesLlamaCpp() throws {
        let model = TestModel.shared
        var errSum = 0.0
        var errCount = 0.0
        defer { print("MEAN ABS ERR", errSum / errCount) }
        for g in Golden.shared.generations {
            let cache = PagedKVCache(
                layerCount: model.config.layerCount, blockCount: 32, blockSize: 16, kvDim: model.config.kvDim)
            let chunk = SequenceChunk(
                tokens: g.prompt_ids.map(Int32.init), startPosition: 0, blockTable: (0..<32).map(Int32.init),
                wantsLogits: true)
            let logits = try #require(model.forward([chunk], cache: cache)[0])
            let maxLogit = logits.max()!
            let logSum = log(logits.reduce(0.0) { $0 + exp(Double($1 - maxLogit)) }) + Double(maxLogit)
            for top in g.firstTop5 {
                let ours = Double(logits[top.id]) - logSum
                errSum += abs(ours - top.logprob)
                errCount += 1
                #expect(abs(ours - top.logprob) < 0.001, "\(g.name): token \(top.id) ours \(ours) vs \(top.logprob)")
            }
        }
    }
}

@Suite struct GreedyGoldenTests {
    @Test func greedyOutputsMatchLlamaCpp() throws {
        let generator = Generator(model: TestModel.shared, tokenizer: TestTokenizer.shared)
        var matching = 0
        for g in Golden.shared.generations {
            var params = SamplingParams.greedy(maxTokens: 16)
            params.logprobs = 5
            let result = try generator.generate(prompt: g.prompt_ids.map(Int32.init), params: params)
            let ours = result.tokenIds.map(Int.init)
            let expected = Array(g.output_ids.prefix(16))
            if ours == expected {
                matching += 1
                continue
            }
            // Where we differ, llama.cpp's choice must have been a near tie for us.
            let k = zip(ours, expected).prefix { $0 == $1 }.count
            let at = result.logprobs[k]
            let theirs = at.top.first { Int($0.id) == expected[k] }
            print(
                "\(g.name): differs at \(k): ours \(ours[k]) (\(at.logprob)), llama.cpp \(expected[k]) (\(String(describing: theirs?.logprob)))"
            )
            #expect(theirs != nil && at.logprob - theirs!.logprob <= 0.1, "\(g.name) at \(k)")
        }
        print("greedy: \(matching) of \(Golden.shared.generations.count) generations match llama.cpp for 16 tokens")
        #expect(matching >= 10)
    }
}
