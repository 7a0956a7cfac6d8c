import Foundation

/// Why generation ended, as OpenAI names it.
public enum FinishReason: String, Sendable, Codable {
    case stop, length, abort
}

/// What one step of generation produced.
public struct GeneratedToken: Sendable {
    public var id: Int32
    /// Text released by this token (may be empty while a character or a possible stop string is incomplete).
    public var text: String
    public var logprob: TokenLogprob?
}

/// The outcome of a generation.
public struct GenerationResult: Sendable {
    public var promptTokenIds: [Int32]
    public var tokenIds: [Int32]
    public var text: String
    public var finishReason: FinishReason
    public var logprobs: [TokenLogprob]
    public var promptSeconds: Double
    public var generationSeconds: Double
}

/// Runs one request at a time on a model: the simple path behind `tandem generate` and the reference that the
/// batched server must reproduce exactly.
public final class Generator: @unchecked Sendable {
    public let model: TransformerModel
    public let tokenizer: Tokenizer
    /// Tokens per prefill forward pass.
    public var prefillChunk = 256

    public init(model: TransformerModel, tokenizer: Tokenizer) {
        self.model = model
        self.tokenizer = tokenizer
    }

    /// Loads a GGUF model and its tokenizer.
    public convenience init(path: String, threads: Int) throws {
        let model = try TransformerModel(path: path, threads: threads)
        try self.init(model: model, tokenizer: Tokenizer(file: model.file))
    }

    /// Generates from `prompt`; `onToken` sees each token as it comes and may return false to stop early.
    public func generate(
        prompt: [Int32], params: SamplingParams, onToken: (GeneratedToken) -> Bool = { _ in true }
    ) throws -> GenerationResult {
        let config = model.config
        guard !prompt.isEmpty else { throw GenerationError.emptyPrompt }
        guard prompt.count < config.contextLength else {
            throw GenerationError.promptTooLong(prompt: prompt.count, limit: config.contextLength)
        }
        let maxNew = min(params.maxTokens, config.contextLength - prompt.count)
        let blockSize = 16
        let blocks = (prompt.count + maxNew + blockSize) / blockSize + 1
        let cache = PagedKVCache(
            layerCount: config.layerCount, blockCount: blocks, blockSize: blockSize, kvDim: config.kvDim)
        let table = (0..<blocks).map(Int32.init)
        var sampler = Sampler(params: params, promptTokens: prompt)
        var decoder = IncrementalDecoder()
        var stops = StopStringMatcher(stops: params.stop)
        let endTokens = tokenizer.endOfGenerationIds
        let stopIds = Set(params.stopTokenIds)

        let promptStart = Date()
        var logits: [Float] = []
        var position = 0
        while position < prompt.count {
            let end = min(prompt.count, position + prefillChunk)
            let chunk = SequenceChunk(
                tokens: Array(prompt[position..<end]), startPosition: position, blockTable: table,
                wantsLogits: end == prompt.count, promptLength: prompt.count)
            logits = model.forward([chunk], cache: cache)[0] ?? []
            position = end
        }
        let promptSeconds = Date().timeIntervalSince(promptStart)
        let generationStart = Date()
        var output: [Int32] = []
        var logprobs: [TokenLogprob] = []
        var finish = FinishReason.length
        while output.count < maxNew {
            let (id, logprob) = sampler.sample(logits: logits, generatedCount: output.count, endTokens: endTokens)
            output.append(id)
            if let logprob { logprobs.append(logprob) }
            let isEnd = (!params.ignoreEOS && endTokens.contains(id)) || stopIds.contains(id)
            var piece = ""
            var stopped = false
            if !isEnd {
                (piece, stopped) = stops.append(decoder.append(tokenizer.bytes(of: id)))
            }
            if !onToken(GeneratedToken(id: id, text: piece, logprob: logprob)) {
                finish = .abort
                break
            }
            if isEnd || stopped {
                finish = .stop
                break
            }
            if output.count >= maxNew { break }
            let step = SequenceChunk(
                tokens: [id], startPosition: prompt.count + output.count - 1, blockTable: table, wantsLogits: true,
                promptLength: prompt.count)
            logits = model.forward([step], cache: cache)[0] ?? []
        }
        if finish == .length {
            let (tail, _) = stops.append(decoder.flush())
            let rest = tail + stops.releaseAll()
            if !rest.isEmpty { _ = onToken(GeneratedToken(id: -1, text: rest, logprob: nil)) }
        }
        return GenerationResult(
            promptTokenIds: prompt, tokenIds: output, text: stops.text, finishReason: finish, logprobs: logprobs,
            promptSeconds: promptSeconds, generationSeconds: Date().timeIntervalSince(generationStart))
    }
}

/// Why a request cannot be generated.
public enum GenerationError: Error, CustomStringConvertible {
    case emptyPrompt
    case promptTooLong(prompt: Int, limit: Int)

    public var description: String {
        switch self {
        case .emptyPrompt: return "the prompt is empty"
        case .promptTooLong(let p, let l):
            return "the prompt has \(p) tokens, but the model's context length is \(l) tokens"
        }
    }
}
