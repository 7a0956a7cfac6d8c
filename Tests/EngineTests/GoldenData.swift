import Foundation

/// llama.cpp's reference tokenizations and greedy generations for the default model (test fixture).
struct Golden: Decodable {
    struct TopToken: Decodable {
        let id: Int
        let logprob: Double
    }
    struct Message: Decodable {
        let role: String
        let content: String
        init(role: String, content: String) {
            self.role = role
            self.content = content
        }
    }
    struct Generation: Decodable {
        let name: String
        let chat: Bool
        let prompt_text: String
        let prompt_ids: [Int]
        let output_ids: [Int]
        let output_ids_ignore_eos: [Int]?
        let messages: [Message]?
        let top_probs: [TopToken]?
        let top5_per_position: [Position]?
        let prompt: String?

        /// Top-5 at the first generated position, whichever field the entry uses.
        var firstTop5: [TopToken] { top_probs ?? top5_per_position?.first?.top5 ?? [] }
        /// The chat messages of a chat entry (entries without `messages` carry the user turn in `prompt`).
        var chatMessages: [Message] { messages ?? [Message(role: "user", content: prompt ?? "")] }
    }
    struct Position: Decodable {
        let chosen_id: Int
        let top5: [TopToken]
    }
    struct Tokenization: Decodable {
        let text: String
        let ids: [Int]
    }
    let chat_template: String
    let generations: [Generation]
    let tokenize: [Tokenization]

    static let shared: Golden = Fixture.load("smollm2-135m-instruct-q4_1")
}

/// The JSON test fixtures in the bundle's Fixtures folder.
enum Fixture {
    static func load<T: Decodable>(_ name: String) -> T {
        let url = Bundle.module.url(forResource: name, withExtension: "json", subdirectory: "Fixtures")!
        return try! JSONDecoder().decode(T.self, from: Data(contentsOf: url))
    }
}
