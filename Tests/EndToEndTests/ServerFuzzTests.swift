import Foundation
import Testing

/// A small deterministic generator for reproducible mutations.
struct SplitMix: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Mutated and random request bodies: every one gets a 4xx OpenAI error or a well-formed result, never a 5xx, a
/// crash or a hang, and the server stays healthy.
@Suite struct ServerFuzzTests {
    static let seeds: [(String, String)] = [
        ("/v1/completions", #"{"prompt":"Hi there","max_tokens":3,"temperature":0}"#),
        ("/v1/completions", #"{"prompt":[1,2,3],"max_tokens":2,"stream":true,"stop":["\n"],"seed":4}"#),
        (
            "/v1/completions",
            #"{"prompt":"a","max_tokens":2,"logprobs":2,"top_k":5,"min_p":0.1,"presence_penalty":0.5,"return_token_ids":true}"#
        ),
        ("/v1/chat/completions", #"{"messages":[{"role":"user","content":"Hi"}],"max_tokens":2}"#),
        (
            "/v1/chat/completions",
            #"{"messages":[{"role":"system","content":"x"},{"role":"user","content":[{"type":"text","text":"y"}]}],"max_completion_tokens":2,"stream":true,"stream_options":{"include_usage":true},"logprobs":true,"top_logprobs":2}"#
        ),
        ("/tokenize", #"{"prompt":"Hello world","add_special_tokens":false}"#),
        ("/detokenize", #"{"tokens":[19556,905]}"#),
    ]

    static var oddValues: [Any] {
        [
            NSNull(), true, false, 0, 1, -1, 2, 3, 1_000_000_000, Int64.max, 0.5, -0.5, 1e308, "", "x", "<|im_start|>",
            [Any](), [1, 2], ["a"], [[1]], [String: Any](), ["role": "user"],
        ]
    }

    static func mutate(_ body: String, _ rng: inout SplitMix) -> String {
        if Int.random(in: 0..<2, using: &rng) == 0,
            var object = try? JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any]
        {
            let keys = Array(object.keys) + ["max_tokens", "n", "echo", "stream", "model", "stop", "seed"]
            let key = keys[Int.random(in: 0..<keys.count, using: &rng)]
            switch Int.random(in: 0..<3, using: &rng) {
            case 0: object[key] = nil
            default: object[key] = oddValues[Int.random(in: 0..<oddValues.count, using: &rng)]
            }
            if let data = try? JSONSerialization.data(withJSONObject: object) {
                return String(decoding: data, as: UTF8.self)
            }
        }
        var bytes = Array(body.utf8)
        for _ in 0..<Int.random(in: 1...3, using: &rng) where !bytes.isEmpty {
            let i = Int.random(in: 0..<bytes.count, using: &rng)
            switch Int.random(in: 0..<4, using: &rng) {
            case 0: bytes[i] = UInt8.random(in: 0...255, using: &rng)
            case 1: bytes.removeSubrange(i..<min(bytes.count, i + Int.random(in: 1...8, using: &rng)))
            case 2: bytes.insert(contentsOf: Array("{[\":,]}0-9e".utf8).shuffled(using: &rng).prefix(3), at: i)
            default: bytes = Array(bytes.prefix(i))
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    @Test func mutatedBodiesGetErrorsOrResultsAndTheServerStaysHealthy() async throws {
        let server = try await ServerProcess(["--max-model-len", "24", "--max-num-seqs", "32"])
        defer { #expect(server.stop() == 0) }
        var rng = SplitMix(state: 20_261_128)
        var bodies: [(String, String)] = []
        for i in 0..<2400 {
            let (path, seed) = Self.seeds[i % Self.seeds.count]
            bodies.append(
                (
                    path,
                    i % 10 == 9
                        ? String(decoding: (0..<40).map { _ in UInt8.random(in: 0...255, using: &rng) }, as: UTF8.self)
                        : Self.mutate(seed, &rng)
                ))
        }
        var counts: [Int: Int] = [:]
        var failures: [String] = []
        try await withThrowingTaskGroup(of: (Int, String?).self) { group in
            var next = 0
            func add() {
                guard next < bodies.count else { return }
                let (path, body) = bodies[next]
                next += 1
                group.addTask {
                    let reply = try await server.post(path, body)
                    let code = Int(reply.status.code)
                    let sse = reply.contentType.hasPrefix("text/event-stream")
                    let wellFormed: Bool
                    if code == 200 {
                        wellFormed =
                            sse ? reply.body.hasSuffix("data: [DONE]\n\n") && !reply.events.isEmpty : reply.json != nil
                    } else {
                        wellFormed = (400..<500).contains(code) && reply.json?["error"] is [String: Any]
                    }
                    return (code, wellFormed ? nil : "\(path) \(body) → \(code) \(reply.body.prefix(300))")
                }
            }
            for _ in 0..<16 { add() }
            while let (code, failure) = try await group.next() {
                counts[code, default: 0] += 1
                if let failure { failures.append(failure) }
                add()
            }
        }
        #expect(failures.isEmpty, "\(failures.prefix(5))")
        #expect(counts.values.reduce(0, +) == bodies.count)
        #expect((counts[200] ?? 0) > 100, "some mutations stay valid: \(counts)")
        #expect((counts[400] ?? 0) > 1000, "\(counts)")
        #expect(try await server.get("/health").status == .ok)
        let ok = try await server.post("/v1/completions", #"{"prompt":"Hi","max_tokens":2}"#)
        #expect(ok.status == .ok)
    }
}
