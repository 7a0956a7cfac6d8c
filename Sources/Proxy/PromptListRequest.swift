import Foundation
import Hummingbird
import JSON
import NIOConcurrencyHelpers
import NIOCore
import OpenAIAPI

/// A completion request with a list of prompts, served through the proxy: each prompt goes through prefill and decode
/// as a request of its own (its KV moves once, under its own id, with the retries and migrations of any request),
/// all at once; their answers come back as one, choices numbered prompt by prompt as OpenAI does (prompt `p`'s
/// choice `j` is `p * n + j`) and usage summed. A stream interleaves the prompts' chunks as they come.
struct PromptListRequest: Sendable {
    let body: JSONValue
    let prompts: [JSONValue]
    /// Runs one prompt's request (the router's usual path) to its response.
    let runOne: @Sendable (JSONValue) async throws -> Response

    /// The prompts of a body that lists several (strings or token-id lists); nil for any other body.
    static func prompts(of body: JSONValue) -> [JSONValue]? {
        guard case .array(let items)? = body["prompt"], items.count > 1 else { return nil }
        let isList = items.allSatisfy { item in
            switch item {
            case .string: return true
            case .array(let ids): return !ids.isEmpty
            default: return false
            }
        }
        return isList ? items : nil
    }

    private var choicesPerPrompt: Int { body.integer("n") ?? 1 }

    func run() async throws -> Response {
        let body = body
        let runOne = runOne
        let responses = try await withThrowingTaskGroup(of: (Int, Response).self) { group in
            for (p, prompt) in prompts.enumerated() {
                group.addTask { (p, try await runOne(body.setting("prompt", prompt))) }
            }
            var out: [(Int, Response)] = []
            for try await r in group { out.append(r) }
            return out.sorted { $0.0 < $1.0 }.map(\.1)
        }
        if let failed = responses.first(where: { $0.status != .ok }) {
            // One prompt failed: its answer is the request's; the others are dropped (their upstreams let go).
            for r in responses where r.status == .ok { await Self.abandon(r) }
            return failed
        }
        if body["stream"] == .bool(true) { return merged(streams: responses) }
        var parts: [JSONValue] = []
        for r in responses {
            let collector = BodyCollector()
            try await r.body.write(collector)
            guard let value = JSONValue.parse(collector.bytes.readableBytesView), case .object = value else {
                throw APIError(.badGateway, "an instance answered a prompt with a body that is not JSON")
            }
            parts.append(value)
        }
        return Response.json(merged(parts))
    }

    /// One body of every prompt's choices, renumbered, and their usage summed.
    func merged(_ parts: [JSONValue]) -> JSONValue {
        var choices: [JSONValue] = []
        var usage = UsageSum()
        for (p, part) in parts.enumerated() {
            if case .array(let items)? = part["choices"] { choices += items.map { renumbered($0, prompt: p) } }
            usage.add(part["usage"])
        }
        var out = parts[0].setting("choices", .array(choices))
        if parts[0]["usage"] != nil { out = out.setting("usage", usage.json) }
        return out
    }

    private func renumbered(_ choice: JSONValue, prompt p: Int) -> JSONValue {
        choice.setting("index", .int(p * choicesPerPrompt + (choice.integer("index") ?? 0)))
    }

    /// The prompts' streams as one: each event as it comes with its choices renumbered; the prompts' usage chunks
    /// summed into one at the end; one `[DONE]`.
    private func merged(streams: [Response]) -> Response {
        let request = self
        return Response(
            status: .ok, headers: HTTPFields.eventStream,
            body: ResponseBody { writer in
                let (events, continuation) = AsyncStream<(Int, String)>.makeStream()
                let tasks = streams.enumerated().map { p, response in
                    Task {
                        let splitter = EventSplitter(prompt: p, continuation: continuation)
                        try? await response.body.write(splitter)
                    }
                }
                let all = Task {
                    for task in tasks { await task.value }
                    continuation.finish()
                }
                defer {
                    for task in tasks { task.cancel() }
                    all.cancel()
                }
                var usage = UsageSum()
                var usageTemplate: JSONValue?
                for await (p, payload) in events {
                    if payload == "[DONE]" { continue }
                    guard let value = JSONValue.parse(Array(payload.utf8)), case .object = value else { continue }
                    if case .array(let choices)? = value["choices"], !choices.isEmpty {
                        let out = value.setting(
                            "choices", .array(choices.map { request.renumbered($0, prompt: p) }))
                        try await writer.write(ByteBuffer(string: "data: \(out.serialized)\n\n"))
                    } else if let u = value["usage"], u != .null {
                        usage.add(u)
                        usageTemplate = usageTemplate ?? value
                    } else {
                        try await writer.write(ByteBuffer(string: "data: \(payload)\n\n"))
                    }
                }
                if let usageTemplate {
                    let chunk = usageTemplate.setting("usage", usage.json)
                    try await writer.write(ByteBuffer(string: "data: \(chunk.serialized)\n\n"))
                }
                try await writer.write(ByteBuffer(string: "data: [DONE]\n\n"))
                try await writer.finish(nil)
            })
    }

    /// Lets a response go unsent: its body is written to a writer that refuses the first byte, which ends its
    /// upstream request as a client that left would.
    static func abandon(_ response: Response) async {
        try? await response.body.write(RefusingWriter())
    }
}

/// Token counts summed over the prompts' `usage` objects.
private struct UsageSum {
    var prompt = 0
    var completion = 0
    var cached = 0

    mutating func add(_ usage: JSONValue?) {
        guard let usage else { return }
        prompt += usage.integer("prompt_tokens") ?? 0
        completion += usage.integer("completion_tokens") ?? 0
        cached += usage["prompt_tokens_details"]?.integer("cached_tokens") ?? 0
    }

    var json: JSONValue {
        var pairs: [(String, JSONValue)] = [
            ("prompt_tokens", .int(prompt)), ("total_tokens", .int(prompt + completion)),
            ("completion_tokens", .int(completion)),
        ]
        if cached > 0 { pairs.append(("prompt_tokens_details", .object([("cached_tokens", .int(cached))]))) }
        return .object(pairs)
    }
}

/// Collects a response body in memory (a prompt's whole answer, bounded by what the instance sent).
private final class BodyCollector: ResponseBodyWriter, @unchecked Sendable {
    var bytes = ByteBuffer()

    func write(_ buffer: ByteBuffer) async throws {
        var buffer = buffer
        guard bytes.readableBytes + buffer.readableBytes <= 64 << 20 else {
            throw APIError(.badGateway, "an instance's answer to a prompt is larger than 64 MiB")
        }
        bytes.writeBuffer(&buffer)
    }

    func finish(_ trailingHeaders: HTTPFields?) async throws {}
}

/// Splits one prompt's event stream into its events' payloads, passed on with the prompt's number.
private final class EventSplitter: ResponseBodyWriter, @unchecked Sendable {
    let prompt: Int
    let continuation: AsyncStream<(Int, String)>.Continuation
    private var pending = ""

    init(prompt: Int, continuation: AsyncStream<(Int, String)>.Continuation) {
        self.prompt = prompt
        self.continuation = continuation
    }

    func write(_ buffer: ByteBuffer) async throws {
        try Task.checkCancellation()
        pending += String(buffer: buffer)
        while let end = pending.range(of: "\n\n") {
            let event = pending[..<end.lowerBound]
            pending = String(pending[end.upperBound...])
            for line in event.split(separator: "\n") where line.hasPrefix("data:") {
                continuation.yield((prompt, line.dropFirst(5).trimmingCharacters(in: .whitespaces)))
            }
        }
    }

    func finish(_ trailingHeaders: HTTPFields?) async throws {}
}

/// A writer that refuses every write (`PromptListRequest.abandon`).
private struct RefusingWriter: ResponseBodyWriter {
    mutating func write(_ buffer: ByteBuffer) async throws { throw CancellationError() }
    consuming func finish(_ trailingHeaders: HTTPFields?) async throws {}
}
