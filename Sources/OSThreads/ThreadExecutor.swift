import COSThreads
import Synchronization

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// A task executor with one operating-system thread of its own.
///
/// A task that prefers it (`withTaskExecutorPreference`) runs on that thread, and so may block it: a loop that
/// paces itself sleeps in the kernel's timer (``sleep(until:)``) and goes on where it was, instead of
/// suspending through the global executor's timer and a hand-off between pool threads each time, which at
/// 10,000 wake-ups a second costs about a fifth of a core (`herald publish --rate 10000`, measured with
/// `perf stat`). Only tasks that prefer this executor run on the thread, so blocking it holds up no one else.
public final class ThreadExecutor: TaskExecutor {
    /// Longest wait ``sleep(until:)`` spends blocked; a longer one suspends, so that cancellation (a graceful
    /// shutdown) is noticed at once, while the cost of suspending no longer matters.
    public static let longestBlockingSleep: Duration = .milliseconds(10)

    /// The timer slack of the executor's thread: the least Linux takes (0 would mean the process's default).
    public static let timerSlackNanoseconds: UInt = 1

    private let queue: JobQueue
    /// The thread's id once it runs, for ``isCurrent``; 0 before.
    private let thread = Atomic<UInt>(0)

    /// Starts the thread, which runs until ``finish()``.
    /// - Parameter name: the thread's name, for debuggers and `top -H`.
    /// - Throws: ``OSThreadError`` when the system refuses another thread.
    public init(name: String) throws(OSThreadError) {
        queue = try JobQueue()
        // The thread keeps the executor alive until `finish()`: a job may still name it as its executor.
        try OSThread.start(name: name) { [self] in
            // Linux may end a sleep up to 50 µs late by default (the timer slack, to group wake-ups): half the
            // period of a loop paced at 10,000 a second, so that it fell behind and sent in bursts. A thread
            // that paces itself wants its sleeps to end on time. A refusal (a seccomp profile) only costs that.
            _ = costhreads_set_timer_slack(Self.timerSlackNanoseconds)
            thread.store(UInt(pthread_self()), ordering: .releasing)
            queue.runUntilFinished { $0.runSynchronously(on: asUnownedTaskExecutor()) }
        }
    }

    /// Lets the thread end once it has run the jobs it has; a job that comes later runs on the global executor.
    public func finish() {
        queue.finish()
    }

    /// Whether the calling code runs on this executor's thread.
    public var isCurrent: Bool {
        let thread = self.thread.load(ordering: .acquiring)
        return thread != 0 && pthread_equal(pthread_t(thread), pthread_self()) != 0
    }

    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        if !queue.push(job) { globalConcurrentExecutor.enqueue(job) }
    }

    /// Waits until `deadline`. On this executor's thread, for a wait up to ``longestBlockingSleep``, the thread
    /// sleeps in the kernel (`nanosleep`) and the task goes on without leaving it; otherwise the task suspends
    /// with `Task.sleep`.
    /// - Parameter deadline: when to go on; one in the past returns at once.
    /// - Throws: `CancellationError` when the task is cancelled.
    public func sleep(until deadline: ContinuousClock.Instant) async throws {
        try Task.checkCancellation()
        let wait = deadline - .now
        guard wait > .zero else { return }
        guard isCurrent, wait <= Self.longestBlockingSleep else {
            return try await Task.sleep(until: deadline, clock: .continuous)
        }
        let parts = wait.components
        var request = timespec(tv_sec: Int(parts.seconds), tv_nsec: Int(parts.attoseconds / 1_000_000_000))
        var remaining = timespec()
        // A signal cuts the sleep short: sleep the rest.
        while nanosleep(&request, &remaining) != 0, errno == EINTR { request = remaining }
    }
}

/// The jobs waiting for a ``ThreadExecutor``'s thread, and a semaphore the thread waits on while there are none.
///
/// `@unchecked Sendable`: the semaphore is a POSIX semaphore, made to be posted and waited on from any thread;
/// its storage is allocated once in `init` and freed in `deinit`, which runs only after the thread, which holds
/// a strong reference through its executor, has returned from ``runUntilFinished(_:)``, and after every
/// `push` (whose caller holds the executor). The job list is guarded by a `Mutex`.
private final class JobQueue: @unchecked Sendable {
    private let state = Mutex((jobs: [UnownedJob](), finished: false))
    private let semaphore: UnsafeMutablePointer<sem_t>

    init() throws(OSThreadError) {
        semaphore = .allocate(capacity: 1)
        guard sem_init(semaphore, 0, 0) == 0 else {
            let code = errno
            semaphore.deallocate()
            throw OSThreadError(name: "executor semaphore", code: code)
        }
    }

    deinit {
        sem_destroy(semaphore)
        semaphore.deallocate()
    }

    /// Queues a job for the thread. - Returns: `false` after ``finish()``, when the thread may be gone.
    func push(_ job: UnownedJob) -> Bool {
        let queued = state.withLock { state in
            if !state.finished { state.jobs.append(job) }
            return !state.finished
        }
        if queued { sem_post(semaphore) }
        return queued
    }

    /// Lets the thread return once it has run every job pushed before.
    func finish() {
        state.withLock { $0.finished = true }
        sem_post(semaphore)
    }

    /// Runs jobs as they come, in order, until ``finish()`` and the jobs pushed before it.
    func runUntilFinished(_ run: (UnownedJob) -> Void) {
        // Two lists swapped under the lock: taking the jobs allocates nothing once both have grown.
        var taken: [UnownedJob] = []
        while true {
            while sem_wait(semaphore) != 0, errno == EINTR {}
            let finished = state.withLock { state in
                swap(&state.jobs, &taken)
                return state.finished
            }
            for job in taken { run(job) }
            taken.removeAll(keepingCapacity: true)
            // Nothing is queued after `finish()`.
            if finished { return }
        }
    }
}
