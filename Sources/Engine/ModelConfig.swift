import GGUF

/// Why a model could not be loaded.
public enum ModelError: Error, CustomStringConvertible {
    case unsupportedArchitecture(String)
    case missingMetadata(String)
    case missingTensor(String)
    case badTensor(String, String)
    case badTokenizer(String)

    public var description: String {
        switch self {
        case .unsupportedArchitecture(let a):
            return "unsupported model architecture '\(a)' (supported: llama, qwen2, gemma3)"
        case .missingMetadata(let k): return "model metadata lacks '\(k)'"
        case .missingTensor(let t): return "model lacks tensor '\(t)'"
        case .badTensor(let t, let why): return "tensor '\(t)': \(why)"
        case .badTokenizer(let why): return "tokenizer: \(why)"
        }
    }
}

/// Hyperparameters of a llama-family transformer (llama, qwen2, gemma3), read from GGUF metadata.
public struct ModelConfig: Sendable, Equatable {
    public enum Architecture: String, Sendable { case llama, qwen2, gemma3 }

    public var architecture: Architecture
    public var layerCount: Int
    public var embeddingLength: Int
    public var headCount: Int
    public var kvHeadCount: Int
    public var headDim: Int
    public var feedForwardLength: Int
    public var contextLength: Int
    public var ropeFreqBase: Float
    /// Linear RoPE scaling factor (positions are divided by it); 1 when absent.
    public var ropeLinearScale: Float
    public var rmsNormEps: Float
    public var vocabSize: Int
    /// Rotate adjacent pairs (llama, "normal") or the two halves (qwen2, "neox").
    public var ropeNeox: Bool

    /// Gemma 3: how many positions a sliding-window layer attends to (the query's own included); nil without windows.
    public var slidingWindow: Int?
    /// Per layer, whether it attends within `slidingWindow` only (llama.cpp's rule for gemma3: five sliding layers,
    /// then one global).
    public var slidingLayers: [Bool]
    /// RoPE base of the sliding-window layers (gemma3: 10,000; the global layers use `ropeFreqBase`).
    public var ropeFreqBaseSliding: Float
    /// The factor queries are multiplied by before attention (1/sqrt(head_dim) unless the model says otherwise).
    public var attentionScale: Float
    /// Gemma: embeddings scaled by sqrt(hidden), per-head Q and K norms, post-attention and post-FFN norms, and a
    /// GELU (tanh) gated FFN instead of SwiGLU.
    public var isGemma: Bool { architecture == .gemma3 }

    public var qDim: Int { headCount * headDim }
    public var kvDim: Int { kvHeadCount * headDim }

    public init(file: GGUFFile) throws {
        guard let arch = file.metadata["general.architecture"]?.stringValue else {
            throw ModelError.missingMetadata("general.architecture")
        }
        guard let architecture = Architecture(rawValue: arch) else { throw ModelError.unsupportedArchitecture(arch) }
        func int(_ key: String) throws -> Int {
            guard let v = file.metadata["\(arch).\(key)"]?.intValue else {
                throw ModelError.missingMetadata("\(arch).\(key)")
            }
            return v
        }
        func float(_ key: String) -> Float? { file.metadata["\(arch).\(key)"]?.doubleValue.map(Float.init) }
        self.architecture = architecture
        layerCount = try int("block_count")
        embeddingLength = try int("embedding_length")
        headCount = try int("attention.head_count")
        kvHeadCount = (try? int("attention.head_count_kv")) ?? headCount
        feedForwardLength = try int("feed_forward_length")
        contextLength = (try? int("context_length")) ?? 2048
        headDim = (try? int("attention.key_length")) ?? (embeddingLength / max(1, headCount))
        ropeFreqBase = float("rope.freq_base") ?? 10_000
        rmsNormEps = float("attention.layer_norm_rms_epsilon") ?? 1e-5
        if file.metadata["\(arch).rope.scaling.type"]?.stringValue == "linear", let f = float("rope.scaling.factor"),
            f > 0
        {
            ropeLinearScale = f
        } else {
            ropeLinearScale = 1
        }
        vocabSize =
            (try? int("vocab_size")) ?? file.metadata["tokenizer.ggml.tokens"]?.arrayValue?.count ?? 0
        ropeNeox = architecture == .qwen2 || architecture == .gemma3
        attentionScale = 1 / Float(headDim).squareRoot()
        ropeFreqBaseSliding = ropeFreqBase
        slidingWindow = nil
        slidingLayers = [Bool](repeating: false, count: layerCount)
        if architecture == .gemma3 {
            // As llama.cpp: every sixth layer is global, the others slide over the last `sliding_window` positions
            // with RoPE base 10,000. (Its 27B variant scales queries by the hidden size per head instead.)
            slidingWindow = try int("attention.sliding_window")
            slidingLayers = (0..<layerCount).map { $0 % 6 < 5 }
            ropeFreqBaseSliding = 10_000
            if layerCount == 62 { attentionScale = 1 / Float(embeddingLength / headCount).squareRoot() }
            rmsNormEps = float("attention.layer_norm_rms_epsilon") ?? 1e-6
        }
        guard layerCount > 0, embeddingLength > 0, headCount > 0, kvHeadCount > 0, headCount % kvHeadCount == 0,
            headDim % 2 == 0, feedForwardLength > 0, vocabSize > 0, (slidingWindow ?? 1) > 0
        else {
            throw ModelError.badTensor("hyperparameters", "inconsistent head or layer counts")
        }
    }
}
