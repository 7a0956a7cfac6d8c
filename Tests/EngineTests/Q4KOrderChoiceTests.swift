import Engine
import Testing

/// The Q4_K order of each row follows llama.cpp's repacked kernels, from the row's position and its prompt's length.
@Suite struct Q4KOrderChoiceTests {
    typealias Choice = Q4KOrderChoice

    @Test func promptRowsInFoursTakeTheGEMMAndTheRestTheGEMV() {
        // 7 tokens: positions 1-6 are one micro-batch of 6 rows; rows 1-4 in the GEMM, 5 and 6 left over.
        #expect((1...4).allSatisfy { Choice.usesGEMM(position: $0, promptLength: 7) })
        #expect(!Choice.usesGEMM(position: 5, promptLength: 7) && !Choice.usesGEMM(position: 6, promptLength: 7))
        // Three rows or fewer: all in the GEMV.
        #expect(!(0..<4).contains { Choice.usesGEMM(position: $0, promptLength: 4) })
        // Generated tokens: always the GEMV.
        #expect(!Choice.usesGEMM(position: 7, promptLength: 7))
        // 600 tokens: micro-batches 1-512 (all GEMM) and 513-599 (87 rows: 84 GEMM, 3 left over).
        #expect(Choice.usesGEMM(position: 512, promptLength: 600) && Choice.usesGEMM(position: 596, promptLength: 600))
        #expect(!Choice.usesGEMM(position: 597, promptLength: 600))
    }

    @Test func blockSignaturesTellOrdersApart() {
        #expect(Choice.signature(start: 0, count: 16, promptLength: 3) == 0)
        #expect(Choice.signature(start: 48, count: 16, promptLength: 40) == 0, "generated positions only")
        let gemm = Choice.signature(start: 0, count: 16, promptLength: 40)
        let mixed = Choice.signature(start: 32, count: 16, promptLength: 39)
        #expect(Set([gemm, mixed, 0]).count == 3)
    }
}
