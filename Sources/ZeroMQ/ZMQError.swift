internal import CZeroMQ

#if canImport(Glibc)
import Glibc
#endif

/// An error reported by libzmq or by the wrapper, carrying the `errno` and libzmq's own text.
///
/// Match on ``kind`` to tell the cases callers handle differently: ``Kind/wouldBlock`` (try again later),
/// ``Kind/interrupted`` (a signal arrived; retry), ``Kind/contextTerminated`` (shut down; close the socket)
/// and ``Kind/socketClosed`` (the wrapper was closed; stop using it).
public struct ZMQError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The coarse classes of ZeroMQ errors that callers react to differently.
    public enum Kind: Sendable, Equatable {
        /// `EAGAIN`: the operation would block (non-blocking call, high-water mark reached, timeout).
        case wouldBlock
        /// `EINTR`: a signal interrupted the call before it completed; it can be retried.
        case interrupted
        /// `ETERM`: the socket's context was terminated; the socket must be closed.
        case contextTerminated
        /// The socket (or its async bridge) was already closed.
        case socketClosed
        /// Any other failure; see ``ZMQError/code`` and ``ZMQError/message``.
        case other
    }

    /// The `errno` value libzmq reported.
    public let code: Int32
    /// The operation that failed, for example `bind(tcp://*:5555)`.
    public let operation: String

    /// Creates an error from an `errno` value.
    /// - Parameters:
    ///   - code: the `errno` value, as returned by `zmq_errno()`.
    ///   - operation: what was being done, shown in the description.
    public init(code: Int32, operation: String) {
        self.code = code
        self.operation = operation
    }

    /// The class of this error.
    public var kind: Kind {
        switch code {
        case EAGAIN: .wouldBlock
        case EINTR: .interrupted
        case czmq_eterm(): .contextTerminated
        case ENOTSOCK: .socketClosed
        default: .other
        }
    }

    /// libzmq's text for ``code``.
    public var message: String { String(cString: zmq_strerror(code)) }

    /// A sentence naming the operation, the error and what to do next.
    public var description: String {
        let advice: String =
            switch kind {
            case .wouldBlock: "the operation would block; retry when the socket is ready"
            case .interrupted: "a signal interrupted the call; retry it"
            case .contextTerminated: "the ZeroMQ context is shutting down; close the socket"
            case .socketClosed: "the socket is closed; open a new one"
            case .other: adviceForOther
            }
        return "ZeroMQ \(operation) failed: \(message) (errno \(code)); \(advice)"
    }

    private var adviceForOther: String {
        switch code {
        case EADDRINUSE: "another process holds that address; choose another port or 0 for any free port"
        case EINVAL: "check the endpoint or option value"
        case EPROTONOSUPPORT: "use a transport libzmq supports (tcp, ipc, inproc)"
        case ENODEV, EADDRNOTAVAIL: "the interface or address does not exist on this host"
        case EHOSTUNREACH: "the peer is not connected"
        case czmq_efsm(): "the socket type does not allow this operation in its current state"
        default: "see the libzmq documentation for this operation"
        }
    }

    /// The error raised when a closed socket is used.
    static func closed(_ operation: String) -> ZMQError { ZMQError(code: ENOTSOCK, operation: operation) }

    /// The current `zmq_errno()` as an error.
    static func last(_ operation: @autoclosure () -> String) -> ZMQError {
        ZMQError(code: zmq_errno(), operation: operation())
    }
}
