import COSThreads
import OSThreads
import Synchronization
import Testing

#if canImport(Glibc)
    import Glibc
#endif

@Suite("Thread executor", .timeLimit(.minutes(1)))
struct ThreadExecutorTests {
    @Test func aTaskThatPrefersItRunsOnItsThreadBeforeAndAfterASuspension() async throws {
        let executor = try ThreadExecutor(name: "herald-test-exec")
        defer { executor.finish() }
        #expect(!executor.isCurrent)
        let (before, after) = await withTaskExecutorPreference(executor) {
            let before = executor.isCurrent
            // Resumed from another thread: the task comes back to the executor's thread.
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                do {
                    try OSThread.start(name: "herald-test-res") { continuation.resume() }
                } catch {
                    continuation.resume()
                }
            }
            return (before, executor.isCurrent)
        }
        #expect(before)
        #expect(after)
        #expect(!executor.isCurrent)
    }

    @Test func itsThreadAsksForTheLeastTimerSlackAndOtherThreadsKeepTheirs() async throws {
        let executor = try ThreadExecutor(name: "herald-test-exec")
        defer { executor.finish() }
        let slack = await withTaskExecutorPreference(executor) { costhreads_timer_slack() }
        #expect(slack == Int(ThreadExecutor.timerSlackNanoseconds))
        // The setting is the executor thread's alone (Linux's default elsewhere is 50 µs).
        #expect(costhreads_timer_slack() != Int(ThreadExecutor.timerSlackNanoseconds))
    }

    @Test func sleepReturnsNoEarlierThanItsDeadlineForShortAndLongWaits() async throws {
        let executor = try ThreadExecutor(name: "herald-test-exec")
        defer { executor.finish() }
        try await withTaskExecutorPreference(executor) {
            for wait in [Duration.microseconds(300), .milliseconds(3), ThreadExecutor.longestBlockingSleep * 2] {
                let deadline = ContinuousClock.now + wait
                try await executor.sleep(until: deadline)
                #expect(ContinuousClock.now >= deadline, "woke early from a wait of \(wait)")
                #expect(executor.isCurrent)
            }
            // Off the executor's thread it suspends like Task.sleep.
            let deadline = ContinuousClock.now + .milliseconds(2)
            try await Task.detached { try await executor.sleep(until: deadline) }.value
            #expect(ContinuousClock.now >= deadline)
        }
    }

    @Test func aShortWaitKeepsTheThreadSoNothingElseRunsOnItMeanwhile() async throws {
        let executor = try ThreadExecutor(name: "herald-test-exec")
        defer { executor.finish() }
        let sleeping = Flag()
        let sleeper = Task(executorPreference: executor) {
            sleeping.value.store(true, ordering: .sequentiallyConsistent)
            try await executor.sleep(until: .now + .milliseconds(5))
            sleeping.value.store(false, ordering: .sequentiallyConsistent)
        }
        while !sleeping.value.load(ordering: .sequentiallyConsistent) { await Task.yield() }
        // Queued while the sleeper blocks the thread: it runs only once the sleeper is done with it.
        let sawSleeper = await Task(executorPreference: executor) {
            sleeping.value.load(ordering: .sequentiallyConsistent)
        }.value
        try await sleeper.value
        #expect(!sawSleeper)
    }

    @Test func aLongWaitSuspendsSoOtherTasksRunAndCancellationEndsItAtOnce() async throws {
        let executor = try ThreadExecutor(name: "herald-test-exec")
        defer { executor.finish() }
        let sleeper = Task(executorPreference: executor) {
            try await executor.sleep(until: .now + .seconds(30))
        }
        // The sleeper holds no thread: another task on the same executor runs meanwhile.
        let ranMeanwhile = await Task(executorPreference: executor) { executor.isCurrent }.value
        #expect(ranMeanwhile)
        sleeper.cancel()
        let started = ContinuousClock.now
        await #expect(throws: CancellationError.self) { try await sleeper.value }
        #expect(ContinuousClock.now - started < .seconds(10), "cancellation waited for the deadline")
    }

    @Test func afterFinishItsTasksStillRunOnTheGlobalExecutor() async throws {
        let executor = try ThreadExecutor(name: "herald-test-exec")
        executor.finish()
        // The thread may be gone: a task that prefers it must run all the same, elsewhere.
        let result = await withTaskExecutorPreference(executor) {
            await Task.yield()
            return executor.isCurrent
        }
        #expect(!result)
    }
}

private final class Flag: Sendable {
    let value = Atomic(false)
}
