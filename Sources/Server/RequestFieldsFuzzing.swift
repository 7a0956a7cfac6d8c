import Grammar
import JSON
import OpenAIAPI

/// A request body run through every field reader that needs no model (JSON parsing, sampling fields, streaming,
/// resume, KV transfer parameters, prompt token ids, structured-output grammars, tools and the tool-call reader), for the libFuzzer harness (`tandem-fuzz request-fields`) and
/// the test that replays its corpus. Whatever the bytes, it must not crash, every wrong field must come back as an
/// `APIError`, and JSON the server writes must read back as what it wrote.
public enum RequestFieldsFuzzing {
    public static func parse(_ bytes: [UInt8]) {
        guard let fields = try? RequestFields(body: bytes) else { return }
        _ = try? fields.samplingParams(defaultMaxTokens: 16)
        _ = try? fields.streaming()
        _ = try? fields.choiceCount()
        _ = try? fields.resume()
        _ = try? fields.kvTransferParams()
        _ = try? fields.tokenIds("prompt")
        _ = try? fields.number("tandem_kv_wait_s", in: 0...3600)
        // Structured outputs: a schema, pattern or grammar either compiles or is a GrammarError; a matcher starts.
        if let spec = try? fields.structuredOutput(), let grammar = try? spec.build(),
            let compiled = try? CompiledGrammar(grammar)
        {
            var matcher = GrammarMatcher(compiled)
            _ = matcher.accept(Array("{\"a\": [1, \"x\"]}".utf8))
        }
        // Tools: a forced call's grammar compiles; a model's text reads back into calls, whole and streamed alike.
        if let tools = try? fields.toolRequest(), let spec = tools.forcedCall, let grammar = try? spec.build() {
            _ = try? CompiledGrammar(grammar)
        }
        if case .array(let messages)? = fields.value("messages") {
            for (i, m) in messages.enumerated() { _ = try? ChatTurn(m, index: i) }
        }
        let text = String(decoding: bytes, as: UTF8.self)
        var streamer = ToolCallStreamer()
        var calls: [ParsedToolCall] = []
        for piece in text.split(separator: "\n", omittingEmptySubsequences: false) {
            calls += streamer.feed(piece + "\n").calls
        }
        calls += streamer.finish().calls
        precondition(calls == ToolCallParser.parse(text + "\n").calls, "streamed calls differ from the whole parse")
        if case .array(let items)? = fields.value("prompt") {
            for item in items { _ = try? RequestFields.tokenId(item, key: "prompt") }
        }
        // What the server writes reads back as the same JSON (a number may come back as an integer or a
        // double of the same value: JSON has one number type).
        let once = fields.object.serialized
        guard let reread = JSONValue.parse(Array(once.utf8)) else {
            preconditionFailure("JSON the server wrote does not parse: \(once)")
        }
        precondition(same(reread, fields.object), "JSON changed on a round trip: \(once)")
    }

    static func same(_ a: JSONValue, _ b: JSONValue) -> Bool {
        switch (a, b) {
        case (.int(let x), .double(let y)), (.double(let y), .int(let x)): return Double(x) == y
        case (.array(let x), .array(let y)): return x.count == y.count && zip(x, y).allSatisfy { same($0, $1) }
        case (.object(let x), .object(let y)):
            return x.count == y.count && zip(x, y).allSatisfy { $0.0 == $1.0 && same($0.1, $1.1) }
        default: return a == b
        }
    }
}
