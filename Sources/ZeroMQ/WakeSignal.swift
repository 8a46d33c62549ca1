internal import CZeroMQ

#if canImport(Glibc)
import Glibc
#endif

/// A level-triggered wake-up that any thread may raise and one polling thread waits on (a Linux eventfd).
///
/// An eventfd rather than an inproc socket pair, because raising it must be safe from any thread while a
/// ZeroMQ socket may only be used by one; `zmq_poll` watches plain descriptors next to sockets.
public final class WakeSignal: Sendable {
    /// The descriptor to register with a ``ZMQPoller``.
    public let fileDescriptor: Int32

    public init() throws(ZMQError) {
        let fd = czmq_wake_eventfd()
        guard fd >= 0 else { throw ZMQError(code: errno, operation: "eventfd") }
        fileDescriptor = fd
    }

    deinit {
        Glibc.close(fileDescriptor)
    }

    /// Makes the descriptor readable until ``reset()``; raising it several times is the same as once.
    public func raise() {
        var one: UInt64 = 1
        // The only failure for a non-blocking eventfd is a counter overflow, which still leaves it readable.
        _ = write(fileDescriptor, &one, MemoryLayout<UInt64>.size)
    }

    /// Makes the descriptor unreadable again.
    public func reset() {
        var value: UInt64 = 0
        _ = read(fileDescriptor, &value, MemoryLayout<UInt64>.size)
    }
}
