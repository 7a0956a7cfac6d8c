import Discovery
import Engine
import Foundation
import Hummingbird
import JSON
import NIOConcurrencyHelpers
import OpenAIAPI

/// One submitted request on its way back to the client: collected into one response, or streamed as server-sent
/// events. Records the request's latencies when it ends, and aborts it if the client goes away.
struct GenerationRun: Sendable {
    let handle: GenerationHandle
    var formatter: ResponseFormatter
    let metrics: InstanceMetrics

    /// Latency bookkeeping for one request.
    private struct Timing {
        let start = ContinuousClock.now
        var last: ContinuousClock.Instant?
        var ttft: Double?
        var gaps: [Double] = []

        mutating func tokenArrived() {
            let now = ContinuousClock.now
            if let last { gaps.append(seconds(since: last)) } else { ttft = seconds(since: start) }
            last = now
        }

        var elapsed: Double { seconds(since: start) }
    }

    private func record(_ timing: Timing, _ finish: FinishReason, _ usage: GenerationUsage) {
        metrics.recordFinished(
            reason: finish, usage: usage, ttftSeconds: timing.ttft, interTokenSeconds: timing.gaps,
            e2eSeconds: timing.elapsed)
    }

    func collectedResponse() async throws -> Response {
        Response.json(try await collectedBody().body)
    }

    /// The whole response body, and the request's usage.
    func collectedBody() async throws -> (body: JSONValue, usage: GenerationUsage) {
        defer { handle.abort() }
        var timing = Timing()
        var text = ""
        var ids: [Int32] = []
        var logprobs: [TokenLogprob] = []
        var promptLogprobs: [TokenLogprob]?
        for await out in handle.outputs {
            promptLogprobs = out.promptLogprobs ?? promptLogprobs
            if !out.tokenIds.isEmpty { timing.tokenArrived() }
            text += out.text
            ids += out.tokenIds
            logprobs += out.logprobs
            if let finish = out.finishReason, let usage = out.usage {
                record(timing, finish, usage)
                if let failure = out.failure { throw Self.kvFailure(failure) }
                if finish == .abort {
                    throw APIError(.serviceUnavailable, "the request was aborted: the server is shutting down")
                }
                let body = formatter.response(
                    text: text, tokenIds: ids, logprobs: logprobs, finish: out.handedOff ? nil : finish, usage: usage,
                    kvTransferParams: out.kvTransferParams, promptLogprobs: promptLogprobs)
                return (body, usage)
            }
        }
        throw APIError(.internalServerError, "the engine ended the request without a result")
    }

    /// Whether an output makes a stream chunk: the first, any text or call, the end, or anything with token ids or
    /// logprobs asked for; never a hand-off's end, which carries no token (the stream then ends with [DONE]).
    func worthSending(_ out: GenerationOutput, text: String, calls: Int, first: Bool) -> Bool {
        (first || !text.isEmpty || calls > 0 || out.finishReason != nil || formatter.returnTokenIds
            || formatter.wantsLogprobs)
            && !(out.handedOff && out.tokenIds.isEmpty)
    }

    static func kvFailure(_ why: String) -> APIError {
        APIError(.serviceUnavailable, why, code: "kv_transfer_failed")
    }

    /// The stream of server-sent events. It commits to a 200 only once the engine's first output is in, so that a
    /// request that fails before its first token (its KV did not come, with the `fail` policy) is answered 503.
    func streamingResponse(includeUsage: Bool) async throws -> Response {
        let start = Timing()
        let outputs = OutputIterator(handle.outputs)
        let head = await outputs.next()
        if let failure = head?.failure {
            handle.abort()
            throw Self.kvFailure(failure)
        }
        let headers = HTTPFields.eventStream
        let run = self
        return Response(
            status: .ok, headers: headers,
            body: ResponseBody { writer in
                var timing = start
                var generated = 0
                var ended = false
                defer {
                    run.handle.abort()
                    if !ended {  // The client went away: the request was aborted.
                        let usage = GenerationUsage(
                            promptTokens: run.formatter.promptTokens.count, completionTokens: generated,
                            cachedTokens: 0)
                        run.record(timing, .abort, usage)
                    }
                }
                var chunker = ChoiceChunker(run: run, includeUsage: includeUsage)
                var next = head
                while let out = next {
                    if !out.tokenIds.isEmpty { timing.tokenArrived() }
                    generated += out.tokenIds.count
                    if let chunk = chunker.chunk(for: out) {
                        try await writer.write(ByteBuffer(string: "data: \(chunk.serialized)\n\n"))
                    }
                    if let finish = out.finishReason, let usage = out.usage {
                        ended = true
                        run.record(timing, finish, usage)
                        // A handed-off stream ends with [DONE] alone: the decode instance sends the rest.
                        if includeUsage && !out.handedOff {
                            let chunk = run.formatter.usageChunk(usage)
                            try await writer.write(ByteBuffer(string: "data: \(chunk.serialized)\n\n"))
                        }
                    }
                    next = await outputs.next()
                }
                try await writer.write(ByteBuffer(string: "data: [DONE]\n\n"))
                try await writer.finish(nil)
            })
    }
}

extension GenerationRun {
    /// Several choices streamed as one stream of server-sent events: each run's chunks carry its choice's index and
    /// go out as they come, interleaved; then the usage of the whole request (each prompt counted once) when asked,
    /// and `[DONE]`. A client that leaves aborts every choice.
    static func streamingResponse(of runs: [GenerationRun], includeUsage: Bool, promptTokenTotal: Int) -> Response {
        Response(
            status: .ok, headers: HTTPFields.eventStream,
            body: ResponseBody { writer in
                let (lines, continuation) = AsyncStream<String>.makeStream()
                let usages = NIOLockedValueBox<[GenerationUsage]>([])
                let tasks = runs.map { run in
                    Task {
                        var timing = Timing()
                        var chunker = ChoiceChunker(run: run, includeUsage: includeUsage)
                        for await out in run.handle.outputs {
                            if !out.tokenIds.isEmpty { timing.tokenArrived() }
                            if let chunk = chunker.chunk(for: out) {
                                continuation.yield("data: \(chunk.serialized)\n\n")
                            }
                            if let finish = out.finishReason, let usage = out.usage {
                                run.record(timing, finish, usage)
                                usages.withLockedValue { $0.append(usage) }
                            }
                        }
                    }
                }
                let all = Task {
                    for task in tasks { await task.value }
                    continuation.finish()
                }
                defer {
                    for task in tasks { task.cancel() }
                    for run in runs { run.handle.abort() }
                    all.cancel()
                }
                for await line in lines { try await writer.write(ByteBuffer(string: line)) }
                if includeUsage {
                    let parts = usages.withLockedValue { $0 }
                    let usage = GenerationUsage(
                        promptTokens: promptTokenTotal, completionTokens: parts.reduce(0) { $0 + $1.completionTokens },
                        cachedTokens: parts.reduce(0) { $0 + $1.cachedTokens })
                    try await writer.write(
                        ByteBuffer(string: "data: \(runs[0].formatter.usageChunk(usage).serialized)\n\n"))
                }
                try await writer.write(ByteBuffer(string: "data: [DONE]\n\n"))
                try await writer.finish(nil)
            })
    }
}

/// Turns one choice's engine outputs into its stream chunks, in order: text as it comes (through a
/// `ToolCallStreamer` when the answer is read for calls, so that a call goes out as a `tool_calls` delta).
struct ChoiceChunker {
    let run: GenerationRun
    let includeUsage: Bool
    private var first = true
    private var textOffset: Int
    private var tools: ToolCallStreamer?

    init(run: GenerationRun, includeUsage: Bool) {
        self.run = run
        self.includeUsage = includeUsage
        textOffset = run.formatter.textOffsetBase + run.formatter.echoText.count
        if run.formatter.parsesToolCalls {
            // A resumed answer's earlier text went out from another instance, read by the same rules: reading it
            // again (and dropping what it gives) leaves this stream where that one stopped.
            var streamer = ToolCallStreamer()
            _ = streamer.feed(run.handle.resumedText)
            tools = streamer
        }
    }

    /// The chunk for `out`, or nil when it makes none.
    mutating func chunk(for out: GenerationOutput) -> JSONValue? {
        var text = out.text
        var calls: [ParsedToolCall] = []
        if var streamer = tools {
            (text, calls) = streamer.feed(out.text)
            if out.finishReason != nil, !out.handedOff {
                let rest = streamer.finish()
                text += rest.content
                calls += rest.calls
            }
            tools = streamer
        }
        guard run.worthSending(out, text: text, calls: calls.count, first: first) else { return nil }
        let callCount = tools?.callCount ?? 0
        let chunk = run.formatter.chunk(
            text: text, tokenIds: out.tokenIds, logprobs: out.logprobs, finish: out.handedOff ? nil : out.finishReason,
            first: first, textOffset: textOffset, includeUsageField: includeUsage, toolCalls: calls,
            firstCallIndex: callCount - calls.count, calledTools: callCount > 0, promptLogprobs: out.promptLogprobs)
        first = false
        textOffset += out.text.count
        return chunk
    }
}

/// The engine's output stream read one element at a time, so that the first can be awaited before the response
/// body takes over the rest. Read by one task at a time.
private final class OutputIterator: @unchecked Sendable {
    private var iterator: AsyncStream<GenerationOutput>.Iterator

    init(_ stream: AsyncStream<GenerationOutput>) { iterator = stream.makeAsyncIterator() }

    func next() async -> GenerationOutput? { await iterator.next() }
}
