internal import CZeroMQ
import FoundationEssentials
import OSThreads
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// Answers ZAP requests (ZeroMQ RFC 27) for the server sockets of one context: libzmq asks it, during each
/// CURVE handshake, whether to admit the client's public key, and attaches the answer's user id to every
/// message from that connection (``ZMQFrame/metadata(_:)`` with `"User-Id"`).
///
/// It must run before a server socket accepts its first connection. Its REP socket lives on a thread of its
/// own and is used by that thread only; `decide` runs there, once per handshake, never per message.
public final class ZMQAuthenticator: Sendable {
    /// What a client presents during its handshake.
    public struct Request: Sendable, Equatable {
        /// The ZAP domain of the server socket (``ZMQSocketOption/zapDomain(_:)``).
        public var domain: String
        /// The client's IP address.
        public var address: String
        /// The security mechanism: `CURVE`, `PLAIN` or `NULL`.
        public var mechanism: String
        /// For CURVE, the client's public key in Z85 text.
        public var clientKey: String?
    }

    /// Whether to admit a client.
    public enum Decision: Sendable, Equatable {
        /// Admit it; `userID` is attached to each of its messages.
        case allow(userID: String)
        /// Refuse it: the handshake fails and libzmq closes the connection.
        case deny(reason: String)
    }

    /// The endpoint libzmq sends ZAP requests to, fixed by RFC 27.
    public static let endpoint = "inproc://zeromq.zap.01"
    /// How often the thread looks for a stop request between requests.
    static let pollInterval: Duration = .milliseconds(100)

    private let stopRequested = Atomic(false)
    private let finished = Completion()

    private init() {}

    /// Binds the ZAP endpoint of `context` and answers its requests on a new thread until ``stop()``.
    /// - Parameters:
    ///   - context: the context whose server sockets are to be authenticated.
    ///   - decide: called for each handshake, on the authenticator's thread.
    /// - Returns: the running authenticator.
    /// - Throws: ``ZMQError`` when the endpoint cannot be bound (`EADDRINUSE`: the context already has one).
    public static func start(
        context: ZMQContext, decide: @escaping @Sendable (Request) -> Decision
    ) async throws(ZMQError) -> ZMQAuthenticator {
        let authenticator = ZMQAuthenticator()
        let outcome: Result<Void, ZMQError> = await withCheckedContinuation { continuation in
            let serve: @Sendable () -> Void = {
                let socket: ZMQSocket
                do throws(ZMQError) {
                    socket = try ZMQSocket(context: context, type: .rep)
                    try socket.set(.linger(.zero))
                    _ = try socket.bind(Self.endpoint)
                } catch {
                    authenticator.finished.complete()
                    continuation.resume(returning: .failure(error))
                    return
                }
                continuation.resume(returning: .success(()))
                authenticator.serve(socket, decide: decide)
                socket.close()
                authenticator.finished.complete()
            }
            do throws(OSThreadError) {
                try OSThread.start(name: "herald-zap", serve)
            } catch {
                authenticator.finished.complete()
                continuation.resume(returning: .failure(ZMQError(code: error.code, operation: "start the ZAP thread")))
            }
        }
        try outcome.get()
        return authenticator
    }

    /// Stops answering and waits for the thread; handshakes after this fail.
    public func stop() async {
        stopRequested.store(true, ordering: .releasing)
        await finished.wait()
    }

    private func serve(_ socket: ZMQSocket, decide: @Sendable (Request) -> Decision) {
        let poller = ZMQPoller()
        let entry = poller.register(socket, for: .readable)
        while !stopRequested.load(ordering: .acquiring) {
            do {
                try poller.poll(timeout: Self.pollInterval)
            } catch where error.kind == .interrupted {
                continue
            } catch {
                return  // The context is terminating: nothing more can be asked.
            }
            guard poller.readyEvents(entry).contains(.readable),
                let request = try? socket.receive(dontWait: true)
            else { continue }
            let reply = Self.reply(to: request.frames, decide: decide)
            _ = try? socket.send(ZMQMessage(frames: reply))
        }
    }

    /// The reply frames to a request: version, request id, status code, status text, user id, metadata.
    static func reply(to frames: [[UInt8]], decide: (Request) -> Decision) -> [[UInt8]] {
        let requestID = frames.count > 1 ? frames[1] : []
        func answer(_ code: String, _ text: String, userID: String = "") -> [[UInt8]] {
            [Array("1.0".utf8), requestID, Array(code.utf8), Array(text.utf8), Array(userID.utf8), []]
        }
        // RFC 27: version, request id, domain, address, identity, mechanism, then the mechanism's credentials.
        guard frames.count >= 6, frames[0] == Array("1.0".utf8) else {
            return answer("500", "malformed ZAP request")
        }
        let text = { (index: Int) in String(decoding: frames[index], as: UTF8.self) }
        let mechanism = text(5)
        var clientKey: String?
        if mechanism == "CURVE" {
            guard frames.count >= 7, let key = ZMQCurveKeyPair.z85(ofKey: frames[6]) else {
                return answer("500", "malformed CURVE credentials")
            }
            clientKey = key
        }
        switch decide(Request(domain: text(2), address: text(3), mechanism: mechanism, clientKey: clientKey)) {
        case .allow(let userID): return answer("200", "OK", userID: userID)
        case .deny(let reason): return answer("400", reason)
        }
    }
}
