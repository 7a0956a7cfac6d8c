import Engine
import Foundation

/// A fake connector for engine tests (no network; the real one, `TandemKVConnector`, is tested end to end): a
/// producer's KV is collected slice by slice and kept by transfer id; a consumer's load ends when the test says so,
/// or at once with an outcome set beforehand.
final class InProcessKVConnector: KVConnector, @unchecked Sendable {
    private let lock = NSLock()
    private var collectors: [String: SliceCollector] = [:]
    private var presets: [String: KVLoadOutcome] = [:]
    private var pending: [String: @Sendable (KVLoadOutcome) -> Void] = [:]
    private(set) var finished: [String: Bool] = [:]
    let fingerprint: UInt64
    let layerCount: Int
    let kvDim: Int

    init(engineModel model: TransformerModel) {
        fingerprint = model.fingerprint
        layerCount = model.config.layerCount
        kvDim = model.config.kvDim
    }

    static func produce(_ id: String) -> KVTransferParams {
        KVTransferParams(role: .produce, delivery: .push, transferId: id, prefillAddress: "in-process:0")
    }

    static func consume(_ id: String) -> KVTransferParams {
        KVTransferParams(role: .consume, delivery: .push, transferId: id, prefillAddress: "in-process:0")
    }

    func parse(requestId: String?, params: [String: KVParamValue]?) throws -> KVTransferParams? { nil }

    /// What a producer saved under `id`, put together (nil until its prefill ended complete).
    func saved(_ id: String, tokens: [Int32]) -> KVPayload? {
        guard let c = lock.withLock({ collectors[id] }), c.ended == true else { return nil }
        return c.assemble(tokens: tokens, layers: layerCount, kvDim: kvDim, fingerprint: fingerprint)
    }

    func collector(_ id: String) -> SliceCollector? { lock.withLock { collectors[id] } }

    /// The next load of `id` ends at once with `outcome`.
    func preset(_ id: String, _ outcome: KVLoadOutcome) { lock.withLock { presets[id] = outcome } }

    /// Ends the load of `id` that is waiting; false when none is.
    @discardableResult func complete(_ id: String, _ outcome: KVLoadOutcome) -> Bool {
        guard let done = lock.withLock({ pending.removeValue(forKey: id) }) else { return false }
        done(outcome)
        return true
    }

    var waitingLoads: Int { lock.withLock { pending.count } }

    func startLoad(_ request: KVConnectorRequest, done: @escaping @Sendable (KVLoadOutcome) -> Void) {
        let id = request.transfer.transferId
        let preset: KVLoadOutcome? = lock.withLock {
            if let o = presets.removeValue(forKey: id) { return o }
            pending[id] = done
            return nil
        }
        if let preset { done(preset) }
    }

    func saver(for request: KVConnectorRequest) -> (any KVLayerSink)? {
        let c = SliceCollector()
        lock.withLock { collectors[request.transfer.transferId] = c }
        return c
    }

    func requestFinished(_ request: KVConnectorRequest, aborted: Bool) -> [(String, KVParamValue)]? {
        lock.withLock { finished[request.transfer.transferId] = aborted }
        guard request.transfer.role == .produce, !aborted else { return nil }
        return [("tandem_transfer_id", .string(request.transfer.transferId))]
    }
}

/// Collects what the engine streams out of a prefill.
final class SliceCollector: KVLayerSink, @unchecked Sendable {
    private let lock = NSLock()
    private(set) var slices: [KVLayerSlice] = []
    private(set) var ended: Bool?
    func push(_ slice: KVLayerSlice) { lock.withLock { slices.append(slice) } }
    func end(complete: Bool, answer: @escaping @Sendable () -> Void) {
        lock.withLock { ended = complete }
        answer()
    }

    /// The slices put together as one payload, checking each (layer, position) comes exactly once, in order: every
    /// layer from its first slice's position on (a sliding-window layer's window) to the end.
    func assemble(tokens: [Int32], layers: Int, kvDim: Int, fingerprint: UInt64) -> KVPayload? {
        var values = [UInt16](repeating: 0, count: layers * 2 * tokens.count * kvDim)
        var starts = [Int?](repeating: nil, count: layers)
        var filled = [Int](repeating: 0, count: layers)
        for s in lock.withLock({ slices }) {
            if starts[s.layer] == nil {
                starts[s.layer] = s.tokenStart
                filled[s.layer] = s.tokenStart
            }
            guard s.tokenStart == filled[s.layer] else { return nil }
            let n = s.tokenCount * kvDim
            let k = s.layer * 2 * tokens.count * kvDim + s.tokenStart * kvDim
            values.replaceSubrange(k..<k + n, with: s.values[0..<n])
            values.replaceSubrange(k + tokens.count * kvDim..<k + tokens.count * kvDim + n, with: s.values[n..<2 * n])
            filled[s.layer] += s.tokenCount
        }
        guard filled.allSatisfy({ $0 == tokens.count }) else { return nil }
        return KVPayload(
            tokens: tokens, layerCount: layers, kvDim: kvDim, fingerprint: fingerprint, values: values,
            layerStarts: starts.map { $0 ?? 0 })
    }
}
