internal import CZeroMQ
import Synchronization

/// Events of a socket's connections, as `zmq_socket_monitor` reports them.
public struct ZMQSocketEvents: OptionSet, Sendable, Hashable {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }

    /// A connection was established (before its handshake).
    public static let connected = ZMQSocketEvents(rawValue: UInt16(ZMQ_EVENT_CONNECTED))
    /// A connection was closed.
    public static let disconnected = ZMQSocketEvents(rawValue: UInt16(ZMQ_EVENT_DISCONNECTED))
    /// A handshake (security mechanism included) succeeded.
    public static let handshakeSucceeded = ZMQSocketEvents(rawValue: UInt16(ZMQ_EVENT_HANDSHAKE_SUCCEEDED))
    /// The peer refused this socket's credentials: for CURVE, the server's ZAP handler denied its key.
    public static let handshakeFailedAuthentication = ZMQSocketEvents(rawValue: UInt16(ZMQ_EVENT_HANDSHAKE_FAILED_AUTH))
    /// The handshake broke the protocol: for CURVE, typically the wrong server key.
    public static let handshakeFailedProtocol = ZMQSocketEvents(rawValue: UInt16(ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL))
    /// The handshake failed for another reason.
    public static let handshakeFailedOther = ZMQSocketEvents(rawValue: UInt16(ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL))
}

/// One event of a monitored socket.
public struct ZMQSocketEvent: Sendable, Equatable {
    /// What happened.
    public var event: ZMQSocketEvents
    /// The event's value: for a failed authentication, the ZAP status code (such as 400).
    public var value: UInt32
    /// The endpoint concerned.
    public var endpoint: String
}

private let monitorCounter = Atomic<Int>(0)

extension ZMQSocket {
    /// Starts reporting `events` of this socket's connections, on a new PAIR socket of the same context
    /// owned by the caller's thread; read it with ``receiveEvent()``. Close it after this socket.
    /// - Parameter events: the events to report.
    /// - Returns: the socket the events arrive on.
    public func monitor(_ events: ZMQSocketEvents) throws(ZMQError) -> ZMQSocket {
        let endpoint = "inproc://herald-monitor-\(monitorCounter.add(1, ordering: .relaxed).newValue)"
        let handle = try open("zmq_socket_monitor")
        guard zmq_socket_monitor(handle, endpoint, Int32(events.rawValue)) == 0 else {
            throw ZMQError.last("zmq_socket_monitor")
        }
        let pair = try ZMQSocket(context: context, type: .pair)
        try pair.set(.linger(.zero))
        try pair.connect(endpoint)
        return pair
    }

    /// The next event on a monitor socket (see ``monitor(_:)``), without waiting; `nil` when none is queued.
    public func receiveEvent() -> ZMQSocketEvent? {
        while let message = try? receive(dontWait: true) {
            // libzmq's version 1 format: a frame of the event (2 bytes) and value (4 bytes), native byte order,
            // then a frame of the endpoint.
            guard message.frames.count == 2, message.frames[0].count == 6 else { continue }
            let head = message.frames[0]
            let event = UInt16(head[0]) | UInt16(head[1]) << 8
            let value = (0..<4).reduce(UInt32(0)) { $0 | UInt32(head[2 + $1]) << (8 * $1) }
            return ZMQSocketEvent(
                event: ZMQSocketEvents(rawValue: event), value: value,
                endpoint: String(decoding: message.frames[1], as: UTF8.self))
        }
        return nil
    }
}
