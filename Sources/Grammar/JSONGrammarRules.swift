/// The rules every JSON grammar shares: whitespace, strings, numbers and any JSON value. Numbers and whitespace are
/// bounded (16 integer digits, 16 fraction digits, a newline and up to 16 spaces), so a constrained model cannot
/// spend its tokens on endless digits or blank lines.
enum JSONGrammarRules {
    static let ws = "ws"
    static let string = "string"
    static let number = "number"
    static let integer = "integer"
    static let boolean = "boolean"
    static let null = "null"
    static let value = "value"
    static let object = "object"
    static let array = "array"
    static let stringChar = "string-char"

    static let digit = GrammarExpression.characters(CodepointSet([48...57]))
    static let hexDigit = GrammarExpression.characters(CodepointSet([48...57, 65...70, 97...102]))

    static func range(_ lo: Character, _ hi: Character) -> GrammarExpression {
        .characters(CodepointSet([lo.unicodeScalars.first!.value...hi.unicodeScalars.first!.value]))
    }

    static func seq(_ items: GrammarExpression...) -> GrammarExpression { .sequence(items) }

    /// A member or element separator, with the whitespace after it.
    static let comma = seq(.text(","), .rule(ws))

    static var all: [String: GrammarExpression] {
        let wholePart = GrammarExpression.choice([
            .text("0"), seq(range("1", "9"), .repetition(digit, min: 0, max: 15)),
        ])
        let control = CodepointSet([0...0x1F, 0x22...0x22, 0x5C...0x5C])
        let escape = GrammarExpression.choice([
            .characters(CodepointSet("\"\\/bfnrt")), seq(.text("u"), .repetition(hexDigit, min: 4, max: 4)),
        ])
        let member = seq(.rule(string), .rule(ws), .text(":"), .rule(ws), .rule(value), .rule(ws))
        let element = seq(.rule(value), .rule(ws))
        return [
            ws: .choice([.empty, .text(" "), seq(.text("\n"), .repetition(.text(" "), min: 0, max: 16))]),
            stringChar: .choice([.characters(control.inverted), seq(.text("\\"), escape)]),
            string: seq(.text("\""), .repetition(.rule(stringChar), min: 0, max: nil), .text("\"")),
            integer: seq(.optional(.text("-")), wholePart),
            number: seq(
                .optional(.text("-")), wholePart, .optional(seq(.text("."), .repetition(digit, min: 1, max: 16))),
                .optional(
                    seq(
                        .characters(CodepointSet("eE")), .optional(.characters(CodepointSet("+-"))),
                        .repetition(digit, min: 1, max: 3)))),
            boolean: .choice([.text("true"), .text("false")]),
            null: .text("null"),
            value: .choice([.rule(object), .rule(array), .rule(string), .rule(number), .rule(boolean), .rule(null)]),
            object: seq(
                .text("{"), .rule(ws), .optional(seq(member, .repetition(seq(comma, member), min: 0, max: nil))),
                .text("}")),
            array: seq(
                .text("["), .rule(ws), .optional(seq(element, .repetition(seq(comma, element), min: 0, max: nil))),
                .text("]")),
        ]
    }

    /// Any JSON object (`response_format: {"type": "json_object"}`).
    static var anyObject: Grammar {
        var rules = all
        rules["root"] = .rule(object)
        return Grammar(rules: rules)
    }
}
