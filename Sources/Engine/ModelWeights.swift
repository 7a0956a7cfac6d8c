import GGUF
import Kernels

/// One transformer block's weights.
public struct LayerWeights: @unchecked Sendable {
    public let attentionNorm: [Float]
    public let wq: WeightMatrix
    public let wk: WeightMatrix
    public let wv: WeightMatrix
    public let wo: WeightMatrix
    /// Q, K, V biases (qwen2); nil for llama.
    public let bq: [Float]?
    public let bk: [Float]?
    public let bv: [Float]?
    public let ffnNorm: [Float]
    /// Gemma: RMSNorm weights over each query and key head, and after attention and after the FFN.
    public let qNorm: [Float]?
    public let kNorm: [Float]?
    public let postAttentionNorm: [Float]?
    public let postFFNNorm: [Float]?
    public let gate: WeightMatrix
    public let up: WeightMatrix
    public let down: WeightMatrix
}

/// All weights of a llama-family model, pointing into the memory-mapped GGUF file (norms copied as floats).
public struct ModelWeights: @unchecked Sendable {
    public let tokenEmbedding: WeightMatrix
    public let layers: [LayerWeights]
    public let outputNorm: [Float]
    /// The output head; the token embedding when the model ties them.
    public let output: WeightMatrix
    /// Per-dimension-pair RoPE frequency divisors (Llama 3 scaling), when the file has them.
    public let ropeFrequencyFactors: [Float]?

    public init(file: GGUFFile, config: ModelConfig) throws {
        let arena = WeightArena()
        func tensor(_ name: String) throws -> GGUFTensor {
            guard let t = file.tensor(name) else { throw ModelError.missingTensor(name) }
            return t
        }
        func matrix(_ name: String, rows: Int, columns: Int) throws -> WeightMatrix {
            let t = try tensor(name)
            guard t.shape.count == 2, t.shape[0] == columns, t.shape[1] == rows else {
                throw ModelError.badTensor(name, "shape \(t.shape), expected [\(columns), \(rows)]")
            }
            guard t.type.isDequantizable else {
                throw ModelError.badTensor(name, "type \(t.type.name) is not supported")
            }
            return WeightMatrix(type: t.type, data: file.data(of: t), rows: rows, columns: columns, arena: arena)
        }
        func vector(_ name: String, count: Int) throws -> [Float] {
            let t = try tensor(name)
            guard t.elementCount == count else {
                throw ModelError.badTensor(name, "has \(t.elementCount) elements, expected \(count)")
            }
            return try Dequantize.row(t.type, file.data(of: t), count: count)
        }
        func optionalVector(_ name: String, count: Int) throws -> [Float]? {
            file.tensor(name) == nil ? nil : try vector(name, count: count)
        }
        let c = config
        tokenEmbedding = try matrix("token_embd.weight", rows: c.vocabSize, columns: c.embeddingLength)
        outputNorm = try vector("output_norm.weight", count: c.embeddingLength)
        output =
            file.tensor("output.weight") != nil
            ? try matrix("output.weight", rows: c.vocabSize, columns: c.embeddingLength) : tokenEmbedding
        ropeFrequencyFactors = try optionalVector("rope_freqs.weight", count: c.headDim / 2)
        var layers: [LayerWeights] = []
        for i in 0..<c.layerCount {
            let p = "blk.\(i)."
            layers.append(
                LayerWeights(
                    attentionNorm: try vector(p + "attn_norm.weight", count: c.embeddingLength),
                    wq: try matrix(p + "attn_q.weight", rows: c.qDim, columns: c.embeddingLength),
                    wk: try matrix(p + "attn_k.weight", rows: c.kvDim, columns: c.embeddingLength),
                    wv: try matrix(p + "attn_v.weight", rows: c.kvDim, columns: c.embeddingLength),
                    wo: try matrix(p + "attn_output.weight", rows: c.embeddingLength, columns: c.qDim),
                    bq: try optionalVector(p + "attn_q.bias", count: c.qDim),
                    bk: try optionalVector(p + "attn_k.bias", count: c.kvDim),
                    bv: try optionalVector(p + "attn_v.bias", count: c.kvDim),
                    ffnNorm: try vector(p + "ffn_norm.weight", count: c.embeddingLength),
                    qNorm: c.isGemma ? try vector(p + "attn_q_norm.weight", count: c.headDim) : nil,
                    kNorm: c.isGemma ? try vector(p + "attn_k_norm.weight", count: c.headDim) : nil,
                    postAttentionNorm: c.isGemma
                        ? try vector(p + "post_attention_norm.weight", count: c.embeddingLength) : nil,
                    postFFNNorm: c.isGemma ? try vector(p + "post_ffw_norm.weight", count: c.embeddingLength) : nil,
                    gate: try matrix(p + "ffn_gate.weight", rows: c.feedForwardLength, columns: c.embeddingLength),
                    up: try matrix(p + "ffn_up.weight", rows: c.feedForwardLength, columns: c.embeddingLength),
                    down: try matrix(p + "ffn_down.weight", rows: c.embeddingLength, columns: c.feedForwardLength)
                ))
        }
        self.layers = layers
    }
}
