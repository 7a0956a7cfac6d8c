/// Reads a grammar in GBNF, llama.cpp's grammar notation (also accepted for vLLM's EBNF `grammar`):
///
///     root   ::= answer ("," answer)*
///     answer ::= "yes" | "no" | [0-9]+ | item{2,4}
///
/// Rules are `name ::= alternatives`; items are "literals" with C escapes, [character classes] (`^` negates, `a-z`
/// ranges), `.` (any character), rule names, (groups), and the repetitions `*` `+` `?` `{m}` `{m,}` `{m,n}`.
/// `#` starts a comment. A rule ends where the next `name ::=` begins.
public struct GBNFParser {
    private let text: [UInt8]
    private var i = 0
    private var depth = 0
    static let maxDepth = 200

    public static func parse(_ source: String) throws -> Grammar {
        var p = GBNFParser(text: Array(source.utf8))
        return try p.grammar()
    }

    private init(text: [UInt8]) { self.text = text }

    private mutating func grammar() throws -> Grammar {
        var rules: [String: GrammarExpression] = [:]
        skipSpace()
        while i < text.count {
            let name = try identifier()
            skipSpace()
            guard consume("::=") else { throw error("expected '::=' after rule name '\(name)'") }
            guard rules[name] == nil else { throw GrammarError("rule '\(name)' is defined twice") }
            rules[name] = try alternatives(nested: false)
            skipSpace()
        }
        guard rules["root"] != nil else { throw GrammarError("the grammar has no 'root' rule") }
        return Grammar(rules: rules)
    }

    private mutating func alternatives(nested: Bool) throws -> GrammarExpression {
        var alts = [try sequence(nested: nested)]
        while true {
            skipSpace()
            guard peek() == UInt8(ascii: "|") else { break }
            i += 1
            alts.append(try sequence(nested: nested))
        }
        return alts.count == 1 ? alts[0] : .choice(alts)
    }

    private mutating func sequence(nested: Bool) throws -> GrammarExpression {
        var items: [GrammarExpression] = []
        while true {
            skipSpace()
            guard let c = peek() else { break }
            if c == UInt8(ascii: "|") || c == UInt8(ascii: ")") { break }
            if !nested, startsRule() { break }
            var item = try primary()
            item = try repetitions(of: item)
            items.append(item)
        }
        return items.count == 1 ? items[0] : .sequence(items)
    }

    private mutating func primary() throws -> GrammarExpression {
        let c = text[i]
        switch c {
        case UInt8(ascii: "\""):
            i += 1
            var scalars: [UInt32] = []
            while true {
                guard let d = peek() else { throw error("unterminated string literal") }
                if d == UInt8(ascii: "\"") {
                    i += 1
                    break
                }
                scalars.append(try character())
            }
            var bytes: [UInt8] = []
            for s in scalars { bytes += CodepointSet.encode(s) }
            return .literal(bytes)
        case UInt8(ascii: "["):
            i += 1
            let negated = peek() == UInt8(ascii: "^")
            if negated { i += 1 }
            var ranges: [ClosedRange<UInt32>] = []
            while true {
                guard let d = peek() else { throw error("unterminated character class") }
                if d == UInt8(ascii: "]") {
                    i += 1
                    break
                }
                let lo = try character()
                var hi = lo
                if peek() == UInt8(ascii: "-"), i + 1 < text.count, text[i + 1] != UInt8(ascii: "]") {
                    i += 1
                    hi = try character()
                }
                guard lo <= hi else { throw error("character range out of order") }
                ranges.append(lo...hi)
            }
            let set = CodepointSet(ranges)
            return .characters(negated ? set.inverted : set)
        case UInt8(ascii: "("):
            i += 1
            depth += 1
            defer { depth -= 1 }
            guard depth <= Self.maxDepth else { throw error("groups nested deeper than \(Self.maxDepth)") }
            let inner = try alternatives(nested: true)
            skipSpace()
            guard consume(")") else { throw error("expected ')'") }
            return inner
        case UInt8(ascii: "."):
            i += 1
            return .characters(.all)
        default:
            guard isNameByte(c) else { throw error("unexpected character '\(String(decoding: [c], as: UTF8.self))'") }
            return .rule(try identifier())
        }
    }

    private mutating func repetitions(of item: GrammarExpression) throws -> GrammarExpression {
        var item = item
        while let c = peek() {
            switch c {
            case UInt8(ascii: "*"): item = .repetition(item, min: 0, max: nil)
            case UInt8(ascii: "+"): item = .repetition(item, min: 1, max: nil)
            case UInt8(ascii: "?"): item = .repetition(item, min: 0, max: 1)
            case UInt8(ascii: "{"):
                i += 1
                skipSpace()
                let lo = try number()
                skipSpace()
                var hi: Int? = lo
                if consume(",") {
                    skipSpace()
                    hi = peek() == UInt8(ascii: "}") ? nil : try number()
                    skipSpace()
                }
                guard consume("}") else { throw error("expected '}' to close a repetition") }
                item = .repetition(item, min: lo, max: hi)
                continue
            default: return item
            }
            i += 1
        }
        return item
    }

    /// One character of a literal or class: a UTF-8 scalar or an escape.
    private mutating func character() throws -> UInt32 {
        let c = text[i]
        if c == UInt8(ascii: "\\") {
            i += 1
            guard let e = peek() else { throw error("a lone '\\' at the end") }
            i += 1
            switch e {
            case UInt8(ascii: "n"): return 10
            case UInt8(ascii: "t"): return 9
            case UInt8(ascii: "r"): return 13
            case UInt8(ascii: "0"): return 0
            case UInt8(ascii: "x"): return try hex(2)
            case UInt8(ascii: "u"): return try hex(4)
            case UInt8(ascii: "U"): return try hex(8)
            default: return UInt32(e)
            }
        }
        // Decode one UTF-8 scalar.
        let length = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4
        guard i + length <= text.count,
            let s = String(decoding: text[i..<i + length], as: UTF8.self).unicodeScalars.first
        else { throw error("invalid UTF-8") }
        i += length
        return s.value
    }

    private mutating func hex(_ digits: Int) throws -> UInt32 {
        guard i + digits <= text.count,
            let v = UInt32(String(decoding: text[i..<i + digits], as: UTF8.self), radix: 16),
            v <= CodepointSet.maxScalar
        else { throw error("expected \(digits) hexadecimal digits") }
        i += digits
        return v
    }

    private mutating func number() throws -> Int {
        let start = i
        while let c = peek(), c >= UInt8(ascii: "0"), c <= UInt8(ascii: "9") { i += 1 }
        guard i > start, i - start < 10, let n = Int(String(decoding: text[start..<i], as: UTF8.self)) else {
            throw error("expected a repetition count")
        }
        return n
    }

    private mutating func identifier() throws -> String {
        let start = i
        while let c = peek(), isNameByte(c) { i += 1 }
        guard i > start else { throw error("expected a rule name") }
        return String(decoding: text[start..<i], as: UTF8.self)
    }

    private func isNameByte(_ c: UInt8) -> Bool {
        (c >= UInt8(ascii: "a") && c <= UInt8(ascii: "z")) || (c >= UInt8(ascii: "A") && c <= UInt8(ascii: "Z"))
            || (c >= UInt8(ascii: "0") && c <= UInt8(ascii: "9")) || c == UInt8(ascii: "-") || c == UInt8(ascii: "_")
    }

    /// Whether `name ::=` starts here (the end of the current rule).
    private func startsRule() -> Bool {
        var j = i
        while j < text.count, isNameByte(text[j]) { j += 1 }
        guard j > i else { return false }
        while j < text.count, text[j] == 32 || text[j] == 9 || text[j] == 10 || text[j] == 13 { j += 1 }
        return j + 3 <= text.count && text[j] == UInt8(ascii: ":") && text[j + 1] == UInt8(ascii: ":")
            && text[j + 2] == UInt8(ascii: "=")
    }

    private mutating func skipSpace() {
        while let c = peek() {
            if c == 32 || c == 9 || c == 10 || c == 13 {
                i += 1
            } else if c == UInt8(ascii: "#") {
                while let d = peek(), d != 10 { i += 1 }
            } else {
                return
            }
        }
    }

    private func peek() -> UInt8? { i < text.count ? text[i] : nil }

    private mutating func consume(_ s: String) -> Bool {
        let bytes = Array(s.utf8)
        guard i + bytes.count <= text.count, Array(text[i..<i + bytes.count]) == bytes else { return false }
        i += bytes.count
        return true
    }

    private func error(_ message: String) -> GrammarError {
        let line = text[..<min(i, text.count)].filter { $0 == 10 }.count + 1
        return GrammarError("grammar: \(message) (line \(line))")
    }
}
