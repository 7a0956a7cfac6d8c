import Discovery
import Foundation
import Testing

/// The advertised address follows its rules in order, and each rule is the one the startup log names.
@Suite struct AdvertisedAddressTests {
    static let v6Only = [
        InterfaceAddress(interface: "lo", host: "::1", isIPv6: true, isLoopback: true),
        InterfaceAddress(interface: "lo", host: "127.0.0.1", isIPv6: false, isLoopback: true),
        InterfaceAddress(interface: "eth0", host: "fe80::1", isIPv6: true, isLoopback: false),
        InterfaceAddress(interface: "eth0", host: "fd00:7a::3", isIPv6: true, isLoopback: false),
    ]
    static let dual =
        v6Only + [InterfaceAddress(interface: "eth0", host: "198.18.7.3", isIPv6: false, isLoopback: false)]
    static let proxy = HostPort(host: "fd00:7a::1", port: 30002)

    func choose(
        kvHost: String? = nil, env: [String: String] = [:], bind: String? = "0.0.0.0", proxy: HostPort? = proxy,
        interfaces: [InterfaceAddress] = dual, route: String? = nil
    ) -> AdvertisedAddress {
        AdvertisedAddress.choose(
            kvHost: kvHost, environment: env, bindHost: bind, proxy: proxy, interfaces: { interfaces },
            route: { _ in route })
    }

    @Test func rulesApplyInOrder() {
        let env = ["TANDEM_HOST_IP": "fd00:7a::9"]
        #expect(
            choose(kvHost: "[fd00:7a::8]", env: env, bind: "fd00:7a::7", route: "fd00:7a::6")
                == AdvertisedAddress(host: "fd00:7a::8", rule: .kvHost))
        #expect(
            choose(env: env, bind: "fd00:7a::7", route: "fd00:7a::6")
                == AdvertisedAddress(host: "fd00:7a::9", rule: .environment))
        #expect(
            choose(bind: "127.0.0.1", route: "fd00:7a::6") == AdvertisedAddress(host: "127.0.0.1", rule: .bindHost))
        #expect(choose(bind: "::", route: "fd00:7a::6") == AdvertisedAddress(host: "fd00:7a::6", rule: .routeToProxy))
        #expect(choose(route: nil) == AdvertisedAddress(host: "fd00:7a::3", rule: .globalIPv6))
        #expect(
            choose(proxy: nil, interfaces: Array(Self.dual.filter { !$0.isIPv6 }))
                == AdvertisedAddress(host: "198.18.7.3", rule: .ipv4))
        #expect(
            choose(proxy: nil, interfaces: Array(Self.dual.filter(\.isLoopback)))
                == AdvertisedAddress(host: "127.0.0.1", rule: .loopback))
    }

    @Test func wildcardsAreNotSpecificAddresses() {
        for wildcard in ["0.0.0.0", "::", "", "*", "[::]"] {
            #expect(ListenAddress.isWildcard(wildcard), "\(wildcard)")
            #expect(choose(bind: wildcard, route: "fd00:7a::6").rule == .routeToProxy)
        }
        #expect(ListenAddress.bindHost(for: "0.0.0.0", ipv6: true) == "::")
        #expect(ListenAddress.bindHost(for: "0.0.0.0", ipv6: false) == "0.0.0.0")
        #expect(ListenAddress.bindHost(for: "[fd00:7a::2]", ipv6: true) == "fd00:7a::2")
        #expect(ListenAddress.bindHost(for: "127.0.0.1", ipv6: true) == "127.0.0.1")
    }

    @Test func linkLocalAndLoopbackAreNotGlobal() {
        #expect(!InterfaceAddress(interface: "e", host: "fe80::1", isIPv6: true, isLoopback: false).isGlobalIPv6)
        #expect(!InterfaceAddress(interface: "lo", host: "::1", isIPv6: true, isLoopback: true).isGlobalIPv6)
        #expect(InterfaceAddress(interface: "e", host: "2001:db8::1", isIPv6: true, isLoopback: false).isGlobalIPv6)
    }

    /// The real route lookup: to a loopback proxy the kernel sends from loopback, IPv4 and IPv6.
    @Test func routeToALoopbackProxyIsLoopback() {
        #expect(localAddress(routingTo: HostPort(host: "127.0.0.1", port: 30002)) == "127.0.0.1")
        if ipv6IsAvailable() {
            #expect(localAddress(routingTo: HostPort(host: "::1", port: 30002)) == "::1")
        }
        #expect(InterfaceAddress.all().contains { $0.isLoopback })
    }
}
