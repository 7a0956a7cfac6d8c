import JSON

/// One function call read from a model's output.
public struct ParsedToolCall: Sendable, Equatable {
    public let name: String
    /// The arguments as JSON text (an object), as OpenAI's `function.arguments` carries them.
    public let arguments: String

    public init(name: String, arguments: String) {
        self.name = name
        self.arguments = arguments
    }
}

/// Reads function calls out of model text written in Tandem's default tool format (the one `ToolPrompt` teaches and
/// the forcing grammar produces): each call a `<tool_call>` block holding `{"name": ..., "arguments": {...}}`.
/// A block that is not such JSON stays in the text, so nothing the model wrote is lost.
public enum ToolCallParser {
    public static let open = "<tool_call>"
    public static let close = "</tool_call>"

    /// The call in one block's JSON, or nil when it is not a call.
    public static func call(fromJSON text: Substring) -> ParsedToolCall? {
        guard let value = JSONValue.parse(Array(text.utf8)), case .object = value,
            case .string(let name)? = value["name"]
        else { return nil }
        switch value["arguments"] ?? value["parameters"] {
        case .object?:
            return ParsedToolCall(name: name, arguments: (value["arguments"] ?? value["parameters"])!.serialized)
        case .string(let text)?:
            guard let inner = JSONValue.parse(Array(text.utf8)), case .object = inner else { return nil }
            return ParsedToolCall(name: name, arguments: inner.serialized)
        case nil, .null?: return ParsedToolCall(name: name, arguments: "{}")
        default: return nil
        }
    }

    /// The whole output's text (what is outside the calls, trimmed) and its calls.
    public static func parse(_ text: String) -> (content: String, calls: [ParsedToolCall]) {
        var streamer = ToolCallStreamer()
        var (content, calls) = streamer.feed(text)
        let rest = streamer.finish()
        content += rest.content
        calls += rest.calls
        return (content.trimmingWhitespace, calls)
    }
}

/// `ToolCallParser` for a stream: text goes out as it comes, except what could still turn out to open a call (held
/// until it does or cannot); a call goes out whole once its block closes (or the output ends).
public struct ToolCallStreamer: Sendable {
    private var pending = ""
    private var inCall = false
    /// Whether whitespace is held: at the start and after a call, it is dropped if only whitespace or a call
    /// follows.
    private var holdsWhitespace = true
    public private(set) var callCount = 0

    public init() {}

    /// The text and calls that `text`, appended to the output so far, lets go.
    public mutating func feed(_ text: String) -> (content: String, calls: [ParsedToolCall]) {
        pending += text
        var content = ""
        var calls: [ParsedToolCall] = []
        while true {
            if inCall {
                guard let end = pending.range(of: ToolCallParser.close) else { break }
                let body = pending[..<end.lowerBound]
                if let call = ToolCallParser.call(fromJSON: body) {
                    calls.append(call)
                    holdsWhitespace = true
                    callCount += 1
                } else {
                    content += ToolCallParser.open + body + ToolCallParser.close
                }
                pending = String(pending[end.upperBound...])
                inCall = false
            } else if let start = pending.range(of: ToolCallParser.open) {
                content += release(pending[..<start.lowerBound])
                pending = String(pending[start.upperBound...])
                inCall = true
            } else {
                // Hold back a tail that is the start of an opening tag.
                let keep = Self.partialTagLength(pending)
                let cut = pending.index(pending.endIndex, offsetBy: -keep)
                let ready = pending[..<cut]
                if holdsWhitespace, ready.allSatisfy(\.isWhitespace) { break }
                content += release(ready)
                pending = String(pending[cut...])
                break
            }
        }
        return (content, calls)
    }

    /// What is left when the output ends: an unclosed call that parses is a call; anything else is text.
    public mutating func finish() -> (content: String, calls: [ParsedToolCall]) {
        defer { pending = "" }
        if inCall {
            inCall = false
            if let call = ToolCallParser.call(fromJSON: Substring(pending)) {
                callCount += 1
                return ("", [call])
            }
            return (ToolCallParser.open + pending, [])
        }
        if holdsWhitespace, pending.allSatisfy(\.isWhitespace) { return ("", []) }
        return (pending, [])
    }

    private mutating func release(_ text: Substring) -> String {
        if holdsWhitespace, !text.allSatisfy(\.isWhitespace) { holdsWhitespace = false }
        if holdsWhitespace { return "" }
        return String(text)
    }

    /// The length of the longest suffix of `text` that begins the opening tag.
    static func partialTagLength(_ text: String) -> Int {
        let tag = Array(ToolCallParser.open)
        let chars = Array(text.suffix(tag.count - 1))
        for length in stride(from: chars.count, to: 0, by: -1)
        where Array(chars.suffix(length)) == Array(tag.prefix(length)) {
            return length
        }
        return 0
    }
}

extension String {
    var trimmingWhitespace: String {
        String(drop(while: \.isWhitespace).reversed().drop(while: \.isWhitespace).reversed())
    }
}

/// The ids of calls in answers: `call_` and 24 random hexadecimal digits (OpenAI's shape).
enum ToolCallID {
    static func make() -> String {
        var g = SystemRandomNumberGenerator()
        let digits = Array("0123456789abcdef")
        return "call_" + String((0..<24).map { _ in digits[Int(g.next() % 16)] })
    }
}
