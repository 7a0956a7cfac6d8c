import Engine
import Hummingbird
import JSON
import OpenAIAPI

/// `/v1/models`, `/tokenize` and `/detokenize`, in vLLM's shapes.
extension InstanceAPI {
    func models() throws -> Response {
        let loaded = try host.ready()
        let entries: [JSONValue] = servedModelNames.prefix(1).map { name in
            .object([
                ("id", .string(name)), ("object", "model"), ("created", .int(created)), ("owned_by", "tandem"),
                ("root", .string(modelPath)), ("parent", .null),
                ("max_model_len", .int(loaded.engine.config.maxModelLength)), ("permission", .array([])),
            ])
        }
        return Response.json(.object([("object", "list"), ("data", .array(entries))]))
    }

    func tokenize(_ request: Request) async throws -> Response {
        let loaded = try host.ready()
        var request = request
        let fields = try RequestFields(body: try await request.collectRequestBody().readableBytesView)
        let tokens: [Int32]
        if fields.value("messages") != nil {
            let text = try chatPrompt(fields, tools: try fields.toolRequest(), loaded: loaded)
            tokens = loaded.tokenizer.encode(text, addSpecial: try fields.bool("add_special_tokens") ?? false)
        } else if let prompt = try fields.string("prompt") {
            tokens = loaded.tokenizer.encode(prompt, addSpecial: try fields.bool("add_special_tokens") ?? true)
        } else {
            throw APIError.badRequest("give 'prompt' (a string) or 'messages'", param: "prompt")
        }
        return Response.json(
            .object([
                ("count", .int(tokens.count)), ("max_model_len", .int(loaded.engine.config.maxModelLength)),
                ("tokens", .array(tokens.map { .int(Int($0)) })), ("token_strs", .null),
            ]))
    }

    func detokenize(_ request: Request) async throws -> Response {
        let loaded = try host.ready()
        var request = request
        let fields = try RequestFields(body: try await request.collectRequestBody().readableBytesView)
        guard let tokens = try fields.tokenIds("tokens") else {
            throw APIError.badRequest("'tokens' is required", param: "tokens")
        }
        let vocab = loaded.tokenizer.vocabularySize
        if let bad = tokens.first(where: { Int($0) >= vocab }) {
            throw APIError.badRequest(
                "token id \(bad) is out of vocabulary (valid ids are 0..<\(vocab))", param: "tokens")
        }
        return Response.json(.object([("prompt", .string(loaded.tokenizer.decode(tokens)))]))
    }
}
