import Foundation

/// The address an instance gives the proxy and its peers (in its registration and in request ids), chosen as vLLM's
/// `get_ip()` chooses it, with the choices a multi-host deployment needs. In order:
/// 1. `kv_host` from `kv_connector_extra_config`;
/// 2. the `TANDEM_HOST_IP` environment variable;
/// 3. the `--host` address, when it is a specific one (not a wildcard such as `0.0.0.0` or `::`);
/// 4. the local address of the route to the proxy (`proxy_ip`): a UDP socket connected, nothing sent, IPv4 or IPv6;
/// 5. the first global IPv6 address of an interface that is up;
/// 6. the first non-loopback IPv4 address;
/// 7. else 127.0.0.1.
public struct AdvertisedAddress: Sendable, Equatable, CustomStringConvertible {
    /// Which rule chose the address, for the startup log.
    public enum Rule: String, Sendable {
        case kvHost = "kv_host in kv_connector_extra_config"
        case environment = "TANDEM_HOST_IP"
        case bindHost = "the --host address"
        case routeToProxy = "the route to proxy_ip"
        case globalIPv6 = "the first global IPv6 address"
        case ipv4 = "the first IPv4 address"
        case loopback = "no other address: loopback"
    }

    public var host: String
    public var rule: Rule

    public var description: String { "\(host) (chosen by \(rule.rawValue))" }

    public init(host: String, rule: Rule) {
        self.host = HostPort(host: host, port: 0).host  // without brackets
        self.rule = rule
    }

    /// Applies the rules; `interfaces` and `route` are the machine's by default (tests pass their own).
    public static func choose(
        kvHost: String?, environment: [String: String] = ProcessInfo.processInfo.environment, bindHost: String?,
        proxy: HostPort?, interfaces: () -> [InterfaceAddress] = InterfaceAddress.all,
        route: (HostPort) -> String? = localAddress(routingTo:)
    ) -> AdvertisedAddress {
        if let kvHost, !kvHost.isEmpty { return AdvertisedAddress(host: kvHost, rule: .kvHost) }
        if let env = environment["TANDEM_HOST_IP"], !env.isEmpty {
            return AdvertisedAddress(host: env, rule: .environment)
        }
        if let bindHost, !ListenAddress.isWildcard(bindHost) {
            return AdvertisedAddress(host: bindHost, rule: .bindHost)
        }
        if let proxy, let local = route(proxy) { return AdvertisedAddress(host: local, rule: .routeToProxy) }
        let all = interfaces()
        if let v6 = all.first(where: \.isGlobalIPv6) { return AdvertisedAddress(host: v6.host, rule: .globalIPv6) }
        if let v4 = all.first(where: { !$0.isIPv6 && !$0.isLoopback }) {
            return AdvertisedAddress(host: v4.host, rule: .ipv4)
        }
        return AdvertisedAddress(host: "127.0.0.1", rule: .loopback)
    }
}

/// What a `--host` flag means for the sockets that listen on it.
public enum ListenAddress {
    /// `0.0.0.0`, `::`, `*`, `[::]` or empty: every address of the machine.
    public static func isWildcard(_ host: String) -> Bool {
        ["", "0.0.0.0", "::", "*", "[::]", "::0", "0:0:0:0:0:0:0:0"].contains(host)
    }

    /// The address to bind: a wildcard becomes `::`, which Linux makes dual-stack (IPv6 and IPv4-mapped), so that
    /// the runbook's `--host 0.0.0.0` is reachable on IPv6-only hosts too; `0.0.0.0` where IPv6 is disabled. A
    /// specific address binds as given.
    public static func bindHost(for host: String, ipv6: Bool = ipv6IsAvailable()) -> String {
        guard isWildcard(host) else { return HostPort(host: host, port: 0).host }
        return ipv6 ? "::" : "0.0.0.0"
    }
}
