import ArgumentParser
import Bench
import Engine
import Foundation
import GGUF
import ModelStore

/// `tandem bench`: a serving benchmark against any OpenAI-compatible server, like `vllm bench serve`.
struct BenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench", abstract: "Benchmark a serving deployment: TTFT, ITL, throughput, goodput.")

    @Option(name: .customLong("base-url"), help: "The server, e.g. http://127.0.0.1:10002.") var baseURL: String
    @Option(help: "/v1/completions or /v1/chat/completions.") var endpoint = "/v1/completions"
    @Option(help: "The `model` field to send.") var model: String?
    @Option(help: "`random`, or a JSONL file ({\"prompt\"} or ShareGPT-like {\"conversations\"}).")
    var dataset = "random"
    @Option(name: .customLong("input-len"), help: "Prompt tokens (random dataset).") var inputLen = 256
    @Option(name: .customLong("output-len"), help: "Output tokens per request.") var outputLen = 64
    @Option(name: .customLong("range-ratio"), help: "Lengths vary by ± this fraction.") var rangeRatio = 0.1
    @Option(name: .customLong("num-prompts"), help: "Requests to send.") var numPrompts = 100
    @Option(name: .customLong("request-rate"), help: "Requests per second (Poisson arrivals), or inf.")
    var requestRate = "inf"
    @Option(name: .customLong("max-concurrency"), help: "Most requests in flight at once.") var maxConcurrency: Int?
    @Option(help: "Seed for prompts and arrival times.") var seed: UInt64 = 0
    @Option(parsing: .upToNextOption, help: "SLOs for goodput, e.g. `ttft:500 tpot:50` (milliseconds).")
    var goodput: [String] = []
    @Option(help: "Percentiles to report, comma-separated.") var percentiles = "50,90,99"
    @Option(name: .customLong("result-json"), help: "Write every figure and per-request records here.")
    var resultJSON: String?
    @Option(help: "Write an SVG with latency distributions and throughput over time here.") var plot: String?
    @Option(help: "Run the same workload against this second server and compare.") var compare: String?
    @Option(help: "The first deployment's name in the plot's legend (default: --base-url).") var label: String?
    @Option(
        name: .customLong("compare-label"), help: "The second deployment's name in the legend (default: --compare).")
    var compareLabel: String?
    @Option(name: .customLong("api-key"), help: "Sent as `Authorization: Bearer KEY`.") var apiKey: String?
    @Option(
        help:
            "A GGUF file or `default` whose tokenizer builds random text prompts of exact token length (otherwise completions get random token-id prompts and chat gets random words)."
    )
    var tokenizer: String?

    var rate: Double? { requestRate == "inf" ? nil : Double(requestRate) }
    var percentileList: [Double] { percentiles.split(separator: ",").compactMap { Double($0) } }

    func slos() throws -> (ttftMs: Double?, tpotMs: Double?)? {
        guard !goodput.isEmpty else { return nil }
        var ttft: Double?
        var tpot: Double?
        for item in goodput {
            let parts = item.split(separator: ":")
            guard parts.count == 2, let v = Double(parts[1]), v > 0 else {
                throw ValidationError("--goodput entries look like ttft:500 or tpot:50")
            }
            switch parts[0] {
            case "ttft": ttft = v
            case "tpot": tpot = v
            default: throw ValidationError("--goodput knows ttft and tpot, not \(parts[0])")
            }
        }
        return (ttft, tpot)
    }

    func validate() throws {
        guard URL(string: baseURL)?.scheme?.hasPrefix("http") == true else {
            throw ValidationError("--base-url must be an http:// URL")
        }
        guard ["/v1/completions", "/v1/chat/completions"].contains(endpoint) else {
            throw ValidationError("--endpoint must be /v1/completions or /v1/chat/completions")
        }
        guard numPrompts >= 1, inputLen >= 1, outputLen >= 1, (0..<1).contains(rangeRatio) else {
            throw ValidationError(
                "--num-prompts, --input-len and --output-len must be positive; --range-ratio in [0, 1)")
        }
        guard requestRate == "inf" || (rate ?? 0) > 0 else {
            throw ValidationError("--request-rate must be a positive number or inf")
        }
        if let maxConcurrency, maxConcurrency < 1 { throw ValidationError("--max-concurrency must be at least 1") }
        guard !percentileList.isEmpty, percentileList.allSatisfy({ (0...100).contains($0) }) else {
            throw ValidationError("--percentiles must be numbers in 0...100")
        }
        _ = try slos()
    }

    func run() async throws {
        var rng = BenchRandom(seed: seed)
        let prompts: [BenchPrompt]
        if dataset == "random", let tokenizer {
            let gguf = try GGUFTokenizer(path: ModelStore().resolve(tokenizer))
            prompts = BenchDataset.randomText(
                count: numPrompts, inputLength: inputLen, outputLength: outputLen, rangeRatio: rangeRatio,
                tokenizer: gguf, rng: &rng)
        } else if dataset == "random" {
            prompts = BenchDataset.random(
                count: numPrompts, inputLength: inputLen, outputLength: outputLen, rangeRatio: rangeRatio,
                chat: endpoint.hasSuffix("chat/completions"), rng: &rng)
        } else {
            prompts = try BenchDataset.jsonl(path: dataset, count: numPrompts, outputLength: outputLen)
        }
        let arrivals = BenchDataset.arrivals(count: prompts.count, rate: rate, rng: &rng)
        let first = try await measure(baseURL, prompts, arrivals)
        say(first.table)
        var comparison: BenchResult?
        if let compare {
            let second = try await measure(
                compare.hasSuffix("/") ? String(compare.dropLast()) : compare, prompts, arrivals)
            say(second.table)
            say(Self.comparisonTable(first, second, baseURL, compare))
            comparison = second
        }
        if let resultJSON {
            var object = first.json
            object["base_url"] = baseURL
            if let comparison {
                var other = comparison.json
                other["base_url"] = compare
                object["compare"] = other
            }
            let data = try JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys])
            try data.write(to: URL(fileURLWithPath: resultJSON))
        }
        if let plot {
            var series = [BenchPlot.Series(name: label ?? baseURL, result: first)]
            if let comparison, let compare {
                series.append(BenchPlot.Series(name: compareLabel ?? compare, result: comparison))
            }
            try BenchPlot.svg(
                title: "tandem bench: \(endpoint), \(prompts.count) requests, rate \(requestRate) req/s", series: series
            ).write(toFile: plot, atomically: true, encoding: .utf8)
        }
        if first.succeeded.isEmpty { throw ExitCode.failure }
    }

    private func measure(_ url: String, _ prompts: [BenchPrompt], _ arrivals: [Double]) async throws -> BenchResult {
        let workload = BenchWorkload(
            baseURL: url.hasSuffix("/") ? String(url.dropLast()) : url, endpoint: endpoint, model: model,
            prompts: prompts, arrivals: arrivals, maxConcurrency: maxConcurrency, apiKey: apiKey)
        var result = await BenchRunner.run(workload) { done, total in
            let width = 30
            let filled = width * done / max(1, total)
            let bar = String(repeating: "#", count: filled) + String(repeating: " ", count: width - filled)
            FileHandle.standardError.write(Data("\r[\(bar)] \(done)/\(total)".utf8))
            if done == total { FileHandle.standardError.write(Data("\n".utf8)) }
        }
        result.percentiles = percentileList
        result.goodput = try slos()
        return result
    }

    static func comparisonTable(_ a: BenchResult, _ b: BenchResult, _ nameA: String, _ nameB: String) -> String {
        func row(_ label: String, _ x: Double, _ y: Double) -> String {
            label.padding(toLength: 32, withPad: " ", startingAt: 0)
                + String(format: "%12.2f %12.2f %8.2fx", x, y, y == 0 ? 0 : x / y)
        }
        return [
            "Comparison (ratio = first / second)", "  first:  \(nameA)", "  second: \(nameB)",
            row("Output throughput (tok/s)", a.outputThroughput, b.outputThroughput),
            row("Request throughput (req/s)", a.requestThroughput, b.requestThroughput),
            row("Mean TTFT (ms)", a.ttft.mean, b.ttft.mean), row("Median TTFT (ms)", a.ttft.median, b.ttft.median),
            row("Mean TPOT (ms)", a.tpot.mean, b.tpot.mean), row("Mean ITL (ms)", a.itl.mean, b.itl.mean),
            row("Mean E2E (ms)", a.e2e.mean, b.e2e.mean),
        ].joined(separator: "\n")
    }
}

/// A GGUF model's tokenizer, for `--tokenizer`.
struct GGUFTokenizer: BenchTokenizer {
    let tokenizer: Tokenizer

    init(path: String) throws {
        tokenizer = try Tokenizer(file: GGUFFile(path: path))
    }

    func encode(_ text: String) -> [Int] {
        tokenizer.encode(text, addSpecial: false, parseSpecial: false).map(Int.init)
    }
    func decode(_ ids: [Int]) -> String { tokenizer.decode(ids.map(Int32.init)) }
    var vocabularySize: Int { tokenizer.vocabularySize }
}
