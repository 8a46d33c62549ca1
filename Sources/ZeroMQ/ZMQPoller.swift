internal import CZeroMQ

#if canImport(Glibc)
import Glibc
#endif

/// Waits for readiness on several sockets and plain file descriptors at once (`zmq_poll`).
///
/// Like the sockets it watches, a poller belongs to one thread and is therefore not `Sendable`.
public final class ZMQPoller {
    private enum Source {
        case socket(ZMQSocket)
        case fileDescriptor(Int32)
    }

    private var sources: [Source] = []
    private var items: [zmq_pollitem_t] = []

    /// Creates an empty poller.
    public init() {}

    /// Watches a socket.
    /// - Parameters:
    ///   - socket: the socket; it stays registered until the poller is released.
    ///   - events: the events to wait for.
    /// - Returns: the index of this entry, for ``update(_:events:)`` and ``readyEvents(_:)``.
    @discardableResult
    public func register(_ socket: ZMQSocket, for events: ZMQEvents) -> Int {
        sources.append(.socket(socket))
        items.append(zmq_pollitem_t(socket: nil, fd: -1, events: events.rawValue, revents: 0))
        return items.count - 1
    }

    /// Watches a plain file descriptor, such as an eventfd used to wake the polling thread.
    /// - Parameters:
    ///   - fileDescriptor: the descriptor; the caller keeps it open while it is registered.
    ///   - events: the events to wait for.
    /// - Returns: the index of this entry.
    @discardableResult
    public func register(fileDescriptor: Int32, for events: ZMQEvents) -> Int {
        sources.append(.fileDescriptor(fileDescriptor))
        items.append(zmq_pollitem_t(socket: nil, fd: fileDescriptor, events: events.rawValue, revents: 0))
        return items.count - 1
    }

    /// Changes the events an entry waits for; an empty set ignores the entry.
    /// - Parameters:
    ///   - index: the index ``register(_:for:)`` returned.
    ///   - events: the new events.
    public func update(_ index: Int, events: ZMQEvents) {
        items[index].events = events.rawValue
    }

    /// Waits until at least one entry is ready or the timeout passes.
    /// - Parameter timeout: how long to wait; `nil` waits without limit, `.zero` only checks.
    /// - Returns: how many entries are ready.
    /// - Throws: ``ZMQError`` with ``ZMQError/Kind/interrupted`` on a signal, or
    ///   ``ZMQError/Kind/contextTerminated`` when a watched socket's context is shutting down.
    @discardableResult
    public func poll(timeout: Duration?) throws(ZMQError) -> Int {
        for index in sources.indices {
            items[index].revents = 0
            if case .socket(let socket) = sources[index] {
                items[index].socket = try socket.open("poll")
            }
        }
        let milliseconds = timeout.map(Self.milliseconds(rounding:)) ?? -1
        let count = items.withUnsafeMutableBufferPointer {
            zmq_poll($0.baseAddress, Int32($0.count), milliseconds)
        }
        guard count >= 0 else { throw ZMQError.last("poll") }
        return Int(count)
    }

    /// Whole milliseconds, as `zmq_poll` takes them: a part of one counts as one, so that a wait is never shorter
    /// than asked (a 0.7 ms wait would otherwise return at once, and its caller spin until the time is up).
    /// Negative durations are zero, and beyond a day is a day.
    static func milliseconds(rounding duration: Duration) -> Int {
        let (seconds, attoseconds) = duration.components
        guard seconds >= 0, attoseconds >= 0 else { return 0 }
        guard seconds < 86_400 else { return 86_400_000 }
        let perMillisecond: Int64 = 1_000_000_000_000_000
        return Int(seconds) * 1000 + Int((attoseconds + perMillisecond - 1) / perMillisecond)
    }

    /// Checks without waiting for up to `spin` (never longer than `timeout`), then waits for what is left of
    /// `timeout`. A thread whose messages arrive closer together than `spin` stays awake for them and saves the
    /// wake-up each would cost (tens of microseconds on a VM), at the price of a core kept busy meanwhile.
    /// - Returns: how many entries are ready.
    @discardableResult
    public func poll(timeout: Duration?, spinningUpTo spin: Duration) throws(ZMQError) -> Int {
        guard spin > .zero else { return try poll(timeout: timeout) }
        let clock = ContinuousClock()
        let start = clock.now
        let deadline = start + (timeout.map { min($0, spin) } ?? spin)
        repeat {
            let count = try poll(timeout: .zero)
            if count > 0 { return count }
        } while clock.now < deadline
        return try poll(timeout: timeout.map { max(.zero, $0 - (clock.now - start)) })
    }

    /// Waits until one socket is ready for `events`, for code that waits on a single socket now and then.
    /// - Parameters:
    ///   - socket: the socket.
    ///   - events: what to wait for.
    ///   - timeout: how long to wait; `nil` waits without limit.
    /// - Returns: the events the socket is ready for (empty after a timeout).
    @discardableResult
    public static func wait(on socket: ZMQSocket, for events: ZMQEvents, timeout: Duration?) throws(ZMQError) -> ZMQEvents {
        let poller = ZMQPoller()
        let entry = poller.register(socket, for: events)
        try poller.poll(timeout: timeout)
        return poller.readyEvents(entry)
    }

    /// The events an entry was found ready for by the last ``poll(timeout:)``.
    /// - Parameter index: the index ``register(_:for:)`` returned.
    public func readyEvents(_ index: Int) -> ZMQEvents {
        ZMQEvents(rawValue: items[index].revents)
    }
}
