import Discovery
import Engine
import Foundation
import Hummingbird

/// One submitted request on its way back to the client: collected into one response, or streamed as server-sent
/// events. Records the request's latencies when it ends, and aborts it if the client goes away.
struct GenerationRun: Sendable {
    let handle: GenerationHandle
    let formatter: ResponseFormatter
    let metrics: InstanceMetrics
    /// Called with the prompt's KV before the answer goes out (a prefill instance sending to its decode instance).
    var export: (@Sendable (KVPayload) async -> Void)?

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
                if let kv = out.exportedKV, let export { await export(kv) }
                if finish == .abort {
                    throw APIError(.serviceUnavailable, "the request was aborted: the server is shutting down")
                }
                return InstanceAPI.json(
                    formatter.response(text: text, tokenIds: ids, logprobs: logprobs, finish: finish, usage: usage))
            }
        }
        throw APIError(.internalServerError, "the engine ended the request without a result")
    }

    func streamingResponse(includeUsage: Bool) -> Response {
        var headers = HTTPFields()
        headers[.contentType] = "text/event-stream"
        headers[.cacheControl] = "no-cache"
        let run = self
        return Response(
            status: .ok, headers: headers,
            body: ResponseBody { writer in
                var timing = Timing()
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
                var textOffset = 0
                for await out in run.handle.outputs {
                    if !out.tokenIds.isEmpty { timing.tokenArrived() }
                    generated += out.tokenIds.count
                    let worthSending =
                        first || !out.text.isEmpty || out.finishReason != nil || run.formatter.returnTokenIds
                        || run.formatter.wantsLogprobs
                    if worthSending {
                        let chunk = run.formatter.chunk(
                            text: out.text, tokenIds: out.tokenIds, logprobs: out.logprobs, finish: out.finishReason,
                            first: first, textOffset: textOffset, includeUsageField: includeUsage)
                        try await writer.write(ByteBuffer(string: "data: \(chunk.serialized)\n\n"))
                        first = false
                        textOffset += out.text.count
                    }
                    if let kv = out.exportedKV, let export = run.export { await export(kv) }
                    if let finish = out.finishReason, let usage = out.usage {
                        ended = true
                        run.record(timing, finish, usage)
                        if includeUsage {
                            let chunk = run.formatter.usageChunk(usage)
                            try await writer.write(ByteBuffer(string: "data: \(chunk.serialized)\n\n"))
                        }
                    }
                }
                try await writer.write(ByteBuffer(string: "data: [DONE]\n\n"))
                try await writer.finish(nil)
            })
    }
}
