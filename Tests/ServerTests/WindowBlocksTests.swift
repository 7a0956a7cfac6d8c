import Engine
import Foundation
import Testing

/// The split KV cache: Gemma 3's sliding-window layers keep their KV in blocks of their own, held only for the
/// positions a later query still sees. A long request then holds a window's worth of those blocks, not its length's;
/// its tokens are those of the unsplit cache (`Generator`); and a prefix hit needs the window before it cached too.
@Suite(.serialized) struct WindowBlocksTests {
    static let bs = 16

    static func longPrompt(_ sentence: String, count: Int) -> [Int32] {
        GemmaEngineModel.tokenizer.encode(String(repeating: sentence, count: count))
    }

    static func greedy(_ tokens: Int) -> SamplingParams {
        var params = SamplingParams()
        params.maxTokens = tokens
        params.temperature = 0
        return params
    }

    /// The unsplit cache's tokens for `prompt`.
    static func reference(_ prompt: [Int32], _ params: SamplingParams) throws -> [Int32] {
        try Generator(model: GemmaEngineModel.model, tokenizer: GemmaEngineModel.tokenizer)
            .generate(prompt: prompt, params: params).tokenIds
    }

    @Test func aLongRequestHoldsOneWindowOfBlocksAndGetsTheUnsplitTokens() async throws {
        // Room for 1,302 + 4,000 positions, so that the decode below cannot end before the test stops it.
        var config = EngineConfig(maxModelLength: 6_144, blockCount: 400)
        config.maxBatchedTokens = 256
        let engine = EngineCore(model: GemmaEngineModel.model, tokenizer: GemmaEngineModel.tokenizer, config: config)
        defer { engine.shutdown() }
        let c = GemmaEngineModel.model.config
        let window = try #require(c.slidingWindow)
        let prompt = Self.longPrompt("A long river runs through the valley and the town beside it. ", count: 100)
        #expect(prompt.count > 2 * window)
        let expected = try Self.reference(prompt, Self.greedy(24))

        // A decode that runs until this test has seen it: the stats are read at every output (each comes after a
        // step), and the request is aborted once it has given 24 tokens and been seen holding more blocks than its
        // prompt. It cannot end first: it may generate 4,000 tokens.
        var params = Self.greedy(4_000)
        params.ignoreEOS = true
        let handle = try engine.submit(GenerationRequest(id: "long", promptTokens: prompt, params: params))
        let promptBlocks = (prompt.count + Self.bs - 1) / Self.bs
        var ids: [Int32] = []
        var mostWindowBlocks = 0
        var seen: EngineStats?
        for await out in handle.outputs {
            ids += out.tokenIds
            let s = engine.stats
            mostWindowBlocks = max(mostWindowBlocks, s.usedWindowBlocks)
            if seen == nil, s.usedBlocks > promptBlocks { seen = s }
            if seen != nil, ids.count >= 24 { handle.abort() }
        }
        #expect(Array(ids.prefix(24)) == expected, "the split cache gives the unsplit cache's tokens")
        let last = try #require(seen, "the decode was seen running")
        // Every published step: the window (and the block it starts in), not the sequence.
        let windowBound = (window + Self.bs - 1) / Self.bs + 1
        #expect(mostWindowBlocks > 0 && mostWindowBlocks <= windowBound, "\(mostWindowBlocks) window blocks held")
        let allLayers = c.layerCount * 2 * Self.bs * c.kvDim * 2
        let slidingLayers = c.slidingLayers.filter { $0 }.count
        let windowBytes = slidingLayers * 2 * Self.bs * c.kvDim * 2
        let unsplit = last.usedBlocks * allLayers
        #expect(last.heldKVBytes == unsplit - last.usedBlocks * windowBytes + last.usedWindowBlocks * windowBytes)
        #expect(last.heldKVBytes < unsplit * 3 / 4)
        print(
            "gemma3, \(prompt.count)-token prompt, decoding: \(last.usedBlocks) blocks for the"
                + " \(c.layerCount - slidingLayers) global layers, \(last.usedWindowBlocks) for the \(slidingLayers)"
                + " sliding ones: \(last.heldKVBytes) bytes of KV held, \(unsplit) in one cache")
        // Ended: both kinds let go. Shutting down returns after the loop's last published stats.
        engine.shutdown()
        #expect(engine.stats.usedBlocks == 0 && engine.stats.usedWindowBlocks == 0)
    }

    @Test func aPrefixHitTakesTheCachedWindowAndMissesWhenItWasEvicted() async throws {
        // One request at a time: the window blocks (2 × 49) hold one long request's, so a second evicts the first's.
        var config = EngineConfig(maxModelLength: 2048, blockCount: 256)
        config.maxNumSeqs = 1
        let engine = EngineCore(model: GemmaEngineModel.model, tokenizer: GemmaEngineModel.tokenizer, config: config)
        defer { engine.shutdown() }
        let params = Self.greedy(8)
        let first = Self.longPrompt("The lighthouse keeper counts the ships that pass at night. ", count: 90)
        let other = Self.longPrompt("Bread rises slowly in a warm kitchen on a winter morning. ", count: 90)
        let suffix = GemmaEngineModel.tokenizer.encode(" Then the fog came in.", addSpecial: false)

        _ = await collect(try engine.submit(GenerationRequest(id: "a", promptTokens: first, params: params)))
        // Right after: the prefix and its last window are cached.
        let extended = first + suffix
        let want = try Self.reference(extended, params)
        let hitsBefore = engine.stats.prefixHitTokens
        let hit = await collect(try engine.submit(GenerationRequest(id: "b", promptTokens: extended, params: params)))
        #expect(hit.ids == want)
        // Every full block of the first prompt whose rows were computed by the same kernels under both prompt
        // lengths (the micro-batches llama-server cuts before a Gemma prompt's end move with its length).
        let pool = KVBlockPool(blockCount: 1, blockSize: Self.bs, batching: .checkpointed)
        let sameKernels = (0..<(first.count / Self.bs)).prefix {
            pool.kernels(ofBlock: $0, promptLength: first.count)
                == pool.kernels(ofBlock: $0, promptLength: extended.count)
        }.count
        #expect(sameKernels > 0)
        #expect(engine.stats.prefixHitTokens - hitsBefore == sameKernels * Self.bs)

        // Another long request takes the window blocks; the first prompt's global-layer blocks are still cached,
        // but without its window the prefix is computed again.
        _ = await collect(try engine.submit(GenerationRequest(id: "c", promptTokens: other, params: params)))
        let again = first + GemmaEngineModel.tokenizer.encode(" Then the wind rose.", addSpecial: false)
        let wantAgain = try Self.reference(again, params)
        let hitsThen = engine.stats.prefixHitTokens
        let miss = await collect(try engine.submit(GenerationRequest(id: "d", promptTokens: again, params: params)))
        #expect(miss.ids == wantAgain, "a prefix whose window was evicted is computed, not read from other KV")
        #expect(engine.stats.prefixHitTokens - hitsThen < first.count / Self.bs * Self.bs)
    }
}
