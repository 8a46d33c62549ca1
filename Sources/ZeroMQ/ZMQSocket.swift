internal import CZeroMQ

#if canImport(Glibc)
import Glibc
#endif

/// The ZeroMQ socket types Herald uses.
public enum ZMQSocketType: Sendable, CaseIterable {
    /// Publishes to every matching subscriber; never blocks, drops at the high-water mark.
    case pub
    /// Receives what publishers send on subscribed prefixes.
    case sub
    /// A publisher that also receives subscription messages (for proxies and late-joiner logic).
    case xpub
    /// A subscriber that sends subscriptions as messages (for proxies).
    case xsub
    /// Routes by peer identity; the first frame names the peer.
    case router
    /// Load-balances outgoing messages, fair-queues incoming ones; asynchronous request/reply.
    case dealer
    /// Pipeline producer.
    case push
    /// Pipeline consumer.
    case pull
    /// Strict request/reply client.
    case req
    /// Strict request/reply server.
    case rep
    /// Exclusive pair, for inproc signalling between two threads.
    case pair

    var rawValue: Int32 {
        switch self {
        case .pub: ZMQ_PUB
        case .sub: ZMQ_SUB
        case .xpub: ZMQ_XPUB
        case .xsub: ZMQ_XSUB
        case .router: ZMQ_ROUTER
        case .dealer: ZMQ_DEALER
        case .push: ZMQ_PUSH
        case .pull: ZMQ_PULL
        case .req: ZMQ_REQ
        case .rep: ZMQ_REP
        case .pair: ZMQ_PAIR
        }
    }
}

/// A socket option and its value.
public enum ZMQSocketOption: Sendable, Equatable {
    /// How long pending outgoing messages are kept after close. `nil` waits forever, which this wrapper
    /// never sets by default because it can hang shutdown.
    case linger(Duration?)
    /// Outgoing queue limit per peer, in messages (0: unlimited).
    case sendHighWaterMark(Int32)
    /// Incoming queue limit per peer, in messages (0: unlimited).
    case receiveHighWaterMark(Int32)
    /// Interval between ZMTP heartbeat PINGs (zero disables them).
    case heartbeatInterval(Duration)
    /// How long to wait for a PONG before the connection is considered dead.
    case heartbeatTimeout(Duration)
    /// Time-to-live the peer should apply to this side's heartbeats.
    case heartbeatTimeToLive(Duration)
    /// Turns TCP keepalive on or off (`nil`: the operating system's default).
    case tcpKeepalive(Bool?)
    /// Idle time before the first TCP keepalive probe.
    case tcpKeepaliveIdle(Duration)
    /// Interval between TCP keepalive probes.
    case tcpKeepaliveInterval(Duration)
    /// Unanswered TCP keepalive probes before the connection drops.
    case tcpKeepaliveCount(Int32)
    /// SUB: receive messages whose first frame starts with these bytes (empty: everything).
    case subscribe([UInt8])
    /// SUB: stop receiving messages with this prefix.
    case unsubscribe([UInt8])
    /// XPUB: pass every subscription message up, not only new ones.
    case xpubVerbose(Bool)
    /// XPUB: a message sent to each new subscriber as soon as it connects.
    case xpubWelcomeMessage([UInt8])
    /// This socket is a CURVE server (it holds a secret key and authenticates clients).
    case curveServer(Bool)
    /// This socket's long-term CURVE public key, 40 Z85 characters.
    case curvePublicKey(String)
    /// This socket's long-term CURVE secret key, 40 Z85 characters.
    case curveSecretKey(String)
    /// The server's CURVE public key, for a client socket, 40 Z85 characters.
    case curveServerKey(String)
    /// The identity this socket presents to ROUTER peers.
    case routingID([UInt8])
    /// ROUTER: fail with `EHOSTUNREACH` instead of silently dropping messages to unknown peers.
    case routerMandatory(Bool)
    /// Queue messages only to completed connections.
    case immediate(Bool)
    /// First reconnection delay after a connection drops.
    case reconnectInterval(Duration)
    /// Upper bound of the exponential reconnection back-off (zero: no back-off).
    case reconnectIntervalMax(Duration)
    /// Timeout of a blocking send (`nil`: wait forever).
    case sendTimeout(Duration?)
    /// Timeout of a blocking receive (`nil`: wait forever).
    case receiveTimeout(Duration?)
    /// The largest message a peer may send, in bytes (`nil`: no limit); a peer that sends more is disconnected
    /// by libzmq before the message is allocated.
    case maximumMessageSize(Int?)
    /// The ZAP domain a server socket's peers are authenticated in (see ``ZMQAuthenticator``).
    case zapDomain(String)
}

/// A pair of CURVE keys in Z85 text.
public struct ZMQCurveKeyPair: Sendable, Equatable {
    /// The public key, 40 Z85 characters.
    public let publicKey: String
    /// The secret key, 40 Z85 characters.
    public let secretKey: String

    /// Generates a new key pair.
    /// - Throws: ``ZMQError`` when libzmq was built without CURVE support.
    public static func generate() throws(ZMQError) -> ZMQCurveKeyPair {
        var publicKey = [CChar](repeating: 0, count: 41)
        var secretKey = [CChar](repeating: 0, count: 41)
        guard zmq_curve_keypair(&publicKey, &secretKey) == 0 else { throw ZMQError.last("zmq_curve_keypair") }
        return ZMQCurveKeyPair(publicKey: text(ofKeyBuffer: publicKey), secretKey: text(ofKeyBuffer: secretKey))
    }

    private init(publicKey: String, secretKey: String) {
        self.publicKey = publicKey
        self.secretKey = secretKey
    }

    /// The key pair of a secret key: its public key is derived from it.
    /// - Parameter secretKey: 40 Z85 characters.
    /// - Throws: ``ZMQError`` with `EINVAL` when `secretKey` is not a Z85-encoded 32-byte key.
    public init(secretKey: String) throws(ZMQError) {
        guard Self.isValidKey(secretKey) else {
            throw ZMQError(code: EINVAL, operation: "zmq_curve_public")
        }
        var publicKey = [CChar](repeating: 0, count: 41)
        guard zmq_curve_public(&publicKey, secretKey) == 0 else { throw ZMQError.last("zmq_curve_public") }
        self.publicKey = Self.text(ofKeyBuffer: publicKey)
        self.secretKey = secretKey
    }

    /// Whether `key` is a CURVE key in Z85 text: 40 characters that decode to 32 bytes.
    public static func isValidKey(_ key: String) -> Bool {
        // An embedded NUL would end the C string early: such text is no key.
        !key.utf8.contains(0) && bytes(ofKey: key) != nil
    }

    /// The 32 bytes of a key in Z85 text, or `nil` if it is not one.
    public static func bytes(ofKey key: String) -> [UInt8]? {
        guard key.utf8.count == 40 else { return nil }
        var decoded = [UInt8](repeating: 0, count: 32)
        return zmq_z85_decode(&decoded, key) == nil ? nil : decoded
    }

    /// The Z85 text of a 32-byte binary key, as ZAP requests carry them.
    public static func z85(ofKey bytes: some Collection<UInt8>) -> String? {
        guard bytes.count == 32 else { return nil }
        let binary = Array(bytes)
        var text = [CChar](repeating: 0, count: 41)
        guard zmq_z85_encode(&text, binary, 32) != nil else { return nil }
        return Self.text(ofKeyBuffer: text)
    }

    /// The 40 characters libzmq wrote into a 41-byte C buffer (Z85 text and its terminating zero).
    private static func text(ofKeyBuffer buffer: [CChar]) -> String {
        String(decoding: buffer.prefix(40).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

/// A ZeroMQ socket, used by one thread at a time.
///
/// libzmq sockets are not thread safe. This type is therefore not `Sendable`: the compiler keeps it in one
/// isolation domain, and handing it to another thread is only possible as a whole transfer (which libzmq
/// allows, given the memory barrier a thread hand-off implies). Async code uses ``AsyncZMQSocket`` instead.
///
/// Sockets are created with a bounded linger (``defaultLinger``) so that closing one, or terminating its
/// context, never waits forever for a peer that is gone.
public final class ZMQSocket {
    /// The linger applied to every new socket: long enough to flush a few messages to a live peer on a clean
    /// shutdown, short enough that shutdown never hangs on a dead one.
    public static let defaultLinger: Duration = .milliseconds(500)

    /// The socket's type.
    public let type: ZMQSocketType
    /// The context the socket belongs to; kept alive as long as the socket.
    public let context: ZMQContext

    private var handle: UnsafeMutableRawPointer?
    /// One reusable message for receives, at a fixed address because libzmq keeps small payloads inside it.
    private let receiveBuffer: UnsafeMutablePointer<zmq_msg_t>

    /// Opens a socket.
    /// - Parameters:
    ///   - context: the context to open it in.
    ///   - type: the socket type.
    public init(context: ZMQContext, type: ZMQSocketType) throws(ZMQError) {
        guard let handle = zmq_socket(context.handle, type.rawValue) else {
            throw ZMQError.last("zmq_socket(\(type))")
        }
        self.context = context
        self.type = type
        self.handle = handle
        self.receiveBuffer = .allocate(capacity: 1)
        zmq_msg_init(receiveBuffer)
        try set(.linger(Self.defaultLinger))
    }

    deinit {
        close()
        zmq_msg_close(receiveBuffer)
        receiveBuffer.deallocate()
    }

    /// Whether ``close()`` was called.
    public var isClosed: Bool { handle == nil }

    /// Closes the socket. Pending outgoing messages are kept for the linger period by libzmq's I/O thread;
    /// this call itself returns at once. Closing twice is harmless.
    public func close() {
        guard let handle else { return }
        zmq_close(handle)
        self.handle = nil
    }

    /// Sends a ZMTP heartbeat every `interval` on each connection, and drops a connection whose peer stays
    /// silent for `missed` intervals: how every Herald socket notices a peer that died without closing.
    /// - Parameters:
    ///   - interval: time between heartbeats.
    ///   - missed: intervals of silence before the connection is dropped.
    public func setHeartbeats(every interval: Duration, missed: Int = 3) throws(ZMQError) {
        try set(.heartbeatInterval(interval))
        try set(.heartbeatTimeout(interval * missed))
    }

    // MARK: Endpoints

    /// Binds to an endpoint such as `tcp://*:5555`, `tcp://127.0.0.1:*` (any free port) or `inproc://name`.
    /// - Parameter endpoint: the endpoint to listen on.
    /// - Returns: the endpoint actually bound, with the port chosen by the system when `*` or `0` was asked for.
    @discardableResult
    public func bind(_ endpoint: String) throws(ZMQError) -> String {
        let handle = try open("bind(\(endpoint))")
        guard zmq_bind(handle, endpoint) == 0 else { throw ZMQError.last("bind(\(endpoint))") }
        return try lastEndpoint()
    }

    /// Stops listening on an endpoint bound earlier.
    /// - Parameter endpoint: the endpoint as returned by ``bind(_:)``.
    public func unbind(_ endpoint: String) throws(ZMQError) {
        let handle = try open("unbind(\(endpoint))")
        guard zmq_unbind(handle, endpoint) == 0 else { throw ZMQError.last("unbind(\(endpoint))") }
    }

    /// Connects to an endpoint. libzmq connects in the background and reconnects after failures.
    /// - Parameter endpoint: the endpoint to connect to, such as `tcp://broker:5555`.
    public func connect(_ endpoint: String) throws(ZMQError) {
        let handle = try open("connect(\(endpoint))")
        guard zmq_connect(handle, endpoint) == 0 else { throw ZMQError.last("connect(\(endpoint))") }
    }

    /// Drops a connection made by ``connect(_:)``.
    /// - Parameter endpoint: the endpoint exactly as given to ``connect(_:)``.
    public func disconnect(_ endpoint: String) throws(ZMQError) {
        let handle = try open("disconnect(\(endpoint))")
        guard zmq_disconnect(handle, endpoint) == 0 else { throw ZMQError.last("disconnect(\(endpoint))") }
    }

    /// The last endpoint bound, with the actual port.
    public func lastEndpoint() throws(ZMQError) -> String {
        let handle = try open("getsockopt(ZMQ_LAST_ENDPOINT)")
        var buffer = [CChar](repeating: 0, count: 1024)
        var size = buffer.count
        guard zmq_getsockopt(handle, ZMQ_LAST_ENDPOINT, &buffer, &size) == 0 else {
            throw ZMQError.last("getsockopt(ZMQ_LAST_ENDPOINT)")
        }
        return String(decoding: buffer.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    // MARK: Sending and receiving

    /// Sends a multipart message atomically: peers get all of its frames or none.
    /// - Parameters:
    ///   - message: the frames to send; it must have at least one.
    ///   - dontWait: fail with ``ZMQError/Kind/wouldBlock`` instead of blocking at the high-water mark.
    public func send(_ message: ZMQMessage, dontWait: Bool = false) throws(ZMQError) {
        let handle = try open("send")
        guard !message.frames.isEmpty else { throw ZMQError(code: EINVAL, operation: "send of a message with no frames") }
        let baseFlags = dontWait ? ZMQ_DONTWAIT : 0
        let last = message.frames.count - 1
        for (index, frame) in message.frames.enumerated() {
            let flags = index < last ? baseFlags | ZMQ_SNDMORE : baseFlags
            let rc = frame.withUnsafeBytes { zmq_send(handle, $0.baseAddress, $0.count, flags) }
            guard rc >= 0 else {
                // Later frames of a multipart message never block once the first is queued, so a failure
                // can only happen on the first frame, and then nothing was sent.
                throw ZMQError.last("send")
            }
        }
    }

    /// Receives one whole multipart message.
    /// - Parameter dontWait: fail with ``ZMQError/Kind/wouldBlock`` instead of blocking when nothing is queued.
    /// - Returns: the message, each frame copied once out of libzmq's buffer.
    public func receive(dontWait: Bool = false) throws(ZMQError) -> ZMQMessage {
        let handle = try open("receive")
        var frames: [[UInt8]] = []
        let flags = dontWait ? ZMQ_DONTWAIT : 0
        repeat {
            guard zmq_msg_recv(receiveBuffer, handle, flags) >= 0 else {
                // Frames of one message arrive together, so only the first receive can fail this way.
                throw ZMQError.last("receive")
            }
            let count = zmq_msg_size(receiveBuffer)
            let data = zmq_msg_data(receiveBuffer)
            frames.append(
                count == 0 ? [] : Array(UnsafeRawBufferPointer(start: data, count: count))
            )
        } while zmq_msg_more(receiveBuffer) != 0
        return ZMQMessage(frames: frames)
    }

    // MARK: Frames: the allocation-free data path

    /// Receives one frame of a message into `frame`, replacing what it held.
    /// - Parameters:
    ///   - frame: where the frame goes; its previous content is released.
    ///   - dontWait: fail with ``ZMQError/Kind/wouldBlock`` instead of blocking when nothing is queued.
    /// - Returns: whether more frames of the same message follow (they are already queued: receive them at once).
    public func receive(into frame: inout ZMQFrame, dontWait: Bool = false) throws(ZMQError) -> Bool {
        let handle = try open("receive")
        guard zmq_msg_recv(&frame.message, handle, dontWait ? ZMQ_DONTWAIT : 0) >= 0 else {
            throw ZMQError.last("receive")
        }
        return zmq_msg_more(&frame.message) != 0
    }

    /// Receives and drops the rest of a message whose first frames were received, so that the next receive
    /// starts a new message; for messages with more frames than the protocol allows.
    /// - Returns: how many frames were dropped.
    @discardableResult
    public func discardRemainingFrames() -> Int {
        var dropped = 0
        var frame = ZMQFrame()
        // The rest of a multipart message is delivered with its first frame, so this never blocks.
        while (try? receive(into: &frame, dontWait: true)) != nil {
            dropped += 1
            guard zmq_msg_more(&frame.message) != 0 else { break }
        }
        return dropped
    }

    /// Sends one frame without copying it: libzmq takes its content and the frame is left empty. When the call
    /// fails, for example with ``ZMQError/Kind/wouldBlock``, the frame keeps its content and can be sent again.
    /// - Parameters:
    ///   - frame: the frame.
    ///   - more: whether more frames of the same message follow.
    ///   - dontWait: fail with ``ZMQError/Kind/wouldBlock`` instead of blocking at the high-water mark.
    public func send(_ frame: inout ZMQFrame, more: Bool = false, dontWait: Bool = false) throws(ZMQError) {
        let handle = try open("send")
        let flags = (more ? ZMQ_SNDMORE : 0) | (dontWait ? ZMQ_DONTWAIT : 0)
        guard zmq_msg_send(&frame.message, handle, flags) >= 0 else { throw ZMQError.last("send") }
    }

    /// Sends `bytes` as one frame; libzmq copies them, so the buffer may be reused as soon as this returns.
    /// - Parameters:
    ///   - bytes: the frame's content.
    ///   - more: whether more frames of the same message follow.
    ///   - dontWait: fail with ``ZMQError/Kind/wouldBlock`` instead of blocking at the high-water mark.
    public func send(bytes: UnsafeRawBufferPointer, more: Bool = false, dontWait: Bool = false) throws(ZMQError) {
        let handle = try open("send")
        let flags = (more ? ZMQ_SNDMORE : 0) | (dontWait ? ZMQ_DONTWAIT : 0)
        guard zmq_send(handle, bytes.baseAddress, bytes.count, flags) >= 0 else { throw ZMQError.last("send") }
    }

    // MARK: Options

    /// Sets a socket option.
    /// - Parameter option: the option and its value.
    public func set(_ option: ZMQSocketOption) throws(ZMQError) {
        switch option {
        case .linger(let value): try setInt(ZMQ_LINGER, milliseconds(value), "ZMQ_LINGER")
        case .sendHighWaterMark(let value): try setInt(ZMQ_SNDHWM, value, "ZMQ_SNDHWM")
        case .receiveHighWaterMark(let value): try setInt(ZMQ_RCVHWM, value, "ZMQ_RCVHWM")
        case .heartbeatInterval(let value): try setInt(ZMQ_HEARTBEAT_IVL, milliseconds(value), "ZMQ_HEARTBEAT_IVL")
        case .heartbeatTimeout(let value):
            try setInt(ZMQ_HEARTBEAT_TIMEOUT, milliseconds(value), "ZMQ_HEARTBEAT_TIMEOUT")
        case .heartbeatTimeToLive(let value):
            try setInt(ZMQ_HEARTBEAT_TTL, milliseconds(value), "ZMQ_HEARTBEAT_TTL")
        case .tcpKeepalive(let value):
            try setInt(ZMQ_TCP_KEEPALIVE, value.map { $0 ? 1 : 0 } ?? -1, "ZMQ_TCP_KEEPALIVE")
        case .tcpKeepaliveIdle(let value):
            try setInt(ZMQ_TCP_KEEPALIVE_IDLE, seconds(value), "ZMQ_TCP_KEEPALIVE_IDLE")
        case .tcpKeepaliveInterval(let value):
            try setInt(ZMQ_TCP_KEEPALIVE_INTVL, seconds(value), "ZMQ_TCP_KEEPALIVE_INTVL")
        case .tcpKeepaliveCount(let value): try setInt(ZMQ_TCP_KEEPALIVE_CNT, value, "ZMQ_TCP_KEEPALIVE_CNT")
        case .subscribe(let prefix): try setBytes(ZMQ_SUBSCRIBE, prefix, "ZMQ_SUBSCRIBE")
        case .unsubscribe(let prefix): try setBytes(ZMQ_UNSUBSCRIBE, prefix, "ZMQ_UNSUBSCRIBE")
        case .xpubVerbose(let value): try setInt(ZMQ_XPUB_VERBOSE, value ? 1 : 0, "ZMQ_XPUB_VERBOSE")
        case .xpubWelcomeMessage(let value): try setBytes(ZMQ_XPUB_WELCOME_MSG, value, "ZMQ_XPUB_WELCOME_MSG")
        case .curveServer(let value): try setInt(ZMQ_CURVE_SERVER, value ? 1 : 0, "ZMQ_CURVE_SERVER")
        case .curvePublicKey(let key): try setBytes(ZMQ_CURVE_PUBLICKEY, Array(key.utf8), "ZMQ_CURVE_PUBLICKEY")
        case .curveSecretKey(let key): try setBytes(ZMQ_CURVE_SECRETKEY, Array(key.utf8), "ZMQ_CURVE_SECRETKEY")
        case .curveServerKey(let key): try setBytes(ZMQ_CURVE_SERVERKEY, Array(key.utf8), "ZMQ_CURVE_SERVERKEY")
        case .zapDomain(let domain): try setBytes(ZMQ_ZAP_DOMAIN, Array(domain.utf8), "ZMQ_ZAP_DOMAIN")
        case .routingID(let value): try setBytes(ZMQ_ROUTING_ID, value, "ZMQ_ROUTING_ID")
        case .routerMandatory(let value): try setInt(ZMQ_ROUTER_MANDATORY, value ? 1 : 0, "ZMQ_ROUTER_MANDATORY")
        case .immediate(let value): try setInt(ZMQ_IMMEDIATE, value ? 1 : 0, "ZMQ_IMMEDIATE")
        case .reconnectInterval(let value):
            try setInt(ZMQ_RECONNECT_IVL, milliseconds(value), "ZMQ_RECONNECT_IVL")
        case .reconnectIntervalMax(let value):
            try setInt(ZMQ_RECONNECT_IVL_MAX, milliseconds(value), "ZMQ_RECONNECT_IVL_MAX")
        case .sendTimeout(let value): try setInt(ZMQ_SNDTIMEO, milliseconds(value), "ZMQ_SNDTIMEO")
        case .receiveTimeout(let value): try setInt(ZMQ_RCVTIMEO, milliseconds(value), "ZMQ_RCVTIMEO")
        case .maximumMessageSize(let value):
            let handle = try open("setsockopt(ZMQ_MAXMSGSIZE)")
            var limit = Int64(value ?? -1)
            guard zmq_setsockopt(handle, ZMQ_MAXMSGSIZE, &limit, MemoryLayout<Int64>.size) == 0 else {
                throw ZMQError.last("setsockopt(ZMQ_MAXMSGSIZE, \(limit))")
            }
        }
    }

    /// The events the socket is ready for now, without blocking (`ZMQ_EVENTS`).
    public func readiness() throws(ZMQError) -> ZMQEvents {
        let handle = try open("getsockopt(ZMQ_EVENTS)")
        var value: Int32 = 0
        var size = MemoryLayout<Int32>.size
        guard zmq_getsockopt(handle, ZMQ_EVENTS, &value, &size) == 0 else {
            throw ZMQError.last("getsockopt(ZMQ_EVENTS)")
        }
        return ZMQEvents(rawValue: Int16(truncatingIfNeeded: value))
    }

    // MARK: Internals

    /// The live handle, for the poller in this module.
    func open(_ operation: @autoclosure () -> String) throws(ZMQError) -> UnsafeMutableRawPointer {
        guard let handle else { throw ZMQError.closed(operation()) }
        return handle
    }

    private func setInt(_ name: Int32, _ value: Int32, _ label: String) throws(ZMQError) {
        let handle = try open("setsockopt(\(label))")
        var value = value
        guard zmq_setsockopt(handle, name, &value, MemoryLayout<Int32>.size) == 0 else {
            throw ZMQError.last("setsockopt(\(label), \(value))")
        }
    }

    private func setBytes(_ name: Int32, _ value: [UInt8], _ label: String) throws(ZMQError) {
        let handle = try open("setsockopt(\(label))")
        let rc = value.withUnsafeBytes { zmq_setsockopt(handle, name, $0.baseAddress, $0.count) }
        guard rc == 0 else { throw ZMQError.last("setsockopt(\(label))") }
    }

    private func milliseconds(_ duration: Duration?) -> Int32 {
        guard let duration else { return -1 }
        let (seconds, attoseconds) = duration.components
        return Int32(clamping: seconds * 1000 + attoseconds / 1_000_000_000_000_000)
    }

    private func seconds(_ duration: Duration) -> Int32 {
        Int32(clamping: duration.components.seconds)
    }
}

/// A set of socket readiness events.
public struct ZMQEvents: OptionSet, Sendable, Hashable {
    /// The raw `ZMQ_POLL*` bits.
    public let rawValue: Int16
    /// Creates a set from raw `ZMQ_POLL*` bits.
    /// - Parameter rawValue: the bits.
    public init(rawValue: Int16) { self.rawValue = rawValue }

    /// A message can be received without blocking.
    public static let readable = ZMQEvents(rawValue: Int16(ZMQ_POLLIN))
    /// A message can be sent without blocking.
    public static let writable = ZMQEvents(rawValue: Int16(ZMQ_POLLOUT))
    /// An error condition (only reported for plain file descriptors).
    public static let error = ZMQEvents(rawValue: Int16(ZMQ_POLLERR))
}
