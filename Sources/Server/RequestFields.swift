import Engine
import JSON
import OpenAIAPI

/// Reads typed, range-checked fields from a JSON request object; each wrong value is an `APIError` that names the
/// field. A field that is absent or `null` reads as nil.
struct RequestFields {
    let object: JSONValue

    init(body: some Collection<UInt8>) throws {
        guard !body.isEmpty else { throw APIError.badRequest("the request body is empty; expected a JSON object") }
        guard let value = JSONValue.parse(body) else {
            throw APIError.badRequest("the request body is not valid JSON")
        }
        guard case .object = value else {
            throw APIError.badRequest("the request body must be a JSON object, not \(value.typeName)")
        }
        object = value
    }

    /// The fields of an object nested in a request.
    init(object: JSONValue) throws {
        guard case .object = object else { throw APIError.badRequest("expected a JSON object") }
        self.object = object
    }

    func value(_ key: String) -> JSONValue? {
        guard let v = object[key], v != .null else { return nil }
        return v
    }

    private func typeError(_ key: String, _ expected: String, _ got: JSONValue) -> APIError {
        APIError.badRequest("'\(key)' must be \(expected), not \(got.typeName)", param: key)
    }

    func string(_ key: String) throws -> String? {
        guard let v = value(key) else { return nil }
        guard case .string(let s) = v else { throw typeError(key, "a string", v) }
        return s
    }

    func bool(_ key: String) throws -> Bool? {
        guard let v = value(key) else { return nil }
        guard case .bool(let b) = v else { throw typeError(key, "a boolean", v) }
        return b
    }

    func int(_ key: String, in range: ClosedRange<Int>) throws -> Int? {
        guard let v = value(key) else { return nil }
        let i: Int
        switch v {
        case .int(let x): i = x
        case .double(let d) where d == d.rounded() && abs(d) < 1e15: i = Int(d)
        default: throw typeError(key, "an integer", v)
        }
        guard range.contains(i) else {
            throw APIError.badRequest(
                "'\(key)' must be in \(range.lowerBound)...\(range.upperBound), got \(i)", param: key)
        }
        return i
    }

    func number(_ key: String, in range: ClosedRange<Double>, openLow: Bool = false) throws -> Double? {
        guard let v = value(key) else { return nil }
        let d: Double
        switch v {
        case .int(let x): d = Double(x)
        case .double(let x): d = x
        default: throw typeError(key, "a number", v)
        }
        guard range.contains(d), !(openLow && d == range.lowerBound) else {
            let low = openLow ? "(\(range.lowerBound)" : "[\(range.lowerBound)"
            throw APIError.badRequest("'\(key)' must be in \(low), \(range.upperBound)], got \(d)", param: key)
        }
        return d
    }

    /// A string or an array of strings.
    func strings(_ key: String, maxCount: Int = 64) throws -> [String]? {
        guard let v = value(key) else { return nil }
        switch v {
        case .string(let s): return [s]
        case .array(let items):
            guard items.count <= maxCount else {
                throw APIError.badRequest("'\(key)' has more than \(maxCount) entries", param: key)
            }
            return try items.map {
                guard case .string(let s) = $0 else { throw typeError(key, "a string or an array of strings", $0) }
                return s
            }
        default: throw typeError(key, "a string or an array of strings", v)
        }
    }

    /// An array of token ids.
    func tokenIds(_ key: String) throws -> [Int32]? {
        guard let v = value(key) else { return nil }
        guard case .array(let items) = v else { throw typeError(key, "an array of integers", v) }
        return try items.map { try Self.tokenId($0, key: key) }
    }

    static func tokenId(_ v: JSONValue, key: String) throws -> Int32 {
        guard case .int(let i) = v else {
            throw APIError.badRequest("'\(key)' must hold integer token ids, not \(v.typeName)", param: key)
        }
        guard i >= 0, i <= Int(Int32.max) else {
            throw APIError.badRequest("'\(key)' holds an invalid token id \(i)", param: key)
        }
        return Int32(i)
    }

    /// The sampling fields shared by completions and chat completions. `defaultMaxTokens` applies when neither
    /// `max_tokens` nor `max_completion_tokens` is given.
    func samplingParams(defaultMaxTokens: Int) throws -> SamplingParams {
        var p = SamplingParams()
        let maxTokens = try int("max_tokens", in: 1...Int(Int32.max))
        let maxCompletion = try int("max_completion_tokens", in: 1...Int(Int32.max))
        if value("max_tokens") == nil, value("max_completion_tokens") == nil { p.maxTokens = defaultMaxTokens }
        if let m = maxCompletion ?? maxTokens { p.maxTokens = m }
        if let t = try number("temperature", in: 0...100) { p.temperature = Float(t) }
        if let t = try number("top_p", in: 0...1, openLow: true) { p.topP = Float(t) }
        if let k = try int("top_k", in: -1...Int(Int32.max)) { p.topK = max(0, k) }
        if let m = try number("min_p", in: 0...1) { p.minP = Float(m) }
        if let s = try int("seed", in: Int.min...Int.max) { p.seed = UInt64(bitPattern: Int64(s)) }
        if let s = try strings("stop") { p.stop = s }
        if let ids = try tokenIds("stop_token_ids") { p.stopTokenIds = ids }
        if let v = try number("presence_penalty", in: -2...2) { p.presencePenalty = Float(v) }
        if let v = try number("frequency_penalty", in: -2...2) { p.frequencyPenalty = Float(v) }
        if let v = try number("repetition_penalty", in: 0...100, openLow: true) { p.repetitionPenalty = Float(v) }
        if let v = try bool("ignore_eos") { p.ignoreEOS = v }
        if let v = try int("min_tokens", in: 0...Int(Int32.max)) { p.minTokens = v }
        if let bias = value("logit_bias") { p.logitBias = try Self.logitBias(bias) }
        if let suffix = value("suffix"), suffix != .string("") {
            throw APIError.badRequest("'suffix' is not supported (no fill-in-the-middle)", param: "suffix")
        }
        if let bestOf = try int("best_of", in: 1...Int.max), bestOf != 1 {
            throw APIError.badRequest("only best_of = 1 is supported", param: "best_of")
        }
        return p
    }

    /// OpenAI's `logit_bias`: an object from token ids (as strings) to a bias in [-100, 100].
    static func logitBias(_ value: JSONValue) throws -> [Int32: Float] {
        guard case .object(let pairs) = value else {
            throw APIError.badRequest("'logit_bias' must be an object of token ids to biases", param: "logit_bias")
        }
        guard pairs.count <= 1024 else {
            throw APIError.badRequest("'logit_bias' may name at most 1024 tokens", param: "logit_bias")
        }
        var bias: [Int32: Float] = [:]
        for (key, v) in pairs {
            guard let id = Int32(key), id >= 0 else {
                throw APIError.badRequest("'logit_bias' keys must be token ids, not '\(key)'", param: "logit_bias")
            }
            let number: Double
            switch v {
            case .int(let i): number = Double(i)
            case .double(let d): number = d
            default: throw APIError.badRequest("'logit_bias' values must be numbers", param: "logit_bias")
            }
            guard (-100...100).contains(number) else {
                throw APIError.badRequest(
                    "'logit_bias' values must be in [-100, 100], not \(number)", param: "logit_bias")
            }
            bias[id] = Float(number)
        }
        return bias
    }

    /// OpenAI's `n`: how many choices per prompt (1 to 128).
    func choiceCount() throws -> Int { try int("n", in: 1...128) ?? 1 }

    /// Whether to stream, and whether the stream ends with a usage chunk.
    func streaming() throws -> (stream: Bool, includeUsage: Bool) {
        let stream = try bool("stream") ?? false
        var includeUsage = false
        if let options = value("stream_options") {
            guard case .object = options else {
                throw typeError("stream_options", "an object", options)
            }
            if let v = options["include_usage"], v != .null {
                guard case .bool(let b) = v else {
                    throw APIError.badRequest(
                        "'stream_options.include_usage' must be a boolean", param: "stream_options")
                }
                includeUsage = b
            }
        }
        return (stream, includeUsage)
    }

    /// Tandem's `tandem_resume: {"token_ids": [...], "random_draws": n}`: continue a request after tokens it already
    /// generated elsewhere (`ResumePoint`). Nil when absent or null.
    func resume() throws -> ResumePoint? {
        guard let v = value("tandem_resume") else { return nil }
        guard case .object = v else { throw typeError("tandem_resume", "an object", v) }
        let inner = try RequestFields(object: v)
        guard let tokens = try inner.tokenIds("token_ids") else {
            throw APIError.badRequest("'tandem_resume.token_ids' is required", param: "tandem_resume")
        }
        let draws = try inner.int("random_draws", in: 0...Int(Int32.max))
        return ResumePoint(tokens: tokens, randomDraws: draws)
    }

    /// vLLM's `kv_transfer_params`: nil when absent or null; its scalar members (and integer lists) otherwise.
    func kvTransferParams() throws -> [String: KVParamValue]? {
        guard let v = value("kv_transfer_params"), v != .null else { return nil }
        guard case .object(let pairs) = v else { throw typeError("kv_transfer_params", "an object", v) }
        var out: [String: KVParamValue] = [:]
        for (key, member) in pairs {
            switch member {
            case .null: out[key] = .null
            case .bool(let b): out[key] = .bool(b)
            case .int(let i): out[key] = .int(i)
            case .string(let s): out[key] = .string(s)
            case .array(let items):
                let ints = items.compactMap { item -> Int? in
                    if case .int(let i) = item { return i } else { return nil }
                }
                if ints.count == items.count { out[key] = .ints(ints) }
            default: break
            }
        }
        return out
    }
}

extension KVParamValue {
    /// The JSON form, for a response's `kv_transfer_params`.
    var json: JSONValue {
        switch self {
        case .null: return .null
        case .bool(let b): return .bool(b)
        case .int(let i): return .int(i)
        case .string(let s): return .string(s)
        case .ints(let list): return .array(list.map { .int($0) })
        }
    }
}
