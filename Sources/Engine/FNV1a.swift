/// 64-bit FNV-1a: the one small hash for keys and fingerprints (prefix-cache block keys, the model fingerprint). Not
/// for bulk data (KV frames use `tk_hash64`) and not cryptographic.
public struct FNV1a: Sendable {
    public private(set) var value: UInt64 = 0xcbf2_9ce4_8422_2325

    public init() {}

    @inline(__always)
    public mutating func mix(byte: UInt8) { value = (value ^ UInt64(byte)) &* 0x0000_0100_0000_01b3 }

    public mutating func mix(_ bytes: some Sequence<UInt8>) { for b in bytes { mix(byte: b) } }

    public mutating func mix(_ bytes: UnsafeRawBufferPointer) { for b in bytes { mix(byte: b) } }

    /// The eight bytes of `word`, least significant first (the same on every host).
    public mutating func mix(word: UInt64) {
        var x = word
        for _ in 0..<8 {
            mix(byte: UInt8(truncatingIfNeeded: x))
            x >>= 8
        }
    }
}
