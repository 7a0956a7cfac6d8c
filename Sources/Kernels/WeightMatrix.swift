import CKernels
import Foundation
import GGUF

/// A copy of a Q4_1, Q5_0 or Q8_0 matrix (and with AVX-512, Q4_K, Q5_K or Q6_K) repacked into groups of 16 interleaved rows (see
/// CKernels' interleaved.c and interleaved_k.c), which the matrix kernels read 16 (AVX-512) or 8 (AVX2) rows at a
/// time.
final class InterleavedRows: @unchecked Sendable {
    let bytes: UnsafeMutableRawPointer
    let groups: Int
    /// The arena the bytes come from (kept alive with them), or nil when they were allocated alone.
    private let arena: WeightArena?

    init?(type: GGMLType, data: UnsafeRawPointer, rowBytes: Int, rows: Int, columns: Int, arena: WeightArena?) {
        guard rows > 0, columns > 0, columns % 32 == 0 else { return nil }
        let id = Int32(type.rawValue)
        let groupBytes: Int
        if [.q4_1, .q5_0, .q8_0].contains(type) {
            groupBytes = tk_interleaved_group_bytes(id, Int32(columns))
        } else if [.q4_K, .q5_K, .q6_K].contains(type), columns % 256 == 0, tk_simd_level() == 2 {
            // Only the AVX-512 kernels read K-quants interleaved; elsewhere the row kernels are faster.
            groupBytes = tk_interleaved_k_group_bytes(id, Int32(columns))
        } else {
            return nil
        }
        groups = (rows + 15) / 16
        let size = groups * groupBytes
        self.arena = arena
        bytes = arena?.allocate(size) ?? .allocate(byteCount: size, alignment: 64)
        if [.q4_K, .q5_K, .q6_K].contains(type) {
            tk_repack_interleaved_k(id, data, rowBytes, Int32(rows), Int32(columns), bytes)
        } else {
            tk_repack_interleaved(id, data, rowBytes, Int32(rows), Int32(columns), bytes)
        }
    }

    deinit { if arena == nil { bytes.deallocate() } }
}

/// Memory for a model's interleaved weights, in large slabs backed by transparent huge pages where the kernel allows
/// (`madvise(MADV_HUGEPAGE)`). Decode streams every weight once per token: with 2 MiB pages the hardware prefetcher
/// is not stopped at every 4 KiB page boundary, and the TLB holds the whole model. Freed with the last matrix.
public final class WeightArena: @unchecked Sendable {
    private static let slabBytes = 32 << 20
    private static let hugePage = 2 << 20
    private let lock = NSLock()
    private var slabs: [(base: UnsafeMutableRawPointer, size: Int)] = []
    private var next: UnsafeMutableRawPointer?
    private var left = 0

    public init() {}

    /// `count` bytes, 64-byte aligned, zero-filled.
    func allocate(_ count: Int) -> UnsafeMutableRawPointer {
        lock.lock()
        defer { lock.unlock() }
        let size = (count + 63) & ~63
        if size > left {
            let slab = (max(size, Self.slabBytes) + Self.hugePage - 1) / Self.hugePage * Self.hugePage
            guard let base = mmap(nil, slab, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
                base != MAP_FAILED
            else { fatalError("cannot map \(slab) bytes for the model's weights") }
            _ = madvise(base, slab, MADV_HUGEPAGE)
            slabs.append((base, slab))
            next = base
            left = slab
        }
        let p = next!
        next = p + size
        left -= size
        return p
    }

    deinit { for s in slabs { munmap(s.base, s.size) } }
}

/// A weight matrix of `rows` × `columns` in any ggml type, read in place from the mapped model file (Q4_1, Q5_0 and
/// Q8_0 from an interleaved copy). Row `r` holds the weights of output `r` (ggml's layout: `columns` is the contiguous
/// dimension).
public struct WeightMatrix: @unchecked Sendable {
    public let type: GGMLType
    public let data: UnsafeRawPointer
    public let rows: Int
    public let columns: Int
    public let rowBytes: Int
    let interleaved: InterleavedRows?

    /// `arena`, when given, holds the interleaved copy (a model's matrices share one).
    public init(type: GGMLType, data: UnsafeRawPointer, rows: Int, columns: Int, arena: WeightArena? = nil) {
        self.type = type
        self.data = data
        self.rows = rows
        self.columns = columns
        let rowBytes = type.byteCount(elements: columns) ?? 0
        self.rowBytes = rowBytes
        interleaved = InterleavedRows(
            type: type, data: data, rowBytes: rowBytes, rows: rows, columns: columns, arena: arena)
    }

    /// Whether a quantized-activation SIMD kernel exists for this type.
    public var hasIntegerKernel: Bool { type == .q4_0 || type == .q4_1 || type == .q8_0 || type == .q5_0 }
    /// Whether a K-quant kernel over Q8_K activations exists for this type.
    public var hasKQuantKernel: Bool { [.q4_K, .q5_K, .q6_K].contains(type) && columns % 256 == 0 }

    typealias OrderedInterleaved = (
        UnsafeRawPointer?, Int32, Int32, Int32, Int32, UnsafePointer<tk_block_q8k>?, Int32, UnsafePointer<UInt8>?,
        UnsafeMutablePointer<Float>?, Int32
    ) -> Int32
    typealias OrderedRows = (
        UnsafeRawPointer?, Int, Int32, Int32, Int32, UnsafePointer<tk_block_q8k>?, Int32, UnsafePointer<UInt8>?,
        UnsafeMutablePointer<Float>?, Int32
    ) -> Int32

    /// The kernels that take per-row `TK_ORDER_*` flags for this matrix: a Q4_K matrix with a row count that is a
    /// multiple of 8 (what llama.cpp repacks: its GEMM or GEMV), and the K-quants llama.cpp multiplies by its tiled
    /// matmul or `vec_dot` (Q6_K, Q5_K, the other Q4_K); nil for any other matrix.
    var orderedKernels: (interleaved: OrderedInterleaved, rows: OrderedRows)? {
        guard hasKQuantKernel else { return nil }
        if type == .q4_K, rows % 8 == 0 { return (tk_matmul_interleaved_q4_k_repacked, tk_matmul_q4_k_repacked) }
        let id = Int32(type.rawValue)
        return (
            { tk_matmul_interleaved_k_ordered(id, $0, $1, $2, $3, $4, $5, $6, $7, $8, $9) },
            { tk_matmul_k_ordered(id, $0, $1, $2, $3, $4, $5, $6, $7, $8, $9) }
        )
    }

    /// Pointer to row `r`'s bytes.
    @inline(__always) public func row(_ r: Int) -> UnsafeRawPointer { data + r * rowBytes }

    /// out[b][r] = W[r] · x[b] for `batch` input rows of `columns` floats; `out` has `rows` floats per input row.
    ///
    /// Each output element is computed the same way whatever `batch` is and however the work is split over
    /// threads, so results are batch-invariant.
    ///
    /// `kQuantOrders` (one per input row, `TK_ORDER_*` flags: `KQuantOrderChoice`) puts a Q4_K matrix whose row count
    /// is a multiple of 8 in llama.cpp's repacked orders and the other K-quant matrices in its tiled or vec_dot
    /// order; other matrices ignore it.
    public func multiply(
        _ x: UnsafePointer<Float>, batch: Int, into out: UnsafeMutablePointer<Float>, pool: ThreadPool,
        scratch: inout ActivationBuffer, kQuantOrders: [UInt8]? = nil
    ) {
        if let orders = kQuantOrders, let kernels = orderedKernels {
            let q = scratch.quantizeK(x, rows: batch, columns: columns)
            let args = UncheckedSendable((q, out, orders))
            if let packed = interleaved {
                let bytes = UncheckedSendable(packed.bytes)
                pool.parallelRanges(packed.groups, minimumPerThread: 2) { begin, end in
                    _ = kernels.interleaved(
                        bytes.value, Int32(columns), Int32(begin), Int32(end), Int32(rows), args.value.0,
                        Int32(batch), args.value.2, args.value.1, Int32(rows))
                }
            } else {
                pool.parallelRanges(rows, minimumPerThread: 16) { begin, end in
                    _ = kernels.rows(
                        data, rowBytes, Int32(columns), Int32(begin), Int32(end), args.value.0, Int32(batch),
                        args.value.2, args.value.1, Int32(rows))
                }
            }
            return
        }
        if let packed = interleaved, hasKQuantKernel {
            let q = scratch.quantizeK(x, rows: batch, columns: columns)
            let args = UncheckedSendable((q, out, packed.bytes))
            pool.parallelRanges(packed.groups, minimumPerThread: 2) { begin, end in
                _ = tk_matmul_interleaved_k(
                    Int32(type.rawValue), args.value.2, Int32(columns), Int32(begin), Int32(end), Int32(rows),
                    args.value.0, Int32(batch), args.value.1, Int32(rows))
            }
            return
        }
        if let packed = interleaved {
            let q = scratch.quantize(x, rows: batch, columns: columns)
            let args = UncheckedSendable((q, out, packed.bytes, scratch.corrections(for: type)))
            pool.parallelRanges(packed.groups, minimumPerThread: 2) { begin, end in
                _ = tk_matmul_interleaved_corrected(
                    Int32(type.rawValue), args.value.2, Int32(columns), Int32(begin), Int32(end), Int32(rows),
                    args.value.0, args.value.3, Int32(batch), args.value.1, Int32(rows))
            }
            return
        }
        if hasIntegerKernel {
            let q = scratch.quantize(x, rows: batch, columns: columns)
            let args = UncheckedSendable((q, out))
            pool.parallelRanges(rows, minimumPerThread: 16) { begin, end in
                _ = tk_matmul_q(
                    Int32(type.rawValue), data, rowBytes, Int32(columns), Int32(begin), Int32(end), args.value.0,
                    Int32(batch), args.value.1, Int32(rows))
            }
            return
        }
        if hasKQuantKernel {
            let q = scratch.quantizeK(x, rows: batch, columns: columns)
            let args = UncheckedSendable((q, out))
            pool.parallelRanges(rows, minimumPerThread: 16) { begin, end in
                _ = tk_matmul_k(
                    Int32(type.rawValue), data, rowBytes, Int32(columns), Int32(begin), Int32(end), args.value.0,
                    Int32(batch), args.value.1, Int32(rows))
            }
            return
        }
        let args = UncheckedSendable((x, out))
        pool.parallelRanges(rows, minimumPerThread: 16) { begin, end in
            var buffer = [Float](repeating: 0, count: columns)
            buffer.withUnsafeMutableBufferPointer { w in
                for r in begin..<end {
                    try? Dequantize.row(type, row(r), count: columns, into: w.baseAddress!)
                    for b in 0..<batch {
                        args.value.1[b * rows + r] = ReferenceKernels.dot(
                            w.baseAddress!, args.value.0 + b * columns, count: columns)
                    }
                }
            }
        }
    }
}

extension WeightMatrix {
    /// Several products of the same input, e.g. Q, K and V: `outputs[i]` = `matrices[i]` × x. When every matrix is
    /// interleaved, x is quantized once and all the row groups are split over the threads in one parallel loop (one
    /// synchronization instead of one per matrix). Each output element gets the same arithmetic as `multiply`.
    public static func multiply(
        _ matrices: [WeightMatrix], _ x: UnsafePointer<Float>, batch: Int, into outputs: [UnsafeMutablePointer<Float>],
        pool: ThreadPool, scratch: inout ActivationBuffer, kQuantOrders: [UInt8]? = nil
    ) {
        let columns = matrices[0].columns
        guard matrices.allSatisfy({ $0.interleaved != nil && !$0.hasKQuantKernel && $0.columns == columns }) else {
            for (m, out) in zip(matrices, outputs) {
                m.multiply(x, batch: batch, into: out, pool: pool, scratch: &scratch, kQuantOrders: kQuantOrders)
            }
            return
        }
        let q = scratch.quantize(x, rows: batch, columns: columns)
        var starts = [0]
        for m in matrices { starts.append(starts.last! + m.interleaved!.groups) }
        let corrections = matrices.map { scratch.corrections(for: $0.type) }
        let args = UncheckedSendable((q, matrices, outputs, starts, corrections))
        pool.parallelRanges(starts.last!, minimumPerThread: 2) { begin, end in
            let (q, matrices, outputs, starts, corrections) = args.value
            for (i, m) in matrices.enumerated() {
                let lo = max(begin, starts[i])
                let hi = min(end, starts[i + 1])
                guard lo < hi else { continue }
                _ = tk_matmul_interleaved_corrected(
                    Int32(m.type.rawValue), m.interleaved!.bytes, Int32(columns), Int32(lo - starts[i]),
                    Int32(hi - starts[i]), Int32(m.rows), q, corrections[i], Int32(batch), outputs[i], Int32(m.rows))
            }
        }
    }
}

/// Reusable scratch space for activations quantized to 8-bit blocks.
public struct ActivationBuffer {
    private var blocks: UnsafeMutablePointer<tk_block_q8>
    private var capacity: Int
    private var kBlocks: UnsafeMutablePointer<tk_block_q8k>
    private var kCapacity: Int
    /// The interleaved kernels' corrections of the last `quantize`, per factor (-16, -128), made on first use.
    private var corrections: [Int32: UnsafeMutablePointer<Int32>] = [:]
    private var correctionCapacity: [Int32: Int] = [:]
    private var correctionsValid: Set<Int32> = []
    private var quantizedRows = 0
    private var quantizedBlocks = 0

    public init() {
        capacity = 0
        blocks = UnsafeMutablePointer<tk_block_q8>.allocate(capacity: 1)
        kCapacity = 0
        kBlocks = UnsafeMutablePointer<tk_block_q8k>.allocate(capacity: 1)
    }

    /// The corrections a `type` interleaved kernel needs for the blocks of the last `quantize`
    /// (`tk_q8_corrections`), computed once per quantization; nil when the kernel takes none.
    mutating func corrections(for type: GGMLType) -> UnsafePointer<Int32>? {
        let factor = tk_interleaved_correction_factor(Int32(type.rawValue))
        guard factor != 0 else { return nil }
        let needed = max(1, quantizedRows * quantizedBlocks * 8)
        if needed > correctionCapacity[factor, default: 0] {
            corrections[factor]?.deallocate()
            corrections[factor] = .allocate(capacity: needed)
            correctionCapacity[factor] = needed
            correctionsValid.remove(factor)
        }
        let buffer = corrections[factor]!
        if !correctionsValid.contains(factor) {
            tk_q8_corrections(blocks, Int32(quantizedRows), Int32(quantizedBlocks), factor, buffer)
            correctionsValid.insert(factor)
        }
        return UnsafePointer(buffer)
    }

    /// Quantizes `rows` rows of `columns` floats (columns a multiple of 256) to Q8_K blocks; valid until the next call.
    public mutating func quantizeK(_ x: UnsafePointer<Float>, rows: Int, columns: Int) -> UnsafePointer<tk_block_q8k> {
        let needed = rows * columns / 256
        if needed > kCapacity {
            kBlocks.deallocate()
            kBlocks = .allocate(capacity: needed)
            kCapacity = needed
        }
        for r in 0..<rows {
            tk_quantize_q8k(x + r * columns, kBlocks + r * columns / 256, Int32(columns))
        }
        return UnsafePointer(kBlocks)
    }

    /// Quantizes `rows` rows of `columns` floats (columns a multiple of 32); valid until the next call.
    public mutating func quantize(_ x: UnsafePointer<Float>, rows: Int, columns: Int) -> UnsafePointer<tk_block_q8> {
        let needed = rows * columns / 32
        if needed > capacity {
            blocks.deallocate()
            blocks = .allocate(capacity: needed)
            capacity = needed
        }
        for r in 0..<rows {
            tk_quantize_q8(x + r * columns, blocks + r * columns / 32, Int32(columns))
        }
        quantizedRows = rows
        quantizedBlocks = columns / 32
        correctionsValid.removeAll(keepingCapacity: true)
        return UnsafePointer(blocks)
    }

    /// Frees the storage; the buffer must not be used afterwards.
    public func release() {
        blocks.deallocate()
        kBlocks.deallocate()
        for buffer in corrections.values { buffer.deallocate() }
    }
}
