import Foundation
import Synchronization
import TestSupport
import Testing

@testable import ZooKeeper

@Suite("Session core")
struct SessionCoreTests {
    /// A task that waits for session states is cancelled (a broker stepping down stops its session monitor)
    /// while the C client's thread hands it a state (the session expiring at that moment). Handing states over
    /// under the lock that the stream's cancellation takes deadlocked the two threads, and the broker never made
    /// a new session. Here one thread changes the state as fast as it can while another cancels watchers.
    @Test func cancellingAStateWatcherWhileTheStateChangesDoesNotDeadlock() async throws {
        let core = SessionCore(connectionString: "127.0.0.1:1", logger: testLogger())
        let watchers = 2_000
        let stop = Atomic<Bool>(false)
        let cancelled = Atomic<Int>(0)
        defer { stop.store(true, ordering: .relaxed) }
        Thread {
            // The C client's CONNECTED (3) and CONNECTING (1) states, one after the other.
            while !stop.load(ordering: .relaxed) {
                core.sessionEvent(cState: 3)
                core.sessionEvent(cState: 1)
            }
        }.start()
        // Cancelled from a thread of its own, so that a deadlock there leaves the test's threads free to report it.
        Thread {
            let tasks = (0..<watchers).map { _ in
                let states = core.makeStateStream()
                return Task.detached { for await _ in states {} }
            }
            for task in tasks {
                usleep(20)
                task.cancel()
                cancelled.add(1, ordering: .relaxed)
            }
        }.start()
        let deadline = ContinuousClock.now + .seconds(30)
        while cancelled.load(ordering: .relaxed) < watchers, ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(50))
        }
        #expect(cancelled.load(ordering: .relaxed) == watchers, "cancellations stopped: a deadlock")
    }
}

@Suite("Session core: calls")
struct SessionCoreCallTests {
    /// The C client can take a call made as the session expires after it failed every pending one, and then
    /// answers it only when the handle closes, which a caller waiting for the answer never reaches. The session's
    /// end answers every call still waiting, once; the C client's late answer finds it answered.
    @Test(arguments: [(Int32(-112), ZooKeeperError.Code.sessionExpired), (Int32(0), .closing)])
    func aCallStillWaitingWhenTheSessionEndsIsAnswered(cState: Int32, code: ZooKeeperError.Code) async throws {
        let core = SessionCore(connectionString: "127.0.0.1:1", logger: testLogger())
        let waiting = Atomic<Bool>(false)
        let answer = Mutex<Int32?>(nil)
        Task.detached {
            let outcome = await withCheckedContinuation { (continuation: CheckedContinuation<Outcome, Never>) in
                let box = CompletionBox(continuation)
                #expect(core.track(box) != nil)
                waiting.store(true, ordering: .releasing)
            }
            if case .failure(let returnCode) = outcome { answer.withLock { $0 = returnCode } }
        }
        while !waiting.load(ordering: .acquiring) { try await Task.sleep(for: .milliseconds(1)) }
        // The C client's EXPIRED_SESSION (-112), or its closed state (0) after `zookeeper_close`.
        core.sessionEvent(cState: cState)
        let deadline = ContinuousClock.now + .seconds(5)
        while answer.withLock({ $0 }) == nil, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(5)) }
        let returnCode = try #require(answer.withLock { $0 }, "the waiting call was answered")
        #expect(ZooKeeperError.Code(returnCode: returnCode) == code)
        // A call after the end does not start.
        _ = await withCheckedContinuation { (continuation: CheckedContinuation<Outcome, Never>) in
            let box = CompletionBox(continuation)
            #expect(core.track(box) == nil)
            box.resume(.failure(returnCode))
        }
    }
}
