/// A set of Unicode scalar values as sorted, disjoint, non-adjacent closed ranges: a grammar's character class.
public struct CodepointSet: Sendable, Hashable {
    public private(set) var ranges: [ClosedRange<UInt32>]

    public static let maxScalar: UInt32 = 0x10_FFFF
    /// Every Unicode scalar value.
    public static let all = CodepointSet([0...maxScalar])

    public init(_ ranges: [ClosedRange<UInt32>]) {
        self.ranges = Self.normalized(ranges)
    }

    public init(_ scalars: String) {
        self.init(scalars.unicodeScalars.map { $0.value...$0.value })
    }

    public var isEmpty: Bool { ranges.isEmpty }

    public func contains(_ c: UInt32) -> Bool { ranges.contains { $0.contains(c) } }

    public func union(_ other: CodepointSet) -> CodepointSet { CodepointSet(ranges + other.ranges) }

    /// Every scalar value not in this set.
    public var inverted: CodepointSet {
        var out: [ClosedRange<UInt32>] = []
        var next: UInt32 = 0
        for r in ranges {
            if r.lowerBound > next { out.append(next...(r.lowerBound - 1)) }
            next = r.upperBound &+ 1
            if r.upperBound == Self.maxScalar { return CodepointSet(out) }
        }
        out.append(next...Self.maxScalar)
        return CodepointSet(out)
    }

    public func subtracting(_ other: CodepointSet) -> CodepointSet {
        intersection(other.inverted)
    }

    public func intersection(_ other: CodepointSet) -> CodepointSet {
        var out: [ClosedRange<UInt32>] = []
        var i = 0
        var j = 0
        while i < ranges.count, j < other.ranges.count {
            let a = ranges[i]
            let b = other.ranges[j]
            let lo = max(a.lowerBound, b.lowerBound)
            let hi = min(a.upperBound, b.upperBound)
            if lo <= hi { out.append(lo...hi) }
            if a.upperBound < b.upperBound { i += 1 } else { j += 1 }
        }
        return CodepointSet(out)
    }

    private static func normalized(_ input: [ClosedRange<UInt32>]) -> [ClosedRange<UInt32>] {
        let sorted = input.map { $0.lowerBound...min($0.upperBound, maxScalar) }
            .filter { $0.lowerBound <= maxScalar }
            .sorted { $0.lowerBound < $1.lowerBound }
        var out: [ClosedRange<UInt32>] = []
        for r in sorted {
            if let last = out.last, r.lowerBound <= last.upperBound &+ 1 {
                out[out.count - 1] = last.lowerBound...max(last.upperBound, r.upperBound)
            } else {
                out.append(r)
            }
        }
        return out
    }

    /// The UTF-8 byte-range sequences that together encode exactly the scalar values of this set (surrogates are not
    /// scalar values and never encoded): each sequence matches one encoded character, byte range by byte range.
    public var utf8Sequences: [[ClosedRange<UInt8>]] {
        var out: [[ClosedRange<UInt8>]] = []
        let lengths: [ClosedRange<UInt32>] = [
            0...0x7F, 0x80...0x7FF, 0x800...0xD7FF, 0xE000...0xFFFF, 0x1_0000...Self.maxScalar,
        ]
        for r in ranges {
            for band in lengths {
                let lo = max(r.lowerBound, band.lowerBound)
                let hi = min(r.upperBound, band.upperBound)
                if lo <= hi { Self.split(lo, hi, into: &out) }
            }
        }
        return out
    }

    /// Splits [lo, hi] (one encoded length) until every byte position of the encodings is a plain range.
    private static func split(_ lo: UInt32, _ hi: UInt32, into out: inout [[ClosedRange<UInt8>]]) {
        let n = encode(lo).count
        for i in 1..<max(n, 1) {
            let m: UInt32 = (1 << (6 * UInt32(i))) - 1
            if lo & ~m != hi & ~m {
                if lo & m != 0 {
                    split(lo, lo | m, into: &out)
                    split((lo | m) + 1, hi, into: &out)
                    return
                }
                if hi & m != m {
                    split(lo, (hi & ~m) - 1, into: &out)
                    split(hi & ~m, hi, into: &out)
                    return
                }
            }
        }
        let a = encode(lo)
        let b = encode(hi)
        out.append(zip(a, b).map { $0...$1 })
    }

    static func encode(_ c: UInt32) -> [UInt8] {
        switch c {
        case 0..<0x80: return [UInt8(c)]
        case 0x80..<0x800: return [UInt8(0xC0 | c >> 6), UInt8(0x80 | c & 0x3F)]
        case 0x800..<0x1_0000:
            return [UInt8(0xE0 | c >> 12), UInt8(0x80 | (c >> 6) & 0x3F), UInt8(0x80 | c & 0x3F)]
        default:
            return [
                UInt8(0xF0 | c >> 18), UInt8(0x80 | (c >> 12) & 0x3F), UInt8(0x80 | (c >> 6) & 0x3F),
                UInt8(0x80 | c & 0x3F),
            ]
        }
    }
}
