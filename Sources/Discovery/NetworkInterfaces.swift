import Foundation

/// One address of a network interface that is up, as `getifaddrs` lists it.
public struct InterfaceAddress: Sendable, Equatable {
    public var interface: String
    public var host: String
    public var isIPv6: Bool
    public var isLoopback: Bool

    public init(interface: String, host: String, isIPv6: Bool, isLoopback: Bool) {
        self.interface = interface
        self.host = host
        self.isIPv6 = isIPv6
        self.isLoopback = isLoopback
    }

    /// An IPv6 address other peers can reach: not loopback, not link-local (`fe80::/10`), not multicast. Unique
    /// local addresses (`fc00::/7`) count, as Linux gives them global scope.
    public var isGlobalIPv6: Bool {
        guard isIPv6, !isLoopback else { return false }
        let h = host.lowercased()
        return
            !(h.hasPrefix("fe8") || h.hasPrefix("fe9") || h.hasPrefix("fea") || h.hasPrefix("feb")
            || h.hasPrefix("ff") || h == "::1")
    }

    /// Every address of every interface that is up, in the kernel's order.
    public static func all() -> [InterfaceAddress] {
        var list: UnsafeMutablePointer<ifaddrs>?
        guard getifaddrs(&list) == 0, let first = list else { return [] }
        defer { freeifaddrs(list) }
        var found: [InterfaceAddress] = []
        var cursor: UnsafeMutablePointer<ifaddrs>? = first
        while let entry = cursor {
            defer { cursor = entry.pointee.ifa_next }
            let flags = Int32(entry.pointee.ifa_flags)
            guard let address = entry.pointee.ifa_addr, flags & Int32(IFF_UP) != 0 else { continue }
            let family = Int32(address.pointee.sa_family)
            guard family == AF_INET || family == AF_INET6 else { continue }
            let length = family == AF_INET ? MemoryLayout<sockaddr_in>.size : MemoryLayout<sockaddr_in6>.size
            guard let host = numericHost(address, length: length) else { continue }
            found.append(
                InterfaceAddress(
                    interface: String(cString: entry.pointee.ifa_name), host: host, isIPv6: family == AF_INET6,
                    isLoopback: flags & Int32(IFF_LOOPBACK) != 0))
        }
        return found
    }
}

/// The numeric text of a socket address (`getnameinfo` with `NI_NUMERICHOST`), without a zone (`fe80::1%eth0`).
func numericHost(_ address: UnsafePointer<sockaddr>, length: Int) -> String? {
    var host = [CChar](repeating: 0, count: Int(NI_MAXHOST))
    guard
        getnameinfo(address, socklen_t(length), &host, socklen_t(host.count), nil, 0, NI_NUMERICHOST) == 0
    else { return nil }
    let text = String(decoding: host.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    return text.firstIndex(of: "%").map { String(text[..<$0]) } ?? text
}

/// The local address the kernel would send from to reach `peer`: a UDP socket `connect`ed (nothing is sent) and
/// read back with `getsockname`. Nil when `peer` does not resolve or no route leads there.
public func localAddress(routingTo peer: HostPort) -> String? {
    var hints = addrinfo()
    hints.ai_socktype = Int32(SOCK_DGRAM.rawValue)
    hints.ai_flags = AI_NUMERICSERV
    var results: UnsafeMutablePointer<addrinfo>?
    guard getaddrinfo(peer.host, "\(peer.port)", &hints, &results) == 0, let first = results else { return nil }
    defer { freeaddrinfo(results) }
    var cursor: UnsafeMutablePointer<addrinfo>? = first
    while let info = cursor {
        defer { cursor = info.pointee.ai_next }
        let fd = socket(info.pointee.ai_family, Int32(SOCK_DGRAM.rawValue), 0)
        guard fd >= 0 else { continue }
        defer { close(fd) }
        guard connect(fd, info.pointee.ai_addr, info.pointee.ai_addrlen) == 0 else { continue }
        var local = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let named = withUnsafeMutablePointer(to: &local) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        guard named == 0 else { continue }
        let host = withUnsafePointer(to: &local) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { numericHost($0, length: Int(length)) }
        }
        if let host, host != "0.0.0.0", host != "::" { return host }
    }
    return nil
}

/// Whether this machine can open an IPv6 socket and bind it to `[::]`: false where IPv6 is disabled.
public func ipv6IsAvailable() -> Bool {
    let fd = socket(AF_INET6, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { return false }
    defer { close(fd) }
    var address = sockaddr_in6()
    address.sin6_family = sa_family_t(AF_INET6)
    return withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) == 0
        }
    }
}
