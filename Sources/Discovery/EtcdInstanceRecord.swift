import Crypto
import Foundation

/// What an instance puts in etcd under `PREFIX/ROLE/ZMQ_ADDRESS`, attached to its lease: the fields of vLLM's
/// ping (role, HTTP and KV addresses) and what a fleet needs besides (model, model fingerprint, start time,
/// Tandem's features). With the cluster secret it carries `mac`, HMAC-SHA256 under the secret of every other field,
/// and a proxy with the secret lists only records whose MAC checks.
public struct EtcdInstanceRecord: Codable, Sendable, Equatable {
    public var role: String
    public var http_address: String
    public var zmq_address: String
    public var model: String
    public var fingerprint: String
    public var started_ms: Int64
    public var tandem_features: String?
    public var mac: String?

    public init(ping: RegistrationPing, model: String, fingerprint: UInt64, started: Date, secret: [UInt8]?) {
        role = ping.role.rawValue
        http_address = ping.httpAddress.description
        zmq_address = ping.zmqAddress.description
        self.model = model
        self.fingerprint = String(fingerprint, radix: 16)
        started_ms = Int64(started.timeIntervalSince1970 * 1000)
        tandem_features = ping.resumable ? "resume" : nil
        mac = secret.map { Self.hex(signature(secret: $0)) }
    }

    /// The key of this record under `prefix`.
    public func key(prefix: String) -> String { "\(prefix)/\(role)/\(zmq_address)" }

    /// The ping this record stands for; nil when its fields are not a valid registration.
    public var ping: RegistrationPing? {
        guard let role = RegistrationPing.Role(rawValue: role), let http = HostPort(http_address),
            let zmq = HostPort(zmq_address)
        else { return nil }
        return RegistrationPing(role: role, httpAddress: http, zmqAddress: zmq, resumable: tandem_features == "resume")
    }

    /// Whether the record proves `secret`.
    public func isSigned(by secret: [UInt8]) -> Bool {
        guard let mac, let given = Self.bytes(hex: mac) else { return false }
        return constantTimeEqual(given, signature(secret: secret))
    }

    private func signature(secret: [UInt8]) -> [UInt8] {
        var h = HMAC<SHA256>(key: SymmetricKey(data: secret))
        let fields = [
            "tandem-etcd-record", role, http_address, zmq_address, model, fingerprint, String(started_ms),
            tandem_features ?? "",
        ]
        for field in fields {
            let part = Array(field.utf8)
            h.update(data: withUnsafeBytes(of: UInt32(part.count).bigEndian) { Array($0) })
            h.update(data: part)
        }
        return Array(h.finalize())
    }

    static func hex(_ bytes: [UInt8]) -> String { bytes.map { String(format: "%02x", $0) }.joined() }

    static func bytes(hex: String) -> [UInt8]? {
        let digits = Array(hex.utf8)
        guard digits.count % 2 == 0 else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(digits.count / 2)
        for i in stride(from: 0, to: digits.count, by: 2) {
            guard let byte = UInt8(String(decoding: digits[i..<(i + 2)], as: UTF8.self), radix: 16) else { return nil }
            out.append(byte)
        }
        return out
    }
}
