import AsyncHTTPClient
import Discovery
import Hummingbird
import JSON
import NIOCore
import OpenAIAPI

/// Relays a decode instance's stream to the client after the tokens the client already has, and moves the request
/// to another decode instance when its own fails before the end (see `OverlappedRequest`).
///
/// It tracks every token relayed (the decode is asked for `return_token_ids`), so a replacement resumes exactly
/// after the last one; the first decode computes the prefill's tokens again, and those are checked and dropped.
struct DecodeStreamRelay {
    let request: OverlappedRequest
    /// Tokens the client has.
    private(set) var tokens: [Int32]
    /// The `id` and `created` of the client's first chunk, kept on every later one.
    let id: JSONValue?
    let created: JSONValue?
    private var finished = false

    init(request: OverlappedRequest, tokens: [Int32], id: JSONValue?, created: JSONValue?) {
        self.request = request
        self.tokens = tokens
        self.id = id
        self.created = created
    }

    /// The client went away: its write failed.
    private struct ClientGone: Error {}

    private enum StreamEnd {
        case done
        case broke(String)
    }

    /// Relays `call`'s stream from `first`, migrating on failure; returns when the client has the whole stream (or
    /// an error event, when no decode instance could finish it). Throws only when the client went away.
    mutating func run(
        call: Task<HTTPClientResponse, any Error>, decode first: KnownInstance, writer: inout some ResponseBodyWriter
    ) async throws {
        let router = request.router
        var call = call
        var d = first
        var skip = tokens.count  // the overlapped decode recomputes the prefill's tokens
        var failed: Set<HostPort> = []
        var migrations = 0
        defer { call.cancel() }
        while true {
            let end: StreamEnd
            do {
                end = try await relay(call, skip: skip, writer: &writer)
            } catch is ClientGone {
                router.registry.release(d)
                throw CancellationError()
            }
            router.registry.release(d)
            guard case .broke(let why) = end else {
                router.metrics.outcome("success")
                router.metrics.finished(seconds(since: request.start))
                return
            }
            if finished {
                // Only the tail (usage, [DONE]) was lost: the answer itself is whole.
                try await write("data: [DONE]\n\n", &writer)
                router.metrics.outcome("success")
                return
            }
            failed.insert(d.http)
            guard migrations < router.maxMigrations,
                let (next, replacement) = request.migrate(
                    from: d, why: why, excluding: failed, number: migrations + 1, after: tokens)
            else {
                router.logger.warning(
                    "request \(request.uuid): decode instance \(d.http) failed after \(tokens.count) tokens (\(why)); no instance is left to resume it"
                )
                router.metrics.outcome("decode_broke")
                let event = APIError(
                    .badGateway, "the decode instance failed mid-stream: \(why)", type: "upstream_error")
                try await write("data: \(event.json.serialized)\n\n", &writer)
                return
            }
            migrations += 1
            (d, call) = (next, replacement)
            skip = 0
        }
    }

    private func write(_ text: String, _ writer: inout some ResponseBodyWriter) async throws {
        do {
            try await writer.write(ByteBuffer(string: text))
        } catch {
            throw ClientGone()
        }
    }

    /// One decode instance's stream, until its end or its failure.
    private mutating func relay(
        _ call: Task<HTTPClientResponse, any Error>, skip: Int, writer: inout some ResponseBodyWriter
    ) async throws -> StreamEnd {
        var skip = skip
        let reply: HTTPClientResponse
        do {
            reply = try await call.valueOrCancel
        } catch {
            return .broke("\(error)")
        }
        guard reply.status == .ok else {
            let text = (try? await reply.body.collect(upTo: 1 << 20)).map { String(buffer: $0) } ?? ""
            return .broke("it answered \(reply.status.code): \(text.prefix(300))")
        }
        var reader = EventStreamReader(reply.body)
        while true {
            let payload: String?
            do {
                payload = try await reader.next()
            } catch {
                return .broke("\(error)")
            }
            guard let payload else { return .broke("its stream ended before [DONE]") }
            if payload == "[DONE]" {
                guard finished else { return .broke("it ended its stream without a finish reason") }
                try await write("data: [DONE]\n\n", &writer)
                return .done
            }
            guard var chunk = RelayedChunk(payload) else { return .broke("it sent an event that is not JSON") }
            if chunk.isError { return .broke("it sent an error event: \(payload.prefix(300))") }
            if chunk.hasChoice {
                var ids = chunk.tokenIds
                if skip > 0 {
                    let n = min(skip, ids.count)
                    let expected = tokens[(tokens.count - skip)..<(tokens.count - skip + n)]
                    guard ids.prefix(n).elementsEqual(expected) else {
                        return .broke("it computed another token than the prefill (\(ids) for \(Array(expected)))")
                    }
                    skip -= n
                    ids.removeFirst(n)
                    // A chunk of tokens the client already has is dropped (one token per chunk: no text is split).
                    if ids.isEmpty && chunk.finishReason == nil { continue }
                }
                tokens += ids
                if chunk.finishReason != nil { finished = true }
            }
            chunk.edit(id: id, created: created, keepTokenIds: request.wantsTokenIds, keepRole: false)
            try await write(chunk.event, &writer)
        }
    }
}
