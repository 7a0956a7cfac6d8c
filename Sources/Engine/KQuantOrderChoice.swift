/// Which of llama.cpp's K-quant orders computes a row, as flags for the matrix kernels (`TK_ORDER_*`).
///
/// - Q4_K: on AVX2 machines llama.cpp repacks every Q4_K matrix whose row count is a multiple of 8 (`q4_K_8x8`) and
///   multiplies it by its GEMM for a micro-batch's rows in fours (one FMA per 64 values) and by its GEMV for the rows
///   left over and for every generated token (one FMA per 256 values).
/// - Q6_K and Q5_K (not repacked on x86), and Q4_K matrices it does not repack: a micro-batch of 8 rows or more goes
///   through its tiled K-quant matmul (`ggml-cpu/tiled`: exact integer sums and one FMA per 256 values); fewer rows,
///   and every generated token, through `vec_dot` (eight lanes).
///
/// As with `AttentionKernelChoice`, the choice depends only on the row's position and its prompt's length (through the
/// micro-batch `PromptBatching` puts it in), so outputs stay batch-invariant.
public enum KQuantOrderChoice {
    /// The Q4_K GEMM's order (`TK_ORDER_Q4K_GEMM`).
    public static let q4KGEMM: UInt8 = 1
    /// The tiled matmul's order (`TK_ORDER_TILED`).
    public static let tiled: UInt8 = 2

    /// Whether the row at `position` of a request whose prompt has `promptLength` tokens takes the Q4_K GEMM's order.
    public static func usesQ4KGEMM(position: Int, promptLength: Int, batching: PromptBatching = .plain) -> Bool {
        guard let batch = batching.microBatch(position: position, promptLength: promptLength) else { return false }
        return batch.rows > 3 && position - batch.start < batch.rows - batch.rows % 4
    }

    /// Whether the row takes the tiled matmul's order (Q6_K, Q5_K, and Q4_K that llama.cpp does not repack).
    public static func usesTiled(position: Int, promptLength: Int, batching: PromptBatching = .plain) -> Bool {
        guard let batch = batching.microBatch(position: position, promptLength: promptLength) else { return false }
        return batch.rows >= 8
    }

    /// The row's flags for the kernels.
    public static func orders(position: Int, promptLength: Int, batching: PromptBatching = .plain) -> UInt8 {
        (usesQ4KGEMM(position: position, promptLength: promptLength, batching: batching) ? q4KGEMM : 0)
            | (usesTiled(position: position, promptLength: promptLength, batching: batching) ? tiled : 0)
    }

    /// A digest of the orders of the `count` rows from `start` (0 when every row takes the default orders). KV
    /// computed in other orders differs in its bits, so the prefix cache keys blocks by it too.
    public static func signature(start: Int, count: Int, promptLength: Int, batching: PromptBatching = .plain) -> UInt64
    {
        var digest: UInt64 = 0
        for position in start..<start + count {
            let flags = orders(position: position, promptLength: promptLength, batching: batching)
            guard flags != 0 else { continue }
            digest =
                ((digest ^ 0x9e37_79b9) &+ UInt64(position - start + 1) &+ UInt64(flags) << 32) &* 0x0000_0100_0000_01b3
        }
        return digest
    }
}
