import Discovery
import Engine

/// Reads what a request says about its KV (vLLM's P2P request id, vLLM's `kv_transfer_params`) and writes the
/// `kv_transfer_params` a producer answers with. The one place that knows both protocols.
///
/// Read, in this order:
/// - A consumer's body `kv_transfer_params` with `do_remote_prefill: true` and `remote_host`/`remote_port` (copied
///   from the producer's response by a router): the KV comes from that address, under `tandem_transfer_id` (or the
///   request id), pushed when `tandem_delivery` is `push`, pulled otherwise.
/// - A producer's body `kv_transfer_params` with `do_remote_decode: true`: pushed to the id's decode address when the
///   id names this instance's KV address as the prefill; otherwise (an id with HTTP ports, or no id) kept for the
///   consumer to pull, as vLLM's Nixl path does.
/// - Otherwise the id alone, as vLLM's P2P NCCL proxy sends it: the send type decides push or pull.
struct KVTransferParamsCodec: Sendable {
    let role: KVTransferConfig.Role
    let sendType: KVTransferConfig.SendType
    /// This instance's advertised KV address.
    let kvAddress: HostPort

    func parse(requestId: String?, params: [String: KVParamValue]?) throws -> KVTransferParams? {
        let p = params ?? [:]
        let id = requestId.flatMap(DisaggregatedRequestID.init)
        if p["do_remote_prefill"] == .bool(true), role != .producer {
            return try consumerFromBody(p, requestId: requestId)
        }
        if p["do_remote_decode"] == .bool(true), role != .consumer, let requestId {
            if let id, id.prefill == kvAddress, sendType != .get {
                return KVTransferParams(
                    role: .produce, delivery: .push, transferId: requestId, prefillAddress: kvAddress.description,
                    decodeAddress: id.decode.description)
            }
            return KVTransferParams(
                role: .produce, delivery: .pull, transferId: requestId, prefillAddress: kvAddress.description)
        }
        guard let id else { return nil }
        let delivery: KVTransferParams.Delivery = sendType == .get ? .pull : .push
        let consume: Bool
        switch role {
        case .producer: consume = false
        case .consumer: consume = true
        case .both: consume = id.decode == kvAddress
        }
        return KVTransferParams(
            role: consume ? .consume : .produce, delivery: delivery, transferId: id.description,
            prefillAddress: id.prefill.description, decodeAddress: id.decode.description)
    }

    private func consumerFromBody(_ p: [String: KVParamValue], requestId: String?) throws -> KVTransferParams {
        guard case .string(let host)? = p["remote_host"], !host.isEmpty else {
            throw KVTransferParamsError("kv_transfer_params.remote_host must name the prefill instance's KV host")
        }
        let port: Int
        switch p["remote_port"] {
        case .int(let n)? where (1...65535).contains(n): port = n
        case .string(let s)? where Int(s).map({ (1...65535).contains($0) }) == true: port = Int(s)!
        default: throw KVTransferParamsError("kv_transfer_params.remote_port must be a port number")
        }
        var transferId = requestId
        if case .string(let t)? = p["tandem_transfer_id"], !t.isEmpty { transferId = t }
        guard let transferId else {
            throw KVTransferParamsError("kv_transfer_params needs tandem_transfer_id, or the request an X-Request-Id")
        }
        var fingerprint: UInt64?
        if case .string(let f)? = p["tandem_fingerprint"] { fingerprint = UInt64(f, radix: 16) }
        var promptTokens: Int?
        if case .int(let n)? = p["tandem_prompt_tokens"] { promptTokens = n }
        let push = p["tandem_delivery"] == .string(KVTransferParams.Delivery.push.rawValue)
        return KVTransferParams(
            role: .consume, delivery: push ? .push : .pull, transferId: transferId,
            prefillAddress: HostPort(host: host, port: port).description, decodeAddress: nil,
            promptTokens: promptTokens, fingerprint: fingerprint)
    }

    /// What a producer's response carries: vLLM's keys, so that a router copies them into the decode request, and
    /// Tandem's, so that the consumer finds the KV and can refuse what it could not use before it moves.
    func response(for request: KVConnectorRequest, fingerprint: UInt64) -> [(String, KVParamValue)] {
        let t = request.transfer
        var out: [(String, KVParamValue)] = [
            ("do_remote_prefill", .bool(true)),
            ("do_remote_decode", .bool(false)),
            ("remote_engine_id", .string(kvAddress.description)),
            ("remote_host", .string(kvAddress.host)),
            ("remote_port", .int(kvAddress.port)),
            ("tandem_transfer_id", .string(t.transferId)),
            ("tandem_delivery", .string(t.delivery.rawValue)),
            ("tandem_prompt_tokens", .int(request.promptTokens.count)),
            ("tandem_fingerprint", .string(String(fingerprint, radix: 16))),
        ]
        if let d = t.decodeAddress { out.append(("tandem_decode_address", .string(d))) }
        return out
    }
}

/// `kv_transfer_params` that cannot be used; the message names the key.
public struct KVTransferParamsError: Error, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}
