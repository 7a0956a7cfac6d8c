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

    public init(
        tokens: [Int32], layerCount: Int, kvDim: Int, fingerprint: UInt64, values: [UInt16], firstToken: Int32? = nil
    ) {
        self.tokens = tokens
        self.layerCount = layerCount
        self.kvDim = kvDim
        self.fingerprint = fingerprint
        self.values = values
        self.firstToken = firstToken
    }

    /// Values in one layer's K (or V).
    public var valuesPerPart: Int { tokens.count * kvDim }

    /// Bytes of KV carried.
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

extension PagedKVCache {
    /// Copies one layer's K and V of positions `range` of a sequence with block table `table`.
    func slice(layer: Int, range: Range<Int>, table: [Int32]) -> KVLayerSlice {
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

    /// Writes positions 0..<count of `payload` into a sequence with block table `table`: one copy per run of
    /// positions that share a block (their rows are contiguous there).
    public func load(_ payload: KVPayload, count: Int, table: [Int32]) {
        payload.values.withUnsafeBufferPointer { input in
            for layer in 0..<layerCount {
                for part in [false, true] {
                    let base = input.baseAddress! + payload.offset(layer: layer, value: part)
                    var t = 0
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
