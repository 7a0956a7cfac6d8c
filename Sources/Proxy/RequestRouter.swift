import AsyncHTTPClient
import Discovery
import Foundation
import Hummingbird
import JSON
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import OpenAIAPI

/// Routes one OpenAI request through a prefill and a decode instance, as vLLM's P2P proxy does, with the failures
/// it lacks handled: no instance → 503 at once; a failed prefill or a decode that fails before its first byte is
/// retried once on another instance, else 502; a decode that breaks mid-stream ends the stream with an error event;
/// a client that goes away cancels the upstream request.
final class RequestRouter: Sendable {
    let registry: InstanceRegistry
    let policy: RoutingPolicy
    let client: HTTPClient
    let metrics: ProxyMetrics
    let logger: Logger
    let prefillTimeout: TimeAmount
    let decodeTimeout: TimeAmount
    let flow: PDFlow
    /// How many times one stream may move to another decode instance.
    let maxMigrations: Int
    private let counter = NIOLockedValueBox(0)

    init(
        registry: InstanceRegistry, policy: RoutingPolicy, client: HTTPClient, metrics: ProxyMetrics, logger: Logger,
        prefillTimeout: TimeAmount, decodeTimeout: TimeAmount, flow: PDFlow = .overlap, maxMigrations: Int = 2
    ) {
        self.flow = flow
        self.maxMigrations = maxMigrations
        self.registry = registry
        self.policy = policy
        self.client = client
        self.metrics = metrics
        self.logger = logger
        self.prefillTimeout = prefillTimeout
        self.decodeTimeout = decodeTimeout
    }

    /// The Authorization header instances get: the client's, else `Bearer $OPENAI_API_KEY` when that is set.
    static func authorization(_ request: Request) -> String? {
        if let a = request.headers[.authorization] { return a }
        if let key = ProcessInfo.processInfo.environment["OPENAI_API_KEY"], !key.isEmpty { return "Bearer \(key)" }
        return nil
    }

    /// The prefill copy of a body: `max_tokens` 1 (and `max_completion_tokens` 1 when present), not streamed.
    static func prefillBody(_ body: JSONValue) -> JSONValue {
        guard case .object(var pairs) = body else { return body }
        pairs.removeAll { $0.0 == "stream_options" || $0.0 == "stream" || $0.0 == "max_tokens" }
        if let i = pairs.firstIndex(where: { $0.0 == "max_completion_tokens" }) { pairs[i].1 = 1 }
        pairs.append(("max_tokens", 1))
        pairs.append(("stream", false))
        return .object(pairs)
    }

    /// Handles one request; when the client's `client` channel closes before the answer starts, the upstream
    /// requests in flight are cancelled.
    func handle(path: String, request: Request, client: any Channel) async throws -> Response {
        try await cancellingWhenClientLeaves(client) { try await self.handle(path: path, request: request) }
    }

    private func handle(path: String, request: Request) async throws -> Response {
        let start = ContinuousClock.now
        var request = request
        let raw = try await request.collectRequestBody()
        guard let body = JSONValue.parse(raw.readableBytesView), case .object = body else {
            metrics.outcome("client_error")
            throw APIError.badRequest("the request body must be a JSON object")
        }
        let auth = Self.authorization(request)
        var model: String?
        if case .string(let name)? = body["model"] { model = name }
        guard registry.accepts(model: model) else {
            metrics.outcome("client_error")
            throw APIError(
                .notFound,
                "The model `\(model ?? "")` does not exist; served here: \(registry.servedModels.sorted().joined(separator: ", "))",
                type: "NotFoundError", param: "model", code: "model_not_found")
        }
        return try await InstanceRegistry.$requestedModel.withValue(model) {
            try await route(path: path, body: body, auth: auth, start: start)
        }
    }

    private func route(path: String, body: JSONValue, auth: String?, start: ContinuousClock.Instant) async throws
        -> Response
    {
        if let prompts = PromptListRequest.prompts(of: body), path.hasSuffix("/v1/completions") {
            return try await PromptListRequest(body: body, prompts: prompts) { one in
                try await self.handle(path: path, body: one, auth: auth, start: start)
            }.run()
        }
        return try await handle(path: path, body: body, auth: auth, start: start)
    }

    /// Whether a request runs the overlapped way when the flow allows: not when it asks for several choices, which
    /// the decode instance alone serves (sharing the KV that came), after vLLM's order.
    static func overlaps(_ body: JSONValue) -> Bool { (body.integer("n") ?? 1) <= 1 }

    private func handle(path: String, body: JSONValue, auth: String?, start: ContinuousClock.Instant) async throws
        -> Response
    {
        let uuid = UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased()
        if flow == .overlap, Self.overlaps(body), let d = registry.acquire(.decode, policy: policy) {
            // Overlapped only between Tandem instances; otherwise vLLM's order, below.
            if d.resumable, let p = registry.acquire(.prefill, policy: policy) {
                if p.resumable {
                    logger.info(
                        "handle_request count: \(counter.withLockedValue { $0 += 1; return $0 }), \(p.label) 👉 \(d.label) (overlapped)"
                    )
                    return try await OverlappedRequest(
                        router: self, path: path, body: body, auth: auth, uuid: uuid, start: start
                    ).run(prefill: p, decode: d)
                }
                registry.release(p)
            }
            registry.release(d)
        }

        // Prefill, retried once on another instance.
        var triedPrefill: Set<HostPort> = []
        var prefill: KnownInstance?
        var decode: KnownInstance?
        var prefillError = ""
        for attempt in 0..<2 {
            guard let p = registry.acquire(.prefill, policy: policy, excluding: triedPrefill) else { break }
            triedPrefill.insert(p.http)
            if decode == nil { decode = registry.acquire(.decode, policy: policy) }
            guard let d = decode else {
                registry.release(p)
                break
            }
            let id = DisaggregatedRequestID(prefill: p.zmq, decode: d.zmq, uuid: uuid)
            if attempt == 0 {
                logger.info(
                    "handle_request count: \(counter.withLockedValue { $0 += 1; return $0 }), \(p.label) 👉 \(d.label)")
            } else {
                metrics.retry("prefill")
            }
            defer { registry.release(p) }
            do {
                let reply = try await send(
                    p, path: path, body: Self.prefillBody(body), id: id, auth: auth, timeout: prefillTimeout)
                let text = try await reply.body.collect(upTo: 64 << 20)
                if reply.status.code < 500 {
                    if reply.status != .ok {
                        // The client's own mistake (4xx): answer it as the instance did.
                        if let d = decode { registry.release(d) }
                        metrics.outcome("client_error")
                        return relay(reply, body: text)
                    }
                    prefill = p
                    break
                }
                prefillError = "prefill instance \(p.http) answered \(reply.status.code)"
            } catch is CancellationError {
                registry.release(decode!)
                metrics.outcome("client_gone")
                throw CancellationError()
            } catch {
                if Task.isCancelled {
                    registry.release(decode!)
                    metrics.outcome("client_gone")
                    throw CancellationError()
                }
                prefillError = "prefill instance \(p.http) failed: \(error)"
            }
            logger.warning("\(prefillError)")
        }
        guard let p = prefill else {
            if let d = decode { registry.release(d) }
            if triedPrefill.isEmpty || decode == nil && prefillError.isEmpty {
                metrics.outcome("no_instance")
                let missing = triedPrefill.isEmpty ? "prefill" : "decode"
                throw APIError(.serviceUnavailable, "no \(missing) instance is registered with the proxy")
            }
            metrics.outcome("prefill_failed")
            throw APIError(.badGateway, prefillError, type: "upstream_error")
        }
        return try await decodeAndRelay(
            path: path, body: body, first: decode!, prefill: p, uuid: uuid, auth: auth, start: start)
    }

    private func decodeAndRelay(
        path: String, body: JSONValue, first: KnownInstance, prefill: KnownInstance, uuid: String, auth: String?,
        start: ContinuousClock.Instant
    ) async throws -> Response {
        var d = first
        var tried: Set<HostPort> = [d.http]
        var lastError = ""
        for attempt in 0..<2 {
            if attempt == 1 {
                guard let next = registry.acquire(.decode, policy: policy, excluding: tried) else { break }
                d = next
                tried.insert(d.http)
                metrics.retry("decode")
            }
            let id = DisaggregatedRequestID(prefill: prefill.zmq, decode: d.zmq, uuid: uuid)
            do {
                let reply = try await send(d, path: path, body: body, id: id, auth: auth, timeout: decodeTimeout)
                if reply.status.code >= 500 {
                    let text = try? await reply.body.collect(upTo: 1 << 20)
                    lastError =
                        "decode instance \(d.http) answered \(reply.status.code): \(text.map { String(buffer: $0) } ?? "")"
                } else if reply.headers.first(name: "Content-Type")?.hasPrefix("text/event-stream") == true {
                    metrics.firstByte(seconds(since: start))
                    return stream(reply, from: d, start: start)
                } else {
                    // Not streamed: take the whole answer first, so a decode that dies midway is a 502 (or a
                    // retry), never a truncated 200.
                    let text = try await reply.body.collect(upTo: 64 << 20)
                    metrics.firstByte(seconds(since: start))
                    registry.release(d)
                    guard text.readableBytes > 0 || reply.status != .ok else {
                        throw APIError(.badGateway, "decode instance \(d.http) answered 200 with an empty body")
                    }
                    metrics.outcome(reply.status == .ok ? "success" : "client_error")
                    metrics.finished(seconds(since: start))
                    return relay(reply, body: text)
                }
            } catch {
                lastError = "decode instance \(d.http) failed: \(error)"
            }
            logger.warning("\(lastError)")
            registry.release(d)
        }
        metrics.outcome("decode_failed")
        throw APIError(.badGateway, lastError, type: "upstream_error")
    }

    private func send(
        _ instance: KnownInstance, path: String, body: JSONValue, id: DisaggregatedRequestID, auth: String?,
        timeout: TimeAmount
    ) async throws -> HTTPClientResponse {
        try await send(instance, path: path, body: body, id: id.description, auth: auth, timeout: timeout)
    }

    /// POSTs `body` to an instance with `X-Request-Id: id`.
    func send(
        _ instance: KnownInstance, path: String, body: JSONValue, id: String, auth: String?, timeout: TimeAmount
    ) async throws -> HTTPClientResponse {
        let host = instance.http.isIPv6 ? "[\(instance.http.host)]" : instance.http.host
        var request = HTTPClientRequest(url: "http://\(host):\(instance.http.port)\(path)")
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/json")
        request.headers.add(name: "X-Request-Id", value: id)
        if let auth { request.headers.add(name: "Authorization", value: auth) }
        request.body = .bytes(ByteBuffer(string: body.serialized))
        return try await client.execute(request, timeout: timeout)
    }

    /// A decode instance to resume a request on: a Tandem one not in `excluding`.
    func replacement(excluding: Set<HostPort>) -> KnownInstance? {
        guard let next = registry.acquire(.decode, policy: policy, excluding: excluding) else { return nil }
        guard next.resumable else {
            registry.release(next)
            return nil
        }
        return next
    }

    /// An instance's answer relayed as it is: a stream as it comes, a whole body once complete; releases it.
    func relayWhole(_ reply: HTTPClientResponse, from instance: KnownInstance, start: ContinuousClock.Instant)
        async throws -> Response
    {
        if reply.headers.first(name: "Content-Type")?.hasPrefix("text/event-stream") == true {
            metrics.firstByte(seconds(since: start))
            return stream(reply, from: instance, start: start)
        }
        defer { registry.release(instance) }
        let text = try await reply.body.collect(upTo: 64 << 20)
        metrics.firstByte(seconds(since: start))
        metrics.outcome(reply.status == .ok ? "success" : "client_error")
        metrics.finished(seconds(since: start))
        return relay(reply, body: text)
    }

    /// A complete event stream.
    func eventStream(_ text: String) -> Response {
        let headers = HTTPFields.eventStream
        return Response(status: .ok, headers: headers, body: ResponseBody(byteBuffer: ByteBuffer(string: text)))
    }

    func relay(_ reply: HTTPClientResponse, body: ByteBuffer) -> Response {
        var headers = HTTPFields()
        headers[.contentType] = reply.headers.first(name: "Content-Type") ?? "application/json"
        return Response(
            status: HTTPResponse.Status(code: Int(reply.status.code)), headers: headers,
            body: ResponseBody(byteBuffer: body))
    }

    /// Relays the decode instance's event stream as it comes; a break mid-stream ends it with an error event.
    func stream(_ reply: HTTPClientResponse, from d: KnownInstance, start: ContinuousClock.Instant)
        -> Response
    {
        let headers = HTTPFields.eventStream
        let registry = registry
        let metrics = metrics
        let logger = logger
        return Response(
            status: HTTPResponse.Status(code: Int(reply.status.code)), headers: headers,
            body: ResponseBody { writer in
                defer { registry.release(d) }
                var sent = 0
                var clientGone = false
                do {
                    for try await chunk in reply.body {
                        sent += chunk.readableBytes
                        do {
                            try await writer.write(chunk)
                        } catch {
                            clientGone = true
                            throw error
                        }
                    }
                } catch {
                    if clientGone || error is CancellationError {
                        // Leaving drops the upstream response, which closes the decode connection: it aborts.
                        metrics.outcome("client_gone")
                        throw error
                    }
                    logger.warning("decode instance \(d.http) broke mid-stream: \(error)")
                    metrics.outcome("decode_broke")
                    let event = APIError(
                        .badGateway, "the decode instance failed mid-stream: \(error)", type: "upstream_error")
                    try await writer.write(ByteBuffer(string: "data: \(event.json.serialized)\n\n"))
                    try await writer.finish(nil)
                    return
                }
                if sent == 0 && reply.status == .ok {
                    metrics.outcome("decode_broke")
                    let event = APIError(.badGateway, "the decode instance answered with an empty body")
                    try await writer.write(ByteBuffer(string: "data: \(event.json.serialized)\n\n"))
                } else {
                    metrics.outcome(reply.status == .ok ? "success" : "client_error")
                }
                metrics.finished(seconds(since: start))
                try await writer.finish(nil)
            })
    }
}
