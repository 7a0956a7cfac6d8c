import Logging
import NIOCore
import NIOEmbedded

/// The receiving side of a KV connection (frame decoder, transfer assembly, reservations, acks) fed with
/// arbitrary bytes, for the libFuzzer harness (`tandem-fuzz kv-frames`) and the test that replays its corpus.
/// Whatever the bytes, it must neither crash nor leave a reservation behind once the connection has closed.
public enum KVReceiveFuzzing {
    /// The model fingerprint the receiving node expects (seed inputs use it, so their frames get past the check).
    public static let fingerprint: UInt64 = 42

    /// Feeds `bytes` to a fresh connection of a fresh node, split into reads at the offsets the first byte picks,
    /// then closes the connection and checks that nothing stays reserved. Returns the bytes of the transfers
    /// delivered.
    @discardableResult
    public static func receive(_ bytes: [UInt8]) -> Int {
        let node = KVNodeState(
            fingerprint: fingerprint, bufferBytes: 1 << 24, ttl: 30, transferTimeout: 30,
            logger: Logger(label: "fuzz", factory: { _ in SwiftLogNoOpLogHandler() }), report: { _ in })
        let channel = EmbeddedChannel()
        do {
            try channel.pipeline.syncOperations.addHandler(
                ByteToMessageHandler(KVFrameDecoder(maxFrameBytes: node.maxFrameBytes)))
            try channel.pipeline.syncOperations.addHandler(KVPeerHandler(node: node))
            try channel.connect(to: SocketAddress(ipAddress: "10.0.0.1", port: 8082)).wait()
        } catch {
            preconditionFailure("the fuzz pipeline could not be set up: \(error)")
        }
        let step = max(1, Int(bytes.first ?? 0) * 7)
        var at = bytes.isEmpty ? 0 : 1
        while at < bytes.count, channel.isActive {
            let end = min(bytes.count, at + step)
            _ = try? channel.writeInbound(ByteBuffer(bytes: bytes[at..<end]))
            at = end
        }
        _ = try? channel.finish()
        precondition(
            node.inbox.arrivingBytes == 0, "a closed connection left \(node.inbox.arrivingBytes) bytes reserved")
        precondition(node.reserved(host: "10.0.0.1") == 0, "a closed connection left its host's share taken")
        return node.inbox.bytesInUse
    }
}
