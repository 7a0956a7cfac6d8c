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
    /// Where the proxy learned of it (an instance may be in both).
    public var sources: Set<DiscoverySource> = [.zmq]
    /// The model names it serves, from its `/v1/models` (nil until the proxy has asked).
    public var models: [String]?

    /// `[HTTP:…, ZMQ:…]`, as vLLM's proxy logs an instance.
    public var label: String { "[HTTP:\(http), ZMQ:\(zmq)]" }
}

/// How the proxy learned of an instance: vLLM's ZMQ pings, or a fleet's etcd.
public enum DiscoverySource: String, Sendable, CaseIterable {
    case zmq
    case etcd
}

/// How the proxy picks among instances of a role.
public enum RoutingPolicy: String, Sendable, CaseIterable {
    case roundRobin = "round_robin"
    case leastLoaded = "least_loaded"
}

/// The live instances by role. One pinging over ZMQ is added on its first ping, refreshed by each next one, and
/// removed when silent for `ttl` seconds; one listed in etcd stays as long as its record does. Thread-safe.
public final class InstanceRegistry: @unchecked Sendable {
    public let ttl: Double
    private let lock = NSLock()
    private var instances: [RegistrationPing.Role: [HostPort: KnownInstance]] = [:]
    private var turns: [RegistrationPing.Role: Int] = [:]

    public init(ttl: Double) { self.ttl = ttl }

    /// The model the request being routed asks for (its `model` field), in scope while the proxy routes it, so that
    /// every `acquire` on its path picks among the instances serving that model.
    @TaskLocal public static var requestedModel: String?

    /// Records the models an instance serves (from its `/v1/models`).
    public func setModels(_ models: [String], role: RegistrationPing.Role, http: HostPort) {
        lock.lock()
        defer { lock.unlock() }
        instances[role]?[http]?.models = models
    }

    /// Every model name some instance serves.
    public var servedModels: Set<String> {
        lock.lock()
        defer { lock.unlock() }
        return Set(instances.values.flatMap { $0.values.flatMap { $0.models ?? [] } })
    }

    /// Whether a request for `model` can be routed: the fleet serves at most one model (then, as vLLM's proxy, any
    /// name goes), or some instance serves it, or some instance's models are not known yet.
    public func accepts(model: String?) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        guard let model else { return true }
        let known = instances.values.flatMap { $0.values }
        let served = Set(known.flatMap { $0.models ?? [] })
        return served.count <= 1 || served.contains(model) || known.contains { $0.models == nil }
    }

    /// The instances of `role` that may serve `model` (all when the fleet serves a single model).
    private func serving(_ model: String?, among candidates: [KnownInstance]) -> [KnownInstance] {
        guard let model else { return candidates }
        let served = Set(instances.values.flatMap { $0.values.flatMap { $0.models ?? [] } })
        guard served.count > 1 else { return candidates }
        return candidates.filter { $0.models?.contains(model) ?? false }
    }

    /// Records a ping (or an etcd record); returns the instance when it is new.
    @discardableResult
    public func record(_ ping: RegistrationPing, source: DiscoverySource = .zmq, now: Date = Date()) -> KnownInstance? {
        lock.lock()
        defer { lock.unlock() }
        return insert(ping, source: source, now: now)
    }

    private func insert(_ ping: RegistrationPing, source: DiscoverySource, now: Date) -> KnownInstance? {
        if var known = instances[ping.role]?[ping.httpAddress] {
            known.lastSeen = now
            known.zmq = ping.zmqAddress
            known.resumable = ping.resumable
            known.sources.insert(source)
            instances[ping.role]![ping.httpAddress] = known
            return nil
        }
        let added = KnownInstance(
            role: ping.role, http: ping.httpAddress, zmq: ping.zmqAddress, lastSeen: now, inFlight: 0,
            resumable: ping.resumable, sources: [source])
        instances[ping.role, default: [:]][ping.httpAddress] = added
        return added
    }

    /// Removes and returns the instances known only from ZMQ pings and silent for longer than the TTL.
    public func expire(now: Date = Date()) -> [KnownInstance] {
        lock.lock()
        defer { lock.unlock() }
        var removed: [KnownInstance] = []
        for (role, byHTTP) in instances {
            for (http, known) in byHTTP
            where known.sources.contains(.zmq) && now.timeIntervalSince(known.lastSeen) > ttl {
                if let gone = withdraw(role: role, http: http, source: .zmq) { removed.append(gone) }
            }
        }
        return removed
    }

    /// What etcd lists now replaces what the registry had from etcd: returns the instances added and removed.
    public func syncEtcd(_ pings: [RegistrationPing], now: Date = Date()) -> (
        added: [KnownInstance], removed: [KnownInstance]
    ) {
        lock.lock()
        defer { lock.unlock() }
        let listed = Set(pings.map { "\($0.role.rawValue) \($0.httpAddress)" })
        var removed: [KnownInstance] = []
        for (role, byHTTP) in instances {
            for (http, known) in byHTTP
            where known.sources.contains(.etcd) && !listed.contains("\(role.rawValue) \(http)") {
                if let gone = withdraw(role: role, http: http, source: .etcd) { removed.append(gone) }
            }
        }
        let added = pings.compactMap { insert($0, source: .etcd, now: now) }
        return (added, removed)
    }

    /// Forgets that `source` lists the instance; returns it when no source lists it any more (it is removed).
    @discardableResult
    public func forget(role: RegistrationPing.Role, http: HostPort, source: DiscoverySource) -> KnownInstance? {
        lock.lock()
        defer { lock.unlock() }
        return withdraw(role: role, http: http, source: source)
    }

    private func withdraw(role: RegistrationPing.Role, http: HostPort, source: DiscoverySource) -> KnownInstance? {
        guard var known = instances[role]?[http] else { return nil }
        known.sources.remove(source)
        if known.sources.isEmpty {
            instances[role]![http] = nil
            return known
        }
        instances[role]![http] = known
        return nil
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
        let candidates = serving(Self.requestedModel, among: sorted(role).filter { !excluding.contains($0.http) })
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
