import ArgumentParser
import Discovery
import Engine
import Foundation
import KVTransfer
import Logging

/// `tandem bench-kv`: the KV transfer's speed on loopback against a plain TCP stream of the same bytes, in one run.
///
/// Two KV nodes in two processes (this one the producer, a child `tandem bench-kv --consumer` the consumer, as two
/// instances would be) move a prompt's KV with PUT (frames, checksums, ack); a plain socket pair moves the same
/// number of bytes with `send`/`recv` and nothing else. The consumer also times the decode's load: the received KV
/// written into a paged cache's blocks. With `TANDEM_CLUSTER_SECRET` set, both nodes authenticate and MAC every frame;
/// with `--tls-cert-file`, `--tls-key-file` and `--tls-ca-file`, the KV moves over mutual TLS (`KVTLS`).
struct BenchKVCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-kv", abstract: "Measure KV transfer (PUT) on loopback against a plain TCP stream.")

    @Option(help: "Prompt tokens whose KV moves.") var tokens = 512
    @Option(help: "Layers of the model (SmolLM2-135M: 30).") var layers = 30
    @Option(help: "K (or V) values per token per layer (SmolLM2-135M: 3 KV heads × 64).") var kvDim = 192
    @Option(help: "Measured repetitions (after one warm-up).") var repetitions = 20
    @Flag(help: "Print one JSON line instead of a table.") var json = false
    @Option(help: "TLS on the KV link: this PEM certificate (with --tls-key-file and --tls-ca-file).")
    var tlsCertFile: String?
    @Option(help: "TLS on the KV link: the certificate's PEM key.") var tlsKeyFile: String?
    @Option(help: "TLS on the KV link: the PEM CA that peers' certificates must chain to.") var tlsCaFile: String?
    @Flag(help: .hidden) var consumer = false

    /// The TLS settings, when all three files are given.
    private func tls() throws -> KVTLS? {
        switch (tlsCertFile, tlsKeyFile, tlsCaFile) {
        case (nil, nil, nil): return nil
        case (let cert?, let key?, let ca?): return try KVTLS(certificateFile: cert, keyFile: key, caFile: ca)
        default: throw ValidationError("--tls-cert-file, --tls-key-file and --tls-ca-file go together")
        }
    }

    func validate() throws {
        guard tokens >= 1, layers >= 1, kvDim >= 1, repetitions >= 1 else {
            throw ValidationError("--tokens, --layers, --kv-dim and --repetitions must be at least 1")
        }
    }

    func run() async throws {
        if consumer { return try await runConsumer() }
        let count = layers * 2 * tokens * kvDim
        var values = [UInt16](repeating: 0, count: count)
        var seed: UInt64 = 0x9E37_79B9_7F4A_7C15
        for i in values.indices {
            seed = seed &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            values[i] = UInt16(truncatingIfNeeded: seed >> 33) & 0x7BFF  // finite fp16 values
        }
        let payload = KVPayload(
            tokens: (0..<tokens).map { Int32($0 % 32_000) }, layerCount: layers, kvDim: kvDim,
            fingerprint: Self.fingerprint, values: values)
        let bytes = Double(payload.byteCount)

        let stream = try PlainTCPStream(bytes: payload.byteCount)
        var logger = Logger(label: "bench-kv")
        logger.logLevel = .error
        let child = Process()
        child.executableURL = URL(fileURLWithPath: CommandLine.arguments[0])
        child.arguments = [
            "bench-kv", "--consumer", "--tokens", "\(tokens)", "--layers", "\(layers)", "--kv-dim", "\(kvDim)",
            "--repetitions", "\(repetitions)",
        ]
        if let tlsCertFile, let tlsKeyFile, let tlsCaFile {
            child.arguments! += [
                "--tls-cert-file", tlsCertFile, "--tls-key-file", tlsKeyFile, "--tls-ca-file", tlsCaFile,
            ]
        }
        let out = Pipe()
        let input = Pipe()
        child.standardOutput = out
        child.standardInput = input
        try child.run()
        defer { if child.isRunning { child.terminate() } }
        let lines = LineReader(out.fileHandleForReading)
        guard let portLine = lines.next(), let port = Int(portLine.dropFirst("port ".count)) else {
            throw ValidationError("the consumer process did not start")
        }
        let producer = try await KVNode(
            bind: HostPort(host: "127.0.0.1", port: 0), fingerprint: Self.fingerprint,
            bufferBytes: 4 * payload.byteCount, ttl: 60, transferTimeout: 30,
            clusterSecret: try ClusterSecret.load(file: nil), tls: try tls(), logger: logger)
        // Alternately, so that both see the same state of the machine.
        var put: [Double] = []
        var plain: [Double] = []
        for i in 0...repetitions {
            let t = try stream.transfer()
            let start = ContinuousClock.now
            try await producer.send(payload, requestId: "bench-\(i)", to: HostPort(host: "127.0.0.1", port: port))
            if i > 0 {
                put.append(seconds(since: start))
                plain.append(t)
            }
        }
        await producer.close()
        input.fileHandleForWriting.closeFile()
        guard let loadLine = lines.next(), let loadSeconds = Double(loadLine.dropFirst("load ".count)) else {
            throw ValidationError("the consumer process did not report its load time")
        }
        child.waitUntilExit()
        let load = [loadSeconds]

        func median(_ v: [Double]) -> Double { v.sorted()[v.count / 2] }
        let plainGBs = bytes / median(plain) / 1e9
        let putGBs = bytes / median(put) / 1e9
        let loadMs = median(load) * 1000
        if json {
            print(
                #"{"bytes":\#(Int(bytes)),"plain_tcp_gbs":\#(plainGBs),"put_gbs":\#(putGBs),"ratio":\#(putGBs / plainGBs),"put_ms":\#(median(put) * 1000),"load_ms":\#(loadMs)}"#
            )
            return
        }
        let mb = String(format: "%.1f", bytes / 1e6)
        print("KV of \(tokens) tokens × \(layers) layers × K,V × \(kvDim) × fp16 = \(mb) MB; medians of \(repetitions)")
        print("| path | time | GB/s |")
        print("|---|---|---|")
        print("| plain TCP stream (send/recv, loopback) | \(ms(median(plain))) | \(gbs(plainGBs)) |")
        print("| PUT (frames, checksums, ack) | \(ms(median(put))) | \(gbs(putGBs)) |")
        print("| decode's load into the paged cache | \(ms(median(load))) | \(gbs(bytes / median(load) / 1e9)) |")
        print("PUT / plain stream: \(String(format: "%.0f", 100 * putGBs / plainGBs)) %")
    }

    static let fingerprint: UInt64 = 0x7461_6e64_656d

    /// The consumer process: prints its KV port, takes every transfer from its inbox, then, when its input closes,
    /// loads the last into a paged cache (blocks out of order, as a pool hands them out) and prints the median load.
    private func runConsumer() async throws {
        var logger = Logger(label: "bench-kv")
        logger.logLevel = .error
        let node = try await KVNode(
            bind: HostPort(host: "127.0.0.1", port: 0), fingerprint: Self.fingerprint,
            bufferBytes: 4 * layers * 2 * tokens * kvDim * 2, ttl: 600, transferTimeout: 30,
            clusterSecret: try ClusterSecret.load(file: nil), tls: try tls(), logger: logger)
        FileHandle.standardOutput.write(Data("port \(node.port)\n".utf8))
        let blocks = (tokens + 15) / 16
        let cache = PagedKVCache(layerCount: layers, blockCount: blocks, blockSize: 16, kvDim: kvDim)
        let table = (0..<Int32(blocks)).reversed().map { $0 }
        // Transfers are taken (and freed) as they come; the load is timed once they are all in, on the last one, so
        // that loads do not compete with transfers for the cores.
        var last: KVPayload?
        for i in 0...repetitions {
            guard case .payload(let p) = await node.inbox.wait(for: "bench-\(i)", timeout: 30) else {
                throw ValidationError("transfer \(i) did not arrive")
            }
            last = p
        }
        _ = FileHandle.standardInput.readDataToEndOfFile()
        var load: [Double] = []
        for _ in 0...repetitions {
            let start = ContinuousClock.now
            cache.load(last!, count: tokens, tables: KVBlockTables(full: table))
            load.append(seconds(since: start))
        }
        load.removeFirst()
        FileHandle.standardOutput.write(Data("load \(load.sorted()[load.count / 2])\n".utf8))
        await node.close()
    }

    private func ms(_ s: Double) -> String { String(format: "%.2f ms", s * 1000) }
    private func gbs(_ v: Double) -> String { String(format: "%.2f", v) }
}

/// Lines from a pipe, read as they come.
final class LineReader {
    private let handle: FileHandle
    private var pending = Data()

    init(_ handle: FileHandle) { self.handle = handle }

    func next() -> String? {
        while true {
            if let i = pending.firstIndex(of: 10) {
                let line = String(decoding: pending[pending.startIndex..<i], as: UTF8.self)
                pending.removeSubrange(pending.startIndex...i)
                return line
            }
            let more = handle.availableData
            if more.isEmpty { return nil }
            pending.append(more)
        }
    }
}
