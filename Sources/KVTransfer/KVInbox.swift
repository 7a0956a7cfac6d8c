import Engine
import Foundation

/// What a waiting request learns about its KV.
public enum KVArrival: Sendable {
    case payload(KVPayload)
    /// The transfer came but was refused (checksum, fingerprint, shape), or was abandoned: recompute at once.
    case rejected(String)
    /// Nothing came before the deadline.
    case timedOut
    /// The request itself was aborted meanwhile (`KVInbox.abandon`): nothing is to be loaded or recomputed.
    case abandoned
}

/// KV held under request ids until someone claims it: on a decode instance, KV received for requests (the inbox);
/// on a prefill instance with send type GET, KV waiting to be pulled (the outbox).
///
/// Bounded: the bytes of complete payloads plus the room reserved for transfers still arriving never exceed
/// `capacityBytes`; to make room the oldest complete payloads are dropped first. Every entry has a lease of `ttl`
/// seconds, after which it is dropped unclaimed. Thread-safe.
public final class KVInbox: @unchecked Sendable {
    private enum Entry {
        /// Room reserved for a transfer whose layers are still arriving.
        case arriving(bytes: Int)
        case ready(KVPayload)
        case rejected(String)
        /// The request gave up on this KV (it was aborted): what arrives for it until the lease ends is dropped.
        case abandoned

        var bytes: Int {
            switch self {
            case .arriving(let n): return n
            case .ready(let p): return p.byteCount
            case .rejected, .abandoned: return 0
            }
        }
    }

    public let capacityBytes: Int
    public let ttl: Double
    private let lock = NSLock()
    private var entries: [String: (entry: Entry, at: ContinuousClock.Instant)] = [:]
    private var order: [String] = []
    /// Waiters, each with the deadline it gets from when its transfer begins (`timeout`; see `wait`).
    private var waiters: [String: (token: UInt64, timeout: Double, resume: @Sendable (KVArrival) -> Void)] = [:]
    private var nextToken: UInt64 = 0
    private var bytes = 0

    public init(capacityBytes: Int, ttl: Double = 60) {
        self.capacityBytes = capacityBytes
        self.ttl = ttl
    }

    /// Bytes held or reserved now (after dropping expired entries).
    public var bytesInUse: Int {
        lock.lock()
        defer { lock.unlock() }
        dropExpired()
        return bytes
    }

    /// Bytes reserved for transfers still arriving.
    public var arrivingBytes: Int {
        lock.lock()
        defer { lock.unlock() }
        return entries.values.reduce(0) {
            if case .arriving(let n) = $1.entry { return $0 + n }
            return $0
        }
    }

    /// Reserves `count` bytes for a transfer that is arriving under `id`, dropping the oldest complete payloads if
    /// needed. False when it cannot fit.
    public func reserve(_ id: String, bytes count: Int) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        dropExpired()
        if case .abandoned = entries[id]?.entry { return false }
        remove(id)
        guard makeRoom(for: count) else { return false }
        insert(id, .arriving(bytes: count))
        // The transfer began: a waiter that had longer for the beginning (`before`) now has its own deadline.
        if let w = waiters[id] { expire(id, token: w.token, after: w.timeout) }
        return true
    }

    /// The request behind `id` is gone: its waiter (if any) is told so, room held for it goes back at once, and KV
    /// that still arrives for it is refused or dropped.
    public func abandon(_ id: String) {
        lock.lock()
        dropExpired()
        remove(id)
        let waiter = waiters.removeValue(forKey: id)
        insert(id, .abandoned)
        lock.unlock()
        waiter?.resume(.abandoned)
    }

    /// Whether room is still reserved for `id` (false once it expired, was delivered or was rejected).
    public func isArriving(_ id: String) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        if case .arriving = entries[id]?.entry { return true }
        return false
    }

    /// Whether a request is waiting for `id`'s KV now.
    public func isWaitedFor(_ id: String) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        return waiters[id] != nil
    }

    /// More of `id`'s transfer arrived: its lease and its waiter's deadline count from now. False when room is no
    /// longer reserved for it (as `isArriving`).
    public func progressed(_ id: String) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        guard let e = entries[id], case .arriving = e.entry else { return false }
        entries[id] = (e.entry, .now)
        return true
    }

    /// Files a complete payload (replacing its reservation), or hands it to the request already waiting for it.
    /// Returns false when it could not be kept (larger than the capacity).
    @discardableResult
    public func deliver(_ payload: KVPayload, for id: String) -> Bool { resolve(id, .ready(payload)) }

    /// Files a refusal (replacing any reservation): the request waiting for `id` recomputes at once.
    public func reject(_ id: String, reason: String) { resolve(id, .rejected(reason)) }

    @discardableResult
    private func resolve(_ id: String, _ entry: Entry) -> Bool {
        lock.lock()
        dropExpired()
        if case .abandoned = entries[id]?.entry {
            lock.unlock()
            return true
        }
        remove(id)
        if let waiter = waiters.removeValue(forKey: id) {
            lock.unlock()
            switch entry {
            case .ready(let p): waiter.resume(.payload(p))
            case .rejected(let why): waiter.resume(.rejected(why))
            case .arriving, .abandoned: break
            }
            return true
        }
        defer { lock.unlock() }
        guard makeRoom(for: entry.bytes) else { return false }
        insert(id, entry)
        return true
    }

    /// Takes the KV for `id`, waiting up to `timeout` seconds for it to arrive; with `before`, the transfer may take
    /// that much longer to begin (its prefill runs meanwhile), and then has `timeout` from its begin frame.
    public func wait(for id: String, timeout: Double, before: Double = 0) async -> KVArrival {
        await withCheckedContinuation { (continuation: CheckedContinuation<KVArrival, Never>) in
            lock.lock()
            dropExpired()
            if let found = entries[id] {
                switch found.entry {
                case .ready(let p):
                    remove(id)
                    lock.unlock()
                    continuation.resume(returning: .payload(p))
                    return
                case .rejected(let why):
                    remove(id)
                    lock.unlock()
                    continuation.resume(returning: .rejected(why))
                    return
                case .arriving: break  // wait for the rest
                case .abandoned:
                    lock.unlock()
                    continuation.resume(returning: .abandoned)
                    return
                }
            }
            nextToken += 1
            let token = nextToken
            if let earlier = waiters.removeValue(forKey: id) { earlier.resume(.rejected("superseded")) }
            waiters[id] = (token, timeout, { continuation.resume(returning: $0) })
            let begun: Bool
            if case .arriving? = entries[id]?.entry { begun = true } else { begun = false }
            lock.unlock()
            expire(id, token: token, after: begun ? timeout : timeout + before)
        }
    }

    private func expire(_ id: String, token: UInt64, after seconds: Double) {
        Task {
            try? await Task.sleep(for: .milliseconds(Int(seconds * 1000)))
            self.expireWaiter(id, token: token)
        }
    }

    /// Drops entries whose lease ran out now (they are also dropped on every other call).
    public func sweep() {
        lock.lock()
        dropExpired()
        lock.unlock()
    }

    // MARK: - Under the lock

    private func insert(_ id: String, _ entry: Entry) {
        entries[id] = (entry, .now)
        order.append(id)
        bytes += entry.bytes
    }

    private func remove(_ id: String) {
        guard let old = entries.removeValue(forKey: id) else { return }
        bytes -= old.entry.bytes
        order.removeAll { $0 == id }
    }

    /// Drops the oldest complete payloads until `count` more bytes fit; false if they cannot.
    private func makeRoom(for count: Int) -> Bool {
        guard count <= capacityBytes else { return false }
        var i = 0
        while bytes + count > capacityBytes, i < order.count {
            let id = order[i]
            if case .ready = entries[id]?.entry { remove(id) } else { i += 1 }
        }
        return bytes + count <= capacityBytes
    }

    private func dropExpired() {
        let now = ContinuousClock.now
        let lease = Duration.milliseconds(Int(ttl * 1000))
        for id in order where now - entries[id]!.at > lease { remove(id) }
    }

    private func expireWaiter(_ id: String, token: UInt64) {
        lock.lock()
        guard let w = waiters[id], w.token == token else {
            lock.unlock()
            return
        }
        if let e = entries[id], case .arriving = e.entry {
            // A transfer still making progress keeps its waiter: the deadline counts from its last frame.
            let deadline = e.at + .milliseconds(Int(w.timeout * 1000))
            if ContinuousClock.now < deadline {
                lock.unlock()
                return expire(id, token: token, after: remaining(deadline))
            }
        }
        waiters[id] = nil
        // The request gives up on this KV (it recomputes): room still reserved for it goes back now, and what
        // arrives later is dropped.
        if case .arriving = entries[id]?.entry { remove(id) }
        lock.unlock()
        w.resume(.timedOut)
    }
}
