import DequeModule
import OSThreads
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// A ZeroMQ socket for async code: a dedicated thread owns the socket, receives into ``messages`` and sends
/// what ``send(_:)`` queues.
///
/// ## Invariant
/// The underlying ``ZMQSocket`` is touched only by its owner thread after ``init(context:type:name:receiveBufferLimit:sendQueueLimit:configure:)``
/// returns. Other threads talk to that thread through a mutex-guarded state and a wake-up eventfd that the
/// thread polls together with the socket, so no caller ever blocks inside libzmq and no socket is shared.
///
/// ## Back-pressure
/// Received messages wait in a buffer of at most `receiveBufferLimit`; when it is full the thread stops
/// reading, so libzmq's own receive high-water mark applies. ``send(_:)`` suspends while `sendQueueLimit`
/// messages are queued, so a fast producer is slowed down rather than growing memory without bound.
///
/// ## Shutdown
/// ``close()`` wakes the thread, which makes one last non-blocking attempt to send what is queued, closes the
/// socket (libzmq keeps unsent messages for the bounded ``ZMQSocket/defaultLinger``), ends ``messages``
/// and fails waiting senders. It never waits for a peer. Terminating the context has the same effect.
public final class AsyncZMQSocket: Sendable {
    /// The socket's type.
    public let type: ZMQSocketType
    /// A name for the owner thread, shown by debuggers and `top -H`.
    public let name: String
    private let shared: Shared

    /// Opens a socket, configures it on the calling thread and hands it to a new owner thread.
    /// - Parameters:
    ///   - context: the context to open it in.
    ///   - type: the socket type.
    ///   - name: a name for the owner thread.
    ///   - receiveBufferLimit: received messages buffered before reading pauses.
    ///   - sendQueueLimit: queued outgoing messages before ``send(_:)`` suspends.
    ///   - configure: sets options, binds and connects before the hand-off; an error closes the socket.
    /// - Throws: ``ZMQError`` from opening the socket, or whatever `configure` throws.
    public init(
        context: ZMQContext,
        type: ZMQSocketType,
        name: String = "zmq",
        receiveBufferLimit: Int = 1024,
        sendQueueLimit: Int = 1024,
        configure: (ZMQSocket) throws -> Void = { _ in }
    ) throws {
        let socket = try ZMQSocket(context: context, type: type)
        try configure(socket)
        self.type = type
        self.name = name
        self.shared = Shared(
            wake: try WakeSignal(),
            receiveBufferLimit: max(1, receiveBufferLimit),
            sendQueueLimit: max(1, sendQueueLimit)
        )
        let handOff = SocketHandOff(socket)
        let shared = self.shared
        do {
            try OSThread.start(name: name) {
                guard let socket = handOff.take() else { return }
                shared.run(socket)
            }
        } catch {
            handOff.take()?.close()
            throw error
        }
    }

    deinit {
        shared.requestClose()
    }

    /// The messages received, in order. Iteration ends when the socket is closed or its context terminated.
    ///
    /// Several tasks may iterate at once; each message then goes to one of them.
    public var messages: Messages { Messages(shared: shared) }

    /// Queues a message for sending, suspending while the send queue is full.
    ///
    /// Returning means the message is queued, not that a peer got it. A PUB socket drops messages for
    /// subscribers at their high-water mark, as ZeroMQ always does; other types wait for the peer.
    /// - Parameter message: the message, with at least one frame.
    /// - Throws: ``ZMQError`` with ``ZMQError/Kind/socketClosed`` once closed, or when the task is cancelled
    ///   while waiting for room (`ECANCELED`).
    public func send(_ message: ZMQMessage) async throws(ZMQError) {
        guard !message.frames.isEmpty else {
            throw ZMQError(code: EINVAL, operation: "send of a message with no frames")
        }
        try await shared.enqueue(.message(message))
    }

    /// Runs a closure on the owner thread with the socket, in order with queued sends: for subscribing,
    /// connecting, reading an option or anything else the socket itself must do.
    /// - Parameter body: the work; it must not block.
    /// - Returns: what `body` returns.
    /// - Throws: what `body` throws, or ``ZMQError`` with ``ZMQError/Kind/socketClosed`` once closed.
    public func withSocket<Result: Sendable>(
        _ body: @escaping @Sendable (ZMQSocket) throws -> Result
    ) async throws -> Result {
        let outcome: Swift.Result<Result, any Error> = await withCheckedContinuation { continuation in
            let command: @Sendable (ZMQSocket?) -> Void = { socket in
                guard let socket else {
                    continuation.resume(returning: .failure(ZMQError.closed("withSocket")))
                    return
                }
                continuation.resume(returning: Swift.Result { try body(socket) })
            }
            shared.enqueueCommand(command)
        }
        return try outcome.get()
    }

    /// Closes the socket and waits until its owner thread has let go of it. Closing twice is harmless.
    public func close() async {
        await shared.close()
    }

    /// How many outgoing messages the socket refused with an error other than "would block" (for example
    /// `EHOSTUNREACH` from a ROUTER with mandatory routing) and were dropped.
    public var failedSendCount: Int { shared.state.withLock { $0.failedSends } }

    /// The received messages of an ``AsyncZMQSocket``.
    public struct Messages: AsyncSequence, Sendable {
        /// Each element is one whole multipart message.
        public typealias Element = ZMQMessage
        /// Iteration never throws; it ends when the socket closes.
        public typealias Failure = Never

        let shared: Shared

        /// Creates an iterator.
        public func makeAsyncIterator() -> Iterator { Iterator(shared: shared) }

        /// Iterates the received messages.
        public struct Iterator: AsyncIteratorProtocol {
            let shared: Shared

            /// The next message, or `nil` once the socket is closed or the task is cancelled.
            public mutating func next() async -> ZMQMessage? {
                await shared.nextMessage()
            }
        }
    }
}

// MARK: - Internals

/// Carries a configured socket to its owner thread.
///
/// @unchecked Sendable: the socket is put in by `init` with no other reference kept, taken out exactly once
/// by the new thread, and `pthread_create` is a full memory barrier, which is what libzmq asks for when a
/// socket migrates between threads.
private final class SocketHandOff: @unchecked Sendable {
    private var socket: ZMQSocket?
    init(_ socket: ZMQSocket) { self.socket = socket }
    func take() -> ZMQSocket? {
        defer { socket = nil }
        return socket
    }
}

extension AsyncZMQSocket {
    enum Outgoing {
        case message(ZMQMessage)
        case command(@Sendable (ZMQSocket?) -> Void)
    }

    struct State: ~Copyable {
        var inbox = Deque<ZMQMessage>()
        var consumers: [(id: UInt64, continuation: CheckedContinuation<ZMQMessage?, Never>)] = []
        var outbox = Deque<Outgoing>()
        var senders: [(id: UInt64, continuation: CheckedContinuation<Void, Never>)] = []
        var nextWaiterID: UInt64 = 0
        var closing = false
        var closed = false
        var closeWaiters: [CheckedContinuation<Void, Never>] = []
        var failedSends = 0
    }

    final class Shared: Sendable {
        let state = Mutex(State())
        let wake: WakeSignal
        let receiveBufferLimit: Int
        let sendQueueLimit: Int

        init(wake: WakeSignal, receiveBufferLimit: Int, sendQueueLimit: Int) {
            self.wake = wake
            self.receiveBufferLimit = receiveBufferLimit
            self.sendQueueLimit = sendQueueLimit
        }

        // MARK: Callers' side

        func enqueue(_ item: Outgoing) async throws(ZMQError) {
            while true {
                enum Outcome { case queued(wake: Bool), full(waiterID: UInt64) }
                let outcome = try state.withLock { (state) throws(ZMQError) -> Outcome in
                    guard !state.closing else { throw ZMQError.closed("send") }
                    if state.outbox.count < sendQueueLimit {
                        state.outbox.append(item)
                        // The owner thread drains the whole queue once woken, so only the first message of a
                        // burst needs the wake-up system call.
                        return .queued(wake: state.outbox.count == 1)
                    }
                    state.nextWaiterID += 1
                    return .full(waiterID: state.nextWaiterID)
                }
                guard case .full(let waiterID) = outcome else {
                    if case .queued(wake: true) = outcome { wake.raise() }
                    return
                }
                try await waitForRoom(waiterID)
            }
        }

        func enqueueCommand(_ command: @escaping @Sendable (ZMQSocket?) -> Void) {
            // Commands bypass the queue limit: they are few, and a caller waiting on one must not deadlock
            // behind a full queue that only the peer can drain.
            let accepted = state.withLock { state -> Bool in
                guard !state.closing else { return false }
                state.outbox.append(.command(command))
                return true
            }
            if accepted { wake.raise() } else { command(nil) }
        }

        private func waitForRoom(_ id: UInt64) async throws(ZMQError) {
            await withTaskCancellationHandler {
                await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                    let resumeNow = state.withLock { state -> Bool in
                        if state.closing || Task.isCancelled || state.outbox.count < sendQueueLimit { return true }
                        state.senders.append((id, continuation))
                        return false
                    }
                    if resumeNow { continuation.resume() }
                }
            } onCancel: {
                let waiter = state.withLock { state in
                    state.senders.firstIndex { $0.id == id }.map { state.senders.remove(at: $0).continuation }
                }
                waiter?.resume()
            }
            if Task.isCancelled { throw ZMQError(code: ECANCELED, operation: "send (task cancelled)") }
        }

        func nextMessage() async -> ZMQMessage? {
            let id = state.withLock { state in
                state.nextWaiterID += 1
                return state.nextWaiterID
            }
            return await withTaskCancellationHandler {
                await withCheckedContinuation { (continuation: CheckedContinuation<ZMQMessage?, Never>) in
                    enum Action { case deliver(ZMQMessage, resumeReading: Bool), finish, wait }
                    let action = state.withLock { state -> Action in
                        if let message = state.inbox.popFirst() {
                            return .deliver(message, resumeReading: state.inbox.count + 1 == receiveBufferLimit)
                        }
                        if state.closed || Task.isCancelled { return .finish }
                        state.consumers.append((id, continuation))
                        return .wait
                    }
                    switch action {
                    case .deliver(let message, let resumeReading):
                        if resumeReading { wake.raise() }
                        continuation.resume(returning: message)
                    case .finish:
                        continuation.resume(returning: nil)
                    case .wait:
                        break
                    }
                }
            } onCancel: {
                let waiter = state.withLock { state in
                    state.consumers.firstIndex { $0.id == id }.map { state.consumers.remove(at: $0).continuation }
                }
                waiter?.resume(returning: nil)
            }
        }

        func requestClose() {
            let raise = state.withLock { state -> Bool in
                guard !state.closing else { return false }
                state.closing = true
                return true
            }
            if raise { wake.raise() }
        }

        func close() async {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let done = state.withLock { state -> Bool in
                    if state.closed { return true }
                    state.closing = true
                    state.closeWaiters.append(continuation)
                    return false
                }
                if done { continuation.resume() } else { wake.raise() }
            }
        }

        // MARK: Owner thread's side

        /// The owner thread's loop: runs until close is requested or the context terminates.
        func run(_ socket: ZMQSocket) {
            let poller = ZMQPoller()
            let socketEntry = poller.register(socket, for: [])
            let wakeEntry = poller.register(fileDescriptor: wake.fileDescriptor, for: .readable)
            var running = true
            while running {
                let (closing, canReceive) = state.withLock { ($0.closing, $0.inbox.count < receiveBufferLimit) }
                if closing { break }
                let blocked: Bool
                do throws(ZMQError) {
                    blocked = try flushOutbox(socket)
                } catch {
                    break
                }
                var events: ZMQEvents = canReceive ? .readable : []
                if blocked { events.insert(.writable) }
                poller.update(socketEntry, events: events)
                do throws(ZMQError) {
                    try poller.poll(timeout: nil)
                } catch where error.kind == .interrupted {
                    continue
                } catch {
                    break
                }
                if poller.readyEvents(wakeEntry).contains(.readable) { wake.reset() }
                if poller.readyEvents(socketEntry).contains(.readable) {
                    running = receiveAvailable(socket)
                }
            }
            shutDown(socket)
        }

        /// Sends queued messages until the queue is empty or the socket would block.
        /// - Returns: whether the socket would block with messages still queued.
        private func flushOutbox(_ socket: ZMQSocket) throws(ZMQError) -> Bool {
            while true {
                guard let item = state.withLock({ $0.outbox.first }) else { return false }
                switch item {
                case .command(let command):
                    command(socket)
                case .message(let message):
                    do throws(ZMQError) {
                        try socket.send(message, dontWait: true)
                    } catch where error.kind == .wouldBlock {
                        return true
                    } catch where error.kind == .interrupted {
                        continue
                    } catch where error.kind == .contextTerminated || error.kind == .socketClosed {
                        throw error
                    } catch {
                        state.withLock { $0.failedSends += 1 }
                    }
                }
                let senders = state.withLock { state in
                    _ = state.outbox.popFirst()
                    return state.senders.isEmpty ? [] : state.senders.removeAllReturning()
                }
                for sender in senders { sender.continuation.resume() }
            }
        }

        /// Receives what is available without blocking, up to a batch, so queued sends are not starved.
        /// - Returns: `false` when the socket can no longer be used.
        private func receiveAvailable(_ socket: ZMQSocket) -> Bool {
            for _ in 0..<256 {
                let message: ZMQMessage
                do throws(ZMQError) {
                    message = try socket.receive(dontWait: true)
                } catch where error.kind == .wouldBlock || error.kind == .interrupted {
                    return true
                } catch {
                    return false
                }
                let (consumer, full) = state.withLock { state in
                    if !state.consumers.isEmpty {
                        return (Optional(state.consumers.removeFirst().continuation), false)
                    }
                    state.inbox.append(message)
                    return (nil, state.inbox.count >= receiveBufferLimit)
                }
                consumer?.resume(returning: message)
                if full { return true }
            }
            return true
        }

        private func shutDown(_ socket: ZMQSocket) {
            // One last non-blocking attempt, so that messages queued just before close still reach
            // connected peers within the linger period.
            _ = try? flushOutbox(socket)
            socket.close()
            let (commands, consumers, senders, closeWaiters) = state.withLock { state in
                state.closing = true
                state.closed = true
                var commands: [@Sendable (ZMQSocket?) -> Void] = []
                while let item = state.outbox.popFirst() {
                    if case .command(let command) = item { commands.append(command) }
                }
                return (
                    commands, state.consumers.removeAllReturning(), state.senders.removeAllReturning(),
                    state.closeWaiters.removeAllReturning()
                )
            }
            for command in commands { command(nil) }
            for consumer in consumers { consumer.continuation.resume(returning: nil) }
            for sender in senders { sender.continuation.resume() }
            for waiter in closeWaiters { waiter.resume() }
        }
    }
}

extension Array {
    fileprivate mutating func removeAllReturning() -> [Element] {
        defer { removeAll() }
        return self
    }
}
