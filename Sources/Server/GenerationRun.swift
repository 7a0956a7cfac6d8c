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
        for await out in handle.outputs {
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
                    kvTransferParams: out.kvTransferParams)
                return (body, usage)
            }
        }
        throw APIError(.internalServerError, "the engine ended the request without a result")
    }

    /// Whether an output makes a stream chunk: the first, any text, the end, or anything with token ids or
    /// logprobs asked for; never a hand-off's end, which carries no token (the stream then ends with [DONE]).
    func worthSending(_ out: GenerationOutput, first: Bool) -> Bool {
        (first || !out.text.isEmpty || out.finishReason != nil || formatter.returnTokenIds || formatter.wantsLogprobs)
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
                var first = true
                var textOffset = run.formatter.textOffsetBase
                var next = head
                while let out = next {
                    if !out.tokenIds.isEmpty { timing.tokenArrived() }
                    generated += out.tokenIds.count
                    if run.worthSending(out, first: first) {
                        let chunk = run.formatter.chunk(
                            text: out.text, tokenIds: out.tokenIds, logprobs: out.logprobs,
                            finish: out.handedOff ? nil : out.finishReason,
                            first: first, textOffset: textOffset, includeUsageField: includeUsage)
                        try await writer.write(ByteBuffer(string: "data: \(chunk.serialized)\n\n"))
                        first = false
                        textOffset += out.text.count
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
                        var first = true
                        var textOffset = 0
                        for await out in run.handle.outputs {
                            if !out.tokenIds.isEmpty { timing.tokenArrived() }
                            if run.worthSending(out, first: first) {
                                let chunk = run.formatter.chunk(
                                    text: out.text, tokenIds: out.tokenIds, logprobs: out.logprobs,
                                    finish: out.finishReason, first: first, textOffset: textOffset,
                                    includeUsageField: includeUsage)
                                continuation.yield("data: \(chunk.serialized)\n\n")
                                first = false
                                textOffset += out.text.count
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

/// The engine's output stream read one element at a time, so that the first can be awaited before the response
/// body takes over the rest. Read by one task at a time.
private final class OutputIterator: @unchecked Sendable {
    private var iterator: AsyncStream<GenerationOutput>.Iterator

    init(_ stream: AsyncStream<GenerationOutput>) { iterator = stream.makeAsyncIterator() }

    func next() async -> GenerationOutput? { await iterator.next() }
}
