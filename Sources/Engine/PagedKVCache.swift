import CKernels
import Foundation

/// The KV cache: fixed-size blocks of token slots, shared by all sequences, stored as fp16.
///
/// Layout: for each layer, K then V, each `[block][slot][kvDim]`. A sequence owns a block table (the list of its
/// block indices); token `t` of a sequence lives in block `table[t / blockSize]`, slot `t % blockSize`.
///
/// A split cache (`windowBlockCount` given) keeps its sliding-window layers apart, in `windowBlockCount` blocks of
/// their own: a sequence holds those only for the positions a query can still see (`KVBlockTables.window`), so a
/// long sequence's sliding layers take a window's memory, not the sequence's.
public final class PagedKVCache: @unchecked Sendable {
    public let layerCount: Int
    /// Blocks of the full-attention layers (of every layer, unsplit).
    public let blockCount: Int
    /// Blocks of the sliding-window layers of a split cache; nil when they share `blockCount`'s blocks.
    public let windowBlockCount: Int?
    public let blockSize: Int
    public let kvDim: Int
    /// Per layer: whether it lives in the window blocks.
    public let inWindowBlocks: [Bool]
    /// Per layer: its index among the layers of its group.
    private let groupIndex: [Int]
    /// Layers in the full and the window blocks.
    private let groupLayers: [Int]
    private let fullStorage: UnsafeMutablePointer<UInt16>
    private let windowStorage: UnsafeMutablePointer<UInt16>?

    /// `slidingLayers` and `windowBlockCount` split the cache: the layers marked keep their KV in
    /// `windowBlockCount` blocks of their own.
    public init(
        layerCount: Int, blockCount: Int, blockSize: Int, kvDim: Int, slidingLayers: [Bool]? = nil,
        windowBlockCount: Int? = nil
    ) {
        self.layerCount = layerCount
        self.blockCount = blockCount
        self.blockSize = blockSize
        self.kvDim = kvDim
        let split = windowBlockCount != nil && (slidingLayers?.contains(true) ?? false)
        let inWindow = split ? slidingLayers! : [Bool](repeating: false, count: layerCount)
        inWindowBlocks = inWindow
        self.windowBlockCount = split ? windowBlockCount : nil
        var counts = [0, 0]
        var index = [Int]()
        for w in inWindow {
            index.append(counts[w ? 1 : 0])
            counts[w ? 1 : 0] += 1
        }
        groupIndex = index
        groupLayers = counts
        fullStorage = Self.allocate(counts[0] * 2 * blockCount * blockSize * kvDim)
        windowStorage = split ? Self.allocate(counts[1] * 2 * windowBlockCount! * blockSize * kvDim) : nil
    }

    // calloc: large caches come from zeroed pages the kernel maps on first touch.
    private static func allocate(_ count: Int) -> UnsafeMutablePointer<UInt16> {
        guard let raw = calloc(max(1, count), MemoryLayout<UInt16>.size) else {
            fatalError("cannot allocate a KV cache of \(count * 2) bytes")
        }
        return raw.bindMemory(to: UInt16.self, capacity: max(1, count))
    }

    deinit {
        free(fullStorage)
        if let windowStorage { free(windowStorage) }
    }

    /// Bytes of fp16 K plus V held per token across all layers.
    public var bytesPerToken: Int { layerCount * 2 * kvDim * 2 }

    /// Bytes of one block of the layers in `window` blocks or the others.
    public func bytesPerBlock(window: Bool) -> Int {
        groupLayers[window ? 1 : 0] * 2 * blockSize * kvDim * 2
    }

    /// Bytes the cache holds: every block of both groups.
    public var byteCount: Int {
        blockCount * bytesPerBlock(window: false) + (windowBlockCount ?? 0) * bytesPerBlock(window: true)
    }

    /// Elements of one layer's K (or V) in one block.
    public var blockElements: Int { blockSize * kvDim }

    /// Pointer to the K (`value == false`) or V row of `slot` in `block` (of the layer's group) for `layer`.
    @inline(__always)
    public func row(layer: Int, value: Bool, block: Int, slot: Int) -> UnsafeMutablePointer<UInt16> {
        let window = inWindowBlocks[layer]
        let base = window ? windowStorage! : fullStorage
        let blocks = window ? windowBlockCount! : blockCount
        return base + (((groupIndex[layer] * 2 + (value ? 1 : 0)) * blocks + block) * blockSize + slot) * kvDim
    }

    /// Pointer to the start of a whole block of K or V for `layer` (`blockElements` values).
    @inline(__always)
    public func blockStart(layer: Int, value: Bool, block: Int) -> UnsafeMutablePointer<UInt16> {
        row(layer: layer, value: value, block: block, slot: 0)
    }

    /// The block table `layer` reads in a sequence with `tables`.
    @inline(__always)
    public func table(layer: Int, _ tables: KVBlockTables) -> [Int32] {
        inWindowBlocks[layer] ? tables.window ?? tables.full : tables.full
    }

    /// Stores float K and V rows for token position `position` of a sequence whose `layer` reads `table`.
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

/// A sequence's blocks in a `PagedKVCache`: `full` for the full-attention layers (every layer of an unsplit cache),
/// `window` for the sliding-window layers of a split one, -1 where the sequence holds no block (positions no later
/// query sees). Both are indexed by position / blockSize.
public struct KVBlockTables: Sendable, Equatable {
    public var full: [Int32]
    public var window: [Int32]?

    public init(full: [Int32], window: [Int32]? = nil) {
        self.full = full
        self.window = window
    }
}
