import Engine
import Foundation

/// What a decode instance learns about a request's KV.
public enum KVArrival: Sendable {
    case payload(KVPayload)
    /// The transfer came but was refused (checksum, fingerprint, shape): recompute at once.
    case rejected(String)
    /// Nothing came before the deadline.
    case timedOut
}

/// KV received for requests, waiting to be claimed by the HTTP request with the same id. Bounded: at most
/// `capacityBytes` held (oldest dropped first), and unclaimed entries expire after `ttl` seconds. Thread-safe.
public final class KVInbox: @unchecked Sendable {
    private enum Entry {
        case ready(KVPayload)
        case rejected(String)
    }

    public let capacityBytes: Int
    public let ttl: Double
    private let lock = NSLock()
    private var entries: [String: (entry: Entry, at: Date)] = [:]
    private var order: [String] = []
    private var waiters: [String: (token: UInt64, resume: @Sendable (KVArrival) -> Void)] = [:]
    private var nextToken: UInt64 = 0
    public private(set) var bytesInUse = 0

    public init(capacityBytes: Int, ttl: Double = 60) {
        self.capacityBytes = capacityBytes
        self.ttl = ttl
    }

    public func deliver(_ payload: KVPayload, for id: String) { resolve(id, .ready(payload)) }

    public func reject(_ id: String, reason: String) { resolve(id, .rejected(reason)) }

    private func resolve(_ id: String, _ entry: Entry) {
        lock.lock()
        if let waiter = waiters.removeValue(forKey: id) {
            lock.unlock()
            switch entry {
            case .ready(let p): waiter.resume(.payload(p))
            case .rejected(let why): waiter.resume(.rejected(why))
            }
            return
        }
        dropExpired(now: Date())
        remove(id)
        if case .ready(let p) = entry {
            while bytesInUse + p.byteCount > capacityBytes, let oldest = order.first { remove(oldest) }
            guard p.byteCount <= capacityBytes else {
                lock.unlock()
                return
            }
            bytesInUse += p.byteCount
        }
        entries[id] = (entry, Date())
        order.append(id)
        lock.unlock()
    }

    private func remove(_ id: String) {
        guard let old = entries.removeValue(forKey: id) else { return }
        if case .ready(let p) = old.entry { bytesInUse -= p.byteCount }
        order.removeAll { $0 == id }
    }

    private func dropExpired(now: Date) {
        for id in order where now.timeIntervalSince(entries[id]!.at) > ttl { remove(id) }
    }

    /// Drops entries older than the TTL now (they are also dropped on every other call).
    public func sweep() {
        lock.lock()
        dropExpired(now: Date())
        lock.unlock()
    }

    private func expireWaiter(_ id: String, token: UInt64) {
        lock.lock()
        guard let w = waiters[id], w.token == token else {
            lock.unlock()
            return
        }
        waiters[id] = nil
        lock.unlock()
        w.resume(.timedOut)
    }

    /// Takes the KV for `id`, waiting up to `timeout` seconds for it to arrive.
    public func wait(for id: String, timeout: Double) async -> KVArrival {
        await withCheckedContinuation { (continuation: CheckedContinuation<KVArrival, Never>) in
            lock.lock()
            dropExpired(now: Date())
            if let found = entries[id] {
                remove(id)
                lock.unlock()
                switch found.entry {
                case .ready(let p): continuation.resume(returning: .payload(p))
                case .rejected(let why): continuation.resume(returning: .rejected(why))
                }
                return
            }
            nextToken += 1
            let token = nextToken
            waiters[id] = (token, { continuation.resume(returning: $0) })
            lock.unlock()
            Task {
                try? await Task.sleep(for: .milliseconds(Int(timeout * 1000)))
                self.expireWaiter(id, token: token)
            }
        }
    }
}
