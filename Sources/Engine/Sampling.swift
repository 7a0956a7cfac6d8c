import Foundation
import Grammar

/// How to pick each next token, with OpenAI/vLLM field meanings.
public struct SamplingParams: Sendable, Equatable {
    /// 0 means greedy.
    public var temperature: Float = 1
    /// Keep the k most likely tokens; 0 or less turns it off.
    public var topK: Int = 0
    public var topP: Float = 1
    public var minP: Float = 0
    /// vLLM's repetition penalty over prompt and output tokens (1 = off).
    public var repetitionPenalty: Float = 1
    /// OpenAI's presence and frequency penalties over output tokens (0 = off).
    public var presencePenalty: Float = 0
    public var frequencyPenalty: Float = 0
    public var seed: UInt64?
    public var maxTokens: Int = 16
    public var minTokens: Int = 0
    public var stop: [String] = []
    public var stopTokenIds: [Int32] = []
    /// Keep generating past end-of-generation tokens (they are masked out, as llama.cpp does).
    public var ignoreEOS = false
    /// Return this many most likely alternatives per token (nil: no logprobs).
    public var logprobs: Int?
    /// Return the prompt's logprobs too, with this many alternatives per token (nil: none). Every prompt position
    /// is then computed here: no prefix-cache hit, no loaded KV.
    public var promptLogprobs: Int?
    /// OpenAI's `logit_bias`: added to a token's logit before sampling (greedy too), after the penalties.
    public var logitBias: [Int32: Float] = [:]
    /// Structured output: every token must keep the text inside this grammar; end of generation only where the
    /// grammar's text is complete.
    public var constraint: GrammarConstraint?

    public init() {}

    /// Greedy decoding of up to `maxTokens` tokens.
    public static func greedy(maxTokens: Int) -> SamplingParams {
        var p = SamplingParams()
        p.temperature = 0
        p.maxTokens = maxTokens
        return p
    }
}

/// A token's log-probability and its most likely alternatives at that position.
public struct TokenLogprob: Sendable, Equatable {
    public var id: Int32
    public var logprob: Float
    public var top: [(id: Int32, logprob: Float)]

    public static func == (a: TokenLogprob, b: TokenLogprob) -> Bool {
        a.id == b.id && a.logprob == b.logprob && a.top.map(\.id) == b.top.map(\.id)
            && a.top.map(\.logprob) == b.top.map(\.logprob)
    }
}

/// xoshiro256** seeded through splitmix64: a small, fast, reproducible generator per request.
public struct SeededGenerator: RandomNumberGenerator, Sendable {
    private var s: (UInt64, UInt64, UInt64, UInt64)

    public init(seed: UInt64) {
        var x = seed
        func splitmix() -> UInt64 {
            x &+= 0x9E37_79B9_7F4A_7C15
            var z = x
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        s = (splitmix(), splitmix(), splitmix(), splitmix())
    }

    public mutating func next() -> UInt64 {
        let result = ((s.1 &* 5) << 7 | (s.1 &* 5) >> 57) &* 9
        let t = s.1 << 17
        s.2 ^= s.0
        s.3 ^= s.1
        s.1 ^= s.2
        s.0 ^= s.3
        s.2 ^= t
        s.3 = s.3 << 45 | s.3 >> 19
        return result
    }

    /// A uniform float in [0, 1).
    public mutating func uniform() -> Double { Double(next() >> 11) * 0x1.0p-53 }
}

/// Picks tokens from logits for one request; owns the request's random state, so results depend only on the
/// request (its seed, prompt and output so far), never on the batch around it.
///
/// With a temperature above 0 every sampled token makes exactly one random draw (greedy makes none), so a request
/// resumed after `k` tokens continues with `k` draws made (`resumed(after:draws:)`).
public struct Sampler: Sendable {
    public let params: SamplingParams
    private var rng: SeededGenerator
    /// Random draws made so far.
    public private(set) var draws = 0
    /// Output token counts for presence/frequency penalties.
    private var outputCounts: [Int32: Int] = [:]
    private var seen: Set<Int32>
    /// Where the output stands in `params.constraint`'s grammar.
    public private(set) var matcher: GrammarMatcher?

    public init(params: SamplingParams, promptTokens: [Int32]) {
        self.params = params
        matcher = params.constraint?.start()
        rng = SeededGenerator(seed: params.seed ?? UInt64.random(in: 0...UInt64.max))
        seen = params.repetitionPenalty != 1 ? Set(promptTokens) : []
    }

    /// The draws a request makes for `tokens` sampled tokens when nothing else is known.
    public static func defaultDraws(params: SamplingParams, tokens: Int) -> Int {
        params.temperature > 0 ? tokens : 0
    }

    /// Brings a fresh sampler to where it stood after choosing `tokens`: their penalty counts, and `draws` random
    /// draws made (the seed's sequence advanced past them).
    public mutating func resume(after tokens: [Int32], draws: Int) {
        for id in tokens {
            if params.repetitionPenalty != 1 { seen.insert(id) }
            outputCounts[id, default: 0] += 1
            advanceMatcher(id)
        }
        for _ in 0..<max(0, draws) { _ = rng.next() }
        self.draws = max(0, draws)
    }

    /// Chooses the next token. `generatedCount` is how many tokens were produced before this one;
    /// `endTokens` are masked while below `minTokens` or when ignoring EOS.
    public mutating func sample(logits raw: [Float], generatedCount: Int, endTokens: Set<Int32>) -> (
        id: Int32, logprob: TokenLogprob?
    ) {
        var logits = raw
        if params.ignoreEOS || generatedCount < params.minTokens {
            for id in endTokens where Int(id) < logits.count { logits[Int(id)] = -.infinity }
            if generatedCount < params.minTokens {
                for id in params.stopTokenIds where Int(id) < logits.count { logits[Int(id)] = -.infinity }
            }
        }
        applyPenalties(&logits)
        for (id, bias) in params.logitBias where Int(id) < logits.count { logits[Int(id)] += bias }
        var chosen: Int32
        if let constraint = params.constraint, let matcher,
            params.temperature <= 0, case let best = Int32(Self.argmax(logits)), logits[Int(best)] > -.infinity,
            endTokens.contains(best) ? matcher.canEnd : constraint.allows(best, in: matcher)
        {
            // Greedy and the most likely token fits: the masked argmax is the same token, without the mask.
            chosen = best
        } else {
            if let constraint = params.constraint, let matcher {
                Self.mask(&logits, constraint.allowedTokens(matcher), endAllowed: matcher.canEnd, endTokens: endTokens)
            }
            if params.temperature <= 0 {
                chosen = Int32(Self.argmax(logits))
            } else {
                chosen = sampleFromDistribution(logits)
            }
            if params.constraint != nil, logits[Int(chosen)] == -.infinity, let end = endTokens.min() {
                chosen = end  // the grammar allows no token at all: end here rather than break it
            }
        }
        if params.repetitionPenalty != 1 { seen.insert(chosen) }
        outputCounts[chosen, default: 0] += 1
        advanceMatcher(chosen)
        let logprob = params.logprobs.map { Self.logprob(of: chosen, in: raw, top: $0) }
        return (chosen, logprob)
    }

    private mutating func advanceMatcher(_ id: Int32) {
        guard let constraint = params.constraint, matcher != nil, Int(id) < constraint.trie.vocabularySize else {
            return
        }
        matcher?.accept(constraint.trie.tokenBytes[Int(id)])
    }

    /// Sets to -infinity every token the grammar does not allow next.
    static func mask(_ logits: inout [Float], _ allowed: TokenMask, endAllowed: Bool, endTokens: Set<Int32>) {
        for i in logits.indices where !allowed.contains(Int32(i)) {
            if endAllowed, endTokens.contains(Int32(i)) { continue }
            logits[i] = -.infinity
        }
    }

    private func applyPenalties(_ logits: inout [Float]) {
        if params.repetitionPenalty != 1 {
            let p = params.repetitionPenalty
            for id in seen where Int(id) < logits.count {
                let l = logits[Int(id)]
                logits[Int(id)] = l > 0 ? l / p : l * p
            }
        }
        if params.presencePenalty != 0 || params.frequencyPenalty != 0 {
            for (id, count) in outputCounts where Int(id) < logits.count {
                logits[Int(id)] -= params.presencePenalty + params.frequencyPenalty * Float(count)
            }
        }
    }

    /// Temperature sampling after top-k, min-p and top-p, without sorting the whole vocabulary: top-k selects its
    /// tokens with a bounded heap, and top-p sorts only the tokens that can matter (falling back to a full sort when a
    /// flat distribution needs more). The kept tokens are scanned in a fixed order (most likely first when sorted,
    /// by id otherwise), so a seed always gives the same token.
    private mutating func sampleFromDistribution(_ logits: [Float]) -> Int32 {
        let t = params.temperature
        var candidates: [Int]
        var sorted = false
        if params.topK > 0, params.topK < logits.count {
            candidates = Self.topIndices(logits, count: params.topK).filter { logits[$0] > -.infinity }
            sorted = true
        } else {
            candidates = logits.indices.filter { logits[$0] > -.infinity }
        }
        // One draw per sampled token, whatever happens below (a resumed request counts on it).
        let u = rng.uniform()
        draws += 1
        if candidates.isEmpty { return Int32(Self.argmax(logits)) }
        var best = logits[candidates[0]]
        for i in candidates where logits[i] > best { best = logits[i] }
        let maxLogit = best / t
        var probs = candidates.map { Double(expf(logits[$0] / t - maxLogit)) }
        if params.minP > 0 {
            // The most likely token has probability weight 1 here.
            let threshold = Double(params.minP) * (probs.max() ?? 1)
            let kept = probs.indices.filter { probs[$0] >= threshold }
            candidates = kept.map { candidates[$0] }
            probs = kept.map { probs[$0] }
        }
        if params.topP < 1 {
            let total = probs.reduce(0, +)
            let goal = Double(params.topP) * total
            if !sorted {
                // Only tokens within a factor 1e-6 of the most likely can be needed to reach top-p, unless the
                // distribution is very flat: then sort them all.
                let floor = (probs.max() ?? 1) * 1e-6
                var order = probs.indices.filter { probs[$0] >= floor }
                Self.sortByLogit(&order, candidates: candidates, logits: logits)
                if order.reduce(0.0, { $0 + probs[$1] }) < goal {
                    order = Array(probs.indices)
                    Self.sortByLogit(&order, candidates: candidates, logits: logits)
                }
                candidates = order.map { candidates[$0] }
                probs = order.map { probs[$0] }
            }
            var cumulative = 0.0
            var keep = 0
            for p in probs {
                cumulative += p
                keep += 1
                if cumulative >= goal { break }
            }
            candidates.removeSubrange(keep...)
            probs.removeSubrange(keep...)
        }
        let total = probs.reduce(0, +)
        let r = u * total
        var acc = 0.0
        for (k, p) in probs.enumerated() {
            acc += p
            if r < acc { return Int32(candidates[k]) }
        }
        return Int32(candidates[candidates.count - 1])
    }

    /// Sorts positions into `candidates` by their token's logit, highest first, ties by token id.
    private static func sortByLogit(_ order: inout [Int], candidates: [Int], logits: [Float]) {
        order.sort {
            let a = candidates[$0]
            let b = candidates[$1]
            return logits[a] > logits[b] || (logits[a] == logits[b] && a < b)
        }
    }

    /// The `count` highest logits' indices, highest first, ties by lower index: the first `count` of a full sort, found
    /// with a bounded min-heap in one pass.
    public static func topIndices(_ logits: [Float], count: Int) -> [Int] {
        guard count > 0 else { return [] }
        // "a ranks below b": a lower logit, or the same logit and a higher index.
        func below(_ a: Int, _ b: Int) -> Bool { logits[a] < logits[b] || (logits[a] == logits[b] && a > b) }
        var heap: [Int] = []
        heap.reserveCapacity(count)
        func siftDown(_ start: Int) {
            var i = start
            while true {
                let l = 2 * i + 1
                let r = l + 1
                var m = i
                if l < heap.count, below(heap[l], heap[m]) { m = l }
                if r < heap.count, below(heap[r], heap[m]) { m = r }
                if m == i { return }
                heap.swapAt(i, m)
                i = m
            }
        }
        for i in logits.indices {
            if heap.count < count {
                heap.append(i)
                var c = heap.count - 1
                while c > 0, below(heap[c], heap[(c - 1) / 2]) {
                    heap.swapAt(c, (c - 1) / 2)
                    c = (c - 1) / 2
                }
            } else if below(heap[0], i) {
                heap[0] = i
                siftDown(0)
            }
        }
        return heap.sorted { below($1, $0) }
    }

    /// Index of the largest value (the lowest index among ties).
    public static func argmax(_ values: [Float]) -> Int {
        var best = 0
        var bestValue = -Float.infinity
        for (i, v) in values.enumerated() where v > bestValue {
            best = i
            bestValue = v
        }
        return best
    }

    /// Log-softmax of `logits` at `id`, with the `top` most likely tokens.
    public static func logprob(of id: Int32, in logits: [Float], top: Int) -> TokenLogprob {
        let maxLogit = logits.max() ?? 0
        var sum = 0.0
        for l in logits { sum += Double(expf(l - maxLogit)) }
        let logSum = Float(log(sum)) + maxLogit
        var best: [(id: Int32, logprob: Float)] = []
        if top > 0 {
            best = topIndices(logits, count: top).map { (Int32($0), logits[$0] - logSum) }
        }
        return TokenLogprob(id: id, logprob: logits[Int(id)] - logSum, top: best)
    }
}
