import Engine
import NIOCore

/// Tandem's KV-transfer frames over TCP (documented in docs/kv-transfer-protocol.md). Every frame is
/// `magic u32 "TKV1" | type u8 | body length u64 | body`, integers big-endian; KV values travel as raw fp16 bytes.
public enum KVFrame: Sendable, Equatable {
    /// Opens a transfer: the request, the shape, the model fingerprint and the token ids.
    case begin(requestId: String, layerCount: Int, kvDim: Int, fingerprint: UInt64, tokens: [Int32])
    /// One layer's K then V rows for tokens `tokenStart..<tokenStart+tokenCount`, with a checksum of the values.
    case layer(
        requestId: String, layer: Int, tokenStart: Int, tokenCount: Int, kvDim: Int, checksum: UInt64,
        values: [UInt16])
    /// The receiver's verdict on a whole transfer.
    case ack(requestId: String, accepted: Bool, message: String)

    static let magic: UInt32 = 0x544B_5631  // "TKV1"
    static let headerBytes = 13
    static let fp16: UInt8 = 1

    /// FNV-1a-style 64-bit hash over the values taken four at a time as little-endian 64-bit words (a trailing
    /// partial word is zero-padded).
    public static func checksum(_ values: ArraySlice<UInt16>) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        values.withUnsafeBufferPointer { v in
            var i = 0
            while i + 4 <= v.count {
                let word =
                    UInt64(v[i]) | UInt64(v[i + 1]) << 16 | UInt64(v[i + 2]) << 32 | UInt64(v[i + 3]) << 48
                h = (h ^ word) &* 0x0000_0100_0000_01b3
                i += 4
            }
            if i < v.count {
                var word: UInt64 = 0
                for k in i..<v.count { word |= UInt64(v[k]) << (16 * UInt64(k - i)) }
                h = (h ^ word) &* 0x0000_0100_0000_01b3
            }
        }
        return h
    }

    /// The frames that carry `payload`: a begin frame, then one frame per layer.
    public static func frames(for payload: KVPayload, requestId: String) -> [KVFrame] {
        var frames: [KVFrame] = [
            .begin(
                requestId: requestId, layerCount: payload.layerCount, kvDim: payload.kvDim,
                fingerprint: payload.fingerprint, tokens: payload.tokens)
        ]
        let part = payload.valuesPerPart
        for layer in 0..<payload.layerCount {
            let start = payload.offset(layer: layer, value: false)
            let values = Array(payload.values[start..<start + 2 * part])
            frames.append(
                .layer(
                    requestId: requestId, layer: layer, tokenStart: 0, tokenCount: payload.tokens.count,
                    kvDim: payload.kvDim, checksum: checksum(values[...]), values: values))
        }
        return frames
    }

    public func write(into buffer: inout ByteBuffer) {
        var body = ByteBuffer()
        let type: UInt8
        func id(_ s: String) {
            let bytes = Array(s.utf8.prefix(Int(UInt16.max)))
            body.writeInteger(UInt16(bytes.count))
            body.writeBytes(bytes)
        }
        switch self {
        case .begin(let requestId, let layerCount, let kvDim, let fingerprint, let tokens):
            type = 1
            id(requestId)
            body.writeInteger(UInt32(layerCount))
            body.writeInteger(UInt32(tokens.count))
            body.writeInteger(UInt32(kvDim))
            body.writeInteger(Self.fp16)
            body.writeInteger(fingerprint)
            for t in tokens { body.writeInteger(UInt32(bitPattern: t)) }
        case .layer(let requestId, let layer, let tokenStart, let tokenCount, let kvDim, let checksum, let values):
            type = 2
            id(requestId)
            body.writeInteger(UInt32(layer))
            body.writeInteger(UInt32(tokenStart))
            body.writeInteger(UInt32(tokenCount))
            body.writeInteger(UInt32(kvDim))
            body.writeInteger(Self.fp16)
            body.writeInteger(checksum)
            body.writeInteger(UInt64(values.count * 2))
            // Little-endian fp16, as the cache holds them.
            _ = values.withUnsafeBytes { body.writeBytes($0) }
        case .ack(let requestId, let accepted, let message):
            type = 3
            id(requestId)
            body.writeInteger(UInt8(accepted ? 0 : 1))
            let m = Array(message.utf8.prefix(Int(UInt16.max)))
            body.writeInteger(UInt16(m.count))
            body.writeBytes(m)
        }
        buffer.writeInteger(Self.magic)
        buffer.writeInteger(type)
        buffer.writeInteger(UInt64(body.readableBytes))
        buffer.writeBuffer(&body)
    }
}

/// Why bytes on a KV connection are not a valid frame.
public struct KVWireError: Error, CustomStringConvertible, Equatable {
    public let description: String
    init(_ d: String) { description = d }
}

/// Splits a byte stream into `KVFrame`s, refusing frames longer than `maxFrameBytes`.
public struct KVFrameDecoder: ByteToMessageDecoder {
    public typealias InboundOut = KVFrame
    let maxFrameBytes: Int

    public init(maxFrameBytes: Int) { self.maxFrameBytes = maxFrameBytes }

    public mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let frame = try Self.parse(&buffer, maxFrameBytes: maxFrameBytes) else { return .needMoreData }
        context.fireChannelRead(Self.wrapInboundOut(frame))
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
            guard count * 4 == body.readableBytes else { throw KVWireError("token list length mismatch") }
            let tokens = try (0..<count).map { _ in Int32(bitPattern: UInt32(try u32())) }
            return .begin(
                requestId: requestId, layerCount: layers, kvDim: kvDim, fingerprint: fingerprint, tokens: tokens)
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
        default:
            throw KVWireError("unknown frame type \(type)")
        }
    }
}
