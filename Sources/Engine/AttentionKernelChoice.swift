/// Which attention kernel computes a row, chosen as llama.cpp chooses it, so that outputs match llama.cpp's bit for bit.
///
/// llama.cpp computes a prompt in micro-batches of 512 tokens and runs its tiled flash-attention kernel for a
/// micro-batch of 64 rows or more, its one-key-at-a-time kernel otherwise (and for every generated token). Here the
/// choice depends only on the row's position and its request's prompt length, never on what else is in the batch or
/// on how the prompt was chunked, so outputs stay batch-invariant.
public enum AttentionKernelChoice {
    /// llama.cpp's default micro-batch size (`n_ubatch`).
    public static let microBatch = 512
    /// The fewest rows for which llama.cpp's CPU backend takes the tiled kernel (`GGML_FA_TILE_Q`).
    public static let tiledMinimumRows = 64

    /// Whether the row at `position` of a request whose prompt has `promptLength` tokens uses the tiled kernel.
    public static func isTiled(position: Int, promptLength: Int) -> Bool {
        guard position < promptLength else { return false }
        let start = position / microBatch * microBatch
        return min(microBatch, promptLength - start) >= tiledMinimumRows
    }

    /// How many of the `count` rows from `start` use the tiled kernel. They are always the first ones: a block of rows
    /// lies in one micro-batch, and prompt rows come before generated ones.
    public static func tiledRows(start: Int, count: Int, promptLength: Int) -> Int {
        (start..<start + count).reduce(0) { $0 + (isTiled(position: $1, promptLength: promptLength) ? 1 : 0) }
    }
}
