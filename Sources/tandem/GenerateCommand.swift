import ArgumentParser

struct GenerateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "generate", abstract: "Generate text from a prompt or chat messages with a local model.")
    func run() throws { throw NotImplementedYet(command: "generate", issue: "engine") }
}
