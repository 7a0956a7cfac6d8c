import Engine
import Testing

/// The attention kernel of each row follows llama.cpp's choice, from the row's position and its prompt's length alone.
@Suite struct AttentionKernelChoiceTests {
    typealias Choice = AttentionKernelChoice

    @Test func shortPromptsUseTheOneChunkKernelUntilTheCacheReaches257Cells() {
        for position in [0, 39] { #expect(Choice.kernel(position: position, promptLength: 40) == .oneChunk) }
        #expect(Choice.kernel(position: 40, promptLength: 40) == .oneChunk)
        #expect(Choice.kernel(position: 255, promptLength: 40) == .oneChunk)
        #expect(Choice.kernel(position: 256, promptLength: 40) == .split(cells: 512, parts: Choice.llamaThreads))
        #expect(Choice.kernel(position: 768, promptLength: 40) == .split(cells: 1024, parts: Choice.llamaThreads))
    }

    @Test func promptMicroBatchesOf64RowsOrMoreAreTiled() {
        #expect(Choice.kernel(position: 0, promptLength: 63) == .oneChunk)
        #expect(Choice.kernel(position: 0, promptLength: 64) == .tiled)
        #expect(Choice.kernel(position: 63, promptLength: 64) == .tiled)
        #expect(Choice.kernel(position: 64, promptLength: 64) == .oneChunk, "the first generated token")
        // 600 tokens: micro-batches of 512 and 88 rows, both tiled; 530: the second has 18 rows.
        #expect(Choice.kernel(position: 599, promptLength: 600) == .tiled)
        #expect(Choice.kernel(position: 511, promptLength: 530) == .tiled)
        #expect(Choice.kernel(position: 512, promptLength: 530) == .oneChunk)
        // 513: the last prompt token is a micro-batch of one row over 768 cells.
        #expect(Choice.kernel(position: 512, promptLength: 513) == .split(cells: 768, parts: Choice.llamaThreads))
    }

    @Test func blockSignaturesTellKernelsApart() {
        #expect(Choice.signature(start: 0, count: 16, promptLength: 40) == 0)
        let tiled = Choice.signature(start: 0, count: 16, promptLength: 100)
        let split = Choice.signature(start: 256, count: 16, promptLength: 40)
        let mixed = Choice.signature(start: 96, count: 16, promptLength: 100)
        #expect(Set([tiled, split, mixed, 0]).count == 4)
    }
}
