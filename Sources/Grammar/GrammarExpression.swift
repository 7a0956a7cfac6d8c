/// One side of a grammar rule: what a stretch of text must look like.
public indirect enum GrammarExpression: Sendable, Hashable {
    /// These bytes exactly (a literal; UTF-8 for text).
    case literal([UInt8])
    /// One character (Unicode scalar, UTF-8 encoded) from the set.
    case characters(CodepointSet)
    /// The named rule.
    case rule(String)
    case sequence([GrammarExpression])
    case choice([GrammarExpression])
    /// `min` to `max` (nil: any number of) repetitions.
    case repetition(GrammarExpression, min: Int, max: Int?)

    public static func text(_ s: String) -> GrammarExpression { .literal(Array(s.utf8)) }
    public static let empty = GrammarExpression.sequence([])

    public static func optional(_ e: GrammarExpression) -> GrammarExpression { .repetition(e, min: 0, max: 1) }
}

/// A context-free grammar over UTF-8 text: named rules, one of them the start (`root`).
public struct Grammar: Sendable, Hashable {
    public var rules: [String: GrammarExpression]
    public var root: String

    public init(rules: [String: GrammarExpression], root: String = "root") {
        self.rules = rules
        self.root = root
    }
}

/// Why a grammar, schema or pattern cannot be used; the message names the construct.
public struct GrammarError: Error, Sendable, Equatable, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
