import Grammar
import JSON
import OpenAIAPI

/// A chat request's function tools (`tools`, `tool_choice`, `parallel_tool_calls`), checked as OpenAI checks them.
struct ToolRequest: Sendable {
    /// What `tool_choice` asks of the model.
    enum Choice: Sendable, Equatable {
        /// Answer in text; the tools are not shown to the model.
        case none
        /// The model decides; a call in its output is parsed.
        case auto
        /// At least one call, forced by a grammar.
        case required
        /// One call of this function, forced by a grammar.
        case named(String)
    }

    /// One function the model may call.
    struct Function: Sendable {
        let name: String
        /// The JSON schema of its arguments (an object schema).
        let parameters: JSONValue
    }

    /// The tools as the client sent them (what the prompt shows).
    let tools: [JSONValue]
    let functions: [Function]
    let choice: Choice
    let parallel: Bool

    /// Whether the model's output is read for calls.
    var parsesCalls: Bool { choice != .none }

    /// The grammar that forces a call (`required` or a named function); nil when the model chooses.
    var forcedCall: StructuredOutputSpec? {
        let chosen: [Function]
        switch choice {
        case .none, .auto: return nil
        case .required: chosen = functions
        case .named(let name): chosen = functions.filter { $0.name == name }
        }
        let many = parallel && choice == .required
        let schema = JSONValue.object([
            (
                "anyOf",
                .array(
                    chosen.map { f in
                        .object([
                            ("type", "object"),
                            (
                                "properties",
                                .object([("name", .object([("const", .string(f.name))])), ("arguments", f.parameters)])
                            ),
                            ("required", .array(["name", "arguments"])),
                            ("additionalProperties", .bool(false)),
                        ])
                    })
            )
        ])
        let key = "tool_call:\(many):" + schema.serialized
        return StructuredOutputSpec(kind: "tool_call", key: key, param: "tools") {
            var grammar = try JSONSchemaGrammar.grammar(for: schema)
            grammar.rules["tool-call-json"] = grammar.rules["root"]
            let call = GrammarExpression.sequence([
                .text(ToolCallParser.open + "\n"), .rule("tool-call-json"), .text("\n" + ToolCallParser.close),
            ])
            // Parallel calls: up to 8 more, each on its own line.
            let more = GrammarExpression.repetition(.sequence([.text("\n"), call]), min: 0, max: 8)
            grammar.rules["root"] = many ? .sequence([call, more]) : call
            return grammar
        }
    }
}

extension RequestFields {
    /// The request's tools; nil when it has none (and then no `tool_choice` other than `none`).
    func toolRequest() throws -> ToolRequest? {
        let parallel = try bool("parallel_tool_calls") ?? true
        let choiceValue = value("tool_choice")
        guard let toolsValue = value("tools") else {
            if let choiceValue, choiceValue != .string("none") {
                throw APIError.badRequest(
                    "'tool_choice' is only allowed when 'tools' are specified", param: "tool_choice")
            }
            return nil
        }
        guard case .array(let items) = toolsValue else {
            throw APIError.badRequest("'tools' must be an array of tools", param: "tools")
        }
        guard items.count <= 128 else { throw APIError.badRequest("'tools' has more than 128 tools", param: "tools") }
        if items.isEmpty { return nil }
        var functions: [ToolRequest.Function] = []
        for (i, item) in items.enumerated() {
            guard case .object = item, item["type"] == .string("function"), case .object? = item["function"] else {
                throw APIError.badRequest(
                    "tools[\(i)] must be {\"type\": \"function\", \"function\": {...}}", param: "tools")
            }
            let function = try RequestFields(object: item["function"]!)
            guard let name = try function.string("name"), Self.isFunctionName(name) else {
                throw APIError.badRequest(
                    "tools[\(i)].function.name must be 1 to 64 letters, digits, '_' or '-'", param: "tools")
            }
            guard !functions.contains(where: { $0.name == name }) else {
                throw APIError.badRequest("tools name the function '\(name)' twice", param: "tools")
            }
            var parameters = function.value("parameters") ?? .object([("type", "object"), ("properties", .object([]))])
            guard case .object(let pairs) = parameters else {
                throw APIError.badRequest(
                    "tools[\(i)].function.parameters must be a JSON schema object", param: "tools")
            }
            if pairs.isEmpty { parameters = .object([("type", "object")]) }
            functions.append(ToolRequest.Function(name: name, parameters: parameters))
        }
        let choice: ToolRequest.Choice
        switch choiceValue {
        case nil, .string("auto")?: choice = .auto
        case .string("none")?: choice = .none
        case .string("required")?: choice = .required
        case .object?:
            guard choiceValue?["type"] == .string("function"),
                case .string(let name)? = choiceValue?["function"]?["name"]
            else {
                throw APIError.badRequest(
                    "'tool_choice' must be none, auto, required or {\"type\": \"function\", \"function\": {\"name\": ...}}",
                    param: "tool_choice")
            }
            guard functions.contains(where: { $0.name == name }) else {
                throw APIError.badRequest(
                    "'tool_choice' names the function '\(name)', which is not in 'tools'", param: "tool_choice")
            }
            choice = .named(name)
        default:
            throw APIError.badRequest(
                "'tool_choice' must be none, auto, required or {\"type\": \"function\", \"function\": {\"name\": ...}}",
                param: "tool_choice")
        }
        return ToolRequest(tools: items, functions: functions, choice: choice, parallel: parallel)
    }

    static func isFunctionName(_ name: String) -> Bool {
        (1...64).contains(name.utf8.count)
            && name.utf8.allSatisfy { c in
                (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) || c == 0x5F
                    || c == 0x2D
            }
    }
}
