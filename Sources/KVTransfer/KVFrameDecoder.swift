import NIOCore

/// Why bytes on a KV connection are not a valid frame.
public struct KVWireError: Error, CustomStringConvertible, Equatable {
    public let description: String
    init(_ d: String) { description = d }
}

/// Splits a byte stream into `KVInbound` messages, refusing frames longer than `maxFrameBytes`. A layer frame's
/// values are passed on as they arrive, in slices of the read buffers, so that they are never gathered (copied) into
/// one buffer here; every other frame is passed on whole.
public struct KVFrameDecoder: ByteToMessageDecoder {
    public typealias InboundOut = KVInbound
    let maxFrameBytes: Int
    /// Value bytes of the current layer frame still to come.
    private var valuesLeft = 0

    public init(maxFrameBytes: Int) { self.maxFrameBytes = maxFrameBytes }

    /// Bytes of a layer frame before its values, past the 13-byte frame header, for an id of `idBytes` bytes.
    private static func layerFieldBytes(idBytes: Int) -> Int { 2 + idBytes + 4 * 4 + 1 + 8 + 8 }

    public mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        if valuesLeft > 0 {
            let n = min(valuesLeft, buffer.readableBytes)
            guard n > 0, let piece = buffer.readSlice(length: n) else { return .needMoreData }
            valuesLeft -= n
            context.fireChannelRead(Self.wrapInboundOut(.values(piece)))
            return .continue
        }
        let at = buffer.readerIndex
        guard buffer.readableBytes >= KVFrame.headerBytes + 2,
            buffer.getInteger(at: at + 4, as: UInt8.self) == 2,
            buffer.getInteger(at: at, as: UInt32.self) == KVFrame.magic,
            let length = buffer.getInteger(at: at + 5, as: UInt64.self),
            let idBytes = buffer.getInteger(at: at + KVFrame.headerBytes, as: UInt16.self)
        else {
            guard let frame = try Self.parse(&buffer, maxFrameBytes: maxFrameBytes) else { return .needMoreData }
            context.fireChannelRead(Self.wrapInboundOut(.frame(frame)))
            return .continue
        }
        guard length <= UInt64(maxFrameBytes) else {
            throw KVWireError("a frame of \(length) bytes exceeds the limit of \(maxFrameBytes)")
        }
        let fields = Self.layerFieldBytes(idBytes: Int(idBytes))
        guard Int(length) >= fields else { throw KVWireError("truncated frame") }
        guard buffer.readableBytes >= KVFrame.headerBytes + fields else { return .needMoreData }
        buffer.moveReaderIndex(forwardBy: KVFrame.headerBytes + 2)
        guard let requestId = buffer.readString(length: Int(idBytes)),
            let layer = buffer.readInteger(as: UInt32.self), let start = buffer.readInteger(as: UInt32.self),
            let count = buffer.readInteger(as: UInt32.self), let kvDim = buffer.readInteger(as: UInt32.self),
            let dtype = buffer.readInteger(as: UInt8.self), let checksum = buffer.readInteger(as: UInt64.self),
            let bytes = buffer.readInteger(as: UInt64.self)
        else { throw KVWireError("truncated frame") }
        guard dtype == KVFrame.fp16 else { throw KVWireError("unsupported dtype") }
        // The shape's limits are a begin frame's (so the product cannot overflow whatever a peer writes).
        guard count <= 1 << 24, kvDim <= 65_536, bytes == UInt64(2 * 2 * Int(count) * Int(kvDim)),
            Int(bytes) == Int(length) - fields
        else {
            throw KVWireError("layer payload length does not match its shape")
        }
        valuesLeft = Int(bytes)
        context.fireChannelRead(
            Self.wrapInboundOut(
                .layer(
                    KVLayerHeader(
                        requestId: requestId, layer: Int(layer), tokenStart: Int(start), tokenCount: Int(count),
                        kvDim: Int(kvDim), checksum: checksum, valueBytes: Int(bytes)))))
        return .continue
    }

    /// One frame from the front of `buffer`, or nil when more bytes are needed.
    public static func parse(_ buffer: inout ByteBuffer, maxFrameBytes: Int) throws -> KVFrame? {
        guard buffer.readableBytes >= KVFrame.headerBytes,
            let magic = buffer.getInteger(at: buffer.readerIndex, as: UInt32.self),
            let type = buffer.getInteger(at: buffer.readerIndex + 4, as: UInt8.self),
            let length = buffer.getInteger(at: buffer.readerIndex + 5, as: UInt64.self)
        else { return nil }
        guard magic == KVFrame.magic else { throw KVWireError("not a Tandem KV frame (bad magic)") }
        guard length <= UInt64(maxFrameBytes) else {
            throw KVWireError("a frame of \(length) bytes exceeds the limit of \(maxFrameBytes)")
        }
        guard buffer.readableBytes >= KVFrame.headerBytes + Int(length) else { return nil }
        buffer.moveReaderIndex(forwardBy: KVFrame.headerBytes)
        guard var body = buffer.readSlice(length: Int(length)) else { return nil }
        func id() throws -> String {
            guard let n = body.readInteger(as: UInt16.self), let s = body.readString(length: Int(n)) else {
                throw KVWireError("truncated request id")
            }
            return s
        }
        func u32() throws -> Int {
            guard let v = body.readInteger(as: UInt32.self) else { throw KVWireError("truncated frame") }
            return Int(v)
        }
        func u8() throws -> UInt8 {
            guard let v = body.readInteger(as: UInt8.self) else { throw KVWireError("truncated frame") }
            return v
        }
        func u64() throws -> UInt64 {
            guard let v = body.readInteger(as: UInt64.self) else { throw KVWireError("truncated frame") }
            return v
        }
        switch type {
        case 1:
            let requestId = try id()
            let layers = try u32()
            let count = try u32()
            let kvDim = try u32()
            guard try u8() == KVFrame.fp16 else { throw KVWireError("unsupported dtype") }
            let fingerprint = try u64()
            // The token ids, then a flag byte when a first-token frame follows.
            guard count * 4 == body.readableBytes || count * 4 + 1 == body.readableBytes else {
                throw KVWireError("token list length mismatch")
            }
            let tokens = try (0..<count).map { _ in Int32(bitPattern: UInt32(try u32())) }
            let follows = body.readableBytes == 1 ? try u8() == 1 : false
            return .begin(
                requestId: requestId, layerCount: layers, kvDim: kvDim, fingerprint: fingerprint, tokens: tokens,
                firstTokenFollows: follows)
        case 2:
            let requestId = try id()
            let layer = try u32()
            let start = try u32()
            let count = try u32()
            let kvDim = try u32()
            guard try u8() == KVFrame.fp16 else { throw KVWireError("unsupported dtype") }
            let checksum = try u64()
            let bytes = try u64()
            guard bytes == UInt64(2 * 2 * count * kvDim), Int(bytes) == body.readableBytes else {
                throw KVWireError("layer payload length does not match its shape")
            }
            var values = [UInt16](repeating: 0, count: Int(bytes) / 2)
            values.withUnsafeMutableBytes { raw in
                _ = body.readWithUnsafeReadableBytes { src in
                    raw.copyMemory(from: UnsafeRawBufferPointer(rebasing: src.prefix(raw.count)))
                    return raw.count
                }
            }
            return .layer(
                requestId: requestId, layer: layer, tokenStart: start, tokenCount: count, kvDim: kvDim,
                checksum: checksum, values: values)
        case 3:
            let requestId = try id()
            let status = try u8()
            guard let n = body.readInteger(as: UInt16.self), let message = body.readString(length: Int(n)) else {
                throw KVWireError("truncated ack")
            }
            return .ack(requestId: requestId, accepted: status == 0, message: message)
        case 4:
            let requestId = try id()
            guard let n = body.readInteger(as: UInt16.self), let reason = body.readString(length: Int(n)) else {
                throw KVWireError("truncated cancel")
            }
            return .cancel(requestId: requestId, reason: reason)
        case 5:
            return .pull(requestId: try id())
        case 6:
            let requestId = try id()
            return .first(requestId: requestId, token: Int32(bitPattern: UInt32(try u32())))
        default:
            throw KVWireError("unknown frame type \(type)")
        }
    }
}
