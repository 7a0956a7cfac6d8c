import Engine
import JSON
import OpenAIAPI

/// Builds OpenAI-shaped bodies (whole responses and stream chunks) for one completion or chat completion.
struct ResponseFormatter: Sendable {
    enum Kind: Sendable { case completion, chat }

    let kind: Kind
    let id: String
    let created: Int
    let model: String
    let tokenizer: Tokenizer
    let promptTokens: [Int32]
    let returnTokenIds: Bool
    /// Whether the client asked for logprobs (and so gets a `logprobs` object rather than null).
    let wantsLogprobs: Bool
    /// Characters of text before this answer's (a resumed request's earlier text): where `text_offset` starts.
    var textOffsetBase = 0
    /// The prompt's text, put before the answer's (`echo`, completions only).
    var echoText = ""
    /// The choice's `index` (a prompt list's or `n`'s choices are numbered prompt by prompt, as OpenAI does).
    var index = 0
    /// Whether the answer is read for function calls (a chat request with tools, `tool_choice` not `none`).
    var parsesToolCalls = false

    var object: String { kind == .completion ? "text_completion" : "chat.completion" }
    var chunkObject: String { kind == .completion ? "text_completion" : "chat.completion.chunk" }

    /// The whole response (`finish` nil for a prefill that handed the rest on); a producer's carries `kv_transfer_params` at the top level, as vLLM's does.
    func response(
        text: String, tokenIds: [Int32], logprobs: [TokenLogprob], finish: FinishReason?, usage: GenerationUsage,
        kvTransferParams: [(String, KVParamValue)]? = nil, promptLogprobs: [TokenLogprob]? = nil
    ) -> JSONValue {
        var choice: [(String, JSONValue)] = [("index", .int(index))]
        var calledTools = false
        switch kind {
        case .completion: choice.append(("text", .string(echoText + text)))
        case .chat:
            let (content, calls) = parsesToolCalls ? ToolCallParser.parse(text) : (text, [])
            var message: [(String, JSONValue)] = [
                ("role", "assistant"), ("content", calls.isEmpty || !content.isEmpty ? .string(content) : .null),
            ]
            if !calls.isEmpty {
                message.append(("tool_calls", .array(calls.enumerated().map { toolCallJSON($1, index: nil) })))
            }
            choice.append(("message", .object(message)))
            calledTools = !calls.isEmpty
        }
        choice.append(
            (
                "logprobs",
                wantsLogprobs
                    ? logprobsJSON(logprobs, textOffset: textOffsetBase + echoText.count, prompt: promptLogprobs)
                    : .null
            ))
        choice.append(("finish_reason", finishJSON(finish, calledTools: calledTools)))
        choice.append(("stop_reason", .null))
        if returnTokenIds {
            choice.append(("prompt_token_ids", ids(promptTokens)))
            choice.append(("token_ids", ids(tokenIds)))
        }
        var body: [(String, JSONValue)] = [
            ("id", .string(id)), ("object", .string(object)), ("created", .int(created)), ("model", .string(model)),
            ("choices", .array([.object(choice)])), ("usage", usageJSON(usage)),
        ]
        if let kvTransferParams { body.append(("kv_transfer_params", .object(kvTransferParams.map { ($0, $1.json) }))) }
        return .object(body)
    }

    /// A stream chunk with a text delta; `first` adds the chat role and, when asked, the prompt's token ids.
    /// `toolCalls` are whole calls that went out in this chunk, numbered from `firstCallIndex`; `calledTools` says
    /// whether the answer called any (its end is then `tool_calls`).
    func chunk(
        text: String, tokenIds: [Int32], logprobs: [TokenLogprob], finish: FinishReason?, first: Bool,
        textOffset: Int, includeUsageField: Bool, toolCalls: [ParsedToolCall] = [], firstCallIndex: Int = 0,
        calledTools: Bool = false, promptLogprobs: [TokenLogprob]? = nil
    ) -> JSONValue {
        var choice: [(String, JSONValue)] = [("index", .int(index))]
        switch kind {
        case .completion: choice.append(("text", .string(first ? echoText + text : text)))
        case .chat:
            var delta: [(String, JSONValue)] = []
            if first { delta.append(("role", "assistant")) }
            if !text.isEmpty || first && toolCalls.isEmpty { delta.append(("content", .string(text))) }
            if !toolCalls.isEmpty {
                delta.append(
                    (
                        "tool_calls",
                        .array(toolCalls.enumerated().map { toolCallJSON($1, index: firstCallIndex + $0) })
                    ))
            }
            choice.append(("delta", .object(delta)))
        }
        choice.append(
            (
                "logprobs",
                wantsLogprobs ? logprobsJSON(logprobs, textOffset: textOffset, prompt: promptLogprobs) : .null
            ))
        choice.append(("finish_reason", finishJSON(finish, calledTools: calledTools)))
        if returnTokenIds {
            if first { choice.append(("prompt_token_ids", ids(promptTokens))) }
            choice.append(("token_ids", ids(tokenIds)))
        }
        var body: [(String, JSONValue)] = [
            ("id", .string(id)), ("object", .string(chunkObject)), ("created", .int(created)),
            ("model", .string(model)), ("choices", .array([.object(choice)])),
        ]
        if includeUsageField { body.append(("usage", .null)) }
        return .object(body)
    }

    /// An answer that called tools and ended on its own ends with `tool_calls`, as OpenAI's do.
    private func finishJSON(_ finish: FinishReason?, calledTools: Bool) -> JSONValue {
        guard let finish else { return .null }
        return .string(calledTools && finish == .stop ? "tool_calls" : finish.rawValue)
    }

    /// A call as OpenAI's `tool_calls` entries carry it; a stream's deltas also carry its `index`.
    private func toolCallJSON(_ call: ParsedToolCall, index: Int?) -> JSONValue {
        var pairs: [(String, JSONValue)] = []
        if let index { pairs.append(("index", .int(index))) }
        pairs += [
            ("id", .string(ToolCallID.make())), ("type", "function"),
            ("function", .object([("name", .string(call.name)), ("arguments", .string(call.arguments))])),
        ]
        return .object(pairs)
    }

    /// One response of several choices from their own responses (each with one choice): the choices in index
    /// order, and the usage of the whole request (each prompt counted once however many choices it has).
    func merged(_ parts: [(body: JSONValue, usage: GenerationUsage)], promptTokenTotal: Int) -> JSONValue {
        let choices = parts.flatMap { part -> [JSONValue] in
            if case .array(let items)? = part.body["choices"] { return items }
            return []
        }
        let usage = GenerationUsage(
            promptTokens: promptTokenTotal, completionTokens: parts.reduce(0) { $0 + $1.usage.completionTokens },
            cachedTokens: parts.reduce(0) { $0 + $1.usage.cachedTokens })
        return .object([
            ("id", .string(id)), ("object", .string(object)), ("created", .int(created)), ("model", .string(model)),
            ("choices", .array(choices)), ("usage", usageJSON(usage)),
        ])
    }

    /// The last chunk of a stream with `stream_options.include_usage`: no choices, only usage.
    func usageChunk(_ usage: GenerationUsage) -> JSONValue {
        .object([
            ("id", .string(id)), ("object", .string(chunkObject)), ("created", .int(created)),
            ("model", .string(model)), ("choices", .array([])), ("usage", usageJSON(usage)),
        ])
    }

    func usageJSON(_ u: GenerationUsage) -> JSONValue {
        var fields: [(String, JSONValue)] = [
            ("prompt_tokens", .int(u.promptTokens)), ("total_tokens", .int(u.promptTokens + u.completionTokens)),
            ("completion_tokens", .int(u.completionTokens)),
        ]
        if u.cachedTokens > 0 {
            fields.append(("prompt_tokens_details", .object([("cached_tokens", .int(u.cachedTokens))])))
        }
        return .object(fields)
    }

    private func ids(_ tokens: [Int32]) -> JSONValue { .array(tokens.map { .int(Int($0)) }) }

    private func tokenString(_ id: Int32) -> String {
        String(decoding: tokenizer.bytes(of: id), as: UTF8.self)
    }

    /// Completions use `{tokens, token_logprobs, top_logprobs, text_offset}`; chat uses `{content: [...]}`.
    /// An echoed prompt's logprobs (`prompt`, for prompt tokens 1...) come first, as vLLM gives them: its first
    /// token has none (null), and their offsets count from the start of the echoed text.
    func logprobsJSON(_ logprobs: [TokenLogprob], textOffset: Int, prompt: [TokenLogprob]? = nil) -> JSONValue {
        switch kind {
        case .completion:
            var offsets: [JSONValue] = []
            var tokens: [JSONValue] = []
            var values: [JSONValue] = []
            var tops: [JSONValue] = []
            if let prompt, let first = promptTokens.first {
                var offset = 0
                offsets.append(.int(0))
                offset += tokenString(first).count
                tokens.append(.string(tokenString(first)))
                values.append(.null)
                tops.append(.null)
                for lp in prompt {
                    offsets.append(.int(offset))
                    offset += tokenString(lp.id).count
                }
            }
            let all = (prompt ?? []) + logprobs
            var offset = textOffset
            for lp in logprobs {
                offsets.append(.int(offset))
                offset += tokenString(lp.id).count
            }
            for lp in all {
                tokens.append(.string(tokenString(lp.id)))
                values.append(.float(lp.logprob))
                tops.append(.object(lp.top.map { (tokenString($0.id), .float($0.logprob)) }))
            }
            return .object([
                ("text_offset", .array(offsets)), ("token_logprobs", .array(values)), ("tokens", .array(tokens)),
                ("top_logprobs", .array(tops)),
            ])
        case .chat:
            func entry(_ id: Int32, _ logprob: Float) -> [(String, JSONValue)] {
                [
                    ("token", .string(tokenString(id))), ("logprob", .float(logprob)),
                    ("bytes", .array(tokenizer.bytes(of: id).map { .int(Int($0)) })),
                ]
            }
            return .object([
                (
                    "content",
                    .array(
                        logprobs.map { lp in
                            .object(
                                entry(lp.id, lp.logprob) + [
                                    ("top_logprobs", .array(lp.top.map { .object(entry($0.id, $0.logprob)) }))
                                ])
                        })
                )
            ])
        }
    }
}
