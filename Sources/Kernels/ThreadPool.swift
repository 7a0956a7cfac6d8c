import Dispatch

/// Splits data-parallel loops over a fixed number of threads (the caller's thread included).
public final class ThreadPool: Sendable {
    public let threads: Int

    public init(threads: Int) {
        self.threads = max(1, threads)
    }

    /// Runs `body(begin, end)` over `count` items cut into at most `threads` contiguous ranges and waits for all.
    /// Each item is processed by exactly one call, so results do not depend on the thread count.
    public func parallelRanges(_ count: Int, minimumPerThread: Int = 1, _ body: (Int, Int) -> Void) {
        let parts = min(threads, max(1, count / max(1, minimumPerThread)))
        if parts <= 1 || count <= 1 {
            body(0, count)
            return
        }
        withoutActuallyEscaping(body) { escapable in
            let box = UncheckedSendable(escapable)
            DispatchQueue.concurrentPerform(iterations: parts) { part in
                let begin = count * part / parts
                let end = count * (part + 1) / parts
                if begin < end { box.value(begin, end) }
            }
        }
    }
}

/// Carries a value that is safe to share by construction (disjoint writes, read-only data) across threads.
public struct UncheckedSendable<T>: @unchecked Sendable {
    public let value: T
    public init(_ value: T) { self.value = value }
}
