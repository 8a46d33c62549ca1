internal import CZeroMQ
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A ZeroMQ context: the container of sockets and of libzmq's I/O threads.
///
/// One context per process is usual. Sockets keep their context alive, so a context is terminated only when
/// ``terminate()`` is called or when it and all its sockets are released.
public final class ZMQContext: @unchecked Sendable {
    // @unchecked Sendable: libzmq documents contexts as thread safe (`zmq_ctx_*` and `zmq_socket` may be
    // called from any thread); the pointer is immutable and `terminated` is atomic.
    let handle: UnsafeMutableRawPointer
    private let terminated = Atomic<Bool>(false)

    /// Creates a context.
    /// - Parameters:
    ///   - ioThreads: libzmq's I/O thread count; one handles about a gigabyte per second.
    ///   - zeroCopyReceive: whether received frames may point into libzmq's shared 8 KiB read buffers instead
    ///     of owning a block each. Sharing saves an allocation per message, but a frame kept for long pins its
    ///     whole buffer: a process that keeps received frames (a broker's history) turns it off, so that the
    ///     memory it holds is the bytes it counts.
    public init(ioThreads: Int = 1, zeroCopyReceive: Bool = true) throws(ZMQError) {
        guard let handle = zmq_ctx_new() else { throw ZMQError.last("zmq_ctx_new") }
        self.handle = handle
        guard zmq_ctx_set(handle, ZMQ_IO_THREADS, Int32(clamping: ioThreads)) == 0 else {
            let error = ZMQError.last("zmq_ctx_set(ZMQ_IO_THREADS, \(ioThreads))")
            zmq_ctx_term(handle)
            throw error
        }
        // ZMQ_ZERO_COPY_RECV is a draft option that Debian's stable libzmq accepts; a library that refuses it
        // keeps sharing, which costs memory but not correctness.
        if !zeroCopyReceive { _ = zmq_ctx_set(handle, czmq_zero_copy_recv(), 0) }
    }

    /// Shuts the context down: blocking calls on its sockets return ``ZMQError/Kind/contextTerminated`` at once.
    ///
    /// Unlike ``terminate()`` this does not wait; each socket's owner must still close its socket.
    public func shutdown() {
        zmq_ctx_shutdown(handle)
    }

    /// Shuts the context down and waits until every socket of it is closed.
    ///
    /// The wait is bounded by the sockets' linger periods, which this wrapper never leaves infinite.
    public func terminate() {
        guard terminated.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing).exchanged
        else { return }
        zmq_ctx_shutdown(handle)
        while zmq_ctx_term(handle) != 0 && zmq_errno() == EINTR {}
    }

    deinit {
        // Every socket holds its context, so none is open here and the call returns at once.
        if !terminated.load(ordering: .acquiring) {
            while zmq_ctx_term(handle) != 0 && zmq_errno() == EINTR {}
        }
    }

    /// The version of the linked libzmq, for example `(4, 3, 4)`.
    public static var version: (major: Int, minor: Int, patch: Int) {
        var major: Int32 = 0
        var minor: Int32 = 0
        var patch: Int32 = 0
        zmq_version(&major, &minor, &patch)
        return (Int(major), Int(minor), Int(patch))
    }

    /// Whether the linked libzmq supports a capability such as `"curve"` or `"ipc"`.
    /// - Parameter capability: a capability name as understood by `zmq_has`.
    public static func has(_ capability: String) -> Bool {
        zmq_has(capability) != 0
    }
}
