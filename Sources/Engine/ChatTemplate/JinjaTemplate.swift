import Foundation

/// A parsed Jinja-subset template: what chat templates in GGUF files use (for with loop variables, if/elif/else,
/// set and namespaces, filters, tests, string methods, `raise_exception`).
public struct JinjaTemplate: Sendable {
    let nodes: [JinjaNode]

    public init(_ source: String) throws {
        var pieces = try JinjaLexer.pieces(source)[...]
        nodes = try Self.parseBlock(&pieces, until: [])
        if let extra = pieces.first { throw JinjaError("unexpected \(extra) at the top level") }
    }

    /// Renders with the given top-level variables.
    public func render(_ context: [String: JinjaValue]) throws -> String {
        var interpreter = JinjaInterpreter(scopes: [context])
        var out = ""
        try interpreter.run(nodes, into: &out)
        return out
    }

    // MARK: Statement parsing

    private static func keyword(_ statement: String) -> String {
        String(statement.trimmingCharacters(in: .whitespaces).prefix { !$0.isWhitespace })
    }

    private static func parseBlock(_ pieces: inout ArraySlice<JinjaLexer.Piece>, until ends: Set<String>) throws
        -> [JinjaNode]
    {
        var nodes: [JinjaNode] = []
        while let piece = pieces.first {
            switch piece {
            case .text(let t):
                pieces.removeFirst()
                nodes.append(.text(t))
            case .expression(let e):
                pieces.removeFirst()
                var p = JinjaExprParser(try jinjaTokens(e))
                nodes.append(.output(try p.expression()))
                if !p.atEnd { throw JinjaError("unexpected text after expression '\(e)'") }
            case .statement(let s):
                let word = keyword(s)
                if ends.contains(word) { return nodes }
                pieces.removeFirst()
                nodes.append(try parseStatement(s, word: word, &pieces))
            }
        }
        if !ends.isEmpty { throw JinjaError("missing {% \(ends.sorted().joined(separator: " or ")) %}") }
        return nodes
    }

    private static func takeStatement(_ pieces: inout ArraySlice<JinjaLexer.Piece>) -> String {
        if case .statement(let s) = pieces.removeFirst() { return s }
        return ""
    }

    private static func parseStatement(_ s: String, word: String, _ pieces: inout ArraySlice<JinjaLexer.Piece>) throws
        -> JinjaNode
    {
        var p = JinjaExprParser(try jinjaTokens(s))
        _ = try p.name()
        switch word {
        case "if":
            var branches: [(JinjaExpr, [JinjaNode])] = []
            var condition = try p.expression()
            var otherwise: [JinjaNode] = []
            while true {
                let body = try parseBlock(&pieces, until: ["elif", "else", "endif"])
                branches.append((condition, body))
                let next = takeStatement(&pieces)
                let nextWord = keyword(next)
                if nextWord == "elif" {
                    var q = JinjaExprParser(try jinjaTokens(next))
                    _ = try q.name()
                    condition = try q.expression()
                } else if nextWord == "else" {
                    otherwise = try parseBlock(&pieces, until: ["endif"])
                    _ = takeStatement(&pieces)
                    break
                } else {
                    break
                }
            }
            return .ifBlock(branches, otherwise: otherwise)
        case "for":
            var targets = [try p.name()]
            while p.accept(.op(",")) { targets.append(try p.name()) }
            try p.expect(.name("in"))
            let iterable = try p.orExpr()
            let filter = p.accept(.name("if")) ? try p.expression() : nil
            let body = try parseBlock(&pieces, until: ["else", "endfor"])
            var otherwise: [JinjaNode] = []
            if keyword(takeStatement(&pieces)) == "else" {
                otherwise = try parseBlock(&pieces, until: ["endfor"])
                _ = takeStatement(&pieces)
            }
            return .forBlock(targets: targets, iterable: iterable, filter: filter, body: body, otherwise: otherwise)
        case "set":
            var target = [try p.name()]
            while p.accept(.op(".")) { target.append(try p.name()) }
            if p.atEnd {
                let body = try parseBlock(&pieces, until: ["endset"])
                _ = takeStatement(&pieces)
                return .setBlock(name: target[0], body: body)
            }
            try p.expect(.op("="))
            return .set(target: target, value: try p.expression())
        case "generation", "endgeneration":
            return .text("")
        default:
            throw JinjaError("unsupported statement '{% \(word) %}'")
        }
    }
}
