import Engine
import Foundation
import Testing

/// The prefill/decode hand-off through the engine's connector seam: KV saved by one engine and loaded into another
/// gives exactly the output of one engine doing both; a consumer waits for its KV parked, holding its blocks, and is
/// signalled when the load ends. The connector here is `InProcessKVConnector`, a fake without a network.
@Suite(.serialized) struct KVHandoffTests {
    struct Pair {
        let producer: EngineCore
        let consumer: EngineCore
        let saved: InProcessKVConnector
        let loads: InProcessKVConnector

        init() {
            saved = InProcessKVConnector(engineModel: SharedModel.model)
            loads = InProcessKVConnector(engineModel: SharedModel.model)
            producer = SharedModel.engine(connector: saved)
            consumer = SharedModel.engine(connector: loads)
        }

        func shutdown() {
            producer.shutdown()
            consumer.shutdown()
        }

        /// `r` run colocated on the consumer, and its prompt's KV saved by a one-token prefill on the producer.
        func colocatedAndSaved(_ r: GenerationRequest) async throws -> (Collected, KVPayload) {
            let colocated = await collect(try consumer.submit(r))
            var prefill = r
            prefill.params.maxTokens = 1
            prefill.id = r.id + "-p"
            prefill.kvTransfer = InProcessKVConnector.produce(r.id)
            var params: [(String, KVParamValue)]?
            for await out in try producer.submit(prefill).outputs where out.finishReason != nil {
                params = out.kvTransferParams
            }
            #expect(params?.first?.1 == .string(r.id), "the producer's final output carries its transfer params")
            return (colocated, try #require(saved.saved(r.id, tokens: r.promptTokens)))
        }

        func decode(_ r: GenerationRequest, suffix: String) -> GenerationRequest {
            var d = r
            d.id = r.id + suffix
            d.kvTransfer = InProcessKVConnector.consume(d.id)
            return d
        }
    }

    @Test func savedKVLoadedElsewhereGivesTheColocatedOutput() async throws {
        let e = Pair()
        defer { e.shutdown() }
        for r in mixedRequests().prefix(4) {
            let (colocated, kv) = try await e.colocatedAndSaved(r)
            #expect(kv.tokens == r.promptTokens)
            #expect(kv.fingerprint == e.producer.fingerprint)
            let d = e.decode(r, suffix: "-d")
            e.loads.preset(d.id, .loaded(kv))
            let before = e.consumer.stats.loadedKVTokens
            let disaggregated = await collect(try e.consumer.submit(d))
            #expect(disaggregated.ids == colocated.ids, "\(r.id)")
            #expect(disaggregated.text == colocated.text, "\(r.id)")
            #expect(e.consumer.stats.loadedKVTokens - before == r.promptTokens.count - 1)
        }
    }

    /// The KV saved layer by layer during a chunked prefill equals, after a prefix-cache hit, what the first
    /// prefill saved; every (layer, position) once, in order. An aborted prefill ends its saver incomplete.
    @Test func savedLayersAreCompleteAndEqualAfterAPrefixHit() async throws {
        let saved = InProcessKVConnector(engineModel: SharedModel.model)
        let engine = SharedModel.engine(maxBatchedTokens: 7, connector: saved)
        defer { engine.shutdown() }
        let prompt: [Int32] = (0..<40).map { Int32(200 + $0 * 37) }
        let mc = engine.model.config
        var payloads: [KVPayload] = []
        for round in 0..<2 {
            var r = GenerationRequest(id: "s\(round)", promptTokens: prompt, params: .greedy(maxTokens: 1))
            r.kvTransfer = InProcessKVConnector.produce(r.id)
            var cached = 0
            for await out in try engine.submit(r).outputs where out.finishReason != nil {
                cached = out.usage?.cachedTokens ?? 0
            }
            #expect(round == 0 ? cached == 0 : cached > 0)
            let sink = try #require(saved.collector(r.id))
            #expect(sink.ended == true)
            #expect(sink.slices.count > mc.layerCount, "several chunks")
            payloads.append(try #require(saved.saved(r.id, tokens: prompt), "every position of every layer, once"))
        }
        #expect(payloads[0] == payloads[1])
        var r = GenerationRequest(id: "aborted", promptTokens: prompt + prompt, params: .greedy(maxTokens: 1))
        r.kvTransfer = InProcessKVConnector.produce(r.id)
        let handle = try engine.submit(r)
        handle.abort()
        for await _ in handle.outputs {}
        #expect(saved.collector(r.id)?.ended == false)
        #expect(saved.finished[r.id] == true, "the connector hears of the abort")
    }

    /// A consumer parks with blocks for its whole prompt, computes nothing and does not spin while it waits, then
    /// gives the colocated output whether its KV is loaded or recomputed in the same blocks.
    @Test func aParkedRequestHoldsItsBlocksUntilSignalledThenLoadsOrRecomputes() async throws {
        let e = Pair()
        defer { e.shutdown() }
        let r = mixedRequests()[1]
        let (colocated, kv) = try await e.colocatedAndSaved(r)
        for deliver in [true, false] {
            let d = e.decode(r, suffix: deliver ? "-loaded" : "-recomputed")
            let handle = try e.consumer.submit(d)
            await waitUntil { e.loads.waitingLoads == 1 && e.consumer.stats.waiting == 1 }
            let held = e.consumer.stats
            #expect(held.usedBlocks >= (r.promptTokens.count + 15) / 16, "blocks for the whole prompt are held")
            #expect(held.running == 0)
            // Real work elsewhere takes a while; the parked engine takes no step meanwhile (it is not polling).
            _ = await collect(try e.producer.submit(r))
            #expect(e.consumer.stats.steps == held.steps, "no steps while parked")
            let before = e.consumer.stats.loadedKVTokens
            #expect(e.loads.complete(d.id, deliver ? .loaded(kv) : .recompute))
            let result = await collect(handle)
            #expect(result.ids == colocated.ids, "\(d.id)")
            #expect(result.text == colocated.text, "\(d.id)")
            #expect(e.consumer.stats.loadedKVTokens - before == (deliver ? r.promptTokens.count - 1 : 0))
        }
    }

    /// KV of another model, of another shape, or of other tokens is never written into the cache: the prompt is
    /// recomputed and the output is the colocated one.
    @Test func kvThatDoesNotFitIsRecomputedNotLoaded() async throws {
        let e = Pair()
        defer { e.shutdown() }
        let r = mixedRequests()[1]
        let (colocated, kv) = try await e.colocatedAndSaved(r)
        var otherModel = kv
        otherModel.fingerprint &+= 1
        var otherTokens = kv
        otherTokens.tokens[0] &+= 1
        var otherShape = kv
        otherShape.values.removeLast()
        for (n, bad) in [otherModel, otherTokens, otherShape].enumerated() {
            let d = e.decode(r, suffix: "-bad\(n)")
            e.loads.preset(d.id, .loaded(bad))
            let before = e.consumer.stats.loadedKVTokens
            let result = await collect(try e.consumer.submit(d))
            #expect(result.ids == colocated.ids)
            #expect(e.consumer.stats.loadedKVTokens == before)
        }
    }

    /// A load that fails under the `fail` policy ends the request with its reason and frees its blocks; an aborted
    /// parked request frees its blocks too, and a load that ends after it is ignored.
    @Test func aFailedOrAbortedParkedRequestEndsAndFreesItsBlocks() async throws {
        let e = Pair()
        defer { e.shutdown() }
        let r = mixedRequests()[1]
        let failing = e.decode(r, suffix: "-fails")
        e.loads.preset(failing.id, .failed("KV transfer failed: test"))
        var failure: String?
        var finish: FinishReason?
        for await out in try e.consumer.submit(failing).outputs where out.finishReason != nil {
            failure = out.failure
            finish = out.finishReason
        }
        #expect(failure == "KV transfer failed: test")
        #expect(finish == .abort)
        let aborted = e.decode(r, suffix: "-aborted")
        let handle = try e.consumer.submit(aborted)
        await waitUntil { e.loads.waitingLoads == 1 }
        handle.abort()
        let out = await collect(handle)
        #expect(out.finish == .abort)
        #expect(e.loads.complete(aborted.id, .recompute), "the late signal is taken and ignored")
        await waitUntil { e.consumer.stats.usedBlocks == 0 && e.consumer.stats.waiting == 0 }
    }
}
