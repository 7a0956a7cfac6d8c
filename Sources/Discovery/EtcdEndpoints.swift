/// Where a fleet's registry lives: `etcd://HOST:PORT[,HOST:PORT…][/PREFIX]` (`--discovery` on `serve` and
/// `proxy`, or `"discovery"` in `kv_connector_extra_config`). The prefix defaults to `/tandem/instances`; every
/// instance's record is a key below it.
public struct EtcdEndpoints: Sendable, Equatable, CustomStringConvertible {
    public var members: [HostPort]
    public var prefix: String

    public static let defaultPrefix = "/tandem/instances"

    public init(members: [HostPort], prefix: String = EtcdEndpoints.defaultPrefix) {
        self.members = members
        self.prefix = prefix
    }

    /// Parses an `etcd://` URL; nil when it is not one (the message says why).
    public init(url: String) throws {
        guard url.hasPrefix("etcd://") else { throw EtcdError("a discovery URL must start with etcd://, not '\(url)'") }
        var rest = Substring(url.dropFirst("etcd://".count))
        var prefix = Self.defaultPrefix
        if let slash = rest.firstIndex(of: "/") {
            prefix = String(rest[slash...])
            rest = rest[..<slash]
            while prefix.count > 1, prefix.hasSuffix("/") { prefix.removeLast() }
            guard prefix.count > 1 else { throw EtcdError("the key prefix in '\(url)' is empty") }
        }
        let members = rest.split(separator: ",").map { HostPort(String($0)) }
        guard !members.isEmpty, members.allSatisfy({ $0 != nil }) else {
            throw EtcdError("'\(url)' must name etcd members as HOST:PORT[,HOST:PORT…]")
        }
        self.init(members: members.compactMap { $0 }, prefix: prefix)
    }

    public var description: String { "etcd://" + members.map(\.description).joined(separator: ",") + prefix }
}

/// Something etcd (or the way to it) refused or broke.
public struct EtcdError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}
