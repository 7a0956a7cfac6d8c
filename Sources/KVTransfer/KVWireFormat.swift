import CKernels
import Engine
import NIOCore

/// Tandem's KV-transfer frames over TCP (documented in docs/kv-transfer-protocol.md). Every frame is
/// `magic u32 "TKV1" | type u8 | body length u64 | body`, integers big-endian; KV values travel as raw fp16 bytes.
public enum KVFrame: Sendable, Equatable {
    /// Opens a transfer: the request, the shape, the model fingerprint and the token ids; `firstTokenFollows` when a
    /// `first` frame completes it (a hand-off prefill's).
    case begin(
        requestId: String, layerCount: Int, kvDim: Int, fingerprint: UInt64, tokens: [Int32],
        firstTokenFollows: Bool = false)
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
    /// The hand-off prefill's first token, after the last layer: the consumer continues after it.
    case first(requestId: String, token: Int32)

    /// A producer's refusal of a pull whose KV did not reach its outbox within its deadline.
    static let notYetOffered = "no KV for this request here"

    static let magic: UInt32 = 0x544B_5631  // "TKV1"
    static let headerBytes = 13
    static let fp16: UInt8 = 1

    /// The checksum of a layer frame's values: `tk_hash64` of the V rows' bytes, seeded with that of the K rows'
    /// bytes (so a receiver can check K and V where they landed, apart).
    public static func checksum(k: UnsafeRawBufferPointer, v: UnsafeRawBufferPointer) -> UInt64 {
        tk_hash64(v.baseAddress, v.count, tk_hash64(k.baseAddress, k.count, 0))
    }

    /// The checksum of a layer frame's values, K rows then V rows (two equal halves).
    public static func checksum(_ values: ArraySlice<UInt16>) -> UInt64 {
        values.withUnsafeBytes { raw in
            let half = raw.count / 2
            return checksum(
                k: UnsafeRawBufferPointer(rebasing: raw[..<half]), v: UnsafeRawBufferPointer(rebasing: raw[half...]))
        }
    }

    /// The request a frame belongs to.
    public var requestId: String {
        switch self {
        case .begin(let id, _, _, _, _, _), .layer(let id, _, _, _, _, _, _), .ack(let id, _, _), .cancel(let id, _),
            .pull(let id), .first(let id, _):
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
        for layer in 0..<payload.layerCount {
            let first = payload.layerStarts[layer]
            let n = (payload.tokens.count - first) * payload.kvDim
            let k = payload.offset(layer: layer, value: false) + first * payload.kvDim
            let v = payload.offset(layer: layer, value: true) + first * payload.kvDim
            let values = Array(payload.values[k..<k + n] + payload.values[v..<v + n])
            frames.append(
                .layer(
                    requestId: requestId, layer: layer, tokenStart: first, tokenCount: payload.tokens.count - first,
                    kvDim: payload.kvDim, checksum: checksum(values[...]), values: values))
        }
        return frames
    }

    /// Bytes a layer frame of `valueBytes` takes on the wire, header included.
    static func layerFrameBytes(requestId: String, valueBytes: Int) -> Int {
        headerBytes + 2 + min(requestId.utf8.count, Int(UInt16.max)) + 4 * 4 + 1 + 8 + 8 + valueBytes
    }

    /// Writes the layer frame of positions `tokenStart..<tokenStart+tokenCount` of one layer straight from where its
    /// K rows and V rows are (the checksum is taken on the way), with no intermediate copy.
    static func writeLayer(
        requestId: String, layer: Int, tokenStart: Int, tokenCount: Int, kvDim: Int, k: UnsafeRawBufferPointer,
        v: UnsafeRawBufferPointer, checksum given: UInt64? = nil, into buffer: inout ByteBuffer
    ) {
        let lengthAt = writeHeader(type: 2, into: &buffer)
        writeId(requestId, into: &buffer)
        buffer.writeInteger(UInt32(layer))
        buffer.writeInteger(UInt32(tokenStart))
        buffer.writeInteger(UInt32(tokenCount))
        buffer.writeInteger(UInt32(kvDim))
        buffer.writeInteger(Self.fp16)
        let sumAt = buffer.writerIndex
        buffer.writeInteger(UInt64(0))
        buffer.writeInteger(UInt64(k.count + v.count))
        // Little-endian fp16, as the cache holds them, copied and checksummed in one pass.
        var hash = tk_hash_state()
        tk_hash_init(&hash, 0)
        for (i, part) in [k, v].enumerated() {
            if i == 1 { tk_hash_init(&hash, tk_hash_final(&hash)) }
            buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: part.count) { dst in
                tk_hash_copy_update(&hash, dst.baseAddress, part.baseAddress, part.count)
                return part.count
            }
        }
        buffer.setInteger(given ?? tk_hash_final(&hash), at: sumAt)
        finishHeader(lengthAt: lengthAt, in: &buffer)
    }

    /// A layer frame from values laid out as a slice's are: K rows, then V rows (two equal halves).
    static func writeLayer(
        requestId: String, layer: Int, tokenStart: Int, tokenCount: Int, kvDim: Int, values: [UInt16],
        checksum given: UInt64? = nil, into buffer: inout ByteBuffer
    ) {
        values.withUnsafeBytes { raw in
            let half = raw.count / 2
            writeLayer(
                requestId: requestId, layer: layer, tokenStart: tokenStart, tokenCount: tokenCount, kvDim: kvDim,
                k: UnsafeRawBufferPointer(rebasing: raw[..<half]), v: UnsafeRawBufferPointer(rebasing: raw[half...]),
                checksum: given, into: &buffer)
        }
    }

    /// One layer's frame of a whole payload (the positions it carries of that layer), written straight from the
    /// payload's values.
    static func writeLayer(of payload: KVPayload, layer: Int, requestId: String, into buffer: inout ByteBuffer) {
        let first = payload.layerStarts[layer]
        let bytes = (payload.tokens.count - first) * payload.kvDim * 2
        payload.values.withUnsafeBytes { raw in
            let k = (payload.offset(layer: layer, value: false) + first * payload.kvDim) * 2
            let v = (payload.offset(layer: layer, value: true) + first * payload.kvDim) * 2
            writeLayer(
                requestId: requestId, layer: layer, tokenStart: first, tokenCount: payload.tokens.count - first,
                kvDim: payload.kvDim, k: UnsafeRawBufferPointer(rebasing: raw[k..<k + bytes]),
                v: UnsafeRawBufferPointer(rebasing: raw[v..<v + bytes]), into: &buffer)
        }
    }

    /// Bytes of the layer frame `writeLayer(of:layer:requestId:into:)` writes.
    static func layerFrameBytes(of payload: KVPayload, layer: Int, requestId: String) -> Int {
        layerFrameBytes(
            requestId: requestId,
            valueBytes: 2 * (payload.tokens.count - payload.layerStarts[layer]) * payload.kvDim * 2)
    }

    /// Writes magic and type and room for the body length; returns where the length goes.
    private static func writeHeader(type: UInt8, into buffer: inout ByteBuffer) -> Int {
        buffer.writeInteger(magic)
        buffer.writeInteger(type)
        let at = buffer.writerIndex
        buffer.writeInteger(UInt64(0))
        return at
    }

    private static func finishHeader(lengthAt: Int, in buffer: inout ByteBuffer) {
        buffer.setInteger(UInt64(buffer.writerIndex - lengthAt - 8), at: lengthAt)
    }

    private static func writeId(_ s: String, into buffer: inout ByteBuffer) {
        let bytes = Array(s.utf8.prefix(Int(UInt16.max)))
        buffer.writeInteger(UInt16(bytes.count))
        buffer.writeBytes(bytes)
    }

    public func write(into buffer: inout ByteBuffer) {
        if case .layer(let requestId, let layer, let tokenStart, let tokenCount, let kvDim, let sum, let values) = self
        {
            return Self.writeLayer(
                requestId: requestId, layer: layer, tokenStart: tokenStart, tokenCount: tokenCount, kvDim: kvDim,
                values: values, checksum: sum, into: &buffer)
        }
        let type: UInt8
        switch self {
        case .begin: type = 1
        case .layer: type = 2
        case .ack: type = 3
        case .cancel: type = 4
        case .pull: type = 5
        case .first: type = 6
        }
        let lengthAt = Self.writeHeader(type: type, into: &buffer)
        writeBody(into: &buffer)
        Self.finishHeader(lengthAt: lengthAt, in: &buffer)
    }

    private func writeBody(into body: inout ByteBuffer) {
        func id(_ s: String) { Self.writeId(s, into: &body) }
        switch self {
        case .begin(let requestId, let layerCount, let kvDim, let fingerprint, let tokens, let firstTokenFollows):
            id(requestId)
            body.writeInteger(UInt32(layerCount))
            body.writeInteger(UInt32(tokens.count))
            body.writeInteger(UInt32(kvDim))
            body.writeInteger(Self.fp16)
            body.writeInteger(fingerprint)
            for t in tokens { body.writeInteger(UInt32(bitPattern: t)) }
            if firstTokenFollows { body.writeInteger(UInt8(1)) }
        case .layer:
            break  // written by `writeLayer`
        case .ack(let requestId, let accepted, let message):
            id(requestId)
            body.writeInteger(UInt8(accepted ? 0 : 1))
            let m = Array(message.utf8.prefix(Int(UInt16.max)))
            body.writeInteger(UInt16(m.count))
            body.writeBytes(m)
        case .cancel(let requestId, let reason):
            id(requestId)
            let m = Array(reason.utf8.prefix(Int(UInt16.max)))
            body.writeInteger(UInt16(m.count))
            body.writeBytes(m)
        case .pull(let requestId):
            id(requestId)
        case .first(let requestId, let token):
            id(requestId)
            body.writeInteger(UInt32(bitPattern: token))
        }
    }
}
