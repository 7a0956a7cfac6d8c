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
    /// The receiver's verdict on a whole transfer (or a producer's refusal of a pull).
    case ack(requestId: String, accepted: Bool, message: String)
    /// The producer abandons a transfer it began (its prefill was aborted, or its send buffer ran out).
    case cancel(requestId: String, reason: String)
    /// A consumer asks the producer for a request's KV (send type GET).
    case pull(requestId: String)

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

    /// The frame that carries one streamed layer slice.
    public static func frame(for slice: KVLayerSlice, requestId: String) -> KVFrame {
        .layer(
            requestId: requestId, layer: slice.layer, tokenStart: slice.tokenStart, tokenCount: slice.tokenCount,
            kvDim: slice.kvDim, checksum: checksum(slice.values[...]), values: slice.values)
    }

    /// The request a frame belongs to.
    public var requestId: String {
        switch self {
        case .begin(let id, _, _, _, _), .layer(let id, _, _, _, _, _, _), .ack(let id, _, _), .cancel(let id, _),
            .pull(let id):
            return id
        }
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
        case .cancel(let requestId, let reason):
            type = 4
            id(requestId)
            let m = Array(reason.utf8.prefix(Int(UInt16.max)))
            body.writeInteger(UInt16(m.count))
            body.writeBytes(m)
        case .pull(let requestId):
            type = 5
            id(requestId)
        }
        buffer.writeInteger(Self.magic)
        buffer.writeInteger(type)
        buffer.writeInteger(UInt64(body.readableBytes))
        buffer.writeBuffer(&body)
    }
}
