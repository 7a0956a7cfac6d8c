import JSON
import Testing

/// The JSON reader keeps member order and refuses what RFC 8259 refuses.
struct JSONParserTests {
    @Test func readsInOrderAndRefusesMalformedText() throws {
        let v = JSONValue.parse(Array(#" {"z": 1, "a": [true, null, -2.5e1, "\u00e9\ud83d\ude00\n"], "z": 3} "#.utf8))
        #expect(v == .object([("z", .int(3)), ("a", .array([.bool(true), .null, .int(-25), .string("é😀\n")]))]))
        #expect(JSONValue.parse(Array("1.0".utf8)) == .int(1))
        #expect(JSONValue.parse(Array("0.1".utf8)) == .double(0.1))
        for bad in [
            "", "{", "[1,]", "01", "\"\u{1}\"", "\"\\ud800\"", "{\"a\" 1}", "1 2", "tru", "-", "1.",
            "[" + String(repeating: "[", count: 600),
        ] {
            #expect(JSONValue.parse(Array(bad.utf8)) == nil, "\(bad.prefix(20))")
        }
    }
}
