import JSON
import OpenAIAPI

/// One completion or chat-completion stream chunk on its way through the proxy: read for its token ids and finish
/// reason, and edited so that a stream stitched from a prefill and one or more decode instances reads as one stream
/// to the client (one `id` and `created`, the chat role once, token ids only when the client asked for them).
struct RelayedChunk {
    private(set) var value: JSONValue

    init?(_ payload: String) {
        guard let v = JSONValue.parse(Array(payload.utf8)), case .object = v else { return nil }
        value = v
    }

    init(_ value: JSONValue) { self.value = value }

    /// An error event (an instance failed mid-stream).
    var isError: Bool { value["error"] != nil }

    private var choice: JSONValue? {
        guard case .array(let choices)? = value["choices"], let first = choices.first else { return nil }
        return first
    }

    /// A chunk with a choice (the usage chunk has none).
    var hasChoice: Bool { choice != nil }

    /// The tokens this chunk carries (`return_token_ids`).
    var tokenIds: [Int32] {
        guard case .array(let ids)? = choice?["token_ids"] else { return [] }
        return ids.compactMap { if case .int(let i) = $0 { Int32(exactly: i) } else { nil } }
    }

    var finishReason: String? {
        if case .string(let s)? = choice?["finish_reason"] { return s }
        return nil
    }

    var text: String {
        if case .string(let s)? = choice?["text"] { return s }
        if case .string(let s)? = choice?["delta"]?["content"] { return s }
        if case .string(let s)? = choice?["message"]?["content"] { return s }
        return ""
    }

    /// Rewrites the chunk for the client: `id` and `created` of the stream's first chunk, no token ids unless asked
    /// for, no chat role after the first chunk, and never a producer's `kv_transfer_params`.
    mutating func edit(id: JSONValue?, created: JSONValue?, keepTokenIds: Bool, keepRole: Bool) {
        if let id { value = value.setting("id", id) }
        if let created { value = value.setting("created", created) }
        value = value.setting("kv_transfer_params", nil)
        guard case .array(var choices)? = value["choices"], !choices.isEmpty else { return }
        var c = choices[0]
        if !keepTokenIds {
            c = c.setting("token_ids", nil).setting("prompt_token_ids", nil)
        }
        if !keepRole, let delta = c["delta"] { c = c.setting("delta", delta.setting("role", nil)) }
        choices[0] = c
        value = value.setting("choices", .array(choices))
    }

    /// The chunk as an event.
    var event: String { "data: \(value.serialized)\n\n" }
}

extension JSONValue {
    /// This object with `key` set to `new` (appended when absent), or removed when `new` is nil.
    func setting(_ key: String, _ new: JSONValue?) -> JSONValue {
        guard case .object(var pairs) = self else { return self }
        if let i = pairs.firstIndex(where: { $0.0 == key }) {
            if let new { pairs[i].1 = new } else { pairs.remove(at: i) }
        } else if let new {
            pairs.append((key, new))
        }
        return .object(pairs)
    }

    /// An integer member, whether written as an integer or an integral number.
    func integer(_ key: String) -> Int? {
        switch self[key] {
        case .int(let i)?: return i
        case .double(let d)? where d == d.rounded() && abs(d) < 1e15: return Int(d)
        default: return nil
        }
    }
}
