import Grammar
import JSON
import OpenAIAPI

/// A request's structured-output constraint, read from whichever field spelled it: OpenAI's `response_format`,
/// vLLM's `structured_outputs` object and its older `guided_json` / `guided_regex` / `guided_choice` /
/// `guided_grammar`, or llama.cpp's `grammar` and `json_schema`. `key` is canonical text: equal constraints share
/// one compiled grammar.
struct StructuredOutputSpec: Sendable {
    let kind: String
    let key: String
    let param: String
    let build: @Sendable () throws -> Grammar
}

extension RequestFields {
    func structuredOutput() throws -> StructuredOutputSpec? {
        var found: [StructuredOutputSpec] = []
        if let format = value("response_format") {
            let f = try RequestFields(object: format)
            switch try f.string("type") {
            case "text"?, nil: break
            case "json_object"?: found.append(Self.jsonObject(param: "response_format"))
            case "json_schema"?:
                guard let js = f.value("json_schema"), let schema = js["schema"] ?? js["json_schema"] else {
                    throw APIError.badRequest(
                        "response_format json_schema needs 'json_schema': {\"name\": ..., \"schema\": {...}}",
                        param: "response_format")
                }
                found.append(try Self.jsonSchema(schema, param: "response_format"))
            case let other?:
                throw APIError.badRequest(
                    "response_format type '\(other)' is not supported (text, json_object, json_schema)",
                    param: "response_format")
            }
        }
        if let so = value("structured_outputs") {
            let s = try RequestFields(object: so)
            if let j = s.value("json") { found.append(try Self.jsonSchema(j, param: "structured_outputs")) }
            if let r = try s.string("regex") { found.append(Self.regex(r, param: "structured_outputs")) }
            if let c = try s.strings("choice", maxCount: 4096) {
                found.append(try Self.choice(c, param: "structured_outputs"))
            }
            if let g = try s.string("grammar") { found.append(Self.gbnf(g, param: "structured_outputs")) }
            if try s.bool("json_object") == true { found.append(Self.jsonObject(param: "structured_outputs")) }
        }
        if let j = value("guided_json") { found.append(try Self.jsonSchema(j, param: "guided_json")) }
        if let j = value("json_schema") { found.append(try Self.jsonSchema(j, param: "json_schema")) }
        if let r = try string("guided_regex") { found.append(Self.regex(r, param: "guided_regex")) }
        if let c = try strings("guided_choice", maxCount: 4096) {
            found.append(try Self.choice(c, param: "guided_choice"))
        }
        for key in ["guided_grammar", "grammar"] {
            if let g = try string(key) { found.append(Self.gbnf(g, param: key)) }
        }
        guard found.count <= 1 else {
            throw APIError.badRequest(
                "only one structured-output constraint may be given (got \(found.map(\.param).joined(separator: ", ")))",
                param: found[1].param)
        }
        return found.first
    }

    static func jsonObject(param: String) -> StructuredOutputSpec {
        StructuredOutputSpec(kind: "json_object", key: "json_object", param: param) { JSONSchemaGrammar.anyObject }
    }

    /// A schema given as an object, or as JSON text (vLLM accepts both).
    static func jsonSchema(_ value: JSONValue, param: String) throws -> StructuredOutputSpec {
        var schema = value
        if case .string(let text) = value {
            guard let parsed = JSONValue.parse(Array(text.utf8)) else {
                throw APIError.badRequest("the JSON schema in '\(param)' is not valid JSON", param: param)
            }
            schema = parsed
        }
        let fixed = schema
        return StructuredOutputSpec(kind: "json_schema", key: "json_schema:" + fixed.serialized, param: param) {
            try JSONSchemaGrammar.grammar(for: fixed)
        }
    }

    static func regex(_ pattern: String, param: String) -> StructuredOutputSpec {
        StructuredOutputSpec(kind: "regex", key: "regex:" + pattern, param: param) {
            Grammar(rules: ["root": try RegexParser.parse(pattern)])
        }
    }

    static func choice(_ options: [String], param: String) throws -> StructuredOutputSpec {
        guard !options.isEmpty else { throw APIError.badRequest("'\(param)' choice list is empty", param: param) }
        let key = "choice:" + JSONValue.array(options.map(JSONValue.string)).serialized
        return StructuredOutputSpec(kind: "choice", key: key, param: param) {
            Grammar(rules: ["root": .choice(options.map(GrammarExpression.text))])
        }
    }

    static func gbnf(_ text: String, param: String) -> StructuredOutputSpec {
        StructuredOutputSpec(kind: "grammar", key: "grammar:" + text, param: param) { try GBNFParser.parse(text) }
    }
}
