/// Which attention kernel computes a row, chosen as llama.cpp (with flash attention, its CPU default) chooses it, so
/// that outputs match llama.cpp's bit for bit.
///
/// llama.cpp computes a prompt in micro-batches of 512 tokens and generates one token per micro-batch. A micro-batch
/// of 64 rows or more runs its tiled kernel; a single row over 512 or more KV cells (the cache length padded to a
/// multiple of 256) runs its split-KV kernel, one chunk of cells per thread; anything else runs its one-key-at-a-time
/// kernel. Here the choice depends only on the row's position and its request's prompt length, never on what else is
/// in the batch or on how the prompt was chunked, so outputs stay batch-invariant. How the prompt is cut into micro-batches is `PromptBatching`'s.
public enum AttentionKernelChoice {
    /// The kernel for one row.
    public enum Kernel: Equatable, Sendable {
        /// One key at a time with an fp16 accumulator (`tk_attend_f16`).
        case oneChunk
        /// Tiles of 64 keys in fp32 (`tk_attend_tiled`).
        case tiled
        /// `cells` KV cells cut into `parts` chunks, merged (`tk_attend_split`).
        case split(cells: Int, parts: Int)
    }

    /// llama.cpp's default micro-batch size (`n_ubatch`).
    public static let microBatch = PromptBatching.microBatchSize
    /// The fewest rows for which llama.cpp's CPU backend takes the tiled kernel (`GGML_FA_TILE_Q`).
    public static let tiledMinimumRows = 64
    /// llama.cpp pads the KV cells a micro-batch attends to up to a multiple of this.
    public static let cellPadding = 256
    /// The fewest padded cells for which a single row takes the split-KV kernel.
    public static let splitMinimumCells = 512
    /// llama.cpp's thread count, which sets the split-KV chunks: the golden reference ran llama-server with 2 threads.
    public static let llamaThreads = 2

    /// The kernel of the row at `position` of a request whose prompt has `promptLength` tokens, cut as `batching`.
    public static func kernel(position: Int, promptLength: Int, batching: PromptBatching = .plain) -> Kernel {
        let rows: Int
        let lastPosition: Int
        if let batch = batching.microBatch(position: position, promptLength: promptLength) {
            rows = batch.rows
            lastPosition = batch.start + batch.rows - 1
        } else {
            rows = 1
            lastPosition = position
        }
        if rows >= tiledMinimumRows { return .tiled }
        let cells = (lastPosition + cellPadding) / cellPadding * cellPadding
        if rows == 1, cells >= splitMinimumCells { return .split(cells: cells, parts: llamaThreads) }
        return .oneChunk
    }

    /// A digest of the kernels of the `count` rows from `start`: 0 when every one is `.oneChunk`. KV computed by
    /// different kernels differs in its bits, so the prefix cache keys blocks by it.
    public static func signature(start: Int, count: Int, promptLength: Int, batching: PromptBatching = .plain) -> UInt64
    {
        var digest: UInt64 = 0
        for position in start..<start + count {
            let code: UInt64
            switch kernel(position: position, promptLength: promptLength, batching: batching) {
            case .oneChunk: code = 0
            case .tiled: code = 1
            case .split(let cells, let parts): code = 2 | UInt64(cells) << 8 | UInt64(parts) << 40
            }
            if code == 0 && digest == 0 { continue }
            digest = ((digest ^ code) &+ UInt64(position - start + 1)) &* 0x0000_0100_0000_01b3
        }
        return digest
    }
}
