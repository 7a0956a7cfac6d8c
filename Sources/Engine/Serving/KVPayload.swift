import Foundation

/// The KV cache of a run of prompt tokens, taken out of one engine to be loaded into another (disaggregated
/// prefill/decode). Layout: for each layer, K then V, each `[token][kvDim]` fp16 values.
public struct KVPayload: Sendable, Equatable {
    /// The tokens whose KV this is (positions 0..<tokens.count).
    public var tokens: [Int32]
    public var layerCount: Int
    public var kvDim: Int
    /// Identifies the model the KV was computed with (`TransformerModel.fingerprint`).
    public var fingerprint: UInt64
    public var values: [UInt16]
    /// The first token a hand-off prefill sampled after these positions, when it sent it with the KV: the consumer
    /// takes it as its own first token instead of computing the last position again.
    public var firstToken: Int32?
    /// Per layer, the first position carried: 0, except for a sliding-window layer, which carries only its window
    /// (`KVTransferWindows`). The values before it are not set and never read.
    public var layerStarts: [Int]

    public init(
        tokens: [Int32], layerCount: Int, kvDim: Int, fingerprint: UInt64, values: [UInt16], firstToken: Int32? = nil,
        layerStarts: [Int]? = nil
    ) {
        self.tokens = tokens
        self.layerCount = layerCount
        self.kvDim = kvDim
        self.fingerprint = fingerprint
        self.values = values
        self.firstToken = firstToken
        self.layerStarts = layerStarts ?? [Int](repeating: 0, count: layerCount)
    }

    /// Bytes of KV the payload carries (what crosses the wire): every layer from its start.
    public var carriedBytes: Int { layerStarts.reduce(0) { $0 + 2 * (tokens.count - $1) * kvDim * 2 } }

    /// Where every layer is carried from: below it, a sliding-window layer's positions were left out, so blocks
    /// loaded there must not be offered to the prefix cache.
    public var windowedBelow: Int { layerStarts.max() ?? 0 }

    /// Values in one layer's K (or V).
    public var valuesPerPart: Int { tokens.count * kvDim }

    /// Bytes the payload holds in memory (every position of every layer).
    public var byteCount: Int { values.count * 2 }

    /// Offset of layer `layer`'s K (`value == false`) or V in `values`.
    public func offset(layer: Int, value: Bool) -> Int { (layer * 2 + (value ? 1 : 0)) * valuesPerPart }
}

/// One layer's K and V for a run of prompt positions, handed out while the prefill computes (PUT_ASYNC streaming).
public struct KVLayerSlice: Sendable, Equatable {
    public var layer: Int
    /// First position, and how many positions follow.
    public var tokenStart: Int
    public var tokenCount: Int
    public var kvDim: Int
    /// K rows `[token][kvDim]`, then V rows, fp16.
    public var values: [UInt16]

    public init(layer: Int, tokenStart: Int, tokenCount: Int, kvDim: Int, values: [UInt16]) {
        self.layer = layer
        self.tokenStart = tokenStart
        self.tokenCount = tokenCount
        self.kvDim = kvDim
        self.values = values
    }

    /// Bytes of KV carried.
    public var byteCount: Int { values.count * 2 }
}

/// Which positions of each layer a prompt's KV transfer carries: all of them, except for a sliding-window layer.
/// The next query there (at the prompt's last position, or the one after) sees only the last `window` positions, so
/// the transfer carries `tokens - window ..< tokens` of it and nothing older.
public struct KVTransferWindows: Sendable, Equatable {
    /// Per layer, its window; nil for a layer that attends to every position.
    public var windows: [Int?]

    public init(windows: [Int?]) { self.windows = windows }

    /// Every position of each of `layers` layers.
    public static func whole(layers: Int) -> KVTransferWindows {
        KVTransferWindows(windows: [Int?](repeating: nil, count: layers))
    }

    /// The windows of a model's layers.
    public init(_ config: ModelConfig) {
        windows = config.slidingLayers.map { $0 ? config.slidingWindow : nil }
    }

    /// The first position carried for `layer` of a transfer of `tokens` positions.
    public func start(layer: Int, tokens: Int) -> Int {
        guard layer < windows.count, let w = windows[layer] else { return 0 }
        return max(0, tokens - w)
    }

    /// The first position carried for every layer.
    public func starts(tokens: Int) -> [Int] { (0..<windows.count).map { start(layer: $0, tokens: tokens) } }
}

extension PagedKVCache {
    /// Copies one layer's K and V of positions `range` of a sequence with `tables` (held for that layer).
    func slice(layer: Int, range: Range<Int>, tables: KVBlockTables) -> KVLayerSlice {
        let table = self.table(layer: layer, tables)
        let n = range.count
        var values = [UInt16](repeating: 0, count: 2 * n * kvDim)
        values.withUnsafeMutableBufferPointer { out in
            for part in [false, true] {
                let base = out.baseAddress! + (part ? n * kvDim : 0)
                for (i, t) in range.enumerated() {
                    let src = row(layer: layer, value: part, block: Int(table[t / blockSize]), slot: t % blockSize)
                    (base + i * kvDim).update(from: src, count: kvDim)
                }
            }
        }
        return KVLayerSlice(layer: layer, tokenStart: range.lowerBound, tokenCount: n, kvDim: kvDim, values: values)
    }

    /// Writes positions 0..<count of `payload` into a sequence with `tables` (for a sliding-window layer, from the
    /// first position it carries and the sequence holds a block for): one copy per run of positions that share a
    /// block (their rows are contiguous there).
    public func load(_ payload: KVPayload, count: Int, tables: KVBlockTables) {
        payload.values.withUnsafeBufferPointer { input in
            for layer in 0..<layerCount {
                let table = self.table(layer: layer, tables)
                var first = min(payload.layerStarts[layer], count)
                while first < count, table[first / blockSize] < 0 { first = (first / blockSize + 1) * blockSize }
                for part in [false, true] {
                    let base = input.baseAddress! + payload.offset(layer: layer, value: part)
                    var t = first
                    while t < count {
                        let slot = t % blockSize
                        let run = min(blockSize - slot, count - t)
                        let dst = row(layer: layer, value: part, block: Int(table[t / blockSize]), slot: slot)
                        dst.update(from: base + t * kvDim, count: run * kvDim)
                        t += run
                    }
                }
            }
        }
    }
}

extension TransformerModel {
    /// A fingerprint of the model: architecture, shapes, and a hash of the start and end of the tensor data. KV from
    /// a model with another fingerprint is refused.
    public var fingerprint: UInt64 {
        var h = FNV1a()
        let c = config
        for v in [c.layerCount, c.embeddingLength, c.headCount, c.kvHeadCount, c.headDim, c.vocabSize] {
            h.mix(word: UInt64(bitPattern: Int64(v)))
        }
        h.mix(c.architecture.rawValue.utf8)
        let data = file.bytes
        let start = min(file.dataOffset, data.count)
        let window = 1 << 16
        h.mix(UnsafeRawBufferPointer(rebasing: data[start..<min(data.count, start + window)]))
        h.mix(UnsafeRawBufferPointer(rebasing: data[max(start, data.count - window)..<data.count]))
        return h.value
    }
}
