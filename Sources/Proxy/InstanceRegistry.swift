import Discovery
import Foundation

/// An instance the proxy knows of, from its pings.
public struct KnownInstance: Sendable, Equatable {
    public var role: RegistrationPing.Role
    public var http: HostPort
    public var zmq: HostPort
    public var lastSeen: Date
    public var inFlight: Int
    /// A Tandem instance: it takes `tandem_handoff` and `tandem_resume`.
    public var resumable = false

    /// `[HTTP:…, ZMQ:…]`, as vLLM's proxy logs an instance.
    public var label: String { "[HTTP:\(http), ZMQ:\(zmq)]" }
}

/// How the proxy picks among instances of a role.
public enum RoutingPolicy: String, Sendable, CaseIterable {
    case roundRobin = "round_robin"
    case leastLoaded = "least_loaded"
}

/// The live instances by role, each with its own clock: added on its first ping, refreshed by each next one,
/// removed when silent for `ttl` seconds. Thread-safe.
public final class InstanceRegistry: @unchecked Sendable {
    public let ttl: Double
    private let lock = NSLock()
    private var instances: [RegistrationPing.Role: [HostPort: KnownInstance]] = [:]
    private var turns: [RegistrationPing.Role: Int] = [:]

    public init(ttl: Double) { self.ttl = ttl }

    /// Records a ping; returns the instance when it is new.
    @discardableResult
    public func record(_ ping: RegistrationPing, now: Date = Date()) -> KnownInstance? {
        lock.lock()
        defer { lock.unlock() }
        if var known = instances[ping.role]?[ping.httpAddress] {
            known.lastSeen = now
            known.zmq = ping.zmqAddress
            known.resumable = ping.resumable
            instances[ping.role]![ping.httpAddress] = known
            return nil
        }
        let added = KnownInstance(
            role: ping.role, http: ping.httpAddress, zmq: ping.zmqAddress, lastSeen: now, inFlight: 0,
            resumable: ping.resumable)
        instances[ping.role, default: [:]][ping.httpAddress] = added
        return added
    }

    /// Removes and returns the instances silent for longer than the TTL.
    public func expire(now: Date = Date()) -> [KnownInstance] {
        lock.lock()
        defer { lock.unlock() }
        var removed: [KnownInstance] = []
        for (role, byHTTP) in instances {
            for (http, known) in byHTTP where now.timeIntervalSince(known.lastSeen) > ttl {
                instances[role]![http] = nil
                removed.append(known)
            }
        }
        return removed
    }

    /// Every known instance, prefill first, each role in address order.
    public var all: [KnownInstance] {
        lock.lock()
        defer { lock.unlock() }
        return [RegistrationPing.Role.prefill, .decode].flatMap { sorted($0) }
    }

    private func sorted(_ role: RegistrationPing.Role) -> [KnownInstance] {
        (instances[role] ?? [:]).values.sorted { $0.http.description < $1.http.description }
    }

    /// Picks an instance of `role` not in `excluding` and counts one request in flight on it; nil when none is left.
    public func acquire(_ role: RegistrationPing.Role, policy: RoutingPolicy, excluding: Set<HostPort> = [])
        -> KnownInstance?
    {
        lock.lock()
        defer { lock.unlock() }
        let candidates = sorted(role).filter { !excluding.contains($0.http) }
        guard !candidates.isEmpty else { return nil }
        let turn = turns[role, default: 0]
        turns[role] = turn + 1
        let rotated = (0..<candidates.count).map { candidates[(turn + $0) % candidates.count] }
        let chosen: KnownInstance
        switch policy {
        case .roundRobin: chosen = rotated[0]
        case .leastLoaded: chosen = rotated.min { $0.inFlight < $1.inFlight }!
        }
        instances[role]?[chosen.http]?.inFlight += 1
        return chosen
    }

    /// Counts one request in flight on `instance` as done.
    public func release(_ instance: KnownInstance) {
        lock.lock()
        defer { lock.unlock() }
        if let n = instances[instance.role]?[instance.http]?.inFlight, n > 0 {
            instances[instance.role]![instance.http]!.inFlight = n - 1
        }
    }
}
