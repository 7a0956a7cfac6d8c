import Engine
import Testing

/// The K-quant orders of each row follow llama.cpp's repacked Q4_K kernels and its tiled matmul, from the micro-batch
/// llama-server puts the row in (`PromptBatching`).
@Suite struct KQuantOrderChoiceTests {
    typealias Choice = KQuantOrderChoice

    @Test func promptRowsInFoursTakeTheGEMMAndTheRestTheGEMV() {
        // 7 tokens: one micro-batch of 7 rows; rows 0-3 in the GEMM, 4-6 left over.
        #expect((0...3).allSatisfy { Choice.usesQ4KGEMM(position: $0, promptLength: 7) })
        #expect(!(4...6).contains { Choice.usesQ4KGEMM(position: $0, promptLength: 7) })
        // Three rows or fewer: all in the GEMV.
        #expect(!(0..<3).contains { Choice.usesQ4KGEMM(position: $0, promptLength: 3) })
        // Generated tokens: always the GEMV.
        #expect(!Choice.usesQ4KGEMM(position: 7, promptLength: 7))
        // 600 tokens: micro-batches 0-511 (all GEMM) and 512-599 (88 rows, all GEMM).
        #expect((0..<600).allSatisfy { Choice.usesQ4KGEMM(position: $0, promptLength: 600) })
        // 603 tokens: 512-602 is 91 rows, 88 GEMM and 3 left over.
        #expect(
            Choice.usesQ4KGEMM(position: 599, promptLength: 603)
                && !Choice.usesQ4KGEMM(position: 600, promptLength: 603))
    }

    @Test func microBatchesOfEightRowsOrMoreTakeTheTiledOrder() {
        #expect(!(0..<7).contains { Choice.usesTiled(position: $0, promptLength: 7) })
        #expect((0..<8).allSatisfy { Choice.usesTiled(position: $0, promptLength: 8) })
        #expect(!Choice.usesTiled(position: 8, promptLength: 8), "generated")
        // 518 tokens: 0-511 tiled, 512-517 (6 rows) not.
        #expect(
            Choice.usesTiled(position: 511, promptLength: 518) && !Choice.usesTiled(position: 512, promptLength: 518))
        #expect(Choice.orders(position: 0, promptLength: 9) == Choice.q4KGEMM | Choice.tiled)
        #expect(Choice.orders(position: 8, promptLength: 9) == Choice.tiled, "left over from the fours")
    }

    @Test func checkpointedPromptsEndInBatchesOfTheirOwn() {
        let cut = PromptBatching.checkpointed
        // 6 tokens go as 2 + 4 (the last 4 alone); 4 tokens or fewer as one batch.
        #expect(cut.microBatch(position: 1, promptLength: 6)! == (0, 2))
        #expect(cut.microBatch(position: 2, promptLength: 6)! == (2, 4))
        #expect(cut.microBatch(position: 3, promptLength: 4)! == (0, 4))
        #expect(cut.microBatch(position: 6, promptLength: 6) == nil)
        // 1,100 tokens: [0, 584) in micro-batches of 512 and 72, [584, 1096) as one of 512, then the last 4.
        #expect(cut.microBatch(position: 511, promptLength: 1100)! == (0, 512))
        #expect(cut.microBatch(position: 512, promptLength: 1100)! == (512, 72))
        #expect(cut.microBatch(position: 584, promptLength: 1100)! == (584, 512))
        #expect(cut.microBatch(position: 1096, promptLength: 1100)! == (1096, 4))
        // Plain batching: micro-batches of 512 from 0.
        #expect(PromptBatching.plain.microBatch(position: 1096, promptLength: 1100)! == (1024, 76))
        // The orders follow: a 14-token prompt's first 10 rows are tiled, its last 4 are not (and are the GEMM's).
        #expect((0..<10).allSatisfy { Choice.usesTiled(position: $0, promptLength: 14, batching: cut) })
        #expect(!(10..<14).contains { Choice.usesTiled(position: $0, promptLength: 14, batching: cut) })
        #expect((10..<14).allSatisfy { Choice.usesQ4KGEMM(position: $0, promptLength: 14, batching: cut) })
        #expect(!Choice.usesQ4KGEMM(position: 9, promptLength: 14, batching: cut), "8 of 10 in the GEMM")
        #expect(
            AttentionKernelChoice.kernel(position: 600, promptLength: 1100, batching: cut) == .tiled
                && AttentionKernelChoice.kernel(position: 1097, promptLength: 1100, batching: cut) == .oneChunk)
    }

    @Test func blockSignaturesTellOrdersApart() {
        #expect(Choice.signature(start: 0, count: 16, promptLength: 3) == 0)
        #expect(Choice.signature(start: 48, count: 16, promptLength: 40) == 0, "generated positions only")
        let gemm = Choice.signature(start: 0, count: 16, promptLength: 40)
        let mixed = Choice.signature(start: 32, count: 16, promptLength: 39)
        let gemmOnly = Choice.signature(start: 0, count: 16, promptLength: 7)
        let gemmAndTiled = Choice.signature(start: 0, count: 16, promptLength: 9)
        let cut = Choice.signature(start: 0, count: 16, promptLength: 14, batching: .checkpointed)
        #expect(Set([gemm, mixed, gemmOnly, gemmAndTiled, cut, 0]).count == 6)
    }
}
