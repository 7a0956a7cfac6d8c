import ArgumentParser
import Engine
import Foundation
import Kernels
import ModelStore

/// `tandem generate`: one prompt through the engine, streamed to the terminal or printed as JSON.
struct GenerateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "generate",
        abstract: "Generate text from a prompt or chat messages with a local GGUF model.")

    @Option(
        help:
            "A GGUF file, or a model name: `default` (SmolLM2-135M-Instruct Q4_1) or `gemma3-270m` (Gemma 3 270M Q4_K_M), downloaded on first use; see `tandem model list`."
    )
    var model = "default"
    @Option(help: "The prompt text (special tokens such as <|im_start|> are recognised).") var prompt: String?
    @Option(
        help: "Chat messages as JSON: [{\"role\":\"user\",\"content\":\"...\"}], rendered with the model's template.")
    var messages: String?
    @Option(name: .customLong("max-tokens"), help: "Most tokens to generate.") var maxTokens = 128
    @Option(help: "Sampling temperature; 0 is greedy.") var temperature: Float = 0
    @Option(name: .customLong("top-k"), help: "Keep only the k most likely tokens (0: off).") var topK = 0
    @Option(name: .customLong("top-p"), help: "Nucleus sampling threshold.") var topP: Float = 1
    @Option(name: .customLong("min-p"), help: "Drop tokens below this fraction of the best one's probability.")
    var minP: Float = 0
    @Option(help: "Random seed for sampling.") var seed: UInt64?
    @Option(help: "Stop when this text appears (repeatable).") var stop: [String] = []
    @Flag(name: .customLong("ignore-eos"), help: "Keep generating past end-of-generation tokens.") var ignoreEOS = false
    @Option(help: "CPU threads.") var threads = availableCPUCount()
    @Flag(help: "Print one JSON object with ids, text and finish reason instead of streaming.") var json = false

    func validate() throws {
        guard (prompt == nil) != (messages == nil) else {
            throw ValidationError("give exactly one of --prompt or --messages")
        }
        guard maxTokens >= 1 else { throw ValidationError("--max-tokens must be at least 1") }
        guard temperature >= 0 else { throw ValidationError("--temperature must not be negative") }
        guard topP > 0, topP <= 1 else { throw ValidationError("--top-p must be in (0, 1]") }
        guard minP >= 0, minP <= 1 else { throw ValidationError("--min-p must be in [0, 1]") }
        guard threads >= 1 else { throw ValidationError("--threads must be at least 1") }
    }

    func run() throws {
        let path = try ModelStore().resolve(model)
        let generator = try Generator(path: path, threads: threads)
        let tokenizer = generator.tokenizer
        let promptText: String
        if let messages {
            promptText = try renderChat(messages, file: generator)
        } else {
            promptText = prompt!
        }
        let promptIds = tokenizer.encode(promptText)
        var params = SamplingParams()
        params.temperature = temperature
        params.topK = topK
        params.topP = topP
        params.minP = minP
        params.seed = seed
        params.maxTokens = maxTokens
        params.stop = stop
        params.ignoreEOS = ignoreEOS
        let result = try generator.generate(prompt: promptIds, params: params) { token in
            if !json, !token.text.isEmpty {
                FileHandle.standardOutput.write(Data(token.text.utf8))
            }
            return true
        }
        if json {
            let object: [String: Any] = [
                "prompt_text": promptText,
                "prompt_token_ids": result.promptTokenIds.map(Int.init),
                "token_ids": result.tokenIds.map(Int.init),
                "text": result.text,
                "finish_reason": result.finishReason.rawValue,
            ]
            let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
            print(String(decoding: data, as: UTF8.self))
        } else {
            print("")
            let promptRate = Double(promptIds.count) / max(result.promptSeconds, 1e-9)
            let genRate = Double(result.tokenIds.count) / max(result.generationSeconds, 1e-9)
            Stderr.print(
                String(
                    format: "prompt: %d tokens, %.1f tok/s | generation: %d tokens, %.1f tok/s | finish: %@",
                    promptIds.count, promptRate, result.tokenIds.count, genRate, result.finishReason.rawValue))
        }
    }

    private func renderChat(_ json: String, file generator: Generator) throws -> String {
        guard let parsed = try? JSONSerialization.jsonObject(with: Data(json.utf8)) as? [[String: Any]] else {
            throw ValidationError("--messages must be a JSON array of {\"role\", \"content\"} objects")
        }
        let messages = try parsed.map { m -> ChatMessage in
            guard let role = m["role"] as? String, let content = m["content"] as? String else {
                throw ValidationError("each message needs string \"role\" and \"content\" fields")
            }
            return ChatMessage(role: role, content: content)
        }
        guard let source = generator.model.file.metadata["tokenizer.chat_template"]?.stringValue else {
            throw ValidationError("the model has no chat template; use --prompt")
        }
        let tokenizer = generator.tokenizer
        return try ChatTemplate(source).render(
            messages: messages, bosToken: tokenizer.tokenText(tokenizer.bosId),
            eosToken: tokenizer.tokenText(tokenizer.eosId))
    }
}
