import Foundation

/// One chat message: a role and its text content.
public struct ChatMessage: Sendable, Equatable, Codable {
    public var role: String
    public var content: String
    public init(role: String, content: String) {
        self.role = role
        self.content = content
    }
}

/// A model's chat template (`tokenizer.chat_template`), rendered as Hugging Face's `apply_chat_template` does.
public struct ChatTemplate: Sendable {
    public let source: String
    private let template: JinjaTemplate

    public init(_ source: String) throws {
        self.source = source
        template = try JinjaTemplate(source)
    }

    /// Whether the template renders a `tools` list (Hugging Face's convention for function tools).
    public var handlesTools: Bool { source.contains("tools") }

    /// The prompt text for `messages`; `addGenerationPrompt` appends the assistant turn's opening.
    public func render(
        messages: [ChatMessage], addGenerationPrompt: Bool = true, bosToken: String = "", eosToken: String = "",
        extra: [String: JinjaValue] = [:]
    ) throws -> String {
        try render(
            messageValues: messages.map { .object([("role", .string($0.role)), ("content", .string($0.content))]) },
            addGenerationPrompt: addGenerationPrompt, bosToken: bosToken, eosToken: eosToken, extra: extra)
    }

    /// The prompt text for messages given as template values (with fields beyond role and content, such as
    /// `tool_calls` and `tool_call_id`).
    public func render(
        messageValues: [JinjaValue], addGenerationPrompt: Bool = true, bosToken: String = "", eosToken: String = "",
        extra: [String: JinjaValue] = [:]
    ) throws -> String {
        var context = extra
        context["messages"] = .array(messageValues)
        context["add_generation_prompt"] = .bool(addGenerationPrompt)
        context["bos_token"] = .string(bosToken)
        context["eos_token"] = .string(eosToken)
        return try template.render(context)
    }
}

extension Tokenizer {
    /// The text of token `id` as templates name it (`bos_token`, `eos_token`).
    public func tokenText(_ id: Int32?) -> String {
        guard let id, Int(id) < tokens.count else { return "" }
        return tokens[Int(id)]
    }
}
