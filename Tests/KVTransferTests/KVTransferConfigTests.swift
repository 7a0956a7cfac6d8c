import Discovery
import KVTransfer
import Testing

@Suite struct KVTransferConfigTests {
    static let runbookProducer = """
        {"kv_connector":"P2pNcclConnector","kv_role":"kv_producer","kv_buffer_size":"1e9","kv_port":"8082",\
        "kv_connector_extra_config":{"proxy_ip":"0.0.0.0","proxy_port":"30002","http_port":"8081",\
        "send_type":"PUT_ASYNC","nccl_num_channels":"16"}}
        """

    @Test func readsTheRunbookConfigUnchanged() throws {
        let c = try KVTransferConfig(json: Self.runbookProducer)
        #expect(c.connector == "P2pNcclConnector")
        #expect(c.role == .producer)
        #expect(c.registrationRole == .prefill)
        #expect(c.bufferBytes == 1_000_000_000)
        #expect(c.kvPort == 8082)
        #expect(c.proxy == HostPort(host: "0.0.0.0", port: 30002))
        #expect(c.httpPort == 8081)
        #expect(c.sendType == .putAsync)
        #expect(c.failurePolicy == .recompute)
        #expect(c.ignoredKeys == ["nccl_num_channels"])
    }

    @Test func acceptsNumbersAsNumbersAndOurOwnKeys() throws {
        let c = try KVTransferConfig(
            json: """
                {"kv_connector":"TandemConnector","kv_role":"kv_both","kv_buffer_size":5e8,"kv_port":8084,\
                "kv_connector_extra_config":{"proxy_ip":"::1","proxy_port":30002,"send_type":"GET",\
                "kv_transfer_timeout_s":2.5,"kv_load_failure_policy":"fail","kv_host":"::1"}}
                """)
        #expect(c.role == .both && c.registrationRole == .prefill)
        #expect(c.bufferBytes == 500_000_000 && c.kvPort == 8084)
        #expect(c.proxy?.description == "[::1]:30002")
        #expect(c.sendType == .get && c.transferTimeout == 2.5 && c.failurePolicy == .fail)
        #expect(c.advertisedHost == "::1")
    }

    @Test func invalidConfigsNameTheKey() {
        let cases: [(String, String)] = [
            ("not json", "JSON object"),
            (#"{"kv_role":"kv_producer","kv_connector":"NixlConnector"}"#, "kv_connector"),
            (#"{"kv_connector":"P2pNcclConnector"}"#, "kv_role"),
            (#"{"kv_role":"kv_master"}"#, "kv_role"),
            (#"{"kv_role":"kv_consumer","kv_port":"eighty"}"#, "kv_port"),
            (#"{"kv_role":"kv_consumer","kv_port":70000}"#, "kv_port"),
            (#"{"kv_role":"kv_consumer","kv_buffer_size":-1}"#, "kv_buffer_size"),
            (#"{"kv_role":"kv_consumer","kv_connector_extra_config":{"send_type":"PUSH"}}"#, "send_type"),
            (#"{"kv_role":"kv_consumer","kv_connector_extra_config":{"proxy_ip":"1.2.3.4"}}"#, "proxy_port"),
            (#"{"kv_role":"kv_consumer","kv_connector_extra_config":{"kv_load_failure_policy":"retry"}}"#, "kv_load"),
            (#"{"kv_role":"kv_consumer","kv_connector_extra_config":[1]}"#, "kv_connector_extra_config"),
        ]
        for (json, key) in cases {
            do {
                _ = try KVTransferConfig(json: json)
                Issue.record("accepted \(json)")
            } catch {
                #expect("\(error)".contains(key), "\(json) → \(error)")
            }
        }
    }
}
