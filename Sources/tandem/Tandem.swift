import ArgumentParser

/// The `tandem` command line: serving, proxying, generation, benchmarks and model management.
@main
struct Tandem: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tandem",
        abstract: "Disaggregated prefill/decode LLM serving, in Swift.",
        discussion: """
            A proxy routes each OpenAI-style request through a prefill instance, which computes the prompt's KV \
            cache and ships it to a decode instance, which generates the answer.
            """,
        subcommands: [
            ServeCommand.self, ProxyCommand.self, UpCommand.self, GenerateCommand.self, BenchCommand.self,
            BenchEngineCommand.self, BenchKVCommand.self, ModelCommand.self,
        ]
    )
}
