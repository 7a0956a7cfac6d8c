/// Grammar expressions for the whole numbers in a range, written in canonical decimal (no leading zeros, "-" for
/// negatives): the digits are split into runs of equal length, and each run into a first digit and the rest.
enum DecimalRange {
    static func expression(_ lo: Int64, _ hi: Int64) -> GrammarExpression {
        precondition(lo <= hi)
        if lo >= 0 { return nonNegative(UInt64(lo), UInt64(hi)) }
        let negative = GrammarExpression.sequence([.text("-"), nonNegative(UInt64(max(1, -hi)), UInt64(-lo))])
        if hi < 0 { return negative }
        return .choice([negative, nonNegative(0, UInt64(hi))])
    }

    static func nonNegative(_ lo: UInt64, _ hi: UInt64) -> GrammarExpression {
        var alts: [GrammarExpression] = []
        let loDigits = String(lo).count
        let hiDigits = String(hi).count
        for length in loDigits...hiDigits {
            let smallest: UInt64 = length == 1 ? 0 : power(length - 1)
            let largest: UInt64 = power(length) - 1
            let a = max(lo, smallest)
            let b = min(hi, largest)
            if a <= b { alts.append(sameLength(Array(String(a).utf8), Array(String(b).utf8))) }
        }
        return alts.count == 1 ? alts[0] : .choice(alts)
    }

    static func power(_ n: Int) -> UInt64 {
        var p: UInt64 = 1
        for _ in 0..<n { p *= 10 }
        return p
    }

    static func digits(_ lo: UInt8, _ hi: UInt8) -> GrammarExpression {
        lo == hi ? .literal([lo]) : .characters(CodepointSet([UInt32(lo)...UInt32(hi)]))
    }

    /// Every digit string of the same length from `a` to `b` (inclusive, `a` ≤ `b`).
    static func sameLength(_ a: [UInt8], _ b: [UInt8]) -> GrammarExpression {
        guard let a0 = a.first, let b0 = b.first else { return .empty }
        let aRest = Array(a.dropFirst())
        let bRest = Array(b.dropFirst())
        if a0 == b0 { return .sequence([.literal([a0]), sameLength(aRest, bRest)]) }
        let zero = UInt8(ascii: "0")
        let nine = UInt8(ascii: "9")
        let anyRest = GrammarExpression.repetition(digits(zero, nine), min: aRest.count, max: aRest.count)
        var alts: [GrammarExpression] = []
        var low = a0
        if !aRest.allSatisfy({ $0 == zero }) {
            alts.append(.sequence([.literal([a0]), sameLength(aRest, [UInt8](repeating: nine, count: aRest.count))]))
            low = a0 + 1
        }
        var high = b0
        var top: GrammarExpression?
        if !bRest.allSatisfy({ $0 == nine }) {
            top = .sequence([.literal([b0]), sameLength([UInt8](repeating: zero, count: bRest.count), bRest)])
            high = b0 - 1
        }
        if low <= high { alts.append(.sequence([digits(low, high), anyRest])) }
        if let top { alts.append(top) }
        return alts.count == 1 ? alts[0] : .choice(alts)
    }
}
