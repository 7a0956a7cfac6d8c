import Engine
import Foundation
import ModelStore
import Testing

/// The default model and tokenizer, loaded once per test process.
enum SharedModel {
    static let path: String = try! ModelStore().resolve("default")
    static let model: TransformerModel = try! TransformerModel(path: path, threads: 2)
    static let tokenizer: Tokenizer = try! Tokenizer(file: model.file)

    static func engine(
        blocks: Int = 256, maxBatchedTokens: Int = 256, maxNumSeqs: Int = 16, connector: (any KVConnector)? = nil
    ) -> EngineCore {
        var config = EngineConfig(maxModelLength: 2048, blockCount: blocks)
        config.maxBatchedTokens = maxBatchedTokens
        config.maxNumSeqs = maxNumSeqs
        return EngineCore(model: model, tokenizer: tokenizer, config: config, connector: connector)
    }
}

/// Collects one request's whole output.
struct Collected: Equatable {
    var ids: [Int32] = []
    var text = ""
    var finish: FinishReason?
    var usage: GenerationUsage?
}

func collect(_ handle: GenerationHandle) async -> Collected {
    var c = Collected()
    for await out in handle.outputs {
        c.ids += out.tokenIds
        c.text += out.text
        if let f = out.finishReason { c.finish = f }
        if let u = out.usage { c.usage = u }
    }
    return c
}

/// Eight different requests: greedy and seeded sampling, prompts of different lengths, different output lengths.
func mixedRequests() -> [GenerationRequest] {
    let prompts = [
        "The capital of France is",
        "Write a haiku about the sea.",
        "def fibonacci(n):\n    if n <= 1:\n        return n\n    else:\n        return",
        "Once upon a time in a magical forest, there lived a wise old dragon who",
        "List three colors:",
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
        "In 1492,",
        "The quick brown fox jumps over the lazy dog. The quick brown fox jumps over the lazy dog. Again:",
    ]
    return prompts.enumerated().map { i, text in
        var p = SamplingParams()
        p.maxTokens = 6 + (i * 5) % 14
        if i % 2 == 0 {
            p.temperature = 0
        } else {
            p.temperature = 0.9
            p.topP = 0.95
            p.topK = 40
            p.seed = UInt64(1000 + i)
        }
        p.ignoreEOS = i % 3 == 0
        return GenerationRequest(
            id: "r\(i)", promptTokens: SharedModel.tokenizer.encode(text), params: p)
    }
}

/// Polls `condition` every 5 ms until it holds; records a failure after `timeout` seconds.
func waitUntil(timeout: Double = 30, _ condition: () -> Bool) async {
    let deadline = ContinuousClock.now + .seconds(timeout)
    while !condition() {
        guard ContinuousClock.now < deadline else {
            Issue.record("the condition did not hold within \(timeout) s")
            return
        }
        try? await Task.sleep(for: .milliseconds(5))
    }
}

@Suite(.serialized) struct EngineCoreTests {
    @Test func outputsDoNotDependOnTheBatch() async throws {
        let engine = SharedModel.engine()
        defer { engine.shutdown() }
        let requests = mixedRequests()
        var alone: [Collected] = []
        for r in requests { alone.append(await collect(try engine.submit(r))) }
        let handles = try requests.map { try engine.submit($0) }
        var together: [Collected] = []
        for h in handles { together.append(await collect(h)) }
        for (i, (a, t)) in zip(alone, together).enumerated() {
            #expect(a.ids == t.ids, "request \(i)")
            #expect(a.text == t.text, "request \(i)")
            #expect(a.finish == t.finish, "request \(i)")
        }
        await waitUntil { engine.stats.usedBlocks == 0 }
        #expect(engine.stats.usedBlocks == 0)
    }

    @Test func matchesTheSingleRequestGenerator() async throws {
        let generator = Generator(model: SharedModel.model, tokenizer: SharedModel.tokenizer)
        // A one-token-per-step prefill budget exercises chunked prefill to the extreme.
        let engine = SharedModel.engine(maxBatchedTokens: 5)
        defer { engine.shutdown() }
        for r in mixedRequests().prefix(4) {
            let reference = try generator.generate(prompt: r.promptTokens, params: r.params)
            let served = await collect(try engine.submit(r))
            #expect(served.ids == reference.tokenIds, "\(r.id)")
            #expect(served.text == reference.text, "\(r.id)")
            #expect(served.finish == reference.finishReason, "\(r.id)")
        }
    }

    @Test func preemptionKeepsOutputsExactAndFreesEveryBlock() async throws {
        // 14 blocks of 16 tokens cannot hold these four sequences (18 blocks at their longest): some are preempted.
        let engine = SharedModel.engine(blocks: 14)
        defer { engine.shutdown() }
        let requests = mixedRequests().suffix(4).map { r -> GenerationRequest in
            var r = r
            r.params.maxTokens = 50
            r.params.ignoreEOS = true
            return r
        }
        var alone: [Collected] = []
        for r in requests { alone.append(await collect(try engine.submit(r))) }
        let handles = try requests.map { try engine.submit($0) }
        for (i, h) in handles.enumerated() {
            let c = await collect(h)
            #expect(c.ids == alone[i].ids, "request \(i)")
            #expect(c.ids.count == 50)
        }
        #expect(engine.stats.preemptions > 0)
        await waitUntil { engine.stats.usedBlocks == 0 }
        #expect(engine.stats.usedBlocks == 0)
    }

    @Test func aSharedPrefixIsReusedAndGivesTheSameOutput() async throws {
        let engine = SharedModel.engine()
        defer { engine.shutdown() }
        let text = String(repeating: "The history of the city is long and full of stories. ", count: 6)
        let r = GenerationRequest(
            id: "p", promptTokens: SharedModel.tokenizer.encode(text), params: .greedy(maxTokens: 8))
        let first = await collect(try engine.submit(r))
        let second = await collect(try engine.submit(r))
        #expect(first.usage?.cachedTokens == 0)
        let cached = try #require(second.usage?.cachedTokens)
        #expect(cached >= 48 && cached % 16 == 0 && cached < r.promptTokens.count)
        #expect(first.ids == second.ids)
        #expect(engine.stats.prefixHitTokens == cached)
    }

    @Test func abortEndsTheStreamAndFreesBlocks() async throws {
        let engine = SharedModel.engine()
        defer { engine.shutdown() }
        var p = SamplingParams.greedy(maxTokens: 1000)
        p.ignoreEOS = true
        let handle = try engine.submit(
            GenerationRequest(id: "a", promptTokens: SharedModel.tokenizer.encode("Count: 1, 2, 3,"), params: p))
        var tokens = 0
        var finish: FinishReason?
        for await out in handle.outputs {
            tokens += out.tokenIds.count
            if tokens == 3 { handle.abort() }
            if let f = out.finishReason { finish = f }
        }
        #expect(finish == .abort)
        #expect(tokens < 100)
        // Stats are a snapshot published after each engine step.
        await waitUntil { engine.stats.usedBlocks == 0 }
        #expect(engine.stats.usedBlocks == 0)
    }

    @Test func shutdownAbortsInFlightRequestsAndRefusesNewOnes() async throws {
        let engine = SharedModel.engine()
        var p = SamplingParams.greedy(maxTokens: 1000)
        p.ignoreEOS = true
        let handle = try engine.submit(
            GenerationRequest(id: "s", promptTokens: SharedModel.tokenizer.encode("Hello"), params: p))
        let task = Task { await collect(handle) }
        let deadline = ContinuousClock.now + .seconds(10)
        while engine.stats.running == 0, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(5)) }
        #expect(engine.stats.running == 1, "the request runs")
        engine.shutdown()
        let c = await task.value
        #expect(c.finish == .abort)
        #expect(throws: EngineError.stopped) {
            try engine.submit(GenerationRequest(id: "t", promptTokens: [1, 2], params: p))
        }
    }

    @Test func refusesBadPrompts() throws {
        let engine = SharedModel.engine(blocks: 4)
        defer { engine.shutdown() }
        #expect(engine.config.maxModelLength == 64)
        let p = SamplingParams.greedy(maxTokens: 4)
        #expect(throws: EngineError.emptyPrompt) { try engine.submit(.init(id: "e", promptTokens: [], params: p)) }
        #expect(throws: EngineError.promptTooLong(prompt: 64, limit: 64)) {
            try engine.submit(.init(id: "l", promptTokens: [Int32](repeating: 1, count: 64), params: p))
        }
        #expect(throws: EngineError.tokenOutOfRange(id: 49152, vocabularySize: 49152)) {
            try engine.submit(.init(id: "v", promptTokens: [1, 49152], params: p))
        }
    }
}
