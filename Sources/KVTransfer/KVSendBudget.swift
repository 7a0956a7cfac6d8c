import Foundation

/// The bytes a producer may have queued on its connections and not yet handed to the kernel (`kv_buffer_size`).
/// A frame takes its bytes before it is queued and gives them back once written; a sender that finds the budget
/// spent waits (up to its deadline) or gives up, so nothing buffers beyond the limit. Thread-safe.
public final class KVSendBudget: @unchecked Sendable {
    public let capacity: Int
    private let lock = NSLock()
    private var used = 0
    private var waiters: [(token: UInt64, bytes: Int, resume: @Sendable (Bool) -> Void)] = []
    private var nextToken: UInt64 = 0

    public init(capacity: Int) { self.capacity = capacity }

    /// Bytes taken now.
    public var inUse: Int {
        lock.lock()
        defer { lock.unlock() }
        return used
    }

    /// Takes `bytes` if they are free now and nobody is queued ahead.
    public func tryAcquire(_ bytes: Int) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        guard waiters.isEmpty, used + bytes <= capacity else { return false }
        used += bytes
        return true
    }

    /// Takes `bytes`, waiting in line up to `timeout` seconds. False on timeout, or at once when `bytes` exceeds the
    /// whole budget.
    public func acquire(_ bytes: Int, timeout: Double) async -> Bool {
        guard bytes <= capacity else { return false }
        return await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
            lock.lock()
            if waiters.isEmpty, used + bytes <= capacity {
                used += bytes
                lock.unlock()
                continuation.resume(returning: true)
                return
            }
            nextToken += 1
            let token = nextToken
            waiters.append((token, bytes, { continuation.resume(returning: $0) }))
            lock.unlock()
            Task {
                try? await Task.sleep(for: .milliseconds(Int(timeout * 1000)))
                self.expire(token)
            }
        }
    }

    /// Gives `bytes` back and wakes the waiters they make room for, in order.
    public func release(_ bytes: Int) {
        lock.lock()
        used -= bytes
        let woken = admitWaiters()
        lock.unlock()
        for w in woken { w(true) }
    }

    /// Under the lock: takes the budget for the waiters at the head of the line that fit now.
    private func admitWaiters() -> [@Sendable (Bool) -> Void] {
        var woken: [@Sendable (Bool) -> Void] = []
        while let first = waiters.first, used + first.bytes <= capacity {
            used += first.bytes
            woken.append(first.resume)
            waiters.removeFirst()
        }
        return woken
    }

    private func expire(_ token: UInt64) {
        lock.lock()
        guard let i = waiters.firstIndex(where: { $0.token == token }) else {
            lock.unlock()
            return
        }
        let w = waiters.remove(at: i)
        let woken = admitWaiters()  // the head leaving may let the next ones in
        lock.unlock()
        w.resume(false)
        for x in woken { x(true) }
    }
}
