/// One place that writes and reads `host:port` for binding, connecting, logs and request ids, IPv4 and IPv6 alike:
/// IPv6 hosts are written in brackets (`[::1]:8084`); the unbracketed legacy form (`::1:8084`) is read too.
public struct HostPort: Sendable, Hashable, CustomStringConvertible {
    /// The host without brackets.
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        var h = host
        if h.hasPrefix("["), h.hasSuffix("]") { h = String(h.dropFirst().dropLast()) }
        self.host = h
        self.port = port
    }

    /// Parses `host:port`, `[v6]:port` or the legacy unbracketed `v6:port` (the last colon splits).
    public init?(_ text: String) {
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { return nil }
            let host = String(text[text.index(after: text.startIndex)..<close])
            let rest = text[text.index(after: close)...]
            guard rest.hasPrefix(":"), let port = Int(rest.dropFirst()), (0...65535).contains(port), !host.isEmpty
            else { return nil }
            self.init(host: host, port: port)
            return
        }
        guard let colon = text.lastIndex(of: ":") else { return nil }
        let host = String(text[..<colon])
        guard !host.isEmpty, let port = Int(text[text.index(after: colon)...]), (0...65535).contains(port) else {
            return nil
        }
        self.init(host: host, port: port)
    }

    public var isIPv6: Bool { host.contains(":") }

    /// `host:port` with IPv6 hosts bracketed.
    public var description: String { isIPv6 ? "[\(host)]:\(port)" : "\(host):\(port)" }

    /// A ZMQ TCP endpoint, `tcp://host:port` (IPv6 bracketed).
    public var zmqEndpoint: String { "tcp://\(description)" }
}

/// The request id the proxy gives both instances:
/// `___prefill_addr_{P host:kv_port}___decode_addr_{D host:kv_port}_{32 hex}`.
public struct DisaggregatedRequestID: Sendable, Hashable, CustomStringConvertible {
    public var prefill: HostPort
    public var decode: HostPort
    public var uuid: String

    public init(prefill: HostPort, decode: HostPort, uuid: String) {
        self.prefill = prefill
        self.decode = decode
        self.uuid = uuid
    }

    public var description: String { "___prefill_addr_\(prefill)___decode_addr_\(decode)_\(uuid)" }

    /// Parses an id; nil when `text` is not in this form (an ordinary request id).
    public init?(_ text: String) {
        let p = "___prefill_addr_"
        let d = "___decode_addr_"
        guard text.hasPrefix(p), let dRange = text.range(of: d) else { return nil }
        let prefillText = String(text[text.index(text.startIndex, offsetBy: p.count)..<dRange.lowerBound])
        let rest = text[dRange.upperBound...]
        guard let underscore = rest.lastIndex(of: "_") else { return nil }
        let decodeText = String(rest[..<underscore])
        let uuid = String(rest[rest.index(after: underscore)...])
        guard let prefill = HostPort(prefillText), let decode = HostPort(decodeText), !uuid.isEmpty,
            uuid.allSatisfy(\.isHexDigit)
        else { return nil }
        self.init(prefill: prefill, decode: decode, uuid: uuid)
    }
}
