import Foundation
import Testing

/// `--max-tokens-default` bounds a chat request that names no `max_tokens` (an agent's request could otherwise hold
/// a decode until `max_model_len`), and `--max-tokens-limit` refuses one that asks for more, with a 400 naming
/// `max_tokens`.
@Suite struct MaxTokensBoundsTests {
    @Test func boundsAndLimit() async throws {
        let server = try await ServerProcess(["--max-tokens-default", "5", "--max-tokens-limit", "100"])
        defer { #expect(server.stop() == 0) }
        let chat = try await server.post(
            "/v1/chat/completions", #"{"messages":[{"role":"user","content":"Count to 1000."}],"ignore_eos":true}"#)
        #expect(chat.status == .ok, "\(chat.body)")
        let usage = chat.json?["usage"] as? [String: Any]
        #expect(usage?["completion_tokens"] as? Int == 5, "\(chat.body)")
        #expect(chat.json?.firstChoice?["finish_reason"] as? String == "length")
        let over = try await server.post("/v1/completions", #"{"prompt":"Hi","max_tokens":101}"#)
        #expect(over.status == .badRequest)
        #expect((over.json?["error"] as? [String: Any])?["param"] as? String == "max_tokens", "\(over.body)")
        let within = try await server.post("/v1/completions", #"{"prompt":"Hi","max_tokens":100}"#)
        #expect(within.status == .ok)
    }
}
