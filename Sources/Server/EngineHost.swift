import Engine
import Foundation
import Hummingbird
import JSON
import NIOConcurrencyHelpers
import OpenAIAPI

/// What a loaded instance serves with: the engine, its tokenizer and the model's chat template.
public struct LoadedModel: Sendable {
    public let engine: EngineCore
    public let tokenizer: Tokenizer
    public let chatTemplate: ChatTemplate?
    /// Compiled structured-output grammars for this model's vocabulary.
    let grammars: GrammarCache

    public init(engine: EngineCore) {
        self.engine = engine
        tokenizer = engine.tokenizer
        grammars = GrammarCache(tokenizer: engine.tokenizer)
        chatTemplate = engine.model.file.metadata["tokenizer.chat_template"]?.stringValue.flatMap {
            try? ChatTemplate($0)
        }
    }

    /// The prompt text for chat `messages`, rendered with the model's template.
    public func renderChat(_ messages: [ChatMessage], addGenerationPrompt: Bool) throws -> String {
        try render(addGenerationPrompt: addGenerationPrompt) { template, bos, eos in
            try template.render(
                messages: messages, addGenerationPrompt: addGenerationPrompt, bosToken: bos, eosToken: eos)
        }
    }

    /// The prompt text for a chat request's turns and the tools shown to the model (nil: none): with the model's
    /// template when it renders tools, else in Tandem's `DefaultToolFormat`.
    func renderChat(_ turns: [ChatTurn], tools: [JSONValue]?, addGenerationPrompt: Bool) throws -> String {
        let hasToolFields = tools != nil || turns.contains { !$0.toolCalls.isEmpty || $0.role == "tool" }
        guard hasToolFields, chatTemplate?.handlesTools == true else {
            return try renderChat(
                hasToolFields
                    ? DefaultToolFormat.messages(turns, tools: tools)
                    : turns.map { ChatMessage(role: $0.role, content: $0.content) },
                addGenerationPrompt: addGenerationPrompt)
        }
        return try render(addGenerationPrompt: addGenerationPrompt) { template, bos, eos in
            try template.render(
                messageValues: turns.map(\.templateValue), addGenerationPrompt: addGenerationPrompt, bosToken: bos,
                eosToken: eos, extra: tools.map { ["tools": JinjaValue(.array($0))] } ?? [:])
        }
    }

    private func render(
        addGenerationPrompt: Bool, _ body: (ChatTemplate, String, String) throws -> String
    ) throws -> String {
        guard let chatTemplate else {
            throw APIError.badRequest("this model has no chat template; use /v1/completions", param: "messages")
        }
        do {
            return try body(chatTemplate, tokenizer.tokenText(tokenizer.bosId), tokenizer.tokenText(tokenizer.eosId))
        } catch {
            throw APIError.badRequest("the chat template failed on these messages: \(error)", param: "messages")
        }
    }
}

/// Holds the instance's model once it is loaded; until then requests are answered 503.
public final class EngineHost: Sendable {
    private enum State {
        case loading
        case ready(LoadedModel)
        case stopped
    }

    private let state = NIOLockedValueBox(State.loading)

    public init() {}

    public func setReady(_ model: LoadedModel) { state.withLockedValue { $0 = .ready(model) } }

    public func setStopped() { state.withLockedValue { $0 = .stopped } }

    public var isReady: Bool { (try? ready()) != nil }

    /// The loaded model, or a 503 error while loading or after shutdown began.
    public func ready() throws -> LoadedModel {
        try state.withLockedValue { s in
            switch s {
            case .ready(let m): return m
            case .loading: throw APIError(.serviceUnavailable, "the model is still loading")
            case .stopped: throw APIError(.serviceUnavailable, "the server is shutting down")
            }
        }
    }

    /// The engine, when loaded (for metrics).
    public var engine: EngineCore? { try? ready().engine }
}
