import Foundation
import Testing

/// Runs the real `tandem` binary as a separate process.
enum TandemBinary {
    static var url: URL {
        // The test bundle lives next to the built products.
        let products = Bundle.main.bundleURL.deletingLastPathComponent()
        let candidates =
            [products.appendingPathComponent("tandem")]
            + ProcessInfo.processInfo.arguments.prefix(1).map {
                URL(fileURLWithPath: $0).deletingLastPathComponent().appendingPathComponent("tandem")
            }
        return candidates.first { FileManager.default.isExecutableFile(atPath: $0.path) } ?? candidates[0]
    }

    static func run(_ arguments: [String]) throws -> (status: Int32, stdout: String, stderr: String) {
        let process = Process()
        process.executableURL = url
        process.arguments = arguments
        let out = Pipe()
        let err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        let stdout = out.fileHandleForReading.readDataToEndOfFile()
        let stderr = err.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (
            process.terminationStatus, String(decoding: stdout, as: UTF8.self), String(decoding: stderr, as: UTF8.self)
        )
    }
}

struct GoldenEntry: Decodable {
    let name: String
    let chat: Bool
    let prompt_text: String
    let prompt_ids: [Int]
    let output_ids: [Int]
}

struct GoldenFile: Decodable {
    let generations: [GoldenEntry]
}

@Suite struct GenerateCLITests {
    @Test func jsonOutputForAGoldenPrompt() throws {
        let url = try #require(
            Bundle.module.url(
                forResource: "smollm2-135m-instruct-q4_1", withExtension: "json", subdirectory: "Fixtures"))
        let golden = try JSONDecoder().decode(GoldenFile.self, from: Data(contentsOf: url))
        let entry = try #require(golden.generations.first { $0.name == "G01" })
        let result = try TandemBinary.run([
            "generate", "--model", "default", "--prompt", entry.prompt_text, "--max-tokens", "8", "--json",
        ])
        #expect(result.status == 0, "\(result.stderr)")
        let object = try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any])
        #expect(object["prompt_token_ids"] as? [Int] == entry.prompt_ids)
        #expect(object["token_ids"] as? [Int] == Array(entry.output_ids.prefix(8)))
        #expect(object["finish_reason"] as? String == "length")
        #expect((object["text"] as? String)?.hasPrefix(" Berlin") == true)
    }

    @Test func chatMessagesAreRenderedWithTheModelTemplate() throws {
        let result = try TandemBinary.run([
            "generate", "--messages", #"[{"role":"user","content":"Hi"}]"#, "--max-tokens", "4", "--json",
        ])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stdout.contains(#""prompt_text":"<|im_start|>system\nYou are a helpful AI assistant"#))
    }

    @Test func badArgumentsExitNonZeroWithAMessage() throws {
        let cases: [([String], String)] = [
            (["generate", "--max-tokens", "0", "--prompt", "x"], "max-tokens"),
            (["generate", "--prompt", "x", "--messages", "[]"], "exactly one"),
            (["generate", "--messages", "{not json", "--max-tokens", "2"], "JSON array"),
            (["generate", "--model", "/nonexistent.gguf", "--prompt", "x"], "cannot open"),
            (["bench", "--base-url", "ftp://x"], "base-url"),
            (["bench", "--base-url", "http://x", "--goodput", "ttft"], "goodput"),
            (["proxy", "--policy", "random"], "policy"),
            (["up", "--prefill", "0"], "prefill"),
            (["serve", "--port", "70000"], "port"),
            (["serve", "--kv-cache-memory", "lots"], "kv-cache-memory"),
            (["serve", "--kv-transfer-config", #"{"kv_role":"kv_boss"}"#], "kv_role"),
            (["serve", "--kv-transfer-config", #"{"kv_role":"kv_consumer","kv_port":"x"}"#], "kv_port"),
        ]
        for (args, message) in cases {
            let result = try TandemBinary.run(args)
            #expect(result.status != 0, "\(args)")
            #expect(result.stderr.contains(message), "\(args): \(result.stderr)")
        }
    }

    @Test func modelPathAndHelp() throws {
        let path = try TandemBinary.run(["model", "path"])
        #expect(path.status == 0 && path.stdout.hasSuffix("SmolLM2-135M-Instruct.Q4_1.gguf\n"))
        let help = try TandemBinary.run(["--help"])
        for sub in ["serve", "proxy", "up", "generate", "bench", "bench-engine", "model"] {
            #expect(help.stdout.contains(sub))
        }
    }
}
