import Foundation

/// The receiver's verdict on a transfer, as its sender learns it.
public enum KVAck: Sendable, Equatable {
    case accepted
    case refused(String)
    /// The connection closed before an answer came.
    case lost(String)
    case timedOut
}

/// Transfers waiting for their ack, by request id. A sender registers before its frames go out (so an early ack is
/// kept), then waits with a deadline; a connection that closes fails every transfer registered on it. Thread-safe.
final class KVAckTable: @unchecked Sendable {
    private enum Slot {
        case pending
        case arrived(KVAck)
        case waiting(token: UInt64, resume: @Sendable (KVAck) -> Void)
    }

    private let lock = NSLock()
    private var slots: [String: (connection: ObjectIdentifier, slot: Slot)] = [:]
    private var nextToken: UInt64 = 0

    func register(_ id: String, connection: ObjectIdentifier) {
        lock.lock()
        slots[id] = (connection, .pending)
        lock.unlock()
    }

    /// Delivers an ack; false when no transfer under `id` is registered.
    @discardableResult
    func resolve(_ id: String, _ ack: KVAck) -> Bool {
        lock.lock()
        guard let entry = slots[id] else {
            lock.unlock()
            return false
        }
        switch entry.slot {
        case .pending, .arrived:
            slots[id] = (entry.connection, .arrived(ack))
            lock.unlock()
        case .waiting(_, let resume):
            slots[id] = nil
            lock.unlock()
            resume(ack)
        }
        return true
    }

    /// Fails every transfer registered on `connection`.
    func connectionClosed(_ connection: ObjectIdentifier, reason: String) {
        lock.lock()
        let ids = slots.filter { $0.value.connection == connection }.map(\.key)
        lock.unlock()
        for id in ids { resolve(id, .lost(reason)) }
    }

    /// Waits up to `timeout` seconds for the ack of a registered transfer, and forgets it.
    func wait(_ id: String, timeout: Double) async -> KVAck {
        await withCheckedContinuation { (continuation: CheckedContinuation<KVAck, Never>) in
            lock.lock()
            guard let entry = slots[id] else {
                lock.unlock()
                continuation.resume(returning: .lost("not registered"))
                return
            }
            if case .arrived(let ack) = entry.slot {
                slots[id] = nil
                lock.unlock()
                continuation.resume(returning: ack)
                return
            }
            nextToken += 1
            let token = nextToken
            slots[id] = (entry.connection, .waiting(token: token, resume: { continuation.resume(returning: $0) }))
            lock.unlock()
            Task {
                try? await Task.sleep(for: .milliseconds(Int(timeout * 1000)))
                self.expire(id, token: token)
            }
        }
    }

    /// Forgets a registration nobody will wait for.
    func forget(_ id: String) {
        lock.lock()
        let entry = slots.removeValue(forKey: id)
        lock.unlock()
        if case .waiting(_, let resume) = entry?.slot { resume(.lost("forgotten")) }
    }

    private func expire(_ id: String, token: UInt64) {
        lock.lock()
        guard case .waiting(let t, let resume) = slots[id]?.slot, t == token else {
            lock.unlock()
            return
        }
        slots[id] = nil
        lock.unlock()
        resume(.timedOut)
    }
}
