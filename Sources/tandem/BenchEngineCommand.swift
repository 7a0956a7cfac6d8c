import ArgumentParser
import Engine
import Foundation
import ModelStore

/// `tandem bench-engine`: prefill and decode speed of the engine alone, in the manner of llama-bench.
struct BenchEngineCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-engine", abstract: "Measure the engine's prefill and decode speed, like llama-bench.")

    @Option(help: "A GGUF file, or a model name (`default`, `gemma3-270m`; see `tandem model list`).") var model =
        "default"
    @Option(help: "Thread counts to test, comma-separated.") var threads = "2"
    @Option(help: "Prompt length of the prefill test (ppN).") var prompt = 512
    @Option(help: "Tokens generated in the decode tests (tgN).") var gen = 128
    @Option(help: "Batch sizes of the decode test, comma-separated.") var batch = "1"
    @Option(help: "Repetitions of each test.") var repetitions = 3
    @Flag(help: "Print JSON lines instead of a table.") var json = false

    static func list(_ text: String, _ name: String) throws -> [Int] {
        let values = text.split(separator: ",").map { Int($0.trimmingCharacters(in: .whitespaces)) }
        guard !values.isEmpty, values.allSatisfy({ ($0 ?? 0) >= 1 }) else {
            throw ValidationError("--\(name) must be a comma-separated list of positive integers")
        }
        return values.map { $0! }
    }

    func validate() throws {
        _ = try Self.list(threads, "threads")
        _ = try Self.list(batch, "batch")
        guard prompt >= 0, gen >= 0, prompt + gen > 0 else { throw ValidationError("--prompt and --gen must be >= 0") }
        guard repetitions >= 1 else { throw ValidationError("--repetitions must be at least 1") }
    }

    func run() throws {
        let path = try ModelStore().resolve(model)
        if !json {
            print("| model | test | threads | t/s |")
            print("|---|---|---|---|")
        }
        for t in try Self.list(threads, "threads") {
            let m = try TransformerModel(path: path, threads: t)
            let name = URL(fileURLWithPath: path).lastPathComponent
            if prompt > 0 {
                let rates = (0..<repetitions).map { _ in prefillRate(m) }
                report(name, "pp\(prompt)", t, rates)
            }
            if gen > 0 {
                for b in try Self.list(batch, "batch") {
                    let rates = (0..<repetitions).map { _ in decodeRate(m, batch: b) }
                    report(name, b == 1 ? "tg\(gen)" : "tg\(gen) batch \(b)", t, rates)
                }
            }
        }
    }

    private func report(_ model: String, _ test: String, _ threads: Int, _ rates: [Double]) {
        let mean = rates.reduce(0, +) / Double(rates.count)
        let sd = (rates.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(max(1, rates.count - 1))).squareRoot()
        if json {
            print(
                #"{"model":"\#(model)","test":"\#(test)","threads":\#(threads),"tokens_per_second":\#(mean),"sd":\#(sd),"repetitions":\#(rates.count)}"#
            )
        } else {
            print(String(format: "| %@ | %@ | %d | %.2f ± %.2f |", model, test, threads, mean, sd))
        }
    }

    private func tokens(_ count: Int, seed: Int, vocab: Int) -> [Int32] {
        (0..<count).map { Int32((($0 + 1) * 7919 + seed * 104_729) % vocab) }
    }

    private func cache(_ m: TransformerModel, tokens: Int, sequences: Int) -> (PagedKVCache, [[Int32]]) {
        let perSequence = (tokens + 15) / 16 + 1
        let c = PagedKVCache(
            layerCount: m.config.layerCount, blockCount: perSequence * sequences, blockSize: 16, kvDim: m.config.kvDim)
        let tables = (0..<sequences).map { s in (0..<perSequence).map { Int32(s * perSequence + $0) } }
        return (c, tables)
    }

    private func prefillRate(_ m: TransformerModel) -> Double {
        let (c, tables) = cache(m, tokens: prompt, sequences: 1)
        let start = Date()
        var position = 0
        while position < prompt {
            let n = min(512, prompt - position)
            let chunk = SequenceChunk(
                tokens: tokens(n, seed: position, vocab: m.config.vocabSize), startPosition: position,
                blockTable: tables[0], wantsLogits: position + n == prompt, promptLength: prompt)
            _ = m.forward([chunk], cache: c)
            position += n
        }
        return Double(prompt) / Date().timeIntervalSince(start)
    }

    /// Decode of `gen` tokens for `batch` sequences at once, each after a one-token prompt; aggregate tokens/s.
    private func decodeRate(_ m: TransformerModel, batch: Int) -> Double {
        let (c, tables) = cache(m, tokens: gen + 1, sequences: batch)
        let firsts = (0..<batch).map { b in
            SequenceChunk(
                tokens: [Int32(100 + b)], startPosition: 0, blockTable: tables[b], wantsLogits: true, promptLength: 1)
        }
        _ = m.forward(firsts, cache: c)
        let start = Date()
        for step in 0..<gen {
            let chunks = (0..<batch).map { b in
                SequenceChunk(
                    tokens: [Int32((step * 31 + b * 17) % m.config.vocabSize)], startPosition: step + 1,
                    blockTable: tables[b], wantsLogits: true, promptLength: 1)
            }
            _ = m.forward(chunks, cache: c)
        }
        return Double(gen * batch) / Date().timeIntervalSince(start)
    }
}
