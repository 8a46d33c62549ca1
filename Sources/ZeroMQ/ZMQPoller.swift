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
        let milliseconds: Int =
            if let timeout {
                Int(timeout.components.seconds) * 1000 + Int(timeout.components.attoseconds / 1_000_000_000_000_000)
            } else {
                -1
            }
        let count = items.withUnsafeMutableBufferPointer {
            zmq_poll($0.baseAddress, Int32($0.count), milliseconds)
        }
        guard count >= 0 else { throw ZMQError.last("poll") }
        return Int(count)
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
