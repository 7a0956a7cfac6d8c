import Crypto
import Foundation

/// A registration ping's proof of the cluster secret: the ping carries `tandem_ts` (Unix milliseconds) and
/// `tandem_mac`, HMAC-SHA256 under the secret of the sender's ZMQ identity, the three fields, `tandem_features` (empty
/// when absent) and the timestamp. vLLM's
/// proxies read only the three fields, so a signed ping still registers there; a proxy with the secret refuses a ping
/// whose MAC is wrong, or whose timestamp is more than `window` seconds from its clock (a replay).
public enum RegistrationSignature {
    /// How far a ping's timestamp may be from the proxy's clock.
    public static let window: Double = 10

    /// Why a ping was refused; nil when it is accepted.
    public enum Refusal: String, Sendable {
        case unsigned = "it is not signed (a plain vLLM ping)"
        case badMAC = "its MAC does not match the cluster secret"
        case stale = "its timestamp is outside the replay window"
    }

    static func mac(
        secret: [UInt8], identity: [UInt8], type: String, http: String, zmq: String, features: String,
        timestamp: UInt64
    ) -> [UInt8] {
        var h = HMAC<SHA256>(key: SymmetricKey(data: secret))
        for part in [
            Array("tandem-registration".utf8), identity, Array(type.utf8), Array(http.utf8), Array(zmq.utf8),
            Array(features.utf8),
        ] {
            h.update(data: withUnsafeBytes(of: UInt32(part.count).bigEndian) { Array($0) })
            h.update(data: part)
        }
        h.update(data: withUnsafeBytes(of: timestamp.bigEndian) { Array($0) })
        return Array(h.finalize())
    }

    /// The ping's message signed at `now`, for a sender whose ZMQ identity is its `zmq_address`.
    public static func signed(_ ping: RegistrationPing, secret: [UInt8], now: Date = Date()) -> MessagePackValue {
        let ts = UInt64(max(0, now.timeIntervalSince1970 * 1000))
        let mac = mac(
            secret: secret, identity: Array(ping.zmqAddress.description.utf8), type: ping.role.rawValue,
            http: ping.httpAddress.description, zmq: ping.zmqAddress.description,
            features: ping.message["tandem_features"]?.stringValue ?? "", timestamp: ts)
        guard case .map(var pairs) = ping.message else { return ping.message }
        pairs.append(MessagePackPair(.string("tandem_ts"), .uint(ts)))
        pairs.append(MessagePackPair(.string("tandem_mac"), .binary(mac)))
        return .map(pairs)
    }

    /// Checks a received message (`identity` is the ZMQ identity frame it came with).
    public static func check(
        _ value: MessagePackValue, identity: [UInt8], secret: [UInt8], now: Date = Date()
    ) -> Refusal? {
        guard case .binary(let got)? = value["tandem_mac"] else { return .unsigned }
        let ts: UInt64
        switch value["tandem_ts"] {
        case .uint(let v)?: ts = v
        case .int(let v)? where v >= 0: ts = UInt64(v)
        default: return .badMAC
        }
        guard let type = value["type"]?.stringValue, let http = value["http_address"]?.stringValue,
            let zmq = value["zmq_address"]?.stringValue
        else { return .badMAC }
        let features = value["tandem_features"]?.stringValue ?? ""
        let want = mac(
            secret: secret, identity: identity, type: type, http: http, zmq: zmq, features: features, timestamp: ts)
        guard constantTimeEqual(got, want) else { return .badMAC }
        guard abs(Double(ts) / 1000 - now.timeIntervalSince1970) <= window else { return .stale }
        return nil
    }
}
