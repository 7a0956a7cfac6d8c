import Foundation
import Synchronization

/// The CPUs this process may run on: its affinity mask (as `taskset`, cgroups' cpusets and containers set it),
/// not every core of the machine; the default thread count everywhere.
public func availableCPUCount() -> Int {
    // Linux lists the mask in /proc/self/status as hex words: "Cpus_allowed:\tff,ffffffff".
    if let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
        let line = status.split(separator: "\n").first(where: { $0.hasPrefix("Cpus_allowed:") })
    {
        let count = line.dropFirst("Cpus_allowed:".count).reduce(0) { sum, c in
            sum + (c.hexDigitValue.map { $0.nonzeroBitCount } ?? 0)
        }
        if count > 0 { return min(count, ProcessInfo.processInfo.activeProcessorCount) }
    }
    return ProcessInfo.processInfo.activeProcessorCount
}

/// Splits data-parallel loops over a fixed set of persistent worker threads (the caller's thread included).
///
/// A forward pass runs a few hundred short parallel loops; waking threads through the OS for each costs more than
/// the loop. Workers therefore spin on an atomic generation counter for a while after each loop and only then sleep
/// on a condition variable, so back-to-back loops start in well under a microsecond.
public final class ThreadPool: @unchecked Sendable {
    public let threads: Int
    /// How many ranges a loop is cut into per thread, at most.
    static let rangesPerThread = 4
    private let state: PoolState
    private let callerLock = NSLock()

    public init(threads: Int) {
        self.threads = max(1, threads)
        state = PoolState(threads: self.threads)
        for worker in 1..<self.threads {
            // Workers hold the shared state, not the pool, so the pool can go away and stop them.
            let state = state
            let thread = Thread { state.workerLoop(worker) }
            thread.name = "tandem-worker-\(worker)"
            thread.start()
        }
    }

    deinit { state.stop() }

    /// Runs `body(begin, end)` over `count` items cut into contiguous ranges of at least `minimumPerThread` items
    /// and waits for all. The ranges (up to four per thread) go to whichever thread is free next, so a thread that
    /// the machine slows down takes fewer. Each item is processed by exactly one call, so results do not depend on
    /// the thread count or on who ran what.
    public func parallelRanges(_ count: Int, minimumPerThread: Int = 1, _ body: (Int, Int) -> Void) {
        let parts = min(threads * Self.rangesPerThread, max(1, count / max(1, minimumPerThread)))
        if threads == 1 || parts <= 1 || count <= 1 {
            body(0, count)
            return
        }
        callerLock.lock()
        defer { callerLock.unlock() }
        withoutActuallyEscaping(body) { escapable in state.run(escapable, count: count, parts: parts) }
    }
}

/// What the caller and the workers of a pool share.
private final class PoolState: @unchecked Sendable {
    let threads: Int
    private let generation = Atomic<Int>(0)
    private let remaining = Atomic<Int>(0)
    private let sleepers = Atomic<Int>(0)
    private let stopping = Atomic<Bool>(false)
    /// The next range of the current loop to hand out.
    private let nextRange = Atomic<Int>(0)
    private let wake = NSCondition()
    // Set by the caller before `generation` is bumped, read by workers after they see the bump.
    private var job: ((Int, Int) -> Void)?
    private var jobCount = 0
    private var jobParts = 0

    init(threads: Int) { self.threads = threads }

    func run(_ body: @escaping (Int, Int) -> Void, count: Int, parts: Int) {
        job = body
        jobCount = count
        jobParts = parts
        // Every worker acknowledges every loop, so none can lag a loop behind and read the next loop's fields.
        remaining.store(threads - 1, ordering: .sequentiallyConsistent)
        nextRange.store(0, ordering: .sequentiallyConsistent)
        generation.add(1, ordering: .sequentiallyConsistent)
        if sleepers.load(ordering: .sequentiallyConsistent) > 0 {
            wake.lock()
            wake.broadcast()
            wake.unlock()
        }
        runRanges(body, count: count, parts: parts)
        var spins = 0
        while remaining.load(ordering: .sequentiallyConsistent) > 0 {
            spins += 1
            if spins > 1_000_000 { sched_yield() }
        }
        job = nil
    }

    /// Takes the loop's ranges one after another until none is left.
    private func runRanges(_ body: (Int, Int) -> Void, count: Int, parts: Int) {
        while true {
            let part = nextRange.add(1, ordering: .sequentiallyConsistent).oldValue
            guard part < parts else { return }
            let begin = count * part / parts
            let end = count * (part + 1) / parts
            if begin < end { body(begin, end) }
        }
    }

    /// Makes every worker return.
    func stop() {
        stopping.store(true, ordering: .sequentiallyConsistent)
        wake.lock()
        generation.add(1, ordering: .sequentiallyConsistent)
        wake.broadcast()
        wake.unlock()
    }

    func workerLoop(_ worker: Int) {
        var seen = 0
        while true {
            var spins = 0
            var current = generation.load(ordering: .sequentiallyConsistent)
            while current == seen {
                spins += 1
                if spins < 200_000 {
                    current = generation.load(ordering: .sequentiallyConsistent)
                    continue
                }
                // Idle for a while: sleep until the next loop.
                wake.lock()
                sleepers.add(1, ordering: .sequentiallyConsistent)
                while generation.load(ordering: .sequentiallyConsistent) == seen { wake.wait() }
                sleepers.subtract(1, ordering: .sequentiallyConsistent)
                wake.unlock()
                current = generation.load(ordering: .sequentiallyConsistent)
            }
            if stopping.load(ordering: .sequentiallyConsistent) { return }
            seen = current
            if let job { runRanges(job, count: jobCount, parts: jobParts) }
            remaining.subtract(1, ordering: .sequentiallyConsistent)
        }
    }
}

/// Carries a value that is safe to share by construction (disjoint writes, read-only data) across threads.
public struct UncheckedSendable<T>: @unchecked Sendable {
    public let value: T
    public init(_ value: T) { self.value = value }
}
