import Engine
import Grammar
import OpenAIAPI
import Synchronization

/// The model's vocabulary as a token trie (built on the first structured request) and the constraints compiled for
/// it, the most recently used kept: a schema sent again reuses its grammar and every token mask computed for it.
final class GrammarCache: Sendable {
    private let tokenizer: Tokenizer
    private let state = Mutex<(trie: TokenTrie?, constraints: [String: GrammarConstraint], order: [String])>(
        (nil, [:], []))
    static let capacity = 64

    init(tokenizer: Tokenizer) { self.tokenizer = tokenizer }

    func constraint(for spec: StructuredOutputSpec) throws -> GrammarConstraint {
        if let hit = state.withLock({ s -> GrammarConstraint? in
            guard let c = s.constraints[spec.key] else { return nil }
            s.order.removeAll { $0 == spec.key }
            s.order.append(spec.key)
            return c
        }) {
            return hit
        }
        let compiled: CompiledGrammar
        do {
            compiled = try CompiledGrammar(try spec.build())
        } catch let e as GrammarError {
            throw APIError.badRequest("\(spec.param): \(e.description)", param: spec.param)
        }
        let trie = state.withLock { $0.trie } ?? makeTrie()
        let constraint = GrammarConstraint(grammar: compiled, trie: trie, kind: spec.kind)
        state.withLock { s in
            s.trie = s.trie ?? trie
            if s.constraints[spec.key] == nil {
                s.constraints[spec.key] = constraint
                s.order.append(spec.key)
            }
            while s.order.count > Self.capacity { s.constraints[s.order.removeFirst()] = nil }
        }
        return constraint
    }

    /// Every token's bytes; control tokens (end markers and the like) are never text a grammar can allow.
    private func makeTrie() -> TokenTrie {
        TokenTrie(
            tokens: (0..<tokenizer.vocabularySize).map { id in
                tokenizer.tokenTypes[id] == 3 ? nil : tokenizer.bytes(of: Int32(id))
            })
    }
}
