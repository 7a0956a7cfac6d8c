import Foundation
import Testing

/// OpenAI's `logit_bias`, on an instance and through the proxy's overlapped flow (prefill and decode both apply it),
/// and the fields Tandem does not serve refused by name.
@Suite(.serialized) struct LogitBiasTests {
    func tokens(_ server: ServerProcess, _ extra: String) async throws -> [Int] {
        let reply = try await server.post(
            "/v1/completions",
            #"{"prompt":"The capital of France is","max_tokens":4,"temperature":0,"return_token_ids":true\#(extra)}"#)
        #expect(reply.status == .ok, "\(reply.body)")
        return reply.json?.firstChoice?["token_ids"] as? [Int] ?? []
    }

    @Test func aBiasSteersGreedyTokensAndBadBiasesAreRefused() async throws {
        let server = try await ServerProcess()
        defer { #expect(server.stop() == 0) }
        let plain = try await tokens(server, "")
        #expect(plain.count == 4)
        // -100 on the greedy first token: another token comes first; +100 on one token: it is every token.
        let banned = try await tokens(server, #","logit_bias":{"\#(plain[0])":-100}"#)
        #expect(banned.count == 4 && banned[0] != plain[0], "\(banned) vs \(plain)")
        let forced = try await tokens(server, #","logit_bias":{"1234":100}"#)
        #expect(forced == [1234, 1234, 1234, 1234], "\(forced)")
        // A seeded sample is biased the same way.
        let seeded = try await tokens(server, #","temperature":0.8,"seed":7,"logit_bias":{"1234":100}"#)
        #expect(seeded == [1234, 1234, 1234, 1234], "\(seeded)")

        for (body, param) in [
            (#""logit_bias":{"abc":1}"#, "logit_bias"), (#""logit_bias":{"5":101}"#, "logit_bias"),
            (#""logit_bias":{"99999999":1}"#, "logit_bias"), (#""logit_bias":[1]"#, "logit_bias"),
            (#""suffix":"}""#, "suffix"), (#""best_of":2"#, "best_of"),
        ] {
            let reply = try await server.post("/v1/completions", #"{"prompt":"x",\#(body)}"#)
            let error = reply.json?["error"] as? [String: Any]
            #expect(reply.status == .badRequest && error?["param"] as? String == param, "\(body): \(reply.body)")
        }
        let one = try await server.post("/v1/completions", #"{"prompt":"x","max_tokens":1,"best_of":1,"suffix":""}"#)
        #expect(one.status == .ok, "best_of 1 and an empty suffix are what OpenAI means by none: \(one.body)")
    }

    @Test func theProxyPassesTheBiasToPrefillAndDecode() async throws {
        let cluster = try await ResumeTests.Cluster.start(decodes: 1, colocated: false)
        defer { cluster.stop() }
        let forced = try await tokens(cluster.proxy, #","logit_bias":{"1234":100}"#)
        #expect(forced == [1234, 1234, 1234, 1234], "the first token (prefill) and the rest (decode): \(forced)")
    }
}
