import Discovery
import Testing

@Suite struct MessagePackTests {
    @Test func encodesAPingAsMsgpackPythonDoes() {
        // msgpack.packb({"type": "P", "http_address": "10.0.0.1:8081"}) in Python.
        let bytes = MessagePackValue.stringMap([("type", "P"), ("http_address", "10.0.0.1:8081")]).encoded()
        #expect(
            bytes
                == [0x82, 0xa4] + Array("type".utf8) + [0xa1, 0x50, 0xac] + Array("http_address".utf8) + [0xad]
                + Array("10.0.0.1:8081".utf8))
    }

    @Test func roundTripsEveryKind() throws {
        let values: [MessagePackValue] = [
            .null, .bool(true), .bool(false), .int(0), .int(127), .int(128), .int(-1), .int(-32), .int(-33),
            .int(255), .int(256), .int(65_536), .int(-129), .int(-40_000), .int(Int64.max), .int(Int64.min),
            .uint(UInt64.max), .double(1.5), .string(""), .string(String(repeating: "x", count: 40)),
            .string(String(repeating: "é", count: 200)), .binary([1, 2, 3]), .array((0..<20).map { .int($0) }),
            .map((0..<17).map { MessagePackPair(.string("k\($0)"), .int(Int64($0))) }),
            .array([.map([MessagePackPair(.string("a"), .array([.null]))])]),
        ]
        for v in values {
            #expect(try MessagePackValue.decode(v.encoded()) == v, "\(v)")
        }
    }

    @Test func rejectsBadInputWithoutCrashingOrAllocating() {
        let cases: [([UInt8], MessagePackError)] = [
            ([], .truncated), ([0xa5, 0x61], .truncated), ([0xdd, 0xff, 0xff, 0xff, 0xff], .truncated),
            ([0xdf, 0x7f, 0xff, 0xff, 0xff], .truncated), ([0xc1], .unsupportedType(0xc1)),
            ([0xa2, 0xff, 0xfe], .invalidUTF8), ([0x01, 0x02], .trailingBytes(1)),
            (Array(repeating: 0x91, count: 40) + [0x00], .tooDeep),
        ]
        for (bytes, error) in cases {
            #expect(throws: error) { try MessagePackValue.decode(bytes) }
        }
    }
}

@Suite struct HostPortTests {
    @Test func formatsAndParsesIPv4AndIPv6() {
        #expect(HostPort(host: "10.0.0.1", port: 8082).description == "10.0.0.1:8082")
        #expect(HostPort(host: "::1", port: 8084).description == "[::1]:8084")
        #expect(HostPort(host: "[::1]", port: 8084).host == "::1")
        #expect(HostPort("[fe80::1]:80") == HostPort(host: "fe80::1", port: 80))
        #expect(HostPort("::1:8084") == HostPort(host: "::1", port: 8084), "the legacy unbracketed form")
        #expect(HostPort("localhost:10002") == HostPort(host: "localhost", port: 10002))
        #expect(HostPort(host: "::1", port: 30002).zmqEndpoint == "tcp://[::1]:30002")
        for bad in ["", "host", "host:", ":80", "h:70000", "[::1]", "[::1]80", "h:x"] {
            #expect(HostPort(bad) == nil, "\(bad)")
        }
    }

    @Test func requestIdsRoundTripWithBracketsAndLegacyForms() {
        let uuid = "0123456789abcdef0123456789abcdef"
        let id = DisaggregatedRequestID(
            prefill: HostPort(host: "::1", port: 8082), decode: HostPort(host: "10.1.2.3", port: 8084), uuid: uuid)
        #expect(id.description == "___prefill_addr_[::1]:8082___decode_addr_10.1.2.3:8084_\(uuid)")
        #expect(DisaggregatedRequestID(id.description) == id)
        let legacy = DisaggregatedRequestID("___prefill_addr_::1:8082___decode_addr_::1:8084_\(uuid)")
        #expect(legacy?.prefill == HostPort(host: "::1", port: 8082))
        #expect(legacy?.decode == HostPort(host: "::1", port: 8084))
        #expect(DisaggregatedRequestID("abc123") == nil)
        #expect(DisaggregatedRequestID("___prefill_addr_a:1___decode_addr_b:2_zz") == nil)
    }
}
