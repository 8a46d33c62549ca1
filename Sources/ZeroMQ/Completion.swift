import Synchronization

/// A one-time event that threads signal and tasks await: a socket thread that finished, say. Waiting after it
/// happened returns at once.
public final class Completion: Sendable {
    /// Creates an event that has not happened.
    public init() {}

    private let state = Mutex((done: false, waiters: [CheckedContinuation<Void, Never>]()))

    /// Marks the event as happened and resumes everyone waiting; later calls do nothing.
    public func complete() {
        let waiters = state.withLock { state in
            state.done = true
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Whether ``complete()`` was called.
    public var isComplete: Bool { state.withLock { $0.done } }

    /// Suspends until ``complete()`` is called.
    public func wait() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let done = state.withLock { state -> Bool in
                if state.done { return true }
                state.waiters.append(continuation)
                return false
            }
            if done { continuation.resume() }
        }
    }
}
