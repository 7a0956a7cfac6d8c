import AsyncHTTPClient
import Foundation
import NIOCore
import NIOFoundationCompat

/// One prompt of a workload.
public struct BenchPrompt: Sendable {
    /// Token ids (sent as the prompt of /v1/completions) or text.
    public var tokens: [Int]?
    public var text: String?
    public var outputLength: Int
    public var promptLength: Int
}

/// A workload: what to send, where, and when.
public struct BenchWorkload: Sendable {
    public var baseURL: String
    public var endpoint: String
    public var model: String?
    public var prompts: [BenchPrompt]
    /// Arrival times in seconds from the start (Poisson, or all zero for an infinite rate).
    public var arrivals: [Double]
    public var maxConcurrency: Int?
    public var apiKey: String?

    public init(
        baseURL: String, endpoint: String, model: String?, prompts: [BenchPrompt], arrivals: [Double],
        maxConcurrency: Int?, apiKey: String?
    ) {
        self.baseURL = baseURL
        self.endpoint = endpoint
        self.model = model
        self.prompts = prompts
        self.arrivals = arrivals
        self.maxConcurrency = maxConcurrency
        self.apiKey = apiKey
    }
}

/// A seeded generator (SplitMix64) so that the same seed gives the same prompts and arrival times.
public struct BenchRandom: RandomNumberGenerator, Sendable {
    var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Turns token ids into text and text into token ids (the model's tokenizer, for prompts of an exact length).
public protocol BenchTokenizer: Sendable {
    func encode(_ text: String) -> [Int]
    func decode(_ ids: [Int]) -> String
    var vocabularySize: Int { get }
}

public enum BenchDataset {
    /// Text prompts of `inputLength` × [1 - ratio, 1 + ratio] tokens of the model's own tokenizer: random ids are
    /// decoded, re-encoded, cut to length and decoded again, as `vllm bench serve` does, until the text encodes to
    /// exactly the target length (or the closest found).
    public static func randomText(
        count: Int, inputLength: Int, outputLength: Int, rangeRatio: Double, tokenizer: some BenchTokenizer,
        rng: inout BenchRandom
    ) -> [BenchPrompt] {
        func around(_ n: Int) -> Int {
            let lo = max(1, Int(Double(n) * (1 - rangeRatio)))
            let hi = max(lo, Int(Double(n) * (1 + rangeRatio)))
            return Int.random(in: lo...hi, using: &rng)
        }
        let upper = max(2, min(tokenizer.vocabularySize, 30000))
        return (0..<count).map { _ in
            let n = around(inputLength)
            let out = around(outputLength)
            var text = ""
            var length = 0
            for _ in 0..<8 {
                let ids = (0..<n).map { _ in Int.random(in: 1000..<max(1001, upper), using: &rng) }
                let cut = Array(tokenizer.encode(tokenizer.decode(ids)).prefix(n))
                text = tokenizer.decode(cut)
                length = tokenizer.encode(text).count
                if length == n { break }
            }
            return BenchPrompt(tokens: nil, text: text, outputLength: out, promptLength: length)
        }
    }

    /// Random token-id prompts of `inputLength` × [1 - ratio, 1 + ratio] tokens.
    public static func random(
        count: Int, inputLength: Int, outputLength: Int, rangeRatio: Double, chat: Bool,
        rng: inout BenchRandom
    ) -> [BenchPrompt] {
        let words = [
            "time", "river", "light", "story", "city", "garden", "music", "stone", "window", "market", "winter",
            "bridge", "letter", "forest", "harbor", "engine", "silver", "morning", "journey", "question",
        ]
        func around(_ n: Int) -> Int {
            let lo = max(1, Int(Double(n) * (1 - rangeRatio)))
            let hi = max(lo, Int(Double(n) * (1 + rangeRatio)))
            return Int.random(in: lo...hi, using: &rng)
        }
        return (0..<count).map { _ in
            let n = around(inputLength)
            let out = around(outputLength)
            if chat {
                let text = (0..<n).map { _ in words[Int.random(in: 0..<words.count, using: &rng)] }.joined(
                    separator: " ")
                return BenchPrompt(tokens: nil, text: text, outputLength: out, promptLength: n)
            }
            let tokens = (0..<n).map { _ in Int.random(in: 1000..<30000, using: &rng) }
            return BenchPrompt(tokens: tokens, text: nil, outputLength: out, promptLength: n)
        }
    }

    /// Prompts from a JSONL file: `{"prompt": …, "output_len": …}` or ShareGPT-like `{"conversations": [{"from":
    /// "human", "value": …}, {"from": "gpt", "value": …}]}`.
    public static func jsonl(path: String, count: Int, outputLength: Int) throws -> [BenchPrompt] {
        let text = try String(contentsOfFile: path, encoding: .utf8)
        var prompts: [BenchPrompt] = []
        for (n, line) in text.split(separator: "\n").enumerated() where prompts.count < count {
            guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else {
                throw BenchError("\(path):\(n + 1) is not a JSON object")
            }
            if let p = object["prompt"] as? String {
                prompts.append(
                    BenchPrompt(
                        tokens: nil, text: p, outputLength: object["output_len"] as? Int ?? outputLength,
                        promptLength: max(1, p.count / 4)))
            } else if let turns = object["conversations"] as? [[String: Any]],
                let human = turns.first(where: { $0["from"] as? String == "human" })?["value"] as? String
            {
                let answer = turns.first(where: { $0["from"] as? String == "gpt" })?["value"] as? String
                prompts.append(
                    BenchPrompt(
                        tokens: nil, text: human, outputLength: answer.map { max(1, $0.count / 4) } ?? outputLength,
                        promptLength: max(1, human.count / 4)))
            } else {
                throw BenchError("\(path):\(n + 1) has neither \"prompt\" nor \"conversations\"")
            }
        }
        guard !prompts.isEmpty else { throw BenchError("\(path) holds no prompts") }
        return prompts
    }

    /// Arrival times for `count` requests at `rate` per second (Poisson), or all at once when rate is nil.
    public static func arrivals(count: Int, rate: Double?, rng: inout BenchRandom) -> [Double] {
        guard let rate else { return [Double](repeating: 0, count: count) }
        var t = 0.0
        return (0..<count).map { _ in
            defer { t += -log(1 - Double.random(in: 0..<1, using: &rng)) / rate }
            return t
        }
    }
}

/// A message for the user; the command exits non-zero.
public struct BenchError: Error, CustomStringConvertible {
    public let description: String
    public init(_ d: String) { description = d }
}

/// Sends a workload and measures every request.
public enum BenchRunner {
    /// Sends the workload; a server that is down fails its requests at once (no connection retries).
    public static func run(_ w: BenchWorkload, progress: @escaping @Sendable (Int, Int) -> Void) async -> BenchResult {
        var configuration = HTTPClient.Configuration()
        configuration.timeout = .init(connect: .seconds(10), read: .seconds(300))
        configuration.connectionPool.retryConnectionEstablishment = false
        // One connection per request in flight, as `vllm bench serve` opens them: the pool's default of 8 per host
        // would queue requests on the client, and fail those queued past the connect timeout, at saturation.
        configuration.connectionPool.concurrentHTTP1ConnectionsPerHostSoftLimit = 4096
        let client = HTTPClient(eventLoopGroup: HTTPClient.defaultEventLoopGroup, configuration: configuration)
        let result = await run(w, client: client, progress: progress)
        try? await client.shutdown()
        return result
    }

    static func run(_ w: BenchWorkload, client: HTTPClient, progress: @escaping @Sendable (Int, Int) -> Void) async
        -> BenchResult
    {
        let start = ContinuousClock.now
        var records: [RequestRecord] = []
        await withTaskGroup(of: RequestRecord.self) { group in
            var active = 0
            var done = 0
            for (i, prompt) in w.prompts.enumerated() {
                let due = start + .milliseconds(Int64(w.arrivals[i] * 1000))
                if ContinuousClock.now < due { try? await Task.sleep(until: due) }
                if let limit = w.maxConcurrency, active >= limit, let r = await group.next() {
                    records.append(r)
                    active -= 1
                    done += 1
                    progress(done, w.prompts.count)
                }
                active += 1
                group.addTask { await send(prompt, index: i, workload: w, start: start, client: client) }
            }
            for await r in group {
                records.append(r)
                done += 1
                progress(done, w.prompts.count)
            }
        }
        let d = ContinuousClock.now - start
        let duration = Double(d.components.seconds) + Double(d.components.attoseconds) * 1e-18
        return BenchResult(
            records: records.sorted { $0.index < $1.index }, duration: duration, percentiles: [], goodput: nil)
    }

    static func body(_ p: BenchPrompt, _ w: BenchWorkload) -> String {
        var object: [String: Any] = [
            "max_tokens": p.outputLength, "stream": true, "stream_options": ["include_usage": true],
            "ignore_eos": true, "temperature": 0,
        ]
        if let model = w.model { object["model"] = model }
        if w.endpoint.hasSuffix("chat/completions") {
            object["messages"] = [["role": "user", "content": p.text ?? ""]]
        } else {
            object["prompt"] = p.tokens.map { $0 as Any } ?? (p.text ?? "") as Any
        }
        let data = (try? JSONSerialization.data(withJSONObject: object)) ?? Data()
        return String(decoding: data, as: UTF8.self)
    }

    static func send(
        _ p: BenchPrompt, index: Int, workload w: BenchWorkload, start: ContinuousClock.Instant, client: HTTPClient
    ) async -> RequestRecord {
        func since(_ t: ContinuousClock.Instant) -> Double {
            let d = ContinuousClock.now - t
            return Double(d.components.seconds) + Double(d.components.attoseconds) * 1e-18
        }
        let sent = ContinuousClock.now
        var record = RequestRecord(
            index: index, start: since(start), promptTokens: p.promptLength, outputTokens: 0, ttft: nil, itl: [],
            e2e: 0, error: nil)
        var request = HTTPClientRequest(url: w.baseURL + w.endpoint)
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/json")
        if let key = w.apiKey { request.headers.add(name: "Authorization", value: "Bearer \(key)") }
        request.body = .bytes(ByteBuffer(string: body(p, w)))
        do {
            let response = try await client.execute(request, timeout: .seconds(600))
            guard response.status == .ok else {
                let text = try await response.body.collect(upTo: 1 << 20)
                throw BenchError("HTTP \(response.status.code): \(String(buffer: text).prefix(200))")
            }
            var pending = ""
            var last: ContinuousClock.Instant?
            var usageSeen = false
            var finished = false
            for try await chunk in response.body {
                pending += String(buffer: chunk)
                while let range = pending.range(of: "\n\n") {
                    let event = String(pending[..<range.lowerBound])
                    pending = String(pending[range.upperBound...])
                    guard event.hasPrefix("data: ") else { continue }
                    let payload = event.dropFirst(6)
                    if payload == "[DONE]" {
                        finished = true
                        continue
                    }
                    guard let object = try? JSONSerialization.jsonObject(with: Data(payload.utf8)) as? [String: Any]
                    else { continue }
                    if let error = object["error"] as? [String: Any] {
                        throw BenchError("stream error: \(error["message"] as? String ?? "?")")
                    }
                    if (object["choices"] as? [[String: Any]])?.first?["finish_reason"] as? String == "abort" {
                        throw BenchError("the server aborted the request")
                    }
                    if let usage = object["usage"] as? [String: Any], let out = usage["completion_tokens"] as? Int {
                        record.outputTokens = out
                        record.promptTokens = usage["prompt_tokens"] as? Int ?? record.promptTokens
                        usageSeen = true
                    }
                    let choice = (object["choices"] as? [[String: Any]])?.first
                    let text =
                        (choice?["text"] as? String) ?? ((choice?["delta"] as? [String: Any])?["content"] as? String)
                    if let text, !text.isEmpty {
                        let now = ContinuousClock.now
                        if let last {
                            let d = now - last
                            record.itl.append(Double(d.components.seconds) + Double(d.components.attoseconds) * 1e-18)
                        } else {
                            record.ttft = since(sent)
                        }
                        last = now
                    }
                }
            }
            guard finished else { throw BenchError("the stream ended without [DONE]") }
            guard usageSeen else { throw BenchError("the server sent no usage") }
        } catch {
            record.error = "\(error)"
        }
        record.e2e = since(sent)
        return record
    }
}
