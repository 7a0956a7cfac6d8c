import Engine
import Testing

@Suite struct GeneratorTests {
    @Test func seededSamplingIsReproducibleOnTheRealModel() throws {
        let generator = Generator(model: TestModel.shared, tokenizer: TestTokenizer.shared)
        var p = SamplingParams()
        p.temperature = 0.8
        p.topP = 0.95
        p.seed = 7
        p.maxTokens = 12
        let prompt = TestTokenizer.shared.encode("The weather today is")
        let a = try generator.generate(prompt: prompt, params: p)
        let b = try generator.generate(prompt: prompt, params: p)
        #expect(a.tokenIds == b.tokenIds && a.text == b.text)
        #expect(a.tokenIds.count == 12 && a.finishReason == .length)
    }

    @Test func stopsAtStopStringsAndTokens() throws {
        let generator = Generator(model: TestModel.shared, tokenizer: TestTokenizer.shared)
        let prompt = TestTokenizer.shared.encode("Hello world")
        var p = SamplingParams.greedy(maxTokens: 32)
        p.stop = ["future"]
        let r = try generator.generate(prompt: prompt, params: p)
        #expect(r.finishReason == .stop && r.text == " of the ")
        p.stop = []
        p.stopTokenIds = [260]  // " the", the second greedy token
        let t = try generator.generate(prompt: prompt, params: p)
        #expect(t.finishReason == .stop && t.tokenIds == [282, 260])
    }

    @Test func refusesPromptsItCannotRun() {
        let generator = Generator(model: TestModel.shared, tokenizer: TestTokenizer.shared)
        #expect(throws: GenerationError.self) { try generator.generate(prompt: [], params: .greedy(maxTokens: 1)) }
        let long = [Int32](repeating: 28, count: 9000)
        #expect(throws: GenerationError.self) { try generator.generate(prompt: long, params: .greedy(maxTokens: 1)) }
    }
}
