import Discovery
import Engine
import KVTransfer
import NIOCore
import Server

/// One decoder under fuzzing: its name on the command line, the function it runs on an input, and seed inputs
/// made with Tandem's own encoders (valid messages for the fuzzer to mutate).
enum FuzzTarget: String, CaseIterable {
    case kvFrames = "kv-frames"
    case msgpack
    case requestFields = "request-fields"

    func run(_ input: [UInt8]) {
        switch self {
        case .kvFrames: KVReceiveFuzzing.receive(input)
        case .msgpack: RegistrationFuzzing.receive(input)
        case .requestFields: RequestFieldsFuzzing.parse(input)
        }
    }

    /// Seed inputs, by file name.
    var seeds: [(String, [UInt8])] {
        switch self {
        case .kvFrames: return Self.kvSeeds
        case .msgpack: return Self.msgpackSeeds
        case .requestFields:
            return [
                #"{"prompt":"Hello","max_tokens":16,"temperature":0.7,"top_p":0.9,"seed":3,"stop":["\n"]}"#,
                #"{"prompt":[1,2,3],"stream":true,"stream_options":{"include_usage":true},"logprobs":2}"#,
                #"{"messages":[{"role":"user","content":"Hi"}],"max_completion_tokens":8,"min_tokens":1}"#,
                #"{"prompt":"x","kv_transfer_params":{"do_remote_prefill":true,"remote_host":"::1","remote_port":8082,"remote_block_ids":[1,2]}}"#,
                #"{"prompt":"x","tandem_resume":{"token_ids":[5,6],"random_draws":2},"tandem_kv_wait_s":1.5}"#,
                #"{"prompt":"\u00e9\ud83d\ude00","stop_token_ids":[2],"repetition_penalty":1.1,"ignore_eos":false}"#,
            ].enumerated().map { ("seed-\($0.offset).json", Array($0.element.utf8)) }
        }
    }

    private static var kvSeeds: [(String, [UInt8])] {
        let tokens: [Int32] = [1, 2, 3, 4]
        let kvDim = 8
        let payload = KVPayload(
            tokens: tokens, layerCount: 2, kvDim: kvDim, fingerprint: KVReceiveFuzzing.fingerprint,
            values: (0..<(2 * 2 * tokens.count * kvDim)).map { UInt16(truncatingIfNeeded: $0 * 977) })
        var whole = ByteBuffer()
        for frame in KVFrame.frames(for: payload, requestId: "r1") { frame.write(into: &whole) }
        var other = ByteBuffer()
        KVFrame.begin(
            requestId: "r2", layerCount: 1, kvDim: 4, fingerprint: KVReceiveFuzzing.fingerprint, tokens: [7],
            firstTokenFollows: true
        ).write(into: &other)
        KVFrame.first(requestId: "r2", token: 9).write(into: &other)
        KVFrame.cancel(requestId: "r3", reason: "gone").write(into: &other)
        KVFrame.ack(requestId: "r4", accepted: false, message: "no").write(into: &other)
        KVFrame.pull(requestId: "r5").write(into: &other)
        // The first byte of an input picks the size of the reads the bytes after it arrive in (here 35 and 7).
        return [
            ("transfer.bin", [5] + Array(whole.readableBytesView)),
            ("frames.bin", [1] + Array(other.readableBytesView)),
        ]
    }

    private static var msgpackSeeds: [(String, [UInt8])] {
        let ping = RegistrationPing(
            role: .decode, httpAddress: HostPort(host: "10.0.0.2", port: 8083),
            zmqAddress: HostPort(host: "10.0.0.2", port: 8084), resumable: true)
        return [
            ("ping.msgpack", ping.message.encoded()),
            ("signed.msgpack", RegistrationSignature.signed(ping, secret: RegistrationFuzzing.secret).encoded()),
            (
                "mixed.msgpack",
                MessagePackValue.array([.null, .bool(true), .int(-5), .uint(1 << 40), .double(0.5), .binary([1, 2])])
                    .encoded()
            ),
        ]
    }
}
