import ArgumentParser

/// Raised by a subcommand whose issue has not landed yet: says so, exits non-zero, prints no fake output.
struct NotImplementedYet: Error, CustomStringConvertible {
    let command: String
    let issue: String
    var description: String { "`tandem \(command)` is not implemented yet (tracked by the \(issue) issue)." }
}

struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench", abstract: "Benchmark a serving deployment: TTFT, ITL, throughput, goodput.")
    func run() throws { throw NotImplementedYet(command: "bench", issue: "`tandem bench`") }
}
