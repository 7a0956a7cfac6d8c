import Synchronization

/// A compiled grammar bound to a vocabulary: what sampling consults to keep a request's output inside the grammar.
/// Shared by every request with the same grammar; the allowed-token masks it computes are kept per matcher state, so
/// a state seen before (the inside of a string, a separator) costs one lookup.
public final class GrammarConstraint: Sendable {
    public let grammar: CompiledGrammar
    public let trie: TokenTrie
    /// A short description for logs and errors ("json_schema", "regex", ...).
    public let kind: String
    private let masks = Mutex<[[[Int32]]: TokenMask]>([:])
    /// States beyond this are not kept (their masks are computed each time).
    public static let maxCachedStates = 8192

    public init(grammar: CompiledGrammar, trie: TokenTrie, kind: String) {
        self.grammar = grammar
        self.trie = trie
        self.kind = kind
    }

    /// A matcher at the start of the grammar.
    public func start() -> GrammarMatcher { GrammarMatcher(grammar) }

    /// The tokens (other than end of generation) allowed next in `matcher`'s state.
    public func allowedTokens(_ matcher: GrammarMatcher) -> TokenMask {
        if let hit = masks.withLock({ $0[matcher.stacks] }) { return hit }
        let mask = trie.allowedTokens(from: matcher)
        masks.withLock {
            if $0.count < Self.maxCachedStates { $0[matcher.stacks] = mask }
        }
        return mask
    }

    /// Whether token `id` may come next (a quick check of one token, without the mask).
    public func allows(_ id: Int32, in matcher: GrammarMatcher) -> Bool {
        guard id >= 0, Int(id) < trie.vocabularySize else { return false }
        let bytes = trie.tokenBytes[Int(id)]
        return !bytes.isEmpty && matcher.allows(bytes)
    }

    public var cachedStates: Int { masks.withLock { $0.count } }
}

extension GrammarConstraint: Equatable {
    /// Constraints are the same when they are the same compiled object.
    public static func == (a: GrammarConstraint, b: GrammarConstraint) -> Bool { a === b }
}
