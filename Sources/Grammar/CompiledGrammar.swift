/// A grammar flattened for matching bytes: every rule a list of alternatives, every alternative a run of
/// positions, each a byte set or a reference to a rule. Character classes beyond ASCII become rules of UTF-8 byte
/// sequences, repetitions become right-recursive rules, so a matcher only ever compares one byte with one set.
///
/// Compiling checks the grammar: every referenced rule exists, no rule can reach itself without consuming input
/// (left recursion, which a top-down matcher cannot follow), and the grammar's size stays bounded.
public final class CompiledGrammar: Sendable {
    /// Position codes: ≥ 0 a byte set's index, `endOfAlternative`, or `-(2 + rule)` a rule reference.
    let codes: [Int32]
    let byteSets: [ByteSet]
    /// Each rule's alternatives, as the position of their first code.
    let alternatives: [[Int32]]
    let root: Int32

    static let endOfAlternative: Int32 = -1
    /// Beyond these a grammar (usually generated from a schema) is refused rather than compiled.
    public static let maxCodes = 2_000_000
    public static let maxRepetition = 100_000

    public init(_ grammar: Grammar) throws {
        var builder = Builder(grammar: grammar)
        let root = try builder.ruleIndex(grammar.root)
        while let (index, name) = builder.pending.popLast() {
            guard let expression = grammar.rules[name] else { throw GrammarError("the grammar has no rule '\(name)'") }
            try builder.define(index, expression)
        }
        codes = builder.codes
        byteSets = builder.byteSets
        alternatives = builder.alternatives
        self.root = root
        try checkNoLeftRecursion(names: builder.names)
    }

    /// The rules that match the empty text, then, for each rule, the rules it can start with at the same position.
    private func checkNoLeftRecursion(names: [Int32: String]) throws {
        var nullable = [Bool](repeating: false, count: alternatives.count)
        var changed = true
        while changed {
            changed = false
            for r in alternatives.indices where !nullable[r] {
                if alternatives[r].contains(where: { altNullable($0, nullable) }) {
                    nullable[r] = true
                    changed = true
                }
            }
        }
        var leftEdges = [[Int32]](repeating: [], count: alternatives.count)
        for r in alternatives.indices {
            for start in alternatives[r] {
                var p = Int(start)
                while codes[p] != Self.endOfAlternative, codes[p] < 0 {
                    let ref = -codes[p] - 2
                    leftEdges[r].append(ref)
                    guard nullable[Int(ref)] else { break }
                    p += 1
                }
            }
        }
        // Depth-first search for a cycle among left edges.
        var state = [UInt8](repeating: 0, count: alternatives.count)  // 0 new, 1 on path, 2 done
        for start in alternatives.indices where state[start] == 0 {
            var path: [(rule: Int, edge: Int)] = [(start, 0)]
            state[start] = 1
            while let (rule, edge) = path.last {
                if edge < leftEdges[rule].count {
                    path[path.count - 1].edge += 1
                    let next = Int(leftEdges[rule][edge])
                    if state[next] == 1 {
                        let name = names[Int32(next)] ?? "a repetition of something that can be empty"
                        throw GrammarError(
                            "rule '\(name)' is left-recursive (it can reach itself without consuming text)")
                    }
                    if state[next] == 0 {
                        state[next] = 1
                        path.append((next, 0))
                    }
                } else {
                    state[rule] = 2
                    path.removeLast()
                }
            }
        }
    }

    private func altNullable(_ start: Int32, _ nullable: [Bool]) -> Bool {
        var p = Int(start)
        while codes[p] != Self.endOfAlternative {
            guard codes[p] < 0, nullable[Int(-codes[p] - 2)] else { return false }
            p += 1
        }
        return true
    }

    /// Builds the flat form rule by rule; helper rules for nested choices, repetitions and classes are shared
    /// between equal expressions.
    private struct Builder {
        let grammar: Grammar
        var codes: [Int32] = []
        var byteSets: [ByteSet] = []
        var byteSetIndex: [ByteSet: Int32] = [:]
        var alternatives: [[Int32]] = []
        var named: [String: Int32] = [:]
        var names: [Int32: String] = [:]
        var helpers: [GrammarExpression: Int32] = [:]
        var pending: [(Int32, String)] = []

        init(grammar: Grammar) { self.grammar = grammar }

        mutating func ruleIndex(_ name: String) throws -> Int32 {
            if let i = named[name] { return i }
            guard grammar.rules[name] != nil else { throw GrammarError("the grammar has no rule '\(name)'") }
            let i = Int32(alternatives.count)
            alternatives.append([])
            named[name] = i
            names[i] = name
            pending.append((i, name))
            return i
        }

        mutating func define(_ rule: Int32, _ expression: GrammarExpression) throws {
            let alts: [GrammarExpression]
            if case .choice(let items) = expression { alts = items } else { alts = [expression] }
            var starts: [Int32] = []
            for alt in alts {
                let atoms = try atoms(of: alt)
                starts.append(Int32(codes.count))
                codes += atoms
                codes.append(CompiledGrammar.endOfAlternative)
                guard codes.count <= CompiledGrammar.maxCodes else {
                    throw GrammarError("the grammar is too large (over \(CompiledGrammar.maxCodes) positions)")
                }
            }
            alternatives[Int(rule)] = starts
        }

        mutating func byteSet(_ set: ByteSet) -> Int32 {
            if let i = byteSetIndex[set] { return i }
            let i = Int32(byteSets.count)
            byteSets.append(set)
            byteSetIndex[set] = i
            return i
        }

        static func reference(_ rule: Int32) -> Int32 { -(2 + rule) }

        /// The codes of one alternative's sequence.
        mutating func atoms(of e: GrammarExpression) throws -> [Int32] {
            switch e {
            case .literal(let bytes):
                return bytes.map { byteSet(ByteSet($0...$0)) }
            case .characters(let set):
                guard !set.isEmpty else { throw GrammarError("an empty character class matches nothing") }
                if let last = set.ranges.last, last.upperBound < 0x80 {
                    var bytes = ByteSet()
                    for r in set.ranges { bytes.formUnion(ByteSet(UInt8(r.lowerBound)...UInt8(r.upperBound))) }
                    return [byteSet(bytes)]
                }
                return [Self.reference(try helper(for: e))]
            case .rule(let name):
                return [Self.reference(try ruleIndex(name))]
            case .sequence(let items):
                var out: [Int32] = []
                for item in items { out += try atoms(of: item) }
                return out
            case .choice(let items):
                if items.count == 1 { return try atoms(of: items[0]) }
                return [Self.reference(try helper(for: e))]
            case .repetition(let inner, let min, let max):
                guard min >= 0, max.map({ $0 >= min }) ?? true else {
                    throw GrammarError("a repetition {\(min),\(max.map(String.init) ?? "")} matches nothing")
                }
                guard Swift.max(min, max ?? 0) <= CompiledGrammar.maxRepetition else {
                    throw GrammarError("a repetition count above \(CompiledGrammar.maxRepetition) is not supported")
                }
                if max == 0 { return [] }
                let one = try atoms(of: inner)
                guard one.count * min <= CompiledGrammar.maxCodes else {
                    throw GrammarError("the grammar is too large (over \(CompiledGrammar.maxCodes) positions)")
                }
                var out: [Int32] = []
                for _ in 0..<min { out += one }
                if max == min { return out }
                out.append(Self.reference(try helper(for: .repetition(inner, min: 0, max: max.map { $0 - min }))))
                return out
            }
        }

        /// A rule standing for a nested expression: its alternatives are the choice's items, a class's UTF-8
        /// sequences, or a repetition's "one more, then the rest | nothing".
        mutating func helper(for e: GrammarExpression) throws -> Int32 {
            if let i = helpers[e] { return i }
            let i = Int32(alternatives.count)
            alternatives.append([])
            helpers[e] = i
            switch e {
            case .characters(let set):
                // Raw byte ranges, one alternative per UTF-8 sequence.
                var starts: [Int32] = []
                for sequence in set.utf8Sequences {
                    starts.append(Int32(codes.count))
                    for r in sequence { codes.append(byteSet(ByteSet(r))) }
                    codes.append(CompiledGrammar.endOfAlternative)
                }
                alternatives[Int(i)] = starts
            case .repetition(let inner, 0, let max):
                let rest: GrammarExpression
                if let max {
                    rest = max == 1 ? .empty : .repetition(inner, min: 0, max: max - 1)
                } else {
                    rest = e
                }
                // "one more, then the rest" or nothing; a helper for `inner` keeps each alternative short.
                try define(i, .choice([.sequence([inner, rest]), .empty]))
            default:
                try define(i, e)
            }
            return i
        }
    }
}
