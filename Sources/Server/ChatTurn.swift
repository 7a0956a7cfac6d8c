import Engine
import JSON
import OpenAIAPI

/// One message of a chat request, checked: its role, its text, and the tool fields OpenAI defines (an assistant's
/// `tool_calls`, a tool result's `tool_call_id`).
struct ChatTurn: Sendable {
    let role: String
    let content: String
    /// Whether `content` was null or absent (an assistant turn that only calls tools).
    let contentIsNull: Bool
    /// `{id, type, function: {name, arguments}}` with `arguments` parsed into an object.
    let toolCalls: [(id: String, name: String, arguments: JSONValue)]
    let toolCallId: String?
    let name: String?

    init(_ item: JSONValue, index: Int) throws {
        guard case .object = item, case .string(let role)? = item["role"] else {
            throw APIError.badRequest("messages[\(index)] needs a string 'role'", param: "messages")
        }
        self.role = role
        switch item["content"] {
        case .string(let s)?:
            content = s
            contentIsNull = false
        case .null?, nil:
            content = ""
            contentIsNull = true
        case .array(let parts)?:
            let texts = try parts.map { part -> String in
                guard case .string(let t)? = part["text"] else {
                    throw APIError.badRequest("only text content parts are supported", param: "messages")
                }
                return t
            }
            content = texts.joined(separator: "\n")
            contentIsNull = false
        default:
            throw APIError.badRequest(
                "a message's 'content' must be a string or an array of text parts", param: "messages")
        }
        if case .string(let id)? = item["tool_call_id"] { toolCallId = id } else { toolCallId = nil }
        if case .string(let n)? = item["name"] { name = n } else { name = nil }
        var calls: [(id: String, name: String, arguments: JSONValue)] = []
        switch item["tool_calls"] {
        case .array(let items)?:
            for (j, call) in items.enumerated() {
                guard case .string(let fname)? = call["function"]?["name"] else {
                    throw APIError.badRequest(
                        "messages[\(index)].tool_calls[\(j)] needs 'function': {\"name\": ..., \"arguments\": ...}",
                        param: "messages")
                }
                var arguments: JSONValue = .object([])
                switch call["function"]?["arguments"] {
                case .string(let text)?:
                    guard let parsed = JSONValue.parse(Array(text.utf8)) else {
                        throw APIError.badRequest(
                            "messages[\(index)].tool_calls[\(j)].function.arguments is not JSON", param: "messages")
                    }
                    arguments = parsed
                case .object?: arguments = call["function"]!["arguments"]!
                default: break
                }
                let id: String
                if case .string(let s)? = call["id"] { id = s } else { id = "call_\(index)_\(j)" }
                calls.append((id, fname, arguments))
            }
        case .null?, nil: break
        default:
            throw APIError.badRequest("messages[\(index)].tool_calls must be an array", param: "messages")
        }
        toolCalls = calls
    }

    /// The message as a chat template sees it (Hugging Face's fields: `tool_calls` with parsed arguments).
    var templateValue: JinjaValue {
        var pairs: [(String, JinjaValue)] = [
            ("role", .string(role)), ("content", contentIsNull && !toolCalls.isEmpty ? .none : .string(content)),
        ]
        if !toolCalls.isEmpty {
            pairs.append(
                (
                    "tool_calls",
                    .array(
                        toolCalls.map { call in
                            .object([
                                ("id", .string(call.id)), ("type", .string("function")),
                                (
                                    "function",
                                    .object([("name", .string(call.name)), ("arguments", JinjaValue(call.arguments))])
                                ),
                            ])
                        })
                ))
        }
        if let toolCallId { pairs.append(("tool_call_id", .string(toolCallId))) }
        if let name { pairs.append(("name", .string(name))) }
        return .object(pairs)
    }
}

/// Tandem's default tool format, for a chat template that does not render tools (SmolLM2's, for one): the tools
/// and how to call them go into the system message; each call is a `<tool_call>` block of
/// `{"name": ..., "arguments": {...}}` (what `ToolCallParser` reads back); a tool's result goes back to the model as
/// a user turn of `<tool_response>` blocks.
enum DefaultToolFormat {
    /// The system text that shows the model its tools.
    static func instructions(_ tools: [JSONValue]) -> String {
        var text = "You can call functions to answer. These are the functions, one JSON object per line:\n<tools>\n"
        for tool in tools { text += tool.serialized + "\n" }
        text += "</tools>\n"
        text += "To call functions, answer with one block per call, each a JSON object of the function's name and "
        text += "its arguments:\n" + ToolCallParser.open + "\n"
        text += #"{"name": "the_function", "arguments": {"the_argument": "its value"}}"#
        text += "\n" + ToolCallParser.close
        return text
    }

    /// The turns as plain role-and-text messages, with the tools (when shown) in the system message.
    static func messages(_ turns: [ChatTurn], tools: [JSONValue]?) -> [ChatMessage] {
        var out: [ChatMessage] = []
        for turn in turns {
            if turn.role == "tool" {
                let block = "<tool_response>\n" + turn.content + "\n</tool_response>"
                if let last = out.last, last.role == "user", last.content.hasSuffix("</tool_response>") {
                    out[out.count - 1].content += "\n" + block
                } else {
                    out.append(ChatMessage(role: "user", content: block))
                }
                continue
            }
            var content = turn.content
            for call in turn.toolCalls {
                let json = JSONValue.object([("name", .string(call.name)), ("arguments", call.arguments)]).serialized
                let block = ToolCallParser.open + "\n" + json + "\n" + ToolCallParser.close
                content += content.isEmpty ? block : "\n" + block
            }
            out.append(ChatMessage(role: turn.role, content: content))
        }
        if let tools {
            let text = instructions(tools)
            if let first = out.first, first.role == "system" {
                out[0].content = first.content.isEmpty ? text : first.content + "\n\n" + text
            } else {
                out.insert(ChatMessage(role: "system", content: text), at: 0)
            }
        }
        return out
    }
}
