import Engine

/// A saver that puts a prompt's layer slices together into one payload and hands it over when the prefill ends: the
/// strategy for PUT (sent whole, the prefill answering after the consumer's ack) and for KV the consumer pulls (kept
/// in the outbox).
final class KVPayloadAssembler: KVLayerSink, @unchecked Sendable {
    // Written on the engine thread only (push and end), then handed over whole.
    private var values: [UInt16]
    private let tokens: [Int32]
    private let layerCount: Int
    private let kvDim: Int
    private let fingerprint: UInt64
    private let layerStarts: [Int]
    private let deliver: @Sendable (KVPayload?, @escaping @Sendable () -> Void) -> Void

    /// `deliver` gets the payload (nil when the prefill was aborted) and the request's `answer`, to call once the
    /// producer may answer.
    init(
        tokens: [Int32], layerCount: Int, kvDim: Int, fingerprint: UInt64, windows: KVTransferWindows,
        deliver: @escaping @Sendable (KVPayload?, @escaping @Sendable () -> Void) -> Void
    ) {
        self.tokens = tokens
        layerStarts = windows.starts(tokens: tokens.count)
        self.layerCount = layerCount
        self.kvDim = kvDim
        self.fingerprint = fingerprint
        self.deliver = deliver
        // Not zeroed (the engine thread would pay for it): a payload is handed over only when the prefill pushed
        // every (layer, position) it carries (a sliding-window layer: its window), each exactly once.
        let count = layerCount * 2 * tokens.count * kvDim
        values = [UInt16](unsafeUninitializedCapacity: count) { _, n in n = count }
    }

    func push(_ slice: KVLayerSlice) {
        let n = slice.tokenCount * kvDim
        let perPart = tokens.count * kvDim
        let k = slice.layer * 2 * perPart + slice.tokenStart * kvDim
        values.withUnsafeMutableBufferPointer { out in
            slice.values.withUnsafeBufferPointer { input in
                (out.baseAddress! + k).update(from: input.baseAddress!, count: n)
                (out.baseAddress! + k + perPart).update(from: input.baseAddress! + n, count: n)
            }
        }
    }

    func end(complete: Bool, answer: @escaping @Sendable () -> Void) {
        guard complete else { return deliver(nil, answer) }
        let payload = KVPayload(
            tokens: tokens, layerCount: layerCount, kvDim: kvDim, fingerprint: fingerprint, values: values,
            layerStarts: layerStarts)
        values = []
        deliver(payload, answer)
    }
}
