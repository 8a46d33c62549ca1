internal import CZeroMQ

#if canImport(Glibc)
import Glibc
#endif

/// One ZeroMQ message part, owning a libzmq message (`zmq_msg_t`): the unit a socket sends and receives.
///
/// A frame is noncopyable, so its content has exactly one owner and is released exactly once. Reading it
/// needs no copy: ``withUnsafeBytes(_:)`` lends its bytes for the length of a closure. ``share()`` makes a
/// second frame with the same content at the cost of a reference count (libzmq keeps contents of more than
/// 33 bytes in a counted block), which is how a broker keeps a message for history while forwarding it.
/// Sending a frame hands its content to libzmq, which leaves the frame empty.
///
/// A frame may move between threads like any value, but a shared content is only counted atomically; the
/// frame itself must be used by one thread at a time.
public struct ZMQFrame: ~Copyable {
    /// The libzmq message. It is moved bitwise with the frame, which libzmq allows (its own `msg_t::move`
    /// does the same); a pointer into it (small contents live inside it) is only ever lent to a closure.
    var message: zmq_msg_t

    /// An empty frame, ready to receive into.
    public init() {
        message = zmq_msg_t()
        zmq_msg_init(&message)
    }

    /// A frame of `count` bytes, filled in place by `initialize`.
    /// - Parameters:
    ///   - count: the frame's size in bytes.
    ///   - initialize: writes the bytes; it must write all of them.
    /// - Throws: ``ZMQError`` when libzmq cannot allocate the content (`ENOMEM`).
    public init(count: Int, initializingWith initialize: (UnsafeMutableRawBufferPointer) -> Void) throws(ZMQError) {
        message = zmq_msg_t()
        guard zmq_msg_init_size(&message, count) == 0 else { throw ZMQError.last("zmq_msg_init_size(\(count))") }
        initialize(UnsafeMutableRawBufferPointer(start: count == 0 ? nil : zmq_msg_data(&message), count: count))
    }

    /// A frame holding a copy of `bytes`.
    /// - Parameter bytes: the content.
    /// - Throws: ``ZMQError`` when libzmq cannot allocate the content.
    public init(copying bytes: UnsafeRawBufferPointer) throws(ZMQError) {
        try self.init(count: bytes.count) { destination in
            if let source = bytes.baseAddress, let target = destination.baseAddress {
                target.copyMemory(from: source, byteCount: bytes.count)
            }
        }
    }

    /// A frame holding a copy of `bytes`, for control messages and tests.
    /// - Parameter bytes: the content.
    /// - Throws: ``ZMQError`` when libzmq cannot allocate the content.
    public init(_ bytes: some Collection<UInt8>) throws(ZMQError) {
        try self.init(count: bytes.count) { destination in
            _ = destination.initializeMemory(as: UInt8.self, from: bytes)
        }
    }

    deinit {
        var message = message
        zmq_msg_close(&message)
    }

    /// The frame's size in bytes.
    public var count: Int {
        var message = message
        return zmq_msg_size(&message)
    }

    /// Whether the frame has no bytes.
    public var isEmpty: Bool { count == 0 }

    /// Lends the frame's bytes to `body`; they stay valid until `body` returns.
    /// - Parameter body: reads the bytes.
    /// - Returns: what `body` returns.
    public func withUnsafeBytes<R: ~Copyable, E: Error>(_ body: (UnsafeRawBufferPointer) throws(E) -> R) throws(E) -> R {
        // A copy of the 64-byte handle: reading through it is safe, since small contents are copied with it and
        // large ones are shared by pointer; the copy is never closed.
        var message = message
        let count = zmq_msg_size(&message)
        return try body(UnsafeRawBufferPointer(start: count == 0 ? nil : zmq_msg_data(&message), count: count))
    }

    /// Lends the frame's bytes for writing, in place. Only for a frame whose content no other frame shares
    /// (``share()``): every sharer reads the same bytes. Package-only, for the forward micro-benchmark, which
    /// renumbers frames that no log holds any more rather than allocate new ones.
    /// - Parameter body: writes the bytes.
    /// - Returns: what `body` returns.
    package mutating func withUnsafeMutableBytes<R>(_ body: (UnsafeMutableRawBufferPointer) -> R) -> R {
        let count = zmq_msg_size(&message)
        return body(UnsafeMutableRawBufferPointer(start: count == 0 ? nil : zmq_msg_data(&message), count: count))
    }

    /// A metadata property of a received frame, such as `"User-Id"` (what the ZAP handler said the peer is) or
    /// `"Peer-Address"`; `nil` for frames not received, or without that property.
    /// - Parameter property: the property's name.
    public func metadata(_ property: String) -> String? {
        // Read through a copy of the handle, as `withUnsafeBytes` does: the metadata pointer travels with it.
        var message = message
        guard let value = zmq_msg_gets(&message, property) else { return nil }
        return String(cString: value)
    }

    /// The frame's bytes as a new array: for control messages, logs and tests, never for the data path.
    public var bytes: [UInt8] { withUnsafeBytes { Array($0) } }

    /// A second frame with the same content: a reference count for contents larger than 33 bytes, a copy of
    /// the bytes for smaller ones (libzmq keeps those inside the handle), never a new allocation.
    /// - Returns: the new frame.
    /// - Throws: ``ZMQError`` only if libzmq finds this frame invalid, which a frame made by this type never is.
    public mutating func share() throws(ZMQError) -> ZMQFrame {
        var copy = ZMQFrame()
        // libzmq marks the source as shared, so the source must be this frame itself, not a copy of its handle.
        guard zmq_msg_copy(&copy.message, &message) == 0 else { throw ZMQError.last("zmq_msg_copy") }
        return copy
    }

    /// Releases the content and leaves the frame empty.
    public mutating func clear() {
        zmq_msg_close(&message)
        zmq_msg_init(&message)
    }
}
