/// A request body run through every field reader that needs no model (JSON parsing, sampling fields, streaming,
/// resume, KV transfer parameters, prompt token ids), for the libFuzzer harness (`tandem-fuzz request-fields`) and
/// the test that replays its corpus. Whatever the bytes, it must not crash, every wrong field must come back as an
/// `APIError`, and JSON the server writes must read back as what it wrote.
public enum RequestFieldsFuzzing {
    public static func parse(_ bytes: [UInt8]) {
        guard let fields = try? RequestFields(body: bytes) else { return }
        _ = try? fields.samplingParams(defaultMaxTokens: 16)
        _ = try? fields.streaming()
        _ = try? fields.resume()
        _ = try? fields.kvTransferParams()
        _ = try? fields.tokenIds("prompt")
        _ = try? fields.number("tandem_kv_wait_s", in: 0...3600)
        if case .array(let items)? = fields.value("prompt") {
            for item in items { _ = try? RequestFields.tokenId(item, key: "prompt") }
        }
        // Serializing is stable after one round: what the server writes reads back and writes the same again.
        let once = fields.object.serialized
        guard let reread = JSONValue.parse(Array(once.utf8)) else {
            preconditionFailure("JSON the server wrote does not parse: \(once)")
        }
        precondition(reread.serialized == once, "JSON changed on a second round: \(once)")
    }
}
