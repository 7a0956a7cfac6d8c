import JSON
import Testing

@Suite struct JSONValueTests {
    @Test func parsesEveryKindOfValue() throws {
        let v = try #require(JSONValue.parse(Array(#"{"a":[1,2.5,"x",true,null],"b":{"c":-3}}"#.utf8)))
        #expect(v["a"] == .array([.int(1), .double(2.5), .string("x"), .bool(true), .null]))
        #expect(v["b"]?["c"] == .int(-3))
        #expect(v["missing"] == nil)
    }

    @Test func rejectsInvalidJSON() {
        for text in ["", "{", "{\"a\":}", "[1 2]", "nul", "{\"a\" 1}"] {
            #expect(JSONValue.parse(Array(text.utf8)) == nil, "\(text)")
        }
    }

    @Test func writesCompactJSONWithKeysInOrderAndEscapes() {
        let v: JSONValue = .object([
            ("z", 1), ("a", .string("line\n\"q\"\\\u{01}é")), ("f", .float(-0.25)), ("d", .double(2)),
            ("inf", .float(-.infinity)), ("n", .null), ("l", .array([true, false])),
        ])
        #expect(
            v.serialized
                == #"{"z":1,"a":"line\n\"q\"\\\u0001é","f":-0.25,"d":2.0,"inf":-9999.0,"n":null,"l":[true,false]}"#)
    }

    @Test func roundTrips() throws {
        let text = #"{"a":[1,2,{"b":"c"}],"d":false,"e":"ü\n"}"#
        let v = try #require(JSONValue.parse(Array(text.utf8)))
        #expect(JSONValue.parse(Array(v.serialized.utf8)) == v)
    }
}
