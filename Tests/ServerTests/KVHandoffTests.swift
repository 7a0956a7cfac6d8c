import Engine
import Foundation
import Testing

/// Collects what the engine streams out of a prefill.
final class SliceCollector: KVLayerSink, @unchecked Sendable {
    private let lock = NSLock()
    private(set) var slices: [KVLayerSlice] = []
    private(set) var ended: Bool?
    func push(_ slice: KVLayerSlice) { lock.withLock { slices.append(slice) } }
    func end(complete: Bool) { lock.withLock { ended = complete } }

    /// The slices put together as one payload, checking each (layer, position) comes exactly once, in order.
    func assemble(tokens: [Int32], layers: Int, kvDim: Int, fingerprint: UInt64) -> KVPayload? {
        var values = [UInt16](repeating: 0, count: layers * 2 * tokens.count * kvDim)
        var filled = [Int](repeating: 0, count: layers)
        for s in lock.withLock({ slices }) {
            guard s.tokenStart == filled[s.layer] else { return nil }
            let n = s.tokenCount * kvDim
            let k = s.layer * 2 * tokens.count * kvDim + s.tokenStart * kvDim
            values.replaceSubrange(k..<k + n, with: s.values[0..<n])
            values.replaceSubrange(k + tokens.count * kvDim..<k + tokens.count * kvDim + n, with: s.values[n..<2 * n])
            filled[s.layer] += s.tokenCount
        }
        guard filled.allSatisfy({ $0 == tokens.count }) else { return nil }
        return KVPayload(tokens: tokens, layerCount: layers, kvDim: kvDim, fingerprint: fingerprint, values: values)
    }
}

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

    /// PUT_ASYNC: the KV streamed layer by layer during a chunked prefill, after a prefix-cache hit, is exactly the
    /// KV exported at the end.
    @Test func streamedLayersEqualTheExportedKV() async throws {
        let engine = SharedModel.engine(maxBatchedTokens: 7)
        defer { engine.shutdown() }
        let prompt: [Int32] = (0..<40).map { Int32(200 + $0 * 37) }
        let mc = engine.model.config
        // The second time, the first block comes from the prefix cache and is streamed from there.
        for round in 0..<2 {
            var r = GenerationRequest(id: "s\(round)", promptTokens: prompt, params: .greedy(maxTokens: 1))
            r.exportKV = true
            let sink = SliceCollector()
            r.kvLayerSink = sink
            var exported: KVPayload?
            var cached = 0
            for await out in try engine.submit(r).outputs where out.finishReason != nil {
                exported = out.exportedKV
                cached = out.usage?.cachedTokens ?? 0
            }
            #expect(round == 0 ? cached == 0 : cached > 0)
            #expect(sink.ended == true)
            let streamed = sink.assemble(
                tokens: prompt, layers: mc.layerCount, kvDim: mc.kvDim, fingerprint: engine.fingerprint)
            #expect(streamed != nil, "every position of every layer, once, in order")
            #expect(streamed == exported)
            #expect(sink.slices.count > mc.layerCount, "several chunks")
        }
        // An aborted prefill ends its stream incomplete.
        var r = GenerationRequest(id: "aborted", promptTokens: prompt + prompt, params: .greedy(maxTokens: 1))
        let sink = SliceCollector()
        r.kvLayerSink = sink
        let handle = try engine.submit(r)
        handle.abort()
        for await _ in handle.outputs {}
        #expect(sink.ended == false)
    }

    /// `r` run colocated on `consumer`, and its prompt's KV exported by a one-token prefill on `producer`.
    static func colocatedAndExported(
        _ r: GenerationRequest, producer: EngineCore, consumer: EngineCore
    ) async throws -> (Collected, KVPayload) {
        let colocated = await collect(try consumer.submit(r))
        var prefill = r
        prefill.params.maxTokens = 1
        prefill.exportKV = true
        var exported: KVPayload?
        for await out in try producer.submit(prefill).outputs where out.exportedKV != nil { exported = out.exportedKV }
        return (colocated, try #require(exported))
    }

    /// A decode request submitted before its KV arrives holds blocks for its whole prompt while it waits, then gives
    /// the colocated output whether the KV is delivered (loaded) or fails (recomputed in the same blocks).
    @Test func aRequestWaitingForItsKVHoldsItsBlocksThenLoadsOrRecomputes() async throws {
        let producer = SharedModel.engine()
        let consumer = SharedModel.engine()
        defer {
            producer.shutdown()
            consumer.shutdown()
        }
        let r = mixedRequests()[1]
        let (colocated, kv) = try await Self.colocatedAndExported(r, producer: producer, consumer: consumer)
        for deliver in [true, false] {
            var decode = r
            decode.id = r.id + (deliver ? "-loaded" : "-recomputed")
            let remote = RemoteKV()
            decode.remoteKV = remote
            let handle = try consumer.submit(decode)
            let blocks = (r.promptTokens.count + 15) / 16
            var held = consumer.stats
            // Wait for the request to be admitted (the previous request's blocks may still be counted briefly).
            for _ in 0..<2000 {
                held = consumer.stats
                if held.waiting == 1, held.usedBlocks >= blocks { break }
                try await Task.sleep(for: .milliseconds(5))
            }
            #expect(held.usedBlocks >= blocks, "blocks for the whole prompt are held while the KV is on its way")
            #expect(held.waiting == 1 && held.running == 0)
            try await Task.sleep(for: .milliseconds(100))
            #expect(consumer.stats.usedBlocks == held.usedBlocks, "nothing computed while waiting")
            let loadedBefore = consumer.stats.loadedKVTokens
            if deliver { remote.deliver(kv) } else { remote.fail() }
            let result = await collect(handle)
            #expect(result.ids == colocated.ids, "\(decode.id)")
            #expect(result.text == colocated.text, "\(decode.id)")
            let loaded = consumer.stats.loadedKVTokens - loadedBefore
            #expect(loaded == (deliver ? r.promptTokens.count - 1 : 0), "\(decode.id)")
        }
    }

    /// KV that is already in the box when the engine first sees the request (it arrived before admission) is loaded,
    /// not recomputed: only the last prompt token is computed.
    @Test func kvDeliveredBeforeAdmissionIsLoaded() async throws {
        let producer = SharedModel.engine()
        let consumer = SharedModel.engine()
        defer {
            producer.shutdown()
            consumer.shutdown()
        }
        let r = mixedRequests()[1]
        let (colocated, kv) = try await Self.colocatedAndExported(r, producer: producer, consumer: consumer)
        var decode = r
        decode.id = r.id + "-early"
        let remote = RemoteKV()
        remote.deliver(kv)
        decode.remoteKV = remote
        let loadedBefore = consumer.stats.loadedKVTokens
        let result = await collect(try consumer.submit(decode))
        #expect(result.ids == colocated.ids)
        #expect(consumer.stats.loadedKVTokens - loadedBefore == r.promptTokens.count - 1)
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
