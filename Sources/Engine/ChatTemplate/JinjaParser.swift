/// Expression syntax tree of the Jinja subset.
indirect enum JinjaExpr: Sendable {
    case literal(JinjaValue)
    case name(String)
    case list([JinjaExpr])
    case dict([(JinjaExpr, JinjaExpr)])
    case attribute(JinjaExpr, String)
    case index(JinjaExpr, JinjaExpr)
    case slice(JinjaExpr, JinjaExpr?, JinjaExpr?)
    case call(JinjaExpr, [JinjaExpr], [(String, JinjaExpr)])
    case filter(JinjaExpr, String, [JinjaExpr], [(String, JinjaExpr)])
    case test(JinjaExpr, String, [JinjaExpr], negated: Bool)
    case unary(String, JinjaExpr)
    case binary(String, JinjaExpr, JinjaExpr)
    case conditional(JinjaExpr, condition: JinjaExpr, otherwise: JinjaExpr?)
}

/// Statement syntax tree.
indirect enum JinjaNode: Sendable {
    case text(String)
    case output(JinjaExpr)
    case ifBlock([(JinjaExpr, [JinjaNode])], otherwise: [JinjaNode])
    case forBlock(targets: [String], iterable: JinjaExpr, filter: JinjaExpr?, body: [JinjaNode], otherwise: [JinjaNode])
    case set(target: [String], value: JinjaExpr)
    case setBlock(name: String, body: [JinjaNode])
}

/// Splits template source into text, `{{ }}`, `{% %}` and `{# #}` pieces, applying `-` whitespace control and the
/// `trim_blocks` / `lstrip_blocks` settings Hugging Face uses for chat templates.
struct JinjaLexer {
    enum Piece {
        case text(String)
        case expression(String)
        case statement(String)
    }

    static func pieces(_ source: String) throws -> [Piece] {
        var out: [Piece] = []
        var rest = Substring(source)
        var trimNextLeading = false
        var trimNextNewline = false
        while !rest.isEmpty {
            guard let open = tagStart(rest) else {
                out.append(.text(adjust(String(rest), trimLeading: trimNextLeading, trimNewline: trimNextNewline)))
                break
            }
            var text = String(rest[..<open.lowerBound])
            let kindIndex = rest.index(after: open.lowerBound)
            let kind = rest[kindIndex]
            let closer = kind == "{" ? "}}" : kind == "%" ? "%}" : "#}"
            var bodyStart = rest.index(after: kindIndex)
            let stripBefore = bodyStart < rest.endIndex && rest[bodyStart] == "-"
            if stripBefore || rest[bodyStart] == "+" { bodyStart = rest.index(after: bodyStart) }
            guard let close = rest[bodyStart...].range(of: closer) else {
                throw JinjaError("unclosed '{\(kind)' tag")
            }
            var body = rest[bodyStart..<close.lowerBound]
            var stripAfter = false
            if body.hasSuffix("-") {
                stripAfter = true
                body = body.dropLast()
            } else if body.hasSuffix("+") {
                body = body.dropLast()
            }
            text = adjust(text, trimLeading: trimNextLeading, trimNewline: trimNextNewline)
            if stripBefore {
                text = String(text.reversed().drop { $0.isWhitespace }.reversed())
            } else if kind != "{" {
                // lstrip_blocks: drop spaces and tabs between the line start and a block tag.
                let tail = text.reversed().prefix { $0 == " " || $0 == "\t" }
                let before = text.dropLast(tail.count)
                if before.isEmpty || before.hasSuffix("\n") { text = String(before) }
            }
            if !text.isEmpty { out.append(.text(text)) }
            switch kind {
            case "{": out.append(.expression(String(body)))
            case "%": out.append(.statement(String(body)))
            default: break
            }
            trimNextLeading = stripAfter
            trimNextNewline = kind != "{"
            rest = rest[close.upperBound...]
        }
        return out
    }

    /// Where the next `{{`, `{%` or `{#` begins.
    private static func tagStart(_ s: Substring) -> Range<Substring.Index>? {
        var i = s.startIndex
        while i < s.endIndex {
            if s[i] == "{" {
                let next = s.index(after: i)
                if next < s.endIndex, "{%#".contains(s[next]) { return i..<next }
            }
            i = s.index(after: i)
        }
        return nil
    }

    private static func adjust(_ text: String, trimLeading: Bool, trimNewline: Bool) -> String {
        if trimLeading { return String(text.drop { $0.isWhitespace }) }
        if trimNewline, text.hasPrefix("\n") { return String(text.dropFirst()) }
        return text
    }
}

/// Tokens of expressions and statement bodies.
enum JinjaToken: Equatable {
    case name(String)
    case string(String)
    case int(Int)
    case double(Double)
    case op(String)
}

func jinjaTokens(_ source: String) throws -> [JinjaToken] {
    var tokens: [JinjaToken] = []
    let chars = Array(source)
    var i = 0
    let twoCharOps: Set<String> = ["==", "!=", "<=", ">=", "//", "**"]
    while i < chars.count {
        let c = chars[i]
        if c.isWhitespace {
            i += 1
        } else if c.isLetter || c == "_" {
            var j = i
            while j < chars.count, chars[j].isLetter || chars[j].isNumber || chars[j] == "_" { j += 1 }
            tokens.append(.name(String(chars[i..<j])))
            i = j
        } else if c.isNumber {
            var j = i
            while j < chars.count, chars[j].isNumber || chars[j] == "." { j += 1 }
            let text = String(chars[i..<j])
            if let n = Int(text) { tokens.append(.int(n)) } else if let d = Double(text) { tokens.append(.double(d)) }
            i = j
        } else if c == "'" || c == "\"" {
            var j = i + 1
            var s = ""
            while j < chars.count, chars[j] != c {
                if chars[j] == "\\", j + 1 < chars.count {
                    j += 1
                    switch chars[j] {
                    case "n": s.append("\n")
                    case "t": s.append("\t")
                    case "r": s.append("\r")
                    default: s.append(chars[j])
                    }
                } else {
                    s.append(chars[j])
                }
                j += 1
            }
            guard j < chars.count else { throw JinjaError("unterminated string literal") }
            tokens.append(.string(s))
            i = j + 1
        } else {
            if i + 1 < chars.count, twoCharOps.contains(String(chars[i...(i + 1)])) {
                tokens.append(.op(String(chars[i...(i + 1)])))
                i += 2
            } else {
                tokens.append(.op(String(c)))
                i += 1
            }
        }
    }
    return tokens
}

/// Recursive-descent parser for expressions over a token list.
struct JinjaExprParser {
    var tokens: [JinjaToken]
    var position = 0

    init(_ tokens: [JinjaToken]) { self.tokens = tokens }

    var atEnd: Bool { position >= tokens.count }
    var peek: JinjaToken? { atEnd ? nil : tokens[position] }

    mutating func accept(_ t: JinjaToken) -> Bool {
        if peek == t {
            position += 1
            return true
        }
        return false
    }

    mutating func expect(_ t: JinjaToken) throws {
        guard accept(t) else { throw JinjaError("expected \(t), found \(peek.map { "\($0)" } ?? "end")") }
    }

    mutating func name() throws -> String {
        guard case .name(let n) = peek else {
            throw JinjaError("expected a name, found \(peek.map { "\($0)" } ?? "end")")
        }
        position += 1
        return n
    }

    mutating func expression() throws -> JinjaExpr {
        let value = try orExpr()
        if accept(.name("if")) {
            let condition = try orExpr()
            let otherwise = accept(.name("else")) ? try expression() : nil
            return .conditional(value, condition: condition, otherwise: otherwise)
        }
        return value
    }

    mutating func orExpr() throws -> JinjaExpr {
        var left = try andExpr()
        while accept(.name("or")) { left = .binary("or", left, try andExpr()) }
        return left
    }

    mutating func andExpr() throws -> JinjaExpr {
        var left = try notExpr()
        while accept(.name("and")) { left = .binary("and", left, try notExpr()) }
        return left
    }

    mutating func notExpr() throws -> JinjaExpr {
        if accept(.name("not")) { return .unary("not", try notExpr()) }
        return try comparison()
    }

    mutating func comparison() throws -> JinjaExpr {
        var left = try concatenation()
        while true {
            if case .op(let o) = peek, ["==", "!=", "<", ">", "<=", ">="].contains(o) {
                position += 1
                left = .binary(o, left, try concatenation())
            } else if accept(.name("in")) {
                left = .binary("in", left, try concatenation())
            } else if peek == .name("not"), position + 1 < tokens.count, tokens[position + 1] == .name("in") {
                position += 2
                left = .unary("not", .binary("in", left, try concatenation()))
            } else if accept(.name("is")) {
                let negated = accept(.name("not"))
                let test = try name()
                var args: [JinjaExpr] = []
                if accept(.op("(")) {
                    args = try callArguments().0
                } else if case .string = peek {
                    args = [try primary()]
                } else if case .int = peek {
                    args = [try primary()]
                }
                left = .test(left, test, args, negated: negated)
            } else {
                return left
            }
        }
    }

    mutating func concatenation() throws -> JinjaExpr {
        var left = try additive()
        while accept(.op("~")) { left = .binary("~", left, try additive()) }
        return left
    }

    mutating func additive() throws -> JinjaExpr {
        var left = try multiplicative()
        while case .op(let o) = peek, o == "+" || o == "-" {
            position += 1
            left = .binary(o, left, try multiplicative())
        }
        return left
    }

    mutating func multiplicative() throws -> JinjaExpr {
        var left = try unary()
        while case .op(let o) = peek, ["*", "/", "//", "%"].contains(o) {
            position += 1
            left = .binary(o, left, try unary())
        }
        return left
    }

    mutating func unary() throws -> JinjaExpr {
        if accept(.op("-")) { return .unary("-", try unary()) }
        return try postfix(try primary())
    }

    mutating func postfix(_ base: JinjaExpr) throws -> JinjaExpr {
        var e = base
        while true {
            if accept(.op(".")) {
                e = .attribute(e, try name())
            } else if accept(.op("[")) {
                if accept(.op(":")) {
                    let upper = peek == .op("]") ? nil : try expression()
                    try expect(.op("]"))
                    e = .slice(e, nil, upper)
                    continue
                }
                let index = try expression()
                if accept(.op(":")) {
                    let upper = peek == .op("]") ? nil : try expression()
                    try expect(.op("]"))
                    e = .slice(e, index, upper)
                } else {
                    try expect(.op("]"))
                    e = .index(e, index)
                }
            } else if accept(.op("(")) {
                let (args, kwargs) = try callArguments()
                e = .call(e, args, kwargs)
            } else if accept(.op("|")) {
                let filter = try name()
                var args: [JinjaExpr] = []
                var kwargs: [(String, JinjaExpr)] = []
                if accept(.op("(")) { (args, kwargs) = try callArguments() }
                e = .filter(e, filter, args, kwargs)
            } else {
                return e
            }
        }
    }

    /// Arguments after an opening parenthesis, through the closing one.
    mutating func callArguments() throws -> ([JinjaExpr], [(String, JinjaExpr)]) {
        var args: [JinjaExpr] = []
        var kwargs: [(String, JinjaExpr)] = []
        while !accept(.op(")")) {
            if case .name(let n) = peek, position + 1 < tokens.count, tokens[position + 1] == .op("=") {
                position += 2
                kwargs.append((n, try expression()))
            } else {
                args.append(try expression())
            }
            if !accept(.op(",")) {
                try expect(.op(")"))
                break
            }
        }
        return (args, kwargs)
    }

    mutating func primary() throws -> JinjaExpr {
        guard let t = peek else { throw JinjaError("unexpected end of expression") }
        position += 1
        switch t {
        case .string(var s):
            while case .string(let more) = peek {  // adjacent literals concatenate
                s += more
                position += 1
            }
            return .literal(.string(s))
        case .int(let i): return .literal(.int(i))
        case .double(let d): return .literal(.double(d))
        case .name(let n):
            switch n {
            case "true", "True": return .literal(.bool(true))
            case "false", "False": return .literal(.bool(false))
            case "none", "None": return .literal(.none)
            default: return .name(n)
            }
        case .op("("):
            let e = try expression()
            if accept(.op(",")) {
                var items = [e]
                while !accept(.op(")")) {
                    items.append(try expression())
                    _ = accept(.op(","))
                }
                return .list(items)
            }
            try expect(.op(")"))
            return e
        case .op("["):
            var items: [JinjaExpr] = []
            while !accept(.op("]")) {
                items.append(try expression())
                if !accept(.op(",")) {
                    try expect(.op("]"))
                    break
                }
            }
            return .list(items)
        case .op("{"):
            var pairs: [(JinjaExpr, JinjaExpr)] = []
            while !accept(.op("}")) {
                let k = try expression()
                try expect(.op(":"))
                pairs.append((k, try expression()))
                if !accept(.op(",")) {
                    try expect(.op("}"))
                    break
                }
            }
            return .dict(pairs)
        default:
            throw JinjaError("unexpected token \(t) in expression")
        }
    }
}
