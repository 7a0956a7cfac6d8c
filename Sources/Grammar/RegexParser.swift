/// Reads a regular expression into a grammar expression that matches the whole text (as vLLM's `guided_regex` and
/// JSON Schema's `pattern` are applied here: anchors `^` and `$` at the ends are accepted and implied).
///
/// Supported: literals and escapes (`\d \w \s \D \W \S`, `\n \t \r`, `\xHH`, `\uHHHH`, escaped punctuation),
/// classes `[...]` with ranges and negation, `.` (any character but a newline), groups `(...)` and `(?:...)`,
/// alternation `|`, and the quantifiers `* + ? {m} {m,} {m,n}` (a lazy `?` after one is accepted: only the
/// language matters). Back-references, look-around and other anchors are refused by name.
public struct RegexParser {
    private let scalars: [UInt32]
    private var i = 0
    private var depth = 0
    /// Characters the expression may never produce (e.g. `"` and `\` inside a JSON string).
    private let excluded: CodepointSet

    public static func parse(_ pattern: String, excluding excluded: CodepointSet = CodepointSet([])) throws
        -> GrammarExpression
    {
        var p = RegexParser(scalars: pattern.unicodeScalars.map(\.value), excluded: excluded)
        if p.peek() == ascii("^") { p.i += 1 }
        let e = try p.alternation()
        guard p.i == p.scalars.count else { throw p.error("unbalanced ')'") }
        return e
    }

    private init(scalars: [UInt32], excluded: CodepointSet) {
        self.scalars = scalars
        self.excluded = excluded
    }

    private mutating func alternation() throws -> GrammarExpression {
        var alts = [try sequence()]
        while peek() == ascii("|") {
            i += 1
            alts.append(try sequence())
        }
        return alts.count == 1 ? alts[0] : .choice(alts)
    }

    private mutating func sequence() throws -> GrammarExpression {
        var items: [GrammarExpression] = []
        while let c = peek(), c != ascii("|"), c != ascii(")") {
            if c == ascii("$"), i == scalars.count - 1 || scalars[i + 1] == ascii(")") {
                i += 1
                continue
            }
            items.append(try quantified(try atom()))
        }
        return items.count == 1 ? items[0] : .sequence(items)
    }

    private mutating func atom() throws -> GrammarExpression {
        let c = scalars[i]
        i += 1
        switch c {
        case ascii("("):
            if peek() == ascii("?") {
                guard i + 1 < scalars.count, scalars[i + 1] == ascii(":") else {
                    throw error("look-around and named groups are not supported")
                }
                i += 2
            }
            depth += 1
            defer { depth -= 1 }
            guard depth <= 200 else { throw error("groups nested deeper than 200") }
            let inner = try alternation()
            guard peek() == ascii(")") else { throw error("missing ')'") }
            i += 1
            return inner
        case ascii("["): return try characters(try classBody())
        case ascii("."): return try characters(CodepointSet([10...10]).inverted)
        case ascii("\\"): return try characters(try escape(inClass: false))
        case ascii("*"), ascii("+"), ascii("?"), ascii("{"):
            throw error("a quantifier with nothing before it")
        case ascii("^"), ascii("$"): throw error("anchors inside the pattern are not supported")
        default: return try characters(CodepointSet([c...c]))
        }
    }

    private func characters(_ set: CodepointSet) throws -> GrammarExpression {
        let allowed = set.subtracting(excluded)
        guard !allowed.isEmpty else { throw error("a character class that can match nothing here") }
        return .characters(allowed)
    }

    private mutating func classBody() throws -> CodepointSet {
        let negated = peek() == ascii("^")
        if negated { i += 1 }
        var set = CodepointSet([])
        var first = true
        while true {
            guard let c = peek() else { throw error("unterminated character class") }
            if c == ascii("]"), !first {
                i += 1
                break
            }
            first = false
            i += 1
            var lo: CodepointSet
            if c == ascii("\\") { lo = try escape(inClass: true) } else { lo = CodepointSet([c...c]) }
            if peek() == ascii("-"), i + 1 < scalars.count, scalars[i + 1] != ascii("]"),
                lo.ranges.count == 1, lo.ranges[0].count == 1
            {
                i += 1
                let h = scalars[i]
                i += 1
                var hi = h
                if h == ascii("\\") {
                    let e = try escape(inClass: true)
                    guard e.ranges.count == 1, e.ranges[0].count == 1 else { throw error("a class as a range end") }
                    hi = e.ranges[0].lowerBound
                }
                guard lo.ranges[0].lowerBound <= hi else { throw error("character range out of order") }
                lo = CodepointSet([lo.ranges[0].lowerBound...hi])
            }
            set = set.union(lo)
        }
        return negated ? set.inverted : set
    }

    private mutating func escape(inClass: Bool) throws -> CodepointSet {
        guard let e = peek() else { throw error("a lone '\\' at the end") }
        i += 1
        let digits = CodepointSet([48...57])
        let word = CodepointSet([48...57, 65...90, 95...95, 97...122])
        let space = CodepointSet([9...13, 32...32])
        switch e {
        case ascii("d"): return digits
        case ascii("D"): return digits.inverted
        case ascii("w"): return word
        case ascii("W"): return word.inverted
        case ascii("s"): return space
        case ascii("S"): return space.inverted
        case ascii("n"): return CodepointSet([10...10])
        case ascii("t"): return CodepointSet([9...9])
        case ascii("r"): return CodepointSet([13...13])
        case ascii("f"): return CodepointSet([12...12])
        case ascii("v"): return CodepointSet([11...11])
        case ascii("x"): return try hexScalar(2)
        case ascii("u"): return try hexScalar(4)
        case ascii("b"), ascii("B"), ascii("A"), ascii("z"), ascii("Z"):
            throw error("the anchor '\\\(String(UnicodeScalar(UInt8(e))))' is not supported")
        case 49...57: throw error("back-references are not supported")
        default:
            guard e < 0x80, !(e >= 65 && e <= 90) && !(e >= 97 && e <= 122) else {
                throw error("unknown escape '\\\(String(UnicodeScalar(e) ?? "?"))'")
            }
            return CodepointSet([e...e])
        }
    }

    private mutating func hexScalar(_ n: Int) throws -> CodepointSet {
        guard i + n <= scalars.count,
            let v = UInt32(
                String(String.UnicodeScalarView(scalars[i..<i + n].compactMap(UnicodeScalar.init))), radix: 16)
        else { throw error("expected \(n) hexadecimal digits") }
        i += n
        return CodepointSet([v...v])
    }

    private mutating func quantified(_ atom: GrammarExpression) throws -> GrammarExpression {
        var e = atom
        while let c = peek() {
            switch c {
            case ascii("*"): e = .repetition(e, min: 0, max: nil)
            case ascii("+"): e = .repetition(e, min: 1, max: nil)
            case ascii("?"): e = .repetition(e, min: 0, max: 1)
            case ascii("{"):
                guard let (lo, hi, length) = bounds() else { return e }
                i += length
                e = .repetition(e, min: lo, max: hi)
                skipLazy()
                continue
            default: return e
            }
            i += 1
            skipLazy()
        }
        return e
    }

    /// A lazy or possessive mark changes which match is found, not which texts match.
    private mutating func skipLazy() {
        if let c = peek(), c == ascii("?") || c == ascii("+") { i += 1 }
    }

    /// `{m}`, `{m,}` or `{m,n}` at `i`, with its length; nil when the brace is a literal.
    private func bounds() -> (Int, Int?, Int)? {
        var j = i + 1
        func digits() -> Int? {
            let start = j
            while j < scalars.count, scalars[j] >= 48, scalars[j] <= 57 { j += 1 }
            guard j > start, j - start < 7 else { return nil }
            return Int(String(String.UnicodeScalarView(scalars[start..<j].compactMap(UnicodeScalar.init))))
        }
        guard let lo = digits() else { return nil }
        var hi: Int? = lo
        if j < scalars.count, scalars[j] == ascii(",") {
            j += 1
            hi = j < scalars.count && scalars[j] == ascii("}") ? nil : digits()
            if hi == nil, !(j < scalars.count && scalars[j] == ascii("}")) { return nil }
        }
        guard j < scalars.count, scalars[j] == ascii("}") else { return nil }
        return (lo, hi, j + 1 - i)
    }

    private func peek() -> UInt32? { i < scalars.count ? scalars[i] : nil }

    private func error(_ message: String) -> GrammarError { GrammarError("regex: \(message) (at \(i))") }
}

private func ascii(_ s: Unicode.Scalar) -> UInt32 { s.value }
