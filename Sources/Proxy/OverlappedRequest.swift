import AsyncHTTPClient
import Discovery
import Foundation
import Hummingbird
import JSON
import NIOCore
import OpenAIAPI

/// How the proxy runs a request over a prefill and a decode instance (`tandem proxy --pd-flow`).
public enum PDFlow: String, Sendable, CaseIterable {
    /// vLLM's: the prefill answers (`max_tokens` 1), then the decode runs the request and answers the client.
    case sequential
    /// Between Tandem instances: see `OverlappedRequest`. Requests to other instances (vLLM's) stay sequential.
    case overlap
}

/// One request run the overlapped way, between Tandem instances:
/// - the decode request goes out with the prefill request (the decode reserves blocks and waits for the KV);
/// - the prefill stops after its first token (`tandem_handoff`), which reaches a streaming client at once;
/// - the decode computes that token again (the same one: the proxy pins a seed for sampled requests), which the
///   proxy checks and drops, and relays the rest;
/// - a first token that ends the request (EOS, a stop string) answers from the prefill, and the decode is cancelled;
///   `max_tokens` 1 never goes to a decode;
/// - a prefill that fails cancels the decode at once (then one retry on another prefill);
/// - a decode that fails mid-stream (connection lost, error event, silent past the read timeout) is replaced: the
///   request resumes on another decode instance after the last token relayed (`tandem_resume`, the KV recomputed
///   there), up to `maxMigrations` times; the client's stream goes on with the same tokens.
struct OverlappedRequest: Sendable {
    let router: RequestRouter
    let path: String
    let auth: String?
    let uuid: String
    let start: ContinuousClock.Instant
    /// The client's body, with a seed pinned when it samples.
    let body: JSONValue
    let stream: Bool
    let wantsTokenIds: Bool

    init(
        router: RequestRouter, path: String, body: JSONValue, auth: String?, uuid: String,
        start: ContinuousClock.Instant
    ) {
        self.router = router
        self.path = path
        self.auth = auth
        self.uuid = uuid
        self.start = start
        self.body = Self.pinningSeed(body)
        stream = body["stream"] == .bool(true)
        wantsTokenIds = body["return_token_ids"] == .bool(true)
    }

    /// A sampled request (temperature absent or above 0) without a seed gets one, so that every instance that
    /// computes one of its tokens computes the same token.
    static func pinningSeed(_ body: JSONValue) -> JSONValue {
        let temperature: Double
        switch body["temperature"] {
        case .int(let i)?: temperature = Double(i)
        case .double(let d)?: temperature = d
        case .float(let f)?: temperature = Double(f)
        default: temperature = 1
        }
        guard temperature > 0, body["seed"] == nil || body["seed"] == .null else { return body }
        return body.setting("seed", .int(Int(Int32.random(in: 0...Int32.max))))
    }

    private var maxTokens: Int? { body.integer("max_completion_tokens") ?? body.integer("max_tokens") }

    private var metrics: ProxyMetrics { router.metrics }
    private var registry: InstanceRegistry { router.registry }

    /// Runs the request with prefill `p` and decode `d`, both acquired (and released here).
    func run(prefill first: KnownInstance, decode d: KnownInstance) async throws -> Response {
        if maxTokens == 1 {
            // The first token is the whole answer: the prefill instance serves it alone.
            registry.release(d)
            let reply: HTTPClientResponse
            do {
                reply = try await router.send(
                    first, path: path, body: body, id: uuid, auth: auth, timeout: router.prefillTimeout)
            } catch {
                registry.release(first)
                if Task.isCancelled { throw CancellationError() }
                metrics.outcome("prefill_failed")
                throw APIError(.badGateway, "prefill instance \(first.http) failed: \(error)", type: "upstream_error")
            }
            return try await router.relayWhole(reply, from: first, start: start)
        }
        var p = first
        var tried: Set<HostPort> = [p.http]
        var lastError = ""
        for attempt in 0..<2 {
            if attempt == 1 {
                guard let next = registry.acquire(.prefill, policy: router.policy, excluding: tried) else { break }
                guard next.resumable else {
                    registry.release(next)
                    break
                }
                p = next
                tried.insert(p.http)
                metrics.retry("prefill")
            }
            let id = DisaggregatedRequestID(
                prefill: p.zmq, decode: d.zmq, uuid: attempt == 0 ? uuid : uuid + "r\(attempt)"
            ).description
            // The decode's KV wait starts now, with the prefill: it may last the prefill's whole deadline longer.
            let decodeBody = body.setting("return_token_ids", true).setting(
                "tandem_kv_wait_s", .double(Double(router.prefillTimeout.nanoseconds) / 1e9))
            let router = router
            let path = path
            let auth = auth
            let decodeCall = Task {
                try await router.send(
                    d, path: path, body: decodeBody, id: id, auth: auth, timeout: router.decodeTimeout)
            }
            let outcome: PrefillOutcome
            do {
                outcome = try await prefill(p, id: id)
            } catch {
                decodeCall.cancel()
                registry.release(p)
                registry.release(d)
                metrics.outcome("client_gone")
                throw error
            }
            registry.release(p)
            switch outcome {
            case .answered(let response, let success):
                decodeCall.cancel()
                registry.release(d)
                metrics.outcome(success ? "success" : "client_error")
                if success { metrics.finished(seconds(since: start)) }
                return response
            case .failed(let why):
                decodeCall.cancel()
                lastError = why
                router.logger.warning("\(why); the overlapped decode on \(d.http) is cancelled")
            case .handedOff(let firstChunk, let tokens):
                if stream {
                    metrics.firstByte(seconds(since: start))
                    return streamingResponse(first: firstChunk!, tokens: tokens, call: decodeCall, decode: d)
                }
                return try await collectedResponse(tokens: tokens, call: decodeCall, decode: d)
            }
        }
        registry.release(d)
        metrics.outcome("prefill_failed")
        throw APIError(.badGateway, lastError, type: "upstream_error")
    }

    // MARK: - Prefill

    private enum PrefillOutcome {
        /// The answer is complete from the prefill alone (its first token ended the request), or it is the client's
        /// mistake (4xx).
        case answered(Response, success: Bool)
        /// The prefill stopped after its first token(s): the decode goes on after them.
        case handedOff(first: RelayedChunk?, tokens: [Int32])
        case failed(String)
    }

    private func prefill(_ p: KnownInstance, id: String) async throws -> PrefillOutcome {
        let prefillBody = body.setting("tandem_handoff", true).setting("return_token_ids", true)
        let reply: HTTPClientResponse
        do {
            reply = try await router.send(
                p, path: path, body: prefillBody, id: id, auth: auth, timeout: router.prefillTimeout)
        } catch {
            if Task.isCancelled || error is CancellationError { throw CancellationError() }
            return .failed("prefill instance \(p.http) failed: \(error)")
        }
        guard reply.status == .ok else {
            let text = try await reply.body.collect(upTo: 1 << 20)
            if reply.status.code < 500 { return .answered(router.relay(reply, body: text), success: false) }
            return .failed("prefill instance \(p.http) answered \(reply.status.code): \(String(buffer: text))")
        }
        do {
            return stream ? try await prefillStream(reply, from: p) : try await prefillWhole(reply, from: p)
        } catch {
            if Task.isCancelled || error is CancellationError { throw CancellationError() }
            return .failed("prefill instance \(p.http) broke off its answer: \(error)")
        }
    }

    /// A streamed prefill: its first chunk, and the rest when the first token ended the request.
    private func prefillStream(_ reply: HTTPClientResponse, from p: KnownInstance) async throws -> PrefillOutcome {
        var reader = EventStreamReader(reply.body)
        var events: [RelayedChunk] = []
        var tokens: [Int32] = []
        var finished = false
        while let payload = try await reader.next() {
            if payload == "[DONE]" {
                guard let first = events.first else { return .failed("prefill instance \(p.http) sent no token") }
                if !finished { return .handedOff(first: first, tokens: tokens) }
                var text = ""
                for var e in events {
                    e.edit(id: nil, created: nil, keepTokenIds: wantsTokenIds, keepRole: true)
                    text += e.event
                }
                text += "data: [DONE]\n\n"
                return .answered(router.eventStream(text), success: true)
            }
            guard let chunk = RelayedChunk(payload), !chunk.isError else {
                return .failed("prefill instance \(p.http) sent an error event: \(payload.prefix(300))")
            }
            tokens += chunk.tokenIds
            if chunk.finishReason != nil { finished = true }
            events.append(chunk)
            if !finished, !tokens.isEmpty, events.count == 1 {
                // The first token is in and did not end the request: hand off now (the prefill's stream only has
                // its [DONE] left; it is dropped).
                return .handedOff(first: chunk, tokens: tokens)
            }
        }
        return .failed("prefill instance \(p.http) ended its stream early")
    }

    /// A whole prefill answer: complete when its first token ended the request, else handed off.
    private func prefillWhole(_ reply: HTTPClientResponse, from p: KnownInstance) async throws -> PrefillOutcome {
        let text = try await reply.body.collect(upTo: 64 << 20)
        guard let value = JSONValue.parse(text.readableBytesView), case .object = value else {
            return .failed("prefill instance \(p.http) answered with a body that is not JSON")
        }
        var chunk = RelayedChunk(value)
        if chunk.finishReason == nil {
            guard !chunk.tokenIds.isEmpty else { return .failed("prefill instance \(p.http) sent no token") }
            return .handedOff(first: nil, tokens: chunk.tokenIds)
        }
        chunk.edit(id: nil, created: nil, keepTokenIds: wantsTokenIds, keepRole: true)
        return .answered(Response.json(chunk.value), success: true)
    }

    // MARK: - Decode

    /// The client's stream: the prefill's first chunk, then the decode's chunks after the tokens it already has.
    private func streamingResponse(
        first: RelayedChunk, tokens: [Int32], call: Task<HTTPClientResponse, any Error>, decode d: KnownInstance
    ) -> Response {
        let headers = HTTPFields.eventStream
        let request = self
        return Response(
            status: .ok, headers: headers,
            body: ResponseBody { writer in
                var head = first
                head.edit(id: nil, created: nil, keepTokenIds: request.wantsTokenIds, keepRole: true)
                var relay = DecodeStreamRelay(
                    request: request, tokens: tokens, id: first.value["id"], created: first.value["created"])
                do {
                    try await writer.write(ByteBuffer(string: head.event))
                    try await relay.run(call: call, decode: d, writer: &writer)
                } catch {
                    request.metrics.outcome("client_gone")
                    throw error
                }
                try await writer.finish(nil)
            })
    }

    /// A whole answer from the decode (which computed the first token again, checked here); a decode that fails
    /// is replaced by another that runs the whole request, recomputing its KV.
    private func collectedResponse(
        tokens: [Int32], call: Task<HTTPClientResponse, any Error>, decode first: KnownInstance
    ) async throws -> Response {
        var d = first
        var call = call
        var failed: Set<HostPort> = []
        var migrations = 0
        defer { call.cancel() }
        while true {
            var why: String
            do {
                let reply = try await call.valueOrCancel
                let text = try await reply.body.collect(upTo: 64 << 20)
                if reply.status.code < 500 {
                    guard reply.status == .ok else {
                        registry.release(d)
                        metrics.outcome("client_error")
                        return router.relay(reply, body: text)
                    }
                    if let value = JSONValue.parse(text.readableBytesView), case .object = value {
                        var chunk = RelayedChunk(value)
                        if migrations > 0 || chunk.tokenIds.starts(with: tokens) {
                            chunk.edit(id: nil, created: nil, keepTokenIds: wantsTokenIds, keepRole: true)
                            registry.release(d)
                            metrics.firstByte(seconds(since: start))
                            metrics.outcome("success")
                            metrics.finished(seconds(since: start))
                            return Response.json(chunk.value)
                        }
                        why = "it computed other first tokens than the prefill"
                    } else {
                        why = "it answered with a body that is not JSON"
                    }
                } else {
                    why = "it answered \(reply.status.code): \(String(buffer: text).prefix(300))"
                }
            } catch {
                if Task.isCancelled {
                    registry.release(d)
                    metrics.outcome("client_gone")
                    throw CancellationError()
                }
                why = "\(error)"
            }
            registry.release(d)
            failed.insert(d.http)
            guard migrations < router.maxMigrations,
                let (next, replacement) = migrate(
                    from: d, why: why, excluding: failed, number: migrations + 1, after: [])
            else {
                metrics.outcome("decode_failed")
                throw APIError(.badGateway, "decode instance \(d.http) failed: \(why)", type: "upstream_error")
            }
            migrations += 1
            (d, call) = (next, replacement)
        }
    }

    /// Moves the request to another decode instance, its `number`th move: after `tokens` the client already has
    /// (`tandem_resume`, the KV recomputed there), or from the start when there are none. Counted and logged with
    /// both instances; nil when no other Tandem decode instance is free.
    func migrate(from d: KnownInstance, why: String, excluding: Set<HostPort>, number: Int, after tokens: [Int32])
        -> (KnownInstance, Task<HTTPClientResponse, any Error>)?
    {
        guard let next = router.replacement(excluding: excluding) else { return nil }
        metrics.migrated()
        router.logger.warning(
            "request \(uuid): decode instance \(d.http) failed after \(tokens.count) tokens (\(why)); resuming on decode instance \(next.http)"
        )
        var body = body.setting("return_token_ids", true).setting("kv_transfer_params", nil)
        if !tokens.isEmpty {
            body = body.setting("tandem_resume", .object([("token_ids", .array(tokens.map { .int(Int($0)) }))]))
        }
        let router = router
        let path = path
        let auth = auth
        let id = "\(uuid)m\(number)"
        let call = Task {
            try await router.send(next, path: path, body: body, id: id, auth: auth, timeout: router.decodeTimeout)
        }
        return (next, call)
    }
}

extension Task where Failure == any Error {
    /// The task's value; when the awaiting task is cancelled (its client left), this one is cancelled too, which
    /// `value` alone does not do.
    var valueOrCancel: Success {
        get async throws {
            try await withTaskCancellationHandler {
                try await value
            } onCancel: {
                cancel()
            }
        }
    }
}
