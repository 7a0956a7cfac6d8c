/// Which of llama.cpp's two Q4_K orders computes a row. On AVX2 machines llama.cpp repacks every Q4_K matrix whose
/// row count is a multiple of 8 (`q4_K_8x8`) and multiplies it by its GEMM for a micro-batch's rows in fours (one FMA
/// per 64 values) and by its GEMV for the rows left over and for every generated token (one FMA per 256 values).
///
/// As with `AttentionKernelChoice`, the choice depends only on the row's position and its prompt's length, so outputs
/// stay batch-invariant. The prompt's micro-batches of 512 are counted from position 1: the golden reference's server
/// evaluated each prompt after the BOS it kept from the request before (measured: this rule reproduces its logits
/// for the prompts that nothing else separates).
public enum Q4KOrderChoice {
    /// Whether the row at `position` of a request whose prompt has `promptLength` tokens takes the GEMM's order.
    public static func usesGEMM(position: Int, promptLength: Int) -> Bool {
        guard position < promptLength else { return false }
        let first = 1
        let start =
            first + max(0, position - first) / AttentionKernelChoice.microBatch * AttentionKernelChoice.microBatch
        let rows = min(promptLength, start + AttentionKernelChoice.microBatch) - start
        let index = position - start
        return rows > 3 && index < rows - rows % 4
    }

    /// A digest of the orders of the `count` rows from `start` (0 when none takes the GEMM's). KV computed in other
    /// orders differs in its bits, so the prefix cache keys blocks by it too.
    public static func signature(start: Int, count: Int, promptLength: Int) -> UInt64 {
        var digest: UInt64 = 0
        for position in start..<start + count where usesGEMM(position: position, promptLength: promptLength) {
            digest = ((digest ^ 0x9e37_79b9) &+ UInt64(position - start + 1)) &* 0x0000_0100_0000_01b3
        }
        return digest
    }
}
