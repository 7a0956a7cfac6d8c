import ArgumentParser
import Foundation

/// The cluster secret that authenticates instances to each other on the KV plane: `--cluster-secret-file PATH`, else
/// `TANDEM_CLUSTER_SECRET`; none means the planes stay open, as vLLM's are.
enum ClusterSecret {
    static let environmentKey = "TANDEM_CLUSTER_SECRET"

    /// The secret's bytes (surrounding whitespace dropped), or nil when none is configured.
    static func load(file: String?) throws -> [UInt8]? {
        if let file {
            guard let data = FileManager.default.contents(atPath: file) else {
                throw ValidationError("--cluster-secret-file: cannot read \(file)")
            }
            let text = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            guard text.utf8.count >= 16 else {
                throw ValidationError("--cluster-secret-file: the secret in \(file) is shorter than 16 bytes")
            }
            return Array(text.utf8)
        }
        guard let text = ProcessInfo.processInfo.environment[environmentKey], !text.isEmpty else { return nil }
        guard text.utf8.count >= 16 else { throw ValidationError("\(environmentKey) is shorter than 16 bytes") }
        return Array(text.utf8)
    }

    /// A fresh random secret, hex (for `tandem up` to give its children).
    static func generate() -> String {
        (0..<32).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined()
    }
}
