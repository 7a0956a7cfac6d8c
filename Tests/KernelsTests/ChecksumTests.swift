import CKernels
import Testing

/// `tk_hash64`, the KV frames' checksum: piece by piece equals at once, AVX2 equals scalar, the copy is exact, and
/// the corruptions a transfer can suffer (a flipped bit, moved stripes, a lost byte) change it.
@Suite struct ChecksumTests {
    static func bytes(_ n: Int, seed: UInt64 = 1) -> [UInt8] {
        var x = seed
        return (0..<n).map { _ in
            x = x &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return UInt8(truncatingIfNeeded: x >> 56)
        }
    }

    static func hash(_ b: [UInt8], seed: UInt64 = 0) -> UInt64 {
        b.withUnsafeBytes { tk_hash64($0.baseAddress, $0.count, seed) }
    }

    @Test(arguments: [0, 1, 7, 31, 32, 33, 1023, 1024, 1025, 5000, 393_216])
    func piecesEqualWholeAndCopyIsExact(n: Int) {
        let data = Self.bytes(n)
        var copy = [UInt8](repeating: 0, count: n)
        var state = tk_hash_state()
        tk_hash_init(&state, 9)
        var at = 0
        var piece = 1
        data.withUnsafeBytes { src in
            copy.withUnsafeMutableBytes { dst in
                while at < n {
                    let k = min(piece, n - at)
                    tk_hash_copy_update(&state, dst.baseAddress! + at, src.baseAddress! + at, k)
                    at += k
                    piece = piece * 3 + 1  // 1, 4, 13, 40, … : pieces that straddle stripes and blocks
                }
            }
        }
        #expect(tk_hash_final(&state) == Self.hash(data, seed: 9))
        #expect(copy == data)
    }

    @Test(arguments: [31, 64, 1000, 4096, 100_003])
    func avx2AndScalarAgree(n: Int) {
        let data = Self.bytes(n, seed: UInt64(n))
        let best = tk_set_simd_level(99)
        let fast = Self.hash(data)
        #expect(tk_set_simd_level(0) == 0)
        let scalar = Self.hash(data)
        tk_set_simd_level(99)
        #expect(fast == scalar, "SIMD level \(best)")
    }

    @Test func corruptionChangesTheSum() {
        let data = Self.bytes(8192)
        let sum = Self.hash(data)
        var flipped = data
        flipped[4321] ^= 0x10
        #expect(Self.hash(flipped) != sum)
        var moved = data  // two 32-byte stripes of one block swapped
        for i in 0..<32 { moved.swapAt(64 + i, 256 + i) }
        #expect(Self.hash(moved) != sum)
        #expect(Self.hash(Array(data.dropLast())) != sum)
        #expect(Self.hash(data, seed: 1) != sum)
    }
}
