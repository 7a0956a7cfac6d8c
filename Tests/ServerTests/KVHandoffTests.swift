import Engine
import Testing

/// The prefill/decode hand-off inside the engine: KV exported by one engine and loaded into another gives exactly
/// the output of one engine doing both.
@Suite(.serialized) struct KVHandoffTests {
    @Test func exportedKVLoadedElsewhereGivesTheColocatedOutput() async throws {
        let producer = SharedModel.engine()
        let consumer = SharedModel.engine()
        defer {
            producer.shutdown()
            consumer.shutdown()
        }
        for r in mixedRequests().prefix(4) {
            let colocated = await collect(try consumer.submit(r))
            var prefill = r
            prefill.params.maxTokens = 1
            prefill.exportKV = true
            var exported: KVPayload?
            for await out in try producer.submit(prefill).outputs where out.exportedKV != nil {
                exported = out.exportedKV
            }
            let kv = try #require(exported)
            #expect(kv.tokens == r.promptTokens)
            #expect(kv.fingerprint == producer.fingerprint)
            var decode = r
            decode.preloadedKV = kv
            decode.id = r.id + "-d"
            let handle = try consumer.submit(decode)
            let disaggregated = await collect(handle)
            #expect(disaggregated.ids == colocated.ids, "\(r.id)")
            #expect(disaggregated.text == colocated.text, "\(r.id)")
        }
    }

    @Test func kvThatDoesNotFitIsRefused() throws {
        let engine = SharedModel.engine()
        defer { engine.shutdown() }
        let prompt: [Int32] = [1, 2, 3, 4]
        let good = KVPayload(
            tokens: [1, 2], layerCount: 30, kvDim: 192, fingerprint: engine.fingerprint,
            values: [UInt16](repeating: 0, count: 30 * 2 * 2 * 192))
        var r = GenerationRequest(id: "k", promptTokens: prompt, params: .greedy(maxTokens: 2))
        for (bad, why) in [
            (
                {
                    var k = good; k.fingerprint &+= 1; return k
                }(), "another model"
            ),
            (
                {
                    var k = good; k.tokens = [9, 9]; return k
                }(), "prefix"
            ),
            (
                {
                    var k = good; k.values.removeLast(); return k
                }(), "shape"
            ),
        ] {
            r.preloadedKV = bad
            #expect(throws: EngineError.self) { try engine.submit(r) }
            do { _ = try engine.submit(r) } catch { #expect("\(error)".contains(why)) }
        }
    }
}
