import Discovery
import Foundation
import Logging
import NIOConcurrencyHelpers
import ServiceLifecycle

/// The proxy's view of a fleet's etcd (`tandem proxy --discovery etcd://…`): it lists every record under the prefix,
/// then watches the prefix (no polling) and keeps the registry in step: a record put adds its instance, a record
/// deleted (revoked at shutdown, or its lease run out) removes it. When etcd cannot be reached it keeps what it
/// knows, says so in the log and `/health`, and retries with a backoff of at most 2 s; once back it lists the prefix
/// again (what changed meanwhile is applied) and watches from there. Several proxies can watch one fleet.
final class EtcdDiscovery: Service, Sendable {
    let client: EtcdClient
    let registry: InstanceRegistry
    let logger: Logger
    /// With the cluster secret, only records whose MAC checks are listed.
    let secret: [UInt8]?
    let onChange: @Sendable (_ added: Bool) -> Void
    private let state = NIOLockedValueBox(Status())
    /// Which instance each key stands for, to remove it when its key is deleted.
    private let keys = NIOLockedValueBox<[String: RegistrationPing]>([:])
    private let refused = NIOLockedValueBox<Set<String>>([])
    /// The revision of a listing made before the proxy began to serve (`prime`), for the first watch.
    private let primed = NIOLockedValueBox<Int64?>(nil)

    /// What `/health` says of etcd.
    struct Status: Sendable {
        var watching = false
        var since = Date()
        var lastError: String?
        var watchStarts = 0
    }

    init(
        client: EtcdClient, registry: InstanceRegistry, logger: Logger, secret: [UInt8]?,
        onChange: @escaping @Sendable (Bool) -> Void
    ) {
        self.client = client
        self.registry = registry
        self.logger = logger
        self.secret = secret
        self.onChange = onChange
    }

    var status: Status { state.withLockedValue { $0 } }

    func run() async throws {
        await cancelWhenGracefulShutdown { await self.follow() }
    }

    /// Lists the fleet once, before the proxy serves, so that a proxy started after its instances knows them from
    /// its first request; an etcd that does not answer within `timeout` seconds is left to `run`'s retries.
    func prime(timeout: Double) async {
        let client = EtcdClient(endpoints: self.client.endpoints, timeout: timeout)
        guard let (kvs, revision) = try? await client.range(prefix: client.endpoints.prefix) else { return }
        sync(kvs)
        primed.withLockedValue { $0 = revision }
    }

    private func follow() async {
        var backoff = 0.25
        while !Task.isCancelled {
            do {
                let revision: Int64
                // The listing made before the proxy served, once; a fresh one after each outage.
                let listed = primed.withLockedValue { value -> Int64? in
                    let taken = value
                    value = nil
                    return taken
                }
                if let listed {
                    revision = listed
                } else {
                    let (kvs, now) = try await client.range(prefix: client.endpoints.prefix)
                    sync(kvs)
                    revision = now
                }
                let first = state.withLockedValue { s -> Bool in
                    s.watching = true
                    s.since = Date()
                    s.lastError = nil
                    s.watchStarts += 1
                    return s.watchStarts == 1
                }
                logger.info(
                    "etcd: \(first ? "watching" : "reachable again, watching") \(client.endpoints) from revision \(revision) (\(keys.withLockedValue { $0.count }) instances listed)"
                )
                backoff = 0.25
                for try await event in client.watch(prefix: client.endpoints.prefix, after: revision) {
                    apply(event)
                }
            } catch {
                if Task.isCancelled { return }
                // Logged once per outage: when the watch breaks, or when etcd is not there to begin with.
                let changed = state.withLockedValue { s -> Bool in
                    let news = s.watching || (s.watchStarts == 0 && s.lastError == nil)
                    if news { s.since = Date() }
                    s.watching = false
                    s.lastError = "\(error)"
                    return news
                }
                if changed {
                    logger.warning(
                        "etcd: unreachable (\(error)); keeping the \(keys.withLockedValue { $0.count }) instances it listed, retrying"
                    )
                }
                try? await Task.sleep(for: .milliseconds(Int(backoff * 1000)))
                backoff = min(backoff * 2, 2)
            }
        }
    }

    /// The instance a record stands for, if it is a valid (and, with a secret, signed) one.
    private func ping(_ kv: EtcdClient.KeyValue) -> RegistrationPing? {
        guard let record = try? JSONDecoder().decode(EtcdInstanceRecord.self, from: Data(kv.value)),
            let ping = record.ping
        else {
            refuse(kv.key, "it is not an instance record")
            return nil
        }
        if let secret, !record.isSigned(by: secret) {
            refuse(kv.key, "its MAC does not match the cluster secret")
            return nil
        }
        return ping
    }

    private func refuse(_ key: String, _ why: String) {
        if refused.withLockedValue({ $0.count < 10_000 && $0.insert(key).inserted }) {
            logger.warning("etcd: ignored \(key): \(why) (logged once per key)")
        }
    }

    private func sync(_ kvs: [EtcdClient.KeyValue]) {
        var listed: [String: RegistrationPing] = [:]
        for kv in kvs { if let p = ping(kv) { listed[kv.key] = p } }
        keys.withLockedValue { $0 = listed }
        let (added, removed) = registry.syncEtcd(Array(listed.values))
        for i in added { log(added: true, i) }
        for i in removed { log(added: false, i) }
    }

    private func apply(_ event: EtcdClient.Event) {
        switch event {
        case .put(let kv):
            guard let p = ping(kv) else { return }
            let previous = keys.withLockedValue { $0.updateValue(p, forKey: kv.key) }
            if let previous, previous.httpAddress != p.httpAddress || previous.role != p.role,
                let gone = registry.forget(role: previous.role, http: previous.httpAddress, source: .etcd)
            {
                log(added: false, gone)
            }
            if let added = registry.record(p, source: .etcd) { log(added: true, added) }
        case .delete(let key):
            guard let p = keys.withLockedValue({ $0.removeValue(forKey: key) }) else { return }
            if let gone = registry.forget(role: p.role, http: p.httpAddress, source: .etcd) { log(added: false, gone) }
        }
    }

    private func log(added: Bool, _ i: KnownInstance) {
        logger.info("\(added ? "Add" : "Remove") \(i.role == .prefill ? "prefill" : "decode") \(i.label) (etcd)")
        onChange(added)
    }
}
