/// Where a text stands in a grammar: the set of parse stacks still alive after its bytes (each stack a list of
/// positions, innermost last, its top a byte set). A value: copy it to try bytes without changing it.
///
/// An empty stack means the text so far is a complete match; no stack means the text can no longer match.
public struct GrammarMatcher: Sendable, Hashable {
    public let grammar: CompiledGrammar
    /// Sorted and distinct, so equal states compare and hash equal.
    public private(set) var stacks: [[Int32]]

    /// Beyond this many live stacks (a very ambiguous grammar) the state is cut to the first ones.
    public static let maxStacks = 512

    public init(_ grammar: CompiledGrammar) {
        self.grammar = grammar
        var out: [[Int32]] = []
        var stack: [Int32] = []
        for alt in grammar.alternatives[Int(grammar.root)] {
            if grammar.codes[Int(alt)] == CompiledGrammar.endOfAlternative {
                Self.expand(&stack, grammar, into: &out)
            } else {
                stack = [alt]
                Self.expand(&stack, grammar, into: &out)
                stack = []
            }
        }
        stacks = Self.canonical(out)
    }

    /// The text so far is a whole match (end of generation may follow).
    public var canEnd: Bool { stacks.contains { $0.isEmpty } }
    /// Nothing but the end may follow.
    public var isComplete: Bool { stacks.allSatisfy(\.isEmpty) && !stacks.isEmpty }
    /// The text can no longer match.
    public var isDead: Bool { stacks.isEmpty }

    /// The bytes that may come next.
    public var nextBytes: ByteSet { Self.nextBytes(stacks, grammar) }

    static func nextBytes(_ stacks: [[Int32]], _ g: CompiledGrammar) -> ByteSet {
        var set = ByteSet()
        for s in stacks {
            if let top = s.last { set.formUnion(g.byteSets[Int(g.codes[Int(top)])]) }
        }
        return set
    }

    /// Takes one byte; false (and the state unchanged) when the grammar does not allow it here.
    @discardableResult
    public mutating func accept(_ byte: UInt8) -> Bool {
        let next = Self.advance(stacks, byte, grammar)
        guard !next.isEmpty else { return false }
        stacks = next
        return true
    }

    /// Takes all of `bytes`, or nothing when they do not fit.
    @discardableResult
    public mutating func accept(_ bytes: some Sequence<UInt8>) -> Bool {
        var state = stacks
        for b in bytes {
            state = Self.advance(state, b, grammar)
            if state.isEmpty { return false }
        }
        stacks = state
        return true
    }

    /// Whether `bytes` may come next, without taking them.
    public func allows(_ bytes: some Sequence<UInt8>) -> Bool {
        var copy = self
        return copy.accept(bytes)
    }

    static func advance(_ stacks: [[Int32]], _ byte: UInt8, _ g: CompiledGrammar) -> [[Int32]] {
        var out: [[Int32]] = []
        for s in stacks {
            guard let top = s.last, g.byteSets[Int(g.codes[Int(top)])].contains(byte) else { continue }
            var n = s
            n.removeLast()
            if g.codes[Int(top) + 1] != CompiledGrammar.endOfAlternative { n.append(top + 1) }
            expand(&n, g, into: &out)
        }
        return out.count > 1 ? canonical(out) : out
    }

    /// Adds to `out` every stack `stack` stands for once the rule references on its top are opened, until each top
    /// is a byte set (or the stack is empty). `stack` is restored on return.
    static func expand(_ stack: inout [Int32], _ g: CompiledGrammar, into out: inout [[Int32]], depth: Int = 0) {
        guard let top = stack.last else {
            out.append(stack)
            return
        }
        let code = g.codes[Int(top)]
        if code >= 0 {
            out.append(stack)
            return
        }
        // Bounds for hostile grammars (long chains of rules that match nothing): such paths are dropped.
        guard out.count < maxStacks * 4, stack.count < 10_000, depth < 2_000 else { return }
        let rule = Int(-code - 2)
        stack.removeLast()
        let continues = g.codes[Int(top) + 1] != CompiledGrammar.endOfAlternative
        if continues { stack.append(top + 1) }
        for alt in g.alternatives[rule] {
            if g.codes[Int(alt)] == CompiledGrammar.endOfAlternative {
                expand(&stack, g, into: &out, depth: depth + 1)
            } else {
                stack.append(alt)
                expand(&stack, g, into: &out, depth: depth + 1)
                stack.removeLast()
            }
        }
        if continues { stack.removeLast() }
        stack.append(top)
    }

    static func canonical(_ stacks: [[Int32]]) -> [[Int32]] {
        var seen = Set<[Int32]>()
        var out: [[Int32]] = []
        for s in stacks where seen.insert(s).inserted { out.append(s) }
        out.sort { $0.lexicographicallyPrecedes($1) }
        if out.count > maxStacks { out.removeSubrange(maxStacks...) }
        return out
    }

    public static func == (a: GrammarMatcher, b: GrammarMatcher) -> Bool {
        a.grammar === b.grammar && a.stacks == b.stacks
    }

    public func hash(into h: inout Hasher) {
        h.combine(ObjectIdentifier(grammar))
        h.combine(stacks)
    }
}
