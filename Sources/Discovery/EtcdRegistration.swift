import Foundation
import Logging
import NIOConcurrencyHelpers

/// An instance's entry in a fleet's etcd: its record put under a lease of `ttl` seconds, kept alive every
/// `keepAliveInterval` seconds, and revoked on `stop` (a graceful shutdown), so that proxies drop it at once; a killed
/// instance's lease runs out within `ttl`. While etcd cannot be reached, the instance keeps serving and retries with
/// a backoff up to the keep-alive interval; a lease found gone (etcd lost it, or it ran out during the outage) is
/// replaced by a new one and the record put again. Each outage and each lease lost is logged once.
public final class EtcdRegistration: Sendable {
    public let client: EtcdClient
    public let record: EtcdInstanceRecord
    public let ttl: Int
    public let keepAliveInterval: Double
    private let logger: Logger
    private let state = NIOLockedValueBox(State())

    private struct State {
        var task: Task<Void, Never>?
        var lease: String?
        var registrations = 0
        var leaseLosses = 0
        var reachable = true
    }

    public init(
        client: EtcdClient, record: EtcdInstanceRecord, ttl: Int = 5, keepAliveInterval: Double = 1.5, logger: Logger
    ) {
        self.client = client
        self.record = record
        self.ttl = ttl
        self.keepAliveInterval = keepAliveInterval
        self.logger = logger
    }

    public var key: String { record.key(prefix: client.endpoints.prefix) }
    /// How many times the record was put (1 after the first registration; more after leases were lost).
    public var registrations: Int { state.withLockedValue { $0.registrations } }
    /// Leases etcd no longer knew when kept alive.
    public var leaseLosses: Int { state.withLockedValue { $0.leaseLosses } }
    /// Whether the last call to etcd succeeded.
    public var isReachable: Bool { state.withLockedValue { $0.reachable } }

    public func start() {
        let task = Task { await self.run() }
        state.withLockedValue { $0.task = task }
    }

    /// Stops keeping the lease alive and revokes it (within the client's timeout), so the record goes at once.
    public func stop() async {
        let (task, lease) = state.withLockedValue { s in
            let pair = (s.task, s.lease)
            s.task = nil
            s.lease = nil
            return pair
        }
        task?.cancel()
        await task?.value
        guard let lease else { return }
        do {
            try await client.revoke(lease)
            logger.info("etcd: revoked lease \(lease); \(key) removed")
        } catch {
            logger.warning("etcd: could not revoke lease \(lease) (\(error)); \(key) goes when it runs out in \(ttl) s")
        }
    }

    private func run() async {
        let value = (try? JSONEncoder().encode(record)).map { Array($0) } ?? []
        var lease: String?
        var backoff = 0.25
        while !Task.isCancelled {
            do {
                if let current = lease {
                    let left = try await client.keepAlive(current)
                    if left <= 0 {
                        state.withLockedValue { $0.leaseLosses += 1 }
                        logger.warning("etcd: lease \(current) is gone (it ran out or etcd lost it); registering again")
                        lease = nil
                        continue
                    }
                } else {
                    let granted = try await client.grant(ttl: ttl)
                    try await client.put(key, value, lease: granted)
                    lease = granted
                    let first = state.withLockedValue { s -> Bool in
                        s.lease = granted
                        s.registrations += 1
                        return s.registrations == 1
                    }
                    let members = client.endpoints.members.map(\.description).joined(separator: ",")
                    logger.info(
                        "etcd: \(first ? "registered" : "registered again") as \(key) at \(members) (lease \(granted), TTL \(ttl) s)"
                    )
                }
                if reachable(true) { logger.info("etcd: reachable again") }
                backoff = 0.25
                try await Task.sleep(for: .milliseconds(Int(keepAliveInterval * 1000)))
            } catch is CancellationError {
                return
            } catch {
                if Task.isCancelled { return }
                if reachable(false) {
                    logger.warning(
                        "etcd: unreachable (\(error)); serving on, retrying every \(keepAliveInterval) s at most")
                }
                try? await Task.sleep(for: .milliseconds(Int(backoff * 1000)))
                backoff = min(backoff * 2, keepAliveInterval)
            }
        }
    }

    /// Records whether etcd answered; true when that changed.
    @discardableResult
    private func reachable(_ now: Bool) -> Bool {
        state.withLockedValue { s in
            defer { s.reachable = now }
            return s.reachable != now
        }
    }
}
