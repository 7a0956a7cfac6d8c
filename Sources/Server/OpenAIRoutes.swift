import Discovery
import Engine
import Foundation
import HTTPTypes
import Hummingbird
import JSON
import KVTransfer
import OpenAIAPI

/// The instance's HTTP API: OpenAI's completions and chat completions, with vLLM's extras.
public final class InstanceAPI: Sendable {
    public let host: EngineHost
    public let servedModelNames: [String]
    public let modelPath: String
    public let metrics: InstanceMetrics
    /// Moves KV to and from other instances (disaggregated serving).
    public let kvConnector: TandemKVConnector?
    /// A chat request without `max_tokens` generates at most this many tokens (nil: up to `max_model_len`).
    public let maxTokensDefault: Int?
    /// A request asking for more tokens than this is refused with 400 (nil: no limit below `max_model_len`).
    public let maxTokensLimit: Int?
    let created = Int(Date().timeIntervalSince1970)

    public init(
        host: EngineHost, servedModelNames: [String], modelPath: String, metrics: InstanceMetrics,
        kvConnector: TandemKVConnector? = nil, maxTokensDefault: Int? = nil, maxTokensLimit: Int? = nil
    ) {
        self.maxTokensDefault = maxTokensDefault
        self.maxTokensLimit = maxTokensLimit
        self.host = host
        self.servedModelNames = servedModelNames
        self.modelPath = modelPath
        self.metrics = metrics
        self.kvConnector = kvConnector
    }

    /// Refuses a request that asks for more tokens than `--max-tokens-limit`.
    /// `params` checked against this server's limits and its model's vocabulary.
    /// A forced tool call (`forcedCall`) is a constraint too, and cannot be combined with another.
    private func limited(
        _ params: SamplingParams, fields: RequestFields, loaded: LoadedModel, forcedCall: StructuredOutputSpec? = nil
    ) throws -> SamplingParams {
        var params = params
        let format = try fields.structuredOutput()
        if let format, forcedCall != nil {
            throw APIError.badRequest(
                "'\(format.param)' cannot be combined with a tool_choice that forces a call", param: format.param)
        }
        if let spec = format ?? forcedCall { params.constraint = try loaded.grammars.constraint(for: spec) }
        if let limit = maxTokensLimit, params.maxTokens > limit {
            throw APIError.badRequest(
                "max_tokens is \(params.maxTokens), more than this server's limit of \(limit)", param: "max_tokens")
        }
        let vocabulary = loaded.tokenizer.vocabularySize
        if let id = params.logitBias.keys.first(where: { Int($0) >= vocabulary }) {
            throw APIError.badRequest(
                "'logit_bias' names token \(id), outside the vocabulary of \(vocabulary) tokens", param: "logit_bias")
        }
        return params
    }

    /// A router with every endpoint, the error middleware, and the API key check when `apiKey` is set.
    public func router(apiKey: String?) -> Router<ClientRequestContext> {
        let router = Router(context: ClientRequestContext.self)
        router.add(middleware: APIErrorMiddleware())
        router.add(middleware: AccessMiddleware(key: apiKey))
        // A request whose client leaves before its answer starts is aborted (a stream, once started, is aborted by
        // its failing writes).
        router.post("/v1/completions") { request, context in
            try await cancellingWhenClientLeaves(context.channel) { try await self.completions(request) }
        }
        router.post("/v1/chat/completions") { request, context in
            try await cancellingWhenClientLeaves(context.channel) { try await self.chatCompletions(request) }
        }
        router.get("/v1/models") { _, _ in try self.models() }
        router.get("/health") { _, _ -> Response in
            _ = try self.host.ready()
            return Response(status: .ok)
        }
        router.get("/version") { _, _ in Response.json(.object([("version", .string(tandemVersion))])) }
        router.post("/tokenize") { request, _ in try await self.tokenize(request) }
        router.post("/detokenize") { request, _ in try await self.detokenize(request) }
        router.get("/metrics") { _, _ -> Response in
            var headers = HTTPFields()
            headers[.contentType] = "text/plain; version=0.0.4; charset=utf-8"
            var text = self.metrics.render(stats: self.host.engine?.stats)
            if let c = self.kvConnector { text += c.renderMetrics() }
            return Response(status: .ok, headers: headers, body: ResponseBody(byteBuffer: ByteBuffer(string: text)))
        }
        return router
    }

    private func readFields(_ request: Request) async throws -> RequestFields {
        var request = request
        let body = try await request.collectRequestBody()
        return try RequestFields(body: body.readableBytesView)
    }

    private func checkModel(_ fields: RequestFields) throws {
        guard let name = try fields.string("model") else { return }
        guard servedModelNames.contains(name) else {
            throw APIError(
                .notFound, "The model `\(name)` does not exist.", param: "model", code: "model_not_found")
        }
    }

    // MARK: - Completions

    func completions(_ request: Request) async throws -> Response {
        let loaded = try host.ready()
        let fields = try await readFields(request)
        try checkModel(fields)
        let prompts = try completionPrompts(fields, loaded: loaded)
        var params = try limited(
            fields.samplingParams(defaultMaxTokens: min(16, maxTokensLimit ?? 16)), fields: fields, loaded: loaded)
        params.logprobs = try fields.int("logprobs", in: 0...20)
        // Echoed with logprobs, the prompt's tokens get theirs too (vLLM's and OpenAI's legacy behaviour).
        if try fields.bool("echo") == true, let top = params.logprobs { params.promptLogprobs = top }
        return try await run(
            kind: .completion, request: request, fields: fields, prompts: prompts, params: params, loaded: loaded)
    }

    /// The prompts of a completion request: a string, an array of token ids, or an array of either (a prompt list,
    /// one choice per prompt).
    private func completionPrompts(_ fields: RequestFields, loaded: LoadedModel) throws -> [[Int32]] {
        let addSpecial = try fields.bool("add_special_tokens") ?? true
        guard let value = fields.value("prompt") else {
            throw APIError.badRequest("'prompt' is required", param: "prompt")
        }
        switch value {
        case .string(let text):
            return [loaded.tokenizer.encode(text, addSpecial: addSpecial)]
        case .array(let items):
            guard !items.isEmpty else { throw APIError.badRequest("'prompt' is empty", param: "prompt") }
            if case .int = items[0] { return [try items.map { try RequestFields.tokenId($0, key: "prompt") }] }
            guard items.count <= 64 else {
                throw APIError.badRequest("'prompt' lists at most 64 prompts", param: "prompt")
            }
            return try items.map { item in
                switch item {
                case .string(let text): return loaded.tokenizer.encode(text, addSpecial: addSpecial)
                case .array(let inner) where !inner.isEmpty:
                    return try inner.map { try RequestFields.tokenId($0, key: "prompt") }
                default:
                    throw APIError.badRequest(
                        "a prompt list holds strings or non-empty arrays of token ids", param: "prompt")
                }
            }
        default:
            throw APIError.badRequest(
                "'prompt' must be a string, an array of token ids, or a list of either", param: "prompt")
        }
    }

    // MARK: - Chat

    func chatCompletions(_ request: Request) async throws -> Response {
        let loaded = try host.ready()
        let fields = try await readFields(request)
        try checkModel(fields)
        if try fields.bool("echo") == true {
            throw APIError.badRequest("'echo' is served for completions, not chat", param: "echo")
        }
        let tools = try fields.toolRequest()
        let text = try chatPrompt(fields, tools: tools, loaded: loaded)
        let prompt = loaded.tokenizer.encode(text, addSpecial: try fields.bool("add_special_tokens") ?? false)
        var params = try limited(
            fields.samplingParams(defaultMaxTokens: maxTokensDefault ?? maxTokensLimit ?? Int(Int32.max)),
            fields: fields, loaded: loaded, forcedCall: tools?.forcedCall)
        if try fields.bool("logprobs") == true {
            params.logprobs = try fields.int("top_logprobs", in: 0...20) ?? 0
        }
        return try await run(
            kind: .chat, request: request, fields: fields, prompts: [prompt], params: params, loaded: loaded)
    }

    func chatPrompt(_ fields: RequestFields, tools: ToolRequest?, loaded: LoadedModel) throws -> String {
        guard let value = fields.value("messages") else {
            throw APIError.badRequest("'messages' is required", param: "messages")
        }
        guard case .array(let items) = value, !items.isEmpty else {
            throw APIError.badRequest("'messages' must be a non-empty array of messages", param: "messages")
        }
        let turns = try items.enumerated().map { try ChatTurn($1, index: $0) }
        return try loaded.renderChat(
            turns, tools: tools?.parsesCalls == true ? tools?.tools : nil,
            addGenerationPrompt: try fields.bool("add_generation_prompt") ?? true)
    }

    // MARK: - Running a request

    /// Runs a request's choices: one per prompt and per `n`, numbered prompt by prompt.
    private func run(
        kind: ResponseFormatter.Kind, request: Request, fields: RequestFields, prompts: [[Int32]],
        params: SamplingParams, loaded: LoadedModel
    ) async throws -> Response {
        let n = try fields.choiceCount()
        let requestId = request.headers[.xRequestID] ?? UUID().uuidString.replacingOccurrences(of: "-", with: "")
        let role = try transferRole(fields, requestId: requestId)
        let resumed = fields.value("tandem_resume") != nil || fields.value("tandem_handoff") != nil
        if role != nil || resumed {
            // Disaggregated or resumed, a request's KV moves under its one id: one prompt (the proxy sends a prompt
            // list's prompts one by one), and several choices only on the decode side, sharing the KV that came.
            if prompts.count > 1 {
                throw APIError.badRequest(
                    "a disaggregated or resumed request carries one prompt (send a prompt list to the proxy or to a colocated instance)",
                    param: "prompt")
            }
            if n > 1, resumed {
                throw APIError.badRequest("a resumed or handed-off request has n = 1", param: "n")
            }
        }
        // A prefill for several choices computes the prompt once: its KV is all the decode needs.
        guard prompts.count * n > 1, role != .produce else {
            let run = try start(
                kind: kind, requestId: requestId, fields: fields, prompt: prompts[0], params: params, loaded: loaded)
            let (stream, includeUsage) = try fields.streaming()
            if stream { return try await run.streamingResponse(includeUsage: includeUsage) }
            return try await run.collectedResponse()
        }
        // Choice j of a prompt samples with seed + j (as vLLM's parallel sampling does), so a seeded run repeats.
        var runs: [GenerationRun] = []
        do {
            for (p, prompt) in prompts.enumerated() {
                for j in 0..<n {
                    var choiceParams = params
                    choiceParams.seed = params.seed.map { $0 &+ UInt64(j) }
                    // A decode's first choice takes the KV that comes (under the request's id); the others wait
                    // for it in the prefix cache.
                    let consumes = role == .consume
                    var run = try start(
                        kind: kind, requestId: consumes && j == 0 ? requestId : "\(requestId)-\(p * n + j)",
                        fields: fields, prompt: prompt, params: choiceParams, loaded: loaded, responseId: requestId,
                        transfers: consumes && j == 0, sharesPromptWith: consumes && j > 0 ? requestId : nil)
                    run.formatter.index = p * n + j
                    runs.append(run)
                }
            }
        } catch {
            for r in runs { r.handle.abort() }
            throw error
        }
        let promptTokenTotal = prompts.reduce(0) { $0 + $1.count }
        let (stream, includeUsage) = try fields.streaming()
        if stream {
            return GenerationRun.streamingResponse(
                of: runs, includeUsage: includeUsage, promptTokenTotal: promptTokenTotal)
        }
        let parts = try await withThrowingTaskGroup(of: (Int, JSONValue, GenerationUsage).self) { group in
            for (i, run) in runs.enumerated() {
                group.addTask {
                    let (body, usage) = try await run.collectedBody()
                    return (i, body, usage)
                }
            }
            var parts: [(Int, JSONValue, GenerationUsage)] = []
            do {
                for try await part in group { parts.append(part) }
            } catch {
                for r in runs { r.handle.abort() }
                throw error
            }
            return parts.sorted { $0.0 < $1.0 }.map { (body: $0.1, usage: $0.2) }
        }
        return Response.json(runs[0].formatter.merged(parts, promptTokenTotal: promptTokenTotal))
    }

    /// Whether the request moves KV, and which way: nil when it moves none (or this instance has no connector).
    private func transferRole(_ fields: RequestFields, requestId: String) throws -> KVTransferParams.Role? {
        guard let kvConnector else { return nil }
        do {
            return try kvConnector.parse(requestId: requestId, params: try fields.kvTransferParams())?.role
        } catch let error as KVTransferParamsError {
            throw APIError.badRequest(error.description, param: "kv_transfer_params")
        }
    }

    /// Submits one choice to the engine; its run, not yet read.
    private func start(
        kind: ResponseFormatter.Kind, requestId: String, fields: RequestFields, prompt: [Int32],
        params: SamplingParams, loaded: LoadedModel, responseId: String? = nil, transfers: Bool = true,
        sharesPromptWith: String? = nil
    ) throws -> GenerationRun {
        let returnTokenIds = try fields.bool("return_token_ids") ?? false
        var generation = GenerationRequest(id: requestId, promptTokens: prompt, params: params)
        generation.resume = try fields.resume()
        generation.handOffAfterFirstToken = try fields.bool("tandem_handoff") ?? false
        generation.sharesPromptWith = sharesPromptWith
        if let kvConnector, transfers {
            do {
                generation.kvTransfer = try kvConnector.parse(
                    requestId: requestId, params: try fields.kvTransferParams())
            } catch let error as KVTransferParamsError {
                throw APIError.badRequest(error.description, param: "kv_transfer_params")
            }
            if let wait = try fields.number("tandem_kv_wait_s", in: 0...3600) {
                generation.kvTransfer?.extraWait = wait
            }
        }
        let handle: GenerationHandle
        do {
            handle = try loaded.engine.submit(generation)
        } catch let error as EngineError {
            switch error {
            case .stopped: throw APIError(.serviceUnavailable, error.description)
            case .promptTooLong: throw APIError.badRequest(error.description, param: "prompt")
            case .badResume: throw APIError.badRequest(error.description, param: "tandem_resume")
            default: throw APIError.badRequest(error.description, param: kind == .chat ? "messages" : "prompt")
            }
        }
        let id = responseId ?? requestId
        var formatter = ResponseFormatter(
            kind: kind, id: (kind == .completion ? "cmpl-" : "chatcmpl-") + id, created: created,
            model: (try? fields.string("model")) ?? servedModelNames[0], tokenizer: loaded.tokenizer,
            promptTokens: prompt, returnTokenIds: returnTokenIds, wantsLogprobs: params.logprobs != nil)
        formatter.textOffsetBase = handle.resumedText.count
        formatter.parsesToolCalls = try kind == .chat && fields.toolRequest()?.parsesCalls == true
        // A resumed answer's echo went out with its start, from another instance.
        if kind == .completion, try fields.bool("echo") == true, generation.resume == nil {
            formatter.echoText = loaded.tokenizer.decode(prompt)
        }
        return GenerationRun(handle: handle, formatter: formatter, metrics: metrics)
    }
}

extension HTTPField.Name {
    static let xRequestID = Self("X-Request-Id")!
}

/// The version `GET /version` reports.
public let tandemVersion = "0.1.0"
