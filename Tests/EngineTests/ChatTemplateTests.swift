import Engine
import Foundation
import Testing

@Suite struct ChatTemplateTests {
    func fixture(_ name: String) throws -> String {
        let url = try #require(
            Bundle.module.url(forResource: name, withExtension: "jinja", subdirectory: "Fixtures/templates"))
        return try String(contentsOf: url, encoding: .utf8)
    }

    @Test func smolLM2TemplateRendersGoldenPrompts() throws {
        let source = try #require(TestModel.shared.file.metadata["tokenizer.chat_template"]?.stringValue)
        #expect(source == Golden.shared.chat_template)
        let template = try ChatTemplate(source)
        for g in Golden.shared.generations where g.chat {
            let messages = g.chatMessages.map { ChatMessage(role: $0.role, content: $0.content) }
            #expect(try template.render(messages: messages) == g.prompt_text, "\(g.name)")
        }
        let withSystem = try template.render(
            messages: [ChatMessage(role: "system", content: "Be brief."), ChatMessage(role: "user", content: "Hi")],
            addGenerationPrompt: false)
        #expect(withSystem == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n")
    }

    @Test func llama3StyleTemplate() throws {
        let template = try ChatTemplate(try fixture("llama3"))
        let text = try template.render(
            messages: [
                ChatMessage(role: "system", content: " Be nice. "), ChatMessage(role: "user", content: "Hello"),
            ],
            bosToken: "<|begin_of_text|>")
        #expect(
            text == "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe nice.<|eot_id|>"
                + "<|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>"
                + "<|start_header_id|>assistant<|end_header_id|>\n\n")
        #expect(throws: JinjaError.self) {
            try template.render(messages: [ChatMessage(role: "tool", content: "x")])
        }
    }

    @Test func qwen2StyleTemplate() throws {
        let template = try ChatTemplate(try fixture("qwen2"))
        let text = try template.render(messages: [ChatMessage(role: "user", content: "Hi")])
        #expect(
            text == "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                + "<|im_start|>assistant\n")
    }

    @Test func expressionsFiltersAndTests() throws {
        func render(_ s: String, _ ctx: [String: JinjaValue] = [:]) throws -> String {
            try JinjaTemplate(s).render(ctx)
        }
        #expect(try render("{{ 1 + 2 * 3 }}|{{ 7 // 2 }}|{{ 7 % 3 }}|{{ 'a' ~ 1 }}") == "7|3|1|a1")
        #expect(try render("{{ 'x' if false else 'y' }}{{ 'z' if true }}") == "yz")
        #expect(try render("{% for i in range(3) %}{{ loop.index }}{{ ',' if not loop.last }}{% endfor %}") == "1,2,3")
        #expect(try render("{% for i in [] %}x{% else %}empty{% endfor %}") == "empty")
        #expect(
            try render(
                "{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}",
                ["d": .object([("a", .int(1)), ("b", .int(2))])]) == "a=1;b=2;")
        #expect(
            try render("{{ '  hi  ' | trim | upper }}{{ [1,2,3] | length }}{{ ['a','b'] | join('-') }}") == "HI3a-b")
        #expect(try render("{{ x | default('none') }}{{ 'abc'[1:] }}{{ [1,2,3][-1] }}") == "nonebc3")
        #expect(
            try render("{{ x is defined }}{{ 3 is odd }}{{ 'a' is string }}{{ none is none }}") == "FalseTrueTrueTrue")
        #expect(try render("{% if 2 in [1,2] and 'b' not in 'abc' %}no{% elif 1 < 2 %}yes{% endif %}") == "yes")
        #expect(try render("{{ {'a': 'x\"y'} | tojson }}") == "{\"a\": \"x\\\"y\"}")
        #expect(
            try render("{{ 'Hello'.startswith('He') }}{{ 'a,b'.split(',') | length }}{{ ' q '.strip() }}") == "True2q")
        #expect(
            try render(
                "{% set ns = namespace(n=0) %}{% for i in range(4) %}{% set ns.n = ns.n + i %}{% endfor %}{{ ns.n }}")
                == "6")
        #expect(try render("a\n  {%- if true %}\n  b\n{%- endif %}") == "a  b")
        #expect(try render("{# comment #}x{{ '' }}") == "x")
    }

    @Test func errorsAreReportedNotCrashed() {
        for bad in [
            "{% if x %}", "{{ 'unterminated }}", "{% for %}", "{{ x | nosuchfilter }}", "{% bogus %}", "{{ (1 }}",
        ] {
            #expect(throws: JinjaError.self, "\(bad)") { try JinjaTemplate(bad).render([:]) }
        }
        #expect(throws: JinjaError.self) { try JinjaTemplate("{{ raise_exception('no') }}").render([:]) }
    }
}
