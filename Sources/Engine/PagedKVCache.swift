import CKernels
import Foundation

/// The KV cache: fixed-size blocks of token slots, shared by all sequences, stored as fp16.
///
/// Layout: for each layer, K then V, each `[block][slot][kvDim]`. A sequence owns a block table (the list of its
/// block indices); token `t` of a sequence lives in block `table[t / blockSize]`, slot `t % blockSize`.
public final class PagedKVCache: @unchecked Sendable {
    public let layerCount: Int
    public let blockCount: Int
    public let blockSize: Int
    public let kvDim: Int
    private let storage: UnsafeMutablePointer<UInt16>

    public init(layerCount: Int, blockCount: Int, blockSize: Int, kvDim: Int) {
        self.layerCount = layerCount
        self.blockCount = blockCount
        self.blockSize = blockSize
        self.kvDim = kvDim
        let count = layerCount * 2 * blockCount * blockSize * kvDim
        // calloc: large caches come from zeroed pages the kernel maps on first touch.
        guard let raw = calloc(max(1, count), MemoryLayout<UInt16>.size) else {
            fatalError("cannot allocate a KV cache of \(count * 2) bytes")
        }
        storage = raw.bindMemory(to: UInt16.self, capacity: max(1, count))
    }

    deinit { free(storage) }

    /// Bytes of fp16 K plus V held per token across all layers.
    public var bytesPerToken: Int { layerCount * 2 * kvDim * 2 }

    /// Elements of one layer's K (or V) in one block.
    public var blockElements: Int { blockSize * kvDim }

    /// Pointer to the K (`value == false`) or V row of `slot` in `block` for `layer`.
    @inline(__always)
    public func row(layer: Int, value: Bool, block: Int, slot: Int) -> UnsafeMutablePointer<UInt16> {
        storage + (((layer * 2 + (value ? 1 : 0)) * blockCount + block) * blockSize + slot) * kvDim
    }

    /// Pointer to the start of a whole block of K or V for `layer` (`blockElements` values).
    @inline(__always)
    public func blockStart(layer: Int, value: Bool, block: Int) -> UnsafeMutablePointer<UInt16> {
        row(layer: layer, value: value, block: block, slot: 0)
    }

    /// Stores float K and V rows for token position `position` of a sequence with `table`.
    @inline(__always)
    public func store(
        layer: Int, table: [Int32], position: Int, k: UnsafePointer<Float>, v: UnsafePointer<Float>
    ) {
        let block = Int(table[position / blockSize])
        let slot = position % blockSize
        tk_f32_to_f16(k, row(layer: layer, value: false, block: block, slot: slot), Int32(kvDim))
        tk_f32_to_f16(v, row(layer: layer, value: true, block: block, slot: slot), Int32(kvDim))
    }
}
