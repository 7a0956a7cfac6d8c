import Engine
import Foundation
import ModelStore
import Testing

/// Gemma 3 270M, loaded once per test process.
enum GemmaEngineModel {
    static let model: TransformerModel = try! TransformerModel(
        path: try! ModelStore().resolve("gemma3-270m"), threads: 2)
    static let tokenizer: Tokenizer = try! Tokenizer(file: model.file)

    static func engine(connector: (any KVConnector)? = nil) -> EngineCore {
        var config = EngineConfig(maxModelLength: 2048, blockCount: 256)
        config.maxBatchedTokens = 256
        return EngineCore(model: model, tokenizer: tokenizer, config: config, connector: connector)
    }
}

/// A hand-off of a model with sliding-window layers (Gemma 3: window 512, five sliding layers to one global): the
/// prefill saves every position of the global layers but only the last window of the sliding ones; the decode that
/// loads it gives the colocated output, and keeps the blocks whose sliding layers it did not get out of its prefix
/// cache, so a later prompt sharing only their prefix is computed, not answered from KV it lacks.
@Suite(.serialized) struct SlidingWindowHandoffTests {
    @Test func aSlidingLayerCarriesItsWindowAndThePrefixCacheStaysExact() async throws {
        let saved = InProcessKVConnector(engineModel: GemmaEngineModel.model)
        let loads = InProcessKVConnector(engineModel: GemmaEngineModel.model)
        let producer = GemmaEngineModel.engine(connector: saved)
        let consumer = GemmaEngineModel.engine(connector: loads)
        let reference = GemmaEngineModel.engine()
        defer { for e in [producer, consumer, reference] { e.shutdown() } }
        let config = GemmaEngineModel.model.config
        let window = try #require(config.slidingWindow)

        let text = String(repeating: "The quick brown fox jumps over the lazy dog, and the dog sleeps on. ", count: 48)
        var params = SamplingParams()
        params.maxTokens = 12
        params.temperature = 0
        let prompt = GemmaEngineModel.tokenizer.encode(text)
        #expect(prompt.count > window + 200)
        let r = GenerationRequest(id: "long", promptTokens: prompt, params: params)
        let colocated = await collect(try reference.submit(r))

        var prefill = r
        prefill.id = "long-p"
        prefill.params.maxTokens = 1
        prefill.kvTransfer = InProcessKVConnector.produce("long")
        for await _ in try producer.submit(prefill).outputs {}
        let kv = try #require(saved.saved("long", tokens: prompt))
        for layer in 0..<config.layerCount {
            #expect(kv.layerStarts[layer] == (config.slidingLayers[layer] ? prompt.count - window : 0), "\(layer)")
        }
        let whole = config.layerCount * 2 * prompt.count * config.kvDim * 2
        #expect(kv.carriedBytes < whole)
        print("gemma3 hand-off of \(prompt.count) tokens: \(kv.carriedBytes) bytes carried, \(whole) without windows")

        var d = r
        d.id = "long-d"
        d.kvTransfer = InProcessKVConnector.consume(d.id)
        loads.preset(d.id, .loaded(kv))
        let disaggregated = await collect(try consumer.submit(d))
        #expect(disaggregated.ids == colocated.ids)
        #expect(consumer.stats.loadedKVTokens == prompt.count - 1)

        // A prompt sharing the first 60 % of those tokens: its new positions' windows reach back before the loaded
        // window, so the consumer must compute the shared part rather than take its loaded blocks.
        var shared = GenerationRequest(
            id: "shared",
            promptTokens: Array(prompt.prefix(prompt.count * 3 / 5))
                + GemmaEngineModel.tokenizer.encode(" Then a cat came by.", addSpecial: false), params: params)
        let want = await collect(try reference.submit(shared))
        shared.id = "shared-2"
        let got = await collect(try consumer.submit(shared))
        #expect(got.ids == want.ids, "a prompt sharing a windowed prefix gets the colocated tokens")
    }
}
