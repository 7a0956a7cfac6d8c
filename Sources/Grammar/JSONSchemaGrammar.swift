import JSON

/// Turns a JSON Schema into a grammar whose texts are exactly the JSON documents the schema accepts (within the
/// subset real clients send); a keyword outside it, or a schema nothing satisfies, is a `GrammarError` naming it.
///
/// Choices made where JSON Schema leaves room: object members come in the order of `properties`; an object with
/// `properties` takes no other members unless `additionalProperties` says so; `pattern` must match the whole
/// string; bounds on numbers that are not whole are narrowed to the whole numbers inside them.
public struct JSONSchemaGrammar {
    private var rules = JSONGrammarRules.all
    private let rootSchema: JSONValue
    private var defined: Set<String> = []
    private var counter = 0

    /// Keywords that describe without constraining.
    static let annotations: Set<String> = [
        "title", "description", "$schema", "$id", "$comment", "default", "examples", "readOnly", "writeOnly",
        "deprecated", "$defs", "definitions", "strict", "nullable",
    ]
    static let constraining: Set<String> = [
        "type", "properties", "required", "additionalProperties", "items", "minItems", "maxItems", "enum", "const",
        "pattern", "format", "minLength", "maxLength", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
        "anyOf", "oneOf", "allOf", "$ref",
    ]
    static let formats: Set<String> = ["date", "time", "date-time", "uuid", "email"]

    public static func grammar(for schema: JSONValue) throws -> Grammar {
        var b = JSONSchemaGrammar(rootSchema: schema)
        let root = try b.expression(schema, at: "#")
        b.rules["root"] = root
        return Grammar(rules: b.rules)
    }

    /// Any JSON object.
    public static var anyObject: Grammar { JSONGrammarRules.anyObject }

    private init(rootSchema: JSONValue) { self.rootSchema = rootSchema }

    private mutating func fresh(_ stem: String) -> String {
        counter += 1
        return "\(stem)-\(counter)"
    }

    private func fail(_ path: String, _ message: String) -> GrammarError {
        GrammarError("JSON schema at \(path): \(message)")
    }

    mutating func expression(_ schema: JSONValue, at path: String) throws -> GrammarExpression {
        switch schema {
        case .bool(true): return .rule(JSONGrammarRules.value)
        case .bool(false): throw fail(path, "the schema `false` accepts nothing")
        case .object(let pairs):
            for (key, _) in pairs where !Self.annotations.contains(key) && !Self.constraining.contains(key) {
                throw fail(path, "unsupported JSON Schema keyword '\(key)'")
            }
        default: throw fail(path, "a schema must be an object or a boolean, not \(schema.typeName)")
        }
        if case .string(let ref)? = schema["$ref"] { return try reference(ref, at: path) }
        if let values = schema["enum"] {
            guard case .array(let items) = values, !items.isEmpty else {
                throw fail(path, "'enum' must be a non-empty array")
            }
            return .choice(items.map { .text($0.serialized) })
        }
        if let value = schema["const"] { return .text(value.serialized) }
        for key in ["anyOf", "oneOf"] {
            if let options = schema[key] {
                guard case .array(let items) = options, !items.isEmpty else {
                    throw fail(path, "'\(key)' must be a non-empty array of schemas")
                }
                var alts: [GrammarExpression] = []
                for (k, item) in items.enumerated() { alts.append(try expression(item, at: "\(path)/\(key)/\(k)")) }
                return .choice(alts)
            }
        }
        if let all = schema["allOf"] {
            guard case .array(let items) = all, items.count == 1 else {
                throw fail(path, "'allOf' is supported with a single schema only")
            }
            return try expression(items[0], at: "\(path)/allOf/0")
        }
        var types: [String]
        switch schema["type"] {
        case .string(let t)?: types = [t]
        case .array(let ts)?:
            types = try ts.map {
                guard case .string(let t) = $0 else { throw fail(path, "'type' entries must be strings") }
                return t
            }
            guard !types.isEmpty else { throw fail(path, "'type' is an empty list") }
        case nil:
            if schema["properties"] != nil || schema["additionalProperties"] != nil {
                types = ["object"]
            } else if schema["items"] != nil {
                types = ["array"]
            } else if schema["pattern"] != nil || schema["format"] != nil || schema["minLength"] != nil {
                types = ["string"]
            } else {
                return .rule(JSONGrammarRules.value)
            }
        default: throw fail(path, "'type' must be a string or a list of strings")
        }
        var alts: [GrammarExpression] = []
        for t in types { alts.append(try typed(t, schema, at: path)) }
        return alts.count == 1 ? alts[0] : .choice(alts)
    }

    private mutating func reference(_ ref: String, at path: String) throws -> GrammarExpression {
        let name = "ref" + ref.map { $0.isLetter || $0.isNumber ? String($0) : "-" }.joined()
        if defined.contains(name) { return .rule(name) }
        guard ref.hasPrefix("#") else { throw fail(path, "only local references ('#/$defs/...') are supported") }
        var target = rootSchema
        for part in ref.dropFirst().split(separator: "/") {
            let key = part.replacingOccurrences(of: "~1", with: "/").replacingOccurrences(of: "~0", with: "~")
            guard let next = target[key] else { throw fail(path, "'$ref' \(ref) points at nothing") }
            target = next
        }
        defined.insert(name)
        rules[name] = .empty  // a placeholder while the target is read: it may refer back to itself
        rules[name] = try expression(target, at: ref)
        return .rule(name)
    }

    private mutating func typed(_ type: String, _ schema: JSONValue, at path: String) throws -> GrammarExpression {
        switch type {
        case "string": return try string(schema, at: path)
        case "integer":
            return try integer(
                minimum: bound(schema, "minimum", "exclusiveMinimum", up: true, at: path),
                maximum: bound(schema, "maximum", "exclusiveMaximum", up: false, at: path), at: path)
        case "number": return try number(schema, at: path)
        case "boolean": return .rule(JSONGrammarRules.boolean)
        case "null": return .rule(JSONGrammarRules.null)
        case "object": return try object(schema, at: path)
        case "array": return try array(schema, at: path)
        default: throw fail(path, "unknown type '\(type)'")
        }
    }

    private func count(_ schema: JSONValue, _ key: String, at path: String) throws -> Int? {
        guard let v = schema[key] else { return nil }
        switch v {
        case .int(let i) where i >= 0: return i
        case .double(let d) where d >= 0 && d == d.rounded() && d < 1e9: return Int(d)
        default: throw fail(path, "'\(key)' must be a non-negative integer")
        }
    }

    private mutating func string(_ schema: JSONValue, at path: String) throws -> GrammarExpression {
        let quote = GrammarExpression.text("\"")
        let minLength = try count(schema, "minLength", at: path) ?? 0
        let maxLength = try count(schema, "maxLength", at: path)
        if let maxLength, maxLength < minLength { throw fail(path, "minLength is above maxLength") }
        if case .string(let pattern)? = schema["pattern"] {
            guard schema["minLength"] == nil, schema["maxLength"] == nil, schema["format"] == nil else {
                throw fail(path, "'pattern' together with a length or format is not supported")
            }
            let inside = CodepointSet([0...0x1F, 0x22...0x22, 0x5C...0x5C])
            do {
                return .sequence([quote, try RegexParser.parse(pattern, excluding: inside), quote])
            } catch let e as GrammarError {
                throw fail(path, "pattern: \(e.description)")
            }
        } else if schema["pattern"] != nil {
            throw fail(path, "'pattern' must be a string")
        }
        if let format = schema["format"] {
            guard case .string(let f) = format, Self.formats.contains(f) else {
                throw fail(path, "unsupported string format \(format.serialized) (supported: \(Self.formats.sorted()))")
            }
            return .sequence([quote, Self.format(f), quote])
        }
        if minLength == 0, maxLength == nil { return .rule(JSONGrammarRules.string) }
        let chars = GrammarExpression.repetition(.rule(JSONGrammarRules.stringChar), min: minLength, max: maxLength)
        return .sequence([quote, chars, quote])
    }

    static func format(_ name: String) -> GrammarExpression {
        let d = JSONGrammarRules.digit
        let r = JSONGrammarRules.range
        func n(_ e: GrammarExpression, _ k: Int) -> GrammarExpression { .repetition(e, min: k, max: k) }
        let date = GrammarExpression.sequence([
            n(d, 4), .text("-"),
            .choice([.sequence([.text("0"), r("1", "9")]), .sequence([.text("1"), r("0", "2")])]),
            .text("-"),
            .choice([
                .sequence([.text("0"), r("1", "9")]), .sequence([r("1", "2"), d]),
                .sequence([.text("3"), r("0", "1")]),
            ]),
        ])
        let hour = GrammarExpression.choice([.sequence([r("0", "1"), d]), .sequence([.text("2"), r("0", "3")])])
        let minute = GrammarExpression.sequence([r("0", "5"), d])
        let time = GrammarExpression.sequence([
            hour, .text(":"), minute, .text(":"), minute,
            .optional(.sequence([.text("."), .repetition(d, min: 1, max: 6)])),
            .choice([.text("Z"), .sequence([.characters(CodepointSet("+-")), hour, .text(":"), minute])]),
        ])
        switch name {
        case "date": return date
        case "time": return time
        case "date-time": return .sequence([date, .text("T"), time])
        case "uuid":
            let h = JSONGrammarRules.hexDigit
            return .sequence([
                n(h, 8), .text("-"), n(h, 4), .text("-"), n(h, 4), .text("-"), n(h, 4), .text("-"), n(h, 12),
            ])
        default:  // email
            let local = GrammarExpression.characters(
                CodepointSet([48...57, 65...90, 97...122]).union(CodepointSet("._%+-")))
            let host = GrammarExpression.characters(
                CodepointSet([48...57, 65...90, 97...122]).union(CodepointSet("-")))
            return .sequence([
                .repetition(local, min: 1, max: 64), .text("@"), .repetition(host, min: 1, max: 63),
                .repetition(.sequence([.text("."), .repetition(host, min: 1, max: 63)]), min: 1, max: 4),
            ])
        }
    }

    /// The inclusive bound from `key` or its exclusive form, rounded inward to a whole number.
    private func bound(_ schema: JSONValue, _ key: String, _ exclusive: String, up: Bool, at path: String) throws
        -> Int64?
    {
        func number(_ k: String) throws -> Double? {
            guard let v = schema[k] else { return nil }
            switch v {
            case .int(let i): return Double(i)
            case .double(let d) where d.isFinite: return d
            default: throw fail(path, "'\(k)' must be a number")
            }
        }
        var result: Int64?
        let limit = Double(Self.limit)
        if let x = try number(key) {
            let r = up ? x.rounded(.up) : x.rounded(.down)
            result = Int64(max(-limit, min(limit, r)))
        }
        if let x = try number(exclusive) {
            var r = up ? x.rounded(.down) + 1 : x.rounded(.up) - 1
            r = max(-limit, min(limit, r))
            result = result.map { up ? max($0, Int64(r)) : min($0, Int64(r)) } ?? Int64(r)
        }
        return result
    }

    /// Whole numbers beyond 16 digits are not generated.
    static let limit: Int64 = 9_999_999_999_999_999

    private func integer(minimum: Int64?, maximum: Int64?, at path: String) throws -> GrammarExpression {
        if minimum == nil, maximum == nil { return .rule(JSONGrammarRules.integer) }
        let lo = minimum ?? -Self.limit
        let hi = maximum ?? Self.limit
        guard lo <= hi else { throw fail(path, "no integer lies between minimum \(lo) and maximum \(hi)") }
        return DecimalRange.expression(lo, hi)
    }

    private func number(_ schema: JSONValue, at path: String) throws -> GrammarExpression {
        let lo = try bound(schema, "minimum", "exclusiveMinimum", up: true, at: path)
        let hi = try bound(schema, "maximum", "exclusiveMaximum", up: false, at: path)
        if lo == nil, hi == nil { return .rule(JSONGrammarRules.number) }
        let low = lo ?? -Self.limit
        let high = hi ?? Self.limit
        guard low <= high else { throw fail(path, "no number lies between the minimum and maximum") }
        let fraction = GrammarExpression.optional(
            .sequence([.text("."), .repetition(JSONGrammarRules.digit, min: 1, max: 16)]))
        // x in [low, high]: a whole part below the top bound with any fraction, or the bound itself exactly; the
        // same on the negative side, mirrored.
        var alts: [GrammarExpression] = []
        if high >= 0 {
            let from = max(low, 0)
            if from <= high - 1 { alts.append(.sequence([DecimalRange.expression(from, high - 1), fraction])) }
            alts.append(.text(String(high)))
        }
        if low < 0 {
            let from = max(0, -high)
            let to = -low - 1
            if from <= to { alts.append(.sequence([.text("-"), DecimalRange.expression(from, to), fraction])) }
            alts.append(.text(String(low)))
        }
        return .choice(alts)
    }

    private mutating func object(_ schema: JSONValue, at path: String) throws -> GrammarExpression {
        var properties: [(String, JSONValue)] = []
        if let p = schema["properties"] {
            guard case .object(let pairs) = p else { throw fail(path, "'properties' must be an object") }
            properties = pairs
        }
        var required = Set<String>()
        if let r = schema["required"] {
            guard case .array(let names) = r else { throw fail(path, "'required' must be an array of names") }
            for n in names {
                guard case .string(let name) = n else { throw fail(path, "'required' must be an array of names") }
                required.insert(name)
                if !properties.contains(where: { $0.0 == name }) { properties.append((name, .bool(true))) }
            }
        }
        var additional: GrammarExpression?
        switch schema["additionalProperties"] {
        case nil: additional = properties.isEmpty ? .rule(JSONGrammarRules.value) : nil
        case .bool(false)?: additional = nil
        case .bool(true)?: additional = .rule(JSONGrammarRules.value)
        case let s?: additional = try expression(s, at: "\(path)/additionalProperties")
        }
        if properties.isEmpty, schema["additionalProperties"] == nil { return .rule(JSONGrammarRules.object) }
        let ws = GrammarExpression.rule(JSONGrammarRules.ws)
        var members: [GrammarExpression] = []
        for (name, sub) in properties {
            let value = try expression(sub, at: "\(path)/properties/\(name)")
            members.append(.sequence([.text(JSONValue.string(name).serialized), ws, .text(":"), ws, value, ws]))
        }
        // rest(i, first): the members from i on, `first` when none came before (no comma yet).
        let stem = fresh("object")
        func name(_ i: Int, _ first: Bool) -> String { "\(stem)-\(i)\(first ? "-first" : "")" }
        for i in stride(from: properties.count, through: 0, by: -1) {
            for first in [true, false] {
                let lead: [GrammarExpression] = first ? [] : [JSONGrammarRules.comma]
                if i == properties.count {
                    guard let additional else {
                        rules[name(i, first)] = .empty
                        continue
                    }
                    let any = GrammarExpression.sequence([
                        .rule(JSONGrammarRules.string), ws, .text(":"), ws, additional, ws,
                    ])
                    let more = GrammarExpression.repetition(.sequence([JSONGrammarRules.comma, any]), min: 0, max: nil)
                    rules[name(i, first)] = first ? .optional(.sequence([any, more])) : more
                    continue
                }
                let take = GrammarExpression.sequence(lead + [members[i], .rule(name(i + 1, false))])
                rules[name(i, first)] =
                    required.contains(properties[i].0) ? take : .choice([take, .rule(name(i + 1, first))])
            }
        }
        return .sequence([.text("{"), ws, .rule(name(0, true)), .text("}")])
    }

    private mutating func array(_ schema: JSONValue, at path: String) throws -> GrammarExpression {
        let item = try schema["items"].map { try expression($0, at: "\(path)/items") } ?? .rule(JSONGrammarRules.value)
        let minItems = try count(schema, "minItems", at: path) ?? 0
        let maxItems = try count(schema, "maxItems", at: path)
        if let maxItems, maxItems < minItems { throw fail(path, "minItems is above maxItems") }
        let ws = GrammarExpression.rule(JSONGrammarRules.ws)
        if maxItems == 0 { return .sequence([.text("["), ws, .text("]")]) }
        let element = GrammarExpression.sequence([item, ws])
        let rest = GrammarExpression.repetition(
            .sequence([JSONGrammarRules.comma, element]), min: max(0, minItems - 1), max: maxItems.map { $0 - 1 })
        let items = GrammarExpression.sequence([element, rest])
        return .sequence([.text("["), ws, minItems == 0 ? .optional(items) : items, .text("]")])
    }
}
