import Engine
import Foundation
import Testing

@Suite struct SamplingTests {
    let logits: [Float] = [1.0, 3.0, 2.5, -1.0, 0.5, 2.9]

    @Test func greedyPicksTheArgmaxAndMasksEndTokens() {
        var s = Sampler(params: .greedy(maxTokens: 4), promptTokens: [])
        #expect(s.sample(logits: logits, generatedCount: 0, endTokens: [1]).id == 1)
        var p = SamplingParams.greedy(maxTokens: 4)
        p.ignoreEOS = true
        var ignoring = Sampler(params: p, promptTokens: [])
        #expect(ignoring.sample(logits: logits, generatedCount: 0, endTokens: [1]).id == 5)
        p.ignoreEOS = false
        p.minTokens = 2
        var minimum = Sampler(params: p, promptTokens: [])
        #expect(minimum.sample(logits: logits, generatedCount: 1, endTokens: [1]).id == 5)
        #expect(minimum.sample(logits: logits, generatedCount: 2, endTokens: [1]).id == 1)
    }

    @Test func seededSamplingIsReproducibleAndRespectsTopK() {
        var p = SamplingParams()
        p.temperature = 1
        p.seed = 1234
        func run() -> [Int32] {
            var s = Sampler(params: p, promptTokens: [])
            return (0..<50).map { s.sample(logits: logits, generatedCount: $0, endTokens: []).id }
        }
        let a = run()
        #expect(a == run())
        #expect(Set(a).count > 1)
        p.seed = 99
        #expect(run() != a)
        p.topK = 2
        #expect(Set(run()).isSubset(of: [1, 5]))
        p.topK = 0
        p.topP = 0.3
        #expect(Set(run()) == [1])
        p.topP = 1
        p.minP = 0.9
        #expect(Set(run()).isSubset(of: [1, 5]))
    }

    /// The heap selection gives exactly the first entries of a full sort (logit descending, ties by lower id).
    @Test func topIndicesEqualAFullSortsPrefix() {
        var rng = SeededGenerator(seed: 5)
        // Few distinct values, so many ties.
        let values = (0..<3000).map { _ in Float(rng.next() % 40) / 4 - 5 }
        let full = values.indices.sorted { values[$0] > values[$1] || (values[$0] == values[$1] && $0 < $1) }
        for count in [1, 5, 40, 500, 3000, 3100] {
            #expect(Sampler.topIndices(values, count: count) == Array(full.prefix(count)), "count \(count)")
        }
    }

    /// Sampled frequencies follow the softmax of logits / temperature, renormalized over what top-p keeps.
    @Test func sampledFrequenciesFollowTheDistribution() {
        var p = SamplingParams()
        p.temperature = 0.7
        p.seed = 42
        let weights = logits.map { exp(Double($0 / 0.7)) }
        let total = weights.reduce(0, +)
        var s = Sampler(params: p, promptTokens: [])
        var counts = [Int](repeating: 0, count: logits.count)
        let draws = 20000
        for i in 0..<draws { counts[Int(s.sample(logits: logits, generatedCount: i, endTokens: []).id)] += 1 }
        for i in logits.indices {
            #expect(abs(Double(counts[i]) / Double(draws) - weights[i] / total) < 0.015, "token \(i)")
        }
        // top-p 0.8: tokens 1, 5, 2 (most likely first) hold 0.41 + 0.36 + 0.20 of the mass, so 2 is the last kept.
        p.topP = 0.8
        var top = Sampler(params: p, promptTokens: [])
        var kept = Set<Int32>()
        for i in 0..<2000 { kept.insert(top.sample(logits: logits, generatedCount: i, endTokens: []).id) }
        #expect(kept == [1, 5, 2])
    }

    /// A flat distribution needs more than the likely head for top-p: the full sort takes over, and ties go to the
    /// lower ids.
    @Test func topPOnAFlatDistributionKeepsTheLowestIds() {
        var p = SamplingParams()
        p.seed = 3
        p.topP = 0.5
        let flat = [Float](repeating: 1, count: 5000)
        var s = Sampler(params: p, promptTokens: [])
        let ids = (0..<500).map { s.sample(logits: flat, generatedCount: $0, endTokens: []).id }
        #expect(ids.max()! < 2500)
        #expect(ids.min()! < 100)
    }

    @Test func penaltiesLowerRepeatedTokens() {
        var p = SamplingParams.greedy(maxTokens: 4)
        p.repetitionPenalty = 2
        var s = Sampler(params: p, promptTokens: [1])
        #expect(s.sample(logits: logits, generatedCount: 0, endTokens: []).id == 5)
        p = .greedy(maxTokens: 4)
        p.frequencyPenalty = 1
        var f = Sampler(params: p, promptTokens: [])
        #expect(f.sample(logits: logits, generatedCount: 0, endTokens: []).id == 1)
        #expect(f.sample(logits: logits, generatedCount: 1, endTokens: []).id == 5)
    }

    @Test func logprobsAreNormalised() {
        let lp = Sampler.logprob(of: 1, in: logits, top: 3)
        #expect(lp.top.map(\.id) == [1, 5, 2])
        let total = logits.indices.map { exp(Double(Sampler.logprob(of: Int32($0), in: logits, top: 0).logprob)) }
            .reduce(0, +)
        #expect(abs(total - 1) < 1e-5)
    }

    @Test func stopStringsAreCutAndHeldBack() {
        var m = StopStringMatcher(stops: ["STOP"])
        #expect(m.append("Hello S").delta == "Hell")
        #expect(m.append("TO").delta == "o ")
        let end = m.append("P and more")
        #expect(end.stopped && end.delta == "" && m.text == "Hello ")
        var none = StopStringMatcher(stops: [])
        #expect(none.append("abc").delta == "abc")
    }
}
