import NIOCore

/// What `KVFrameDecoder` hands up a KV connection's pipeline: whole control frames, and layer frames as a header
/// followed by their value bytes in the pieces they arrived in (slices of the read buffers, not copies), so that the
/// receiver writes them once, straight where they belong.
public enum KVInbound {
    /// Any frame but a layer frame.
    case frame(KVFrame)
    /// A layer frame's header; `header.valueBytes` bytes of values follow in `.values` pieces.
    case layer(KVLayerHeader)
    /// The next piece of the current layer frame's values (K rows, then V rows).
    case values(ByteBuffer)
}

/// The fixed fields of a layer frame.
public struct KVLayerHeader: Equatable, Sendable {
    public let requestId: String
    public let layer: Int
    public let tokenStart: Int
    public let tokenCount: Int
    public let kvDim: Int
    public let checksum: UInt64
    /// Bytes of K then V values that follow: `2 * 2 * tokenCount * kvDim`.
    public let valueBytes: Int
}
