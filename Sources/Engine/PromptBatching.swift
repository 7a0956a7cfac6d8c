/// How llama.cpp's server cuts a prompt into micro-batches. The kernels that compute a row, and so its bits, depend on
/// the micro-batch it is in (`AttentionKernelChoice`, `KQuantOrderChoice`), so matching llama.cpp bit for bit means
/// cutting the same way; here the cut depends only on the prompt's length, never on how Tandem chunks or batches it.
///
/// llama-server evaluates a prompt in batches of up to 2,048 tokens (`n_batch`), each split into micro-batches of 512
/// (`n_ubatch`). For a model with sliding-window layers it also ends a batch 4 + 512 and 4 tokens before the prompt's
/// end, so that it can save a context checkpoint there (llama.cpp PR 20288): a prompt of 6 tokens goes as 2 + 4.
/// The golden reference's server evaluated every prompt from position 0 (nothing cached).
public struct PromptBatching: Sendable, Equatable {
    /// Whether the batches end 516 and 4 tokens before the prompt's end (models with sliding-window layers).
    public let cutsBeforeEnd: Bool

    /// Prompts cut only into micro-batches of 512 from position 0.
    public static let plain = PromptBatching(cutsBeforeEnd: false)
    /// Prompts also cut 516 and 4 tokens before their end.
    public static let checkpointed = PromptBatching(cutsBeforeEnd: true)

    /// llama.cpp's default micro-batch size (`n_ubatch`).
    public static let microBatchSize = 512
    /// How far before a prompt's end llama-server ends a batch for a checkpoint (`4 + n_ubatch`, then 4).
    public static let checkpointOffsets = [4 + microBatchSize, 4]

    public init(cutsBeforeEnd: Bool) { self.cutsBeforeEnd = cutsBeforeEnd }

    /// The batching llama-server uses for a model: checkpointed when it has sliding-window layers.
    public init(slidingWindow: Int?) { self.init(cutsBeforeEnd: slidingWindow != nil) }

    /// The micro-batch holding the prompt row at `position`: its first position and row count; nil for a generated
    /// row (`position >= promptLength`).
    public func microBatch(position: Int, promptLength: Int) -> (start: Int, rows: Int)? {
        guard position >= 0, position < promptLength else { return nil }
        var segmentStart = 0
        var segmentEnd = promptLength
        if cutsBeforeEnd {
            for offset in Self.checkpointOffsets where promptLength - offset > 0 {
                let cut = promptLength - offset
                if position < cut {
                    segmentEnd = min(segmentEnd, cut)
                } else {
                    segmentStart = max(segmentStart, cut)
                }
            }
        }
        let start = segmentStart + (position - segmentStart) / Self.microBatchSize * Self.microBatchSize
        return (start, min(segmentEnd, start + Self.microBatchSize) - start)
    }
}
