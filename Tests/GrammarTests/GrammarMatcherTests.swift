import Grammar
import JSON
import Testing

/// Grammars from each source accept exactly the texts they describe, byte by byte.
struct GrammarMatcherTests {
    func matches(_ g: Grammar, _ text: String) throws -> Bool {
        var m = GrammarMatcher(try CompiledGrammar(g))
        return m.accept(Array(text.utf8)) && m.canEnd
    }

    func regex(_ pattern: String) throws -> Grammar {
        Grammar(rules: ["root": try RegexParser.parse(pattern)])
    }

    @Test func gbnfRulesRepetitionsAndClasses() throws {
        let g = try GBNFParser.parse(
            """
            root ::= item ("," item){1,2}   # two or three
            item ::= "yes" | "no" | [0-9]+ | "é" [^a-z]
            """)
        #expect(try matches(g, "yes,no"))
        #expect(try matches(g, "12,no,7"))
        #expect(try matches(g, "é€,yes"))
        #expect(try !matches(g, "yes"))
        #expect(try !matches(g, "yes,no,1,2"))
        #expect(try !matches(g, "éa,yes"))
        #expect(throws: GrammarError.self) { try CompiledGrammar(try GBNFParser.parse("root ::= root \"a\" | \"b\"")) }
        #expect(throws: GrammarError.self) { try CompiledGrammar(try GBNFParser.parse("root ::= missing")) }
        #expect(throws: GrammarError.self) { try GBNFParser.parse("root ::= \"open") }
    }

    @Test func regularExpressions() throws {
        #expect(try matches(regex(#"^\d{3}-[A-Z]{2}$"#), "123-AB"))
        #expect(try !matches(regex(#"\d{3}-[A-Z]{2}"#), "123-ABC"))
        #expect(try matches(regex("(cat|dog)s?"), "dogs"))
        #expect(try !matches(regex("(cat|dog)s?"), "cow"))
        #expect(try matches(regex("[^x]+"), "ünï"))
        #expect(throws: GrammarError.self) { try RegexParser.parse(#"(a)\1"#) }
        #expect(throws: GrammarError.self) { try RegexParser.parse("(?=a)") }
    }

    @Test func jsonSchemas() throws {
        let schema = JSONValue.parse(
            Array(
                #"""
                {"type":"object","properties":{
                  "name":{"type":"string","maxLength":8},
                  "age":{"type":"integer","minimum":18,"maximum":130},
                  "tags":{"type":"array","items":{"enum":["a","b"]},"minItems":1,"maxItems":2},
                  "score":{"type":"number","minimum":-1.5,"maximum":2},
                  "id":{"type":"string","format":"uuid"},
                  "born":{"type":"string","format":"date"},
                  "kind":{"anyOf":[{"type":"null"},{"$ref":"#/$defs/k"}]}},
                 "required":["name","age"],"$defs":{"k":{"const":"x"}}}
                """#.utf8))!
        let g = try JSONSchemaGrammar.grammar(for: schema)
        #expect(try matches(g, #"{"name": "Ann", "age": 30}"#))
        #expect(
            try matches(g, "{\n  \"name\": \"Bo\",\n  \"age\": 130,\n  \"tags\": [\"a\", \"b\"],\n  \"kind\": \"x\"\n}")
        )
        #expect(try matches(g, #"{"name":"A","age":18,"score":-0.25,"id":"123e4567-e89b-12d3-a456-426614174000"}"#))
        #expect(try matches(g, #"{"name":"A","age":99,"score":2,"born":"2026-12-03","kind":null}"#))
        #expect(try !matches(g, #"{"age": 30}"#), "name is required")
        #expect(try !matches(g, #"{"name": "Ann", "age": 17}"#), "below the minimum")
        #expect(try !matches(g, #"{"name": "Ann", "age": 131}"#), "above the maximum")
        #expect(try !matches(g, #"{"name": "Ann", "age": 30, "tags": []}"#), "minItems")
        #expect(try !matches(g, #"{"name": "Ann", "age": 30, "score": 2.5}"#))
        #expect(try !matches(g, #"{"name": "Ann", "age": 30, "x": 1}"#), "no other members")
        #expect(try !matches(g, #"{"name": "Annabelle!", "age": 30}"#), "maxLength")
        #expect(try !matches(g, #"{"name":"A","age":20,"born":"2026-13-01"}"#))
        let bad = JSONValue.parse(Array(#"{"type":"string","contentEncoding":"base64"}"#.utf8))!
        #expect(throws: GrammarError("JSON schema at #: unsupported JSON Schema keyword 'contentEncoding'")) {
            try JSONSchemaGrammar.grammar(for: bad)
        }
        let empty = JSONValue.parse(Array(#"{"type":"integer","minimum":5,"maximum":4}"#.utf8))!
        #expect(throws: GrammarError.self) { try JSONSchemaGrammar.grammar(for: empty) }
    }

    @Test func integerRangesAreExact() throws {
        for (lo, hi) in [(-120, 45), (7, 7), (0, 1000), (95, 1234), (-9, -3)] {
            let schema = JSONValue.object([("type", .string("integer")), ("minimum", .int(lo)), ("maximum", .int(hi))])
            let g = try CompiledGrammar(try JSONSchemaGrammar.grammar(for: schema))
            for x in -150...1300 {
                var m = GrammarMatcher(g)
                let ok = m.accept(Array(String(x).utf8)) && m.canEnd
                #expect(ok == (lo...hi).contains(x), "\(x) in \(lo)...\(hi)")
            }
            var zeros = GrammarMatcher(g)
            let leadingZeros = zeros.accept(Array("007".utf8)) && zeros.canEnd
            #expect(!leadingZeros)
        }
    }

    @Test func anyJSONObject() throws {
        let g = JSONSchemaGrammar.anyObject
        #expect(try matches(g, #"{"a": [1, -2.5e3, {"b": null}], "c": "\u00e9\n"}"#))
        #expect(try !matches(g, #"[1]"#))
        #expect(try !matches(g, #"{"a": 01}"#))
    }

    @Test func theTrieMaskHoldsExactlyTheTokensThatFit() throws {
        let words = ["{", "\"", "{\"", "a", "ab", "\":", " 1", "1", "}", "12}", "x", "é", "\u{C3}"]
        let tokens: [[UInt8]?] = words.map { Array($0.utf8) } + [nil]
        let trie = TokenTrie(tokens: tokens)
        let g = try CompiledGrammar(try GBNFParser.parse(#"root ::= "{\"" [a-b]+ "\":" " "? [0-9]+ "}""#))
        var m = GrammarMatcher(g)
        for step in ["{\"", "a", "b", "\":"] {
            let mask = trie.allowedTokens(from: m)
            for (id, bytes) in tokens.enumerated() {
                let fits = bytes.map { !$0.isEmpty && m.allows($0) } ?? false
                #expect(mask.contains(Int32(id)) == fits, "\(words[safe: id] ?? "nil") after \(step)")
            }
            let took = m.accept(Array(step.utf8))
            #expect(took)
        }
        #expect(trie.allowedTokens(from: m).contains(6) && trie.allowedTokens(from: m).contains(9))
        let last = m.accept(Array("12}".utf8))
        #expect(last && m.isComplete)
    }

    /// A larger vocabulary of random pieces of JSON against a schema's grammar: at every step of a document, the
    /// trie walk (which shares states between nodes) allows exactly the tokens that fit one by one.
    @Test func theTrieMaskMatchesTokenByTokenChecksOnARandomVocabulary() throws {
        var rng = SplitMix(seed: 42)
        let alphabet = Array(#"{}[]":, \n0123456789-.eE"abcnotruefalsl\é"#.utf8)
        var tokens: [[UInt8]?] = (0..<3000).map { _ in
            (0..<Int(rng.next() % 6 + 1)).map { _ in alphabet[Int(rng.next() % UInt64(alphabet.count))] }
        }
        tokens.append(nil)
        let trie = TokenTrie(tokens: tokens)
        let schema = try #require(
            JSONValue.parse(
                Array(
                    #"{"type":"object","properties":{"a":{"type":"integer"},"b":{"type":"array","items":{"type":"string"}}},"required":["a","b"]}"#
                        .utf8)))
        let g = try CompiledGrammar(try JSONSchemaGrammar.grammar(for: schema))
        var m = GrammarMatcher(g)
        for byte in Array(#"{"a": -12, "b": ["x\n", "é"]}"#.utf8) {
            let mask = trie.allowedTokens(from: m)
            for (id, bytes) in tokens.enumerated() {
                let fits = bytes.map { !$0.isEmpty && m.allows($0) } ?? false
                #expect(mask.contains(Int32(id)) == fits, "token \(id)")
            }
            let took = m.accept([byte])
            #expect(took)
        }
        #expect(m.isComplete)
    }
}

/// A small seeded generator for test data.
struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9e37_79b9_7f4a_7c15
        var z = state
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }
}

extension Array {
    subscript(safe i: Int) -> Element? { indices.contains(i) ? self[i] : nil }
}
