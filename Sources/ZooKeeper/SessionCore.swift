internal import CZooKeeper
import FoundationEssentials
import Logging
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// The state shared between a session and the C client's callbacks.
///
/// The C handle's context points at it (retained), so the session watcher and the node watchers reach it
/// on the completion thread. Callbacks only update state under the mutex, yield to streams and resume
/// continuations; nothing blocks there.
final class SessionCore: Sendable {
    let connectionString: String
    let logger: Logger
    private let state = Mutex(State())
    /// Held while states are handed to the streams, so that they arrive in order; never while `state` is, and
    /// never taken by a stream's `onTermination`. Yielding under `state` deadlocked: a yield that wakes a waiting
    /// task takes that task's status lock, and cancelling the task runs `onTermination`, which takes `state`,
    /// with that same status lock held (a broker whose session expired as it stepped down hung for good).
    private let delivery = Mutex(())

    private struct State {
        var session: SessionState = .connecting
        var streams: [UInt64: AsyncStream<SessionState>.Continuation] = [:]
        var watches: [UInt: Watch] = [:]
        var nextID: UInt64 = 0
        var closeRequested = false
        var closed = false
        var closeWaiters: [CheckedContinuation<Void, Never>] = []
        var callsInFlight = 0
        /// C calls waiting for their completion, failed here when the session ends (``track(_:)``).
        var pending: [UInt64: CompletionBox] = [:]
    }

    init(connectionString: String, logger: Logger) {
        self.connectionString = connectionString
        self.logger = logger
    }

    var currentState: SessionState { state.withLock { $0.session } }

    // MARK: Calls and close

    /// Counts a C call in, unless the session is closing.
    func beginCall() throws(ZooKeeperError) {
        let allowed = state.withLock { state -> Bool in
            guard !state.closeRequested else { return false }
            state.callsInFlight += 1
            return true
        }
        guard allowed else { throw ZooKeeperError(code: .sessionClosed, connectionString: connectionString) }
    }

    func endCall() {
        state.withLock { $0.callsInFlight -= 1 }
    }

    /// Keeps a call's completion until ``untrack(_:)``, so that it is answered when the session ends: the C
    /// client checks the state before it takes its lock, so a call made as the session expires can be queued
    /// after the client failed every pending one, and its completion then comes only at `zookeeper_close`
    /// (ZOOKEEPER-2802), which a caller waiting for it would never reach.
    /// - Returns: the call's id, or `nil` when the session has ended (the call must not start).
    func track(_ box: CompletionBox) -> UInt64? {
        state.withLock { state -> UInt64? in
            guard !state.session.isTerminal else { return nil }
            state.nextID += 1
            state.pending[state.nextID] = box
            return state.nextID
        }
    }

    func untrack(_ id: UInt64) {
        state.withLock { _ = $0.pending.removeValue(forKey: id) }
    }

    /// What a call the session's end answers fails with.
    static func returnCode(endedBy state: SessionState) -> Int32 {
        switch state {
        case .expired: ZSESSIONEXPIRED.rawValue
        case .authenticationFailed: ZAUTHFAILED.rawValue
        default: ZCLOSING.rawValue
        }
    }

    /// Marks the session as closing; returns whether this caller must do the close.
    func beginClose() -> Bool {
        state.withLock { state in
            defer { state.closeRequested = true }
            return !state.closeRequested
        }
    }

    /// Waits (on the closing thread) until no C call is in progress: calling `zookeeper_close` concurrently
    /// with another call makes the C client defer the destruction to that call's thread.
    func waitForCallsToDrain() {
        while state.withLock({ $0.callsInFlight }) > 0 {
            usleep(100)
        }
    }

    func waitUntilClosed() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let done = state.withLock { state -> Bool in
                if state.closed { return true }
                state.closeWaiters.append(continuation)
                return false
            }
            if done { continuation.resume() }
        }
    }

    /// Called after `zookeeper_close` returned: no C callback can run any more.
    func finishClose(returnCode: Int32) {
        let previous = currentState
        transition(to: .closed, force: true)
        let waiters = state.withLock { state in
            state.closed = true
            defer { state.closeWaiters = [] }
            return state.closeWaiters
        }
        for waiter in waiters { waiter.resume() }
        logger.debug(
            "ZooKeeper session closed",
            metadata: ["previousState": "\(previous)", "returnCode": "\(returnCode)"]
        )
    }

    // MARK: States

    func makeStateStream() -> AsyncStream<SessionState> {
        let (stream, continuation) = AsyncStream<SessionState>.makeStream()
        let id = state.withLock { state in
            state.nextID += 1
            return state.nextID
        }
        // Set before registering: `finish()` below runs it, and it takes the lock.
        continuation.onTermination = { [weak self] _ in
            self?.state.withLock { _ = $0.streams.removeValue(forKey: id) }
        }
        let terminal = delivery.withLock { _ -> Bool in
            // Under `delivery`, so that no transition can overtake the initial state.
            let current = state.withLock { state -> SessionState in
                if !state.session.isTerminal { state.streams[id] = continuation }
                return state.session
            }
            continuation.yield(current)
            return current.isTerminal
        }
        if terminal { continuation.finish() }
        return stream
    }

    /// Records a state reported by the C client's session watcher.
    func sessionEvent(cState: Int32) {
        transition(to: SessionState(cState: cState), force: false)
    }

    /// Moves to `next`; terminal states end the streams and fire every outstanding watch.
    ///
    /// A terminal state is kept (the C client reports nothing meaningful after expiry) unless `force`
    /// (``SessionState/closed`` after `zookeeper_close`).
    private func transition(to next: SessionState, force: Bool) {
        let (changed, endedStreams, lostWatches, lostCalls) = delivery.withLock { _ in
            let (changed, streams, lostWatches, lostCalls) = state.withLock {
                state -> (Bool, [AsyncStream<SessionState>.Continuation], [Watch], [CompletionBox]) in
                guard state.session != next, force || !state.session.isTerminal else { return (false, [], [], []) }
                state.session = next
                let streams = Array(state.streams.values)
                guard next.isTerminal else { return (true, streams, [], []) }
                defer {
                    state.streams = [:]
                    state.watches = [:]
                    state.pending = [:]
                }
                return (true, streams, Array(state.watches.values), Array(state.pending.values))
            }
            for stream in streams { stream.yield(next) }
            return (changed, next.isTerminal ? streams : [], lostWatches, lostCalls)
        }
        guard changed else { return }
        // Answered here, once: a completion the C client still calls later finds its call answered. Its box is
        // not released early: the C client may still hold it.
        for call in lostCalls { call.resume(.failure(Self.returnCode(endedBy: next))) }
        // Finished outside the lock: `finish()` runs the stream's `onTermination`, which takes the lock.
        for stream in endedStreams { stream.finish() }
        let kind: WatchEvent.Kind =
            switch next {
            case .expired: .sessionExpired
            case .authenticationFailed: .authenticationFailed
            default: .sessionClosed
            }
        for watch in lostWatches { watch.fire(WatchEvent(kind: kind, path: watch.path)) }
        switch next {
        case .expired, .authenticationFailed:
            logger.info("ZooKeeper session ended; create a new session", metadata: ["state": "\(next)"])
        default:
            logger.debug("ZooKeeper session state changed", metadata: ["state": "\(next)"])
        }
    }

    // MARK: Watches

    /// Registers a watch before its C call, so that even an immediate event finds it.
    ///
    /// The C client gets the id, not a pointer, as the watcher context: it may call a watcher more than
    /// once (a session event is delivered to every registered watcher) or never (when the call fails or
    /// the handle closes), so no retain could be balanced reliably. An id that is no longer registered is
    /// simply ignored.
    func registerWatch(path: String) -> (UInt, Watch) {
        let watch = Watch(path: path)
        let (id, ended) = state.withLock { state -> (UInt, Bool) in
            state.nextID += 1
            let id = UInt(state.nextID)
            if !state.session.isTerminal { state.watches[id] = watch }
            return (id, state.session.isTerminal)
        }
        // Fired outside the lock, as every resumption of a waiting task should be (see `delivery`).
        if ended { watch.fire(WatchEvent(kind: .sessionClosed, path: path)) }
        return (id, watch)
    }

    func dropWatch(_ id: UInt) {
        state.withLock { _ = $0.watches.removeValue(forKey: id) }
    }

    /// Records an event reported by a node watcher.
    func nodeEvent(id: UInt, type: Int32, path: String?) {
        let kind: WatchEvent.Kind
        switch type {
        case ZOO_CREATED_EVENT: kind = .created
        case ZOO_DELETED_EVENT: kind = .deleted
        case ZOO_CHANGED_EVENT: kind = .dataChanged
        case ZOO_CHILD_EVENT: kind = .childrenChanged
        case ZOO_NOTWATCHING_EVENT: kind = .notWatching
        // Session events: on disconnection the watch stays registered and is re-armed on reconnection;
        // on expiry the session watcher fires every watch at once.
        default: return
        }
        guard let watch = state.withLock({ $0.watches.removeValue(forKey: id) }) else { return }
        watch.fire(WatchEvent(kind: kind, path: path ?? watch.path))
    }
}
