import Synchronization

/// What made a ``Watch`` fire.
public struct WatchEvent: Sendable, Equatable, CustomStringConvertible {
    /// The kind of event.
    public enum Kind: Sendable, Equatable {
        /// The znode was created (exists watches on absent znodes).
        case created
        /// The znode was deleted.
        case deleted
        /// The znode's data changed.
        case dataChanged
        /// A child was created or deleted.
        case childrenChanged
        /// The server dropped the watch (for example for lack of resources); it will not fire.
        case notWatching
        /// The session expired; the watch is gone and will never fire. Re-read with a new session.
        case sessionExpired
        /// Authentication failed; the watch will never fire.
        case authenticationFailed
        /// The session was closed; the watch will never fire.
        case sessionClosed
    }

    /// The kind of event.
    public let kind: Kind
    /// The watched znode path.
    public let path: String

    /// Whether the watch ended because the session ended rather than because the znode changed.
    public var isSessionLoss: Bool {
        kind == .sessionExpired || kind == .authenticationFailed || kind == .sessionClosed
    }

    /// The kind and the path.
    public var description: String { "\(kind) \(path)" }

    /// Creates an event.
    ///
    /// - Parameters:
    ///   - kind: The kind of event.
    ///   - path: The watched znode path.
    public init(kind: Kind, path: String) {
        self.kind = kind
        self.path = path
    }
}

/// A one-shot ZooKeeper watch, returned by the `…Watching` operations of ``ZooKeeperSession``.
///
/// It fires at most once: on the first change of the znode, or with a session-loss event when the
/// session expires or is closed, so a waiter is never stranded. A mere disconnection does not fire it:
/// the C client re-registers watches when it reconnects within the session timeout.
/// Any number of tasks may await ``event()``, before or after it fired.
public final class Watch: Sendable {
    /// The watched znode path.
    public let path: String

    private let state = Mutex(State())

    /// Waits until the watch fires.
    ///
    /// - Returns: The event that fired the watch.
    /// - Throws: `CancellationError` as soon as the waiting task is cancelled; the watch itself stays
    ///   armed and can be awaited again.
    public func event() async throws(CancellationError) -> WatchEvent {
        let waiterID = state.withLock { state in
            state.nextWaiterID += 1
            return state.nextWaiterID
        }
        let event: WatchEvent? = await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<WatchEvent?, Never>) in
                let immediate: WatchEvent?? = state.withLock { state in
                    if let fired = state.fired { return .some(fired) }
                    // Checked under the lock: the cancellation handler takes the same lock after the flag is set.
                    if Task.isCancelled { return .some(nil) }
                    state.waiters[waiterID] = continuation
                    return .none
                }
                if case .some(let value) = immediate { continuation.resume(returning: value) }
            }
        } onCancel: {
            state.withLock { $0.waiters.removeValue(forKey: waiterID) }?.resume(returning: nil)
        }
        guard let event else { throw CancellationError() }
        return event
    }

    /// The event, if the watch has already fired.
    public var firedEvent: WatchEvent? { state.withLock { $0.fired } }

    init(path: String) {
        self.path = path
    }

    // MARK: - Firing

    private struct State {
        var fired: WatchEvent?
        var waiters: [UInt64: CheckedContinuation<WatchEvent?, Never>] = [:]
        var nextWaiterID: UInt64 = 0
    }

    /// Fires the watch once; later calls are ignored.
    func fire(_ event: WatchEvent) {
        let waiters = state.withLock { state -> [CheckedContinuation<WatchEvent?, Never>] in
            guard state.fired == nil else { return [] }
            state.fired = event
            defer { state.waiters = [:] }
            return Array(state.waiters.values)
        }
        for waiter in waiters { waiter.resume(returning: event) }
    }
}
