/// A vocabulary's tokens as byte strings in a trie, so that finding the tokens a grammar allows walks each shared
/// prefix once and stops at the first byte the grammar refuses.
public final class TokenTrie: Sendable {
    public let vocabularySize: Int
    /// Each token's bytes; empty for tokens a grammar never allows (control tokens).
    public let tokenBytes: [[UInt8]]
    /// Node `n`'s children are `childByte/childNode[childStart[n]..<childStart[n + 1]]`; node 0 is the root.
    let childStart: [Int32]
    let childByte: [UInt8]
    let childNode: [Int32]
    /// The tokens spelled by node `n` are `tokenIds[tokenStart[n]..<tokenStart[n + 1]]`.
    let tokenStart: [Int32]
    let tokenIds: [Int32]

    /// `tokens[i]` is token i's bytes, or nil for a token no grammar may produce.
    public init(tokens: [[UInt8]?]) {
        vocabularySize = tokens.count
        tokenBytes = tokens.map { $0 ?? [] }
        // Sorted order makes every node's subtree a contiguous run; build the nodes in depth-first order.
        let order = tokens.indices.filter { !(tokens[$0] ?? []).isEmpty }
            .sorted { tokens[$0]!.lexicographicallyPrecedes(tokens[$1]!) }
        var children: [[(UInt8, Int32)]] = [[]]
        var ending: [[Int32]] = [[]]
        var path: [Int32] = [0]  // path[d] is the node at depth d of the previous token
        var previous: [UInt8] = []
        for id in order {
            let bytes = tokens[id]!
            var common = 0
            while common < bytes.count, common < previous.count, bytes[common] == previous[common] { common += 1 }
            path.removeSubrange((common + 1)...)
            for d in common..<bytes.count {
                let node = Int32(children.count)
                children.append([])
                ending.append([])
                children[Int(path[d])].append((bytes[d], node))
                path.append(node)
            }
            ending[Int(path[bytes.count])].append(Int32(id))
            previous = bytes
        }
        var cs: [Int32] = [0]
        var cb: [UInt8] = []
        var cn: [Int32] = []
        var ts: [Int32] = [0]
        var ti: [Int32] = []
        for n in children.indices {
            for (b, c) in children[n] {
                cb.append(b)
                cn.append(c)
            }
            cs.append(Int32(cb.count))
            ti += ending[n]
            ts.append(Int32(ti.count))
        }
        childStart = cs
        childByte = cb
        childNode = cn
        tokenStart = ts
        tokenIds = ti
    }

    public var nodeCount: Int { childStart.count - 1 }

    /// The tokens whose every byte the matcher accepts from its state, as a bit per token id.
    ///
    /// The walk interns the matcher states it meets and computes each state's move on a byte once: inside a string,
    /// say, nearly every byte leads back to the same state, so most of the trie costs a table lookup per node.
    public func allowedTokens(from matcher: GrammarMatcher) -> TokenMask {
        var mask = TokenMask(count: vocabularySize)
        var states = WalkStates(matcher.grammar)
        let root = states.intern(matcher.stacks)
        visit(0, root, &states, &mask)
        return mask
    }

    private func visit(_ node: Int, _ state: Int32, _ states: inout WalkStates, _ mask: inout TokenMask) {
        for k in Int(childStart[node])..<Int(childStart[node + 1]) {
            let after = states.move(state, childByte[k])
            if after < 0 { continue }
            let child = Int(childNode[k])
            for t in Int(tokenStart[child])..<Int(tokenStart[child + 1]) { mask.insert(tokenIds[t]) }
            visit(child, after, &states, &mask)
        }
    }
}

/// The matcher states one trie walk meets, numbered, with their moves on each byte as they are first needed.
private struct WalkStates {
    let grammar: CompiledGrammar
    private var ids: [[[Int32]]: Int32] = [:]
    private var stacks: [[[Int32]]] = []
    private var next: [ByteSet] = []
    /// 256 moves per state: -2 not yet computed, -1 refused.
    private var moves: [Int32] = []

    init(_ grammar: CompiledGrammar) { self.grammar = grammar }

    mutating func intern(_ s: [[Int32]]) -> Int32 {
        if let id = ids[s] { return id }
        let id = Int32(stacks.count)
        ids[s] = id
        stacks.append(s)
        next.append(GrammarMatcher.nextBytes(s, grammar))
        moves += [Int32](repeating: -2, count: 256)
        return id
    }

    /// The state after `byte` from `state`, or -1 when the grammar refuses it.
    mutating func move(_ state: Int32, _ byte: UInt8) -> Int32 {
        let slot = Int(state) * 256 + Int(byte)
        let known = moves[slot]
        if known != -2 { return known }
        var result: Int32 = -1
        if next[Int(state)].contains(byte) {
            let after = GrammarMatcher.advance(stacks[Int(state)], byte, grammar)
            if !after.isEmpty { result = intern(after) }
        }
        moves[slot] = result
        return result
    }
}

/// A set of token ids as bits.
public struct TokenMask: Sendable, Equatable {
    public private(set) var words: [UInt64]
    public let count: Int

    public init(count: Int) {
        self.count = count
        words = [UInt64](repeating: 0, count: (count + 63) / 64)
    }

    @inline(__always) public mutating func insert(_ id: Int32) {
        words[Int(id) >> 6] |= UInt64(1) << UInt64(id & 63)
    }

    @inline(__always) public func contains(_ id: Int32) -> Bool {
        id >= 0 && Int(id) < count && words[Int(id) >> 6] & (UInt64(1) << UInt64(id & 63)) != 0
    }

    public var isEmpty: Bool { words.allSatisfy { $0 == 0 } }
    public var population: Int { words.reduce(0) { $0 + $1.nonzeroBitCount } }
}
