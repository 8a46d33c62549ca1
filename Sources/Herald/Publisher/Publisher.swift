import CoreMetrics
import FoundationEssentials
import OSThreads
import Logging
import ServiceLifecycle
import Synchronization
import ZeroMQ
import ZooKeeper

#if canImport(Glibc)
    import Glibc
#endif

/// Settings of a ``Publisher``.
public struct PublisherConfiguration: Sendable {
    /// The default port of a direct-mode publisher's own endpoint; `0` picks any free port.
    public static let defaultPort = 5557
    /// The largest payload accepted: ZeroMQ handles far more, but a pub/sub message this big is usually a
    /// mistake that would stall every subscriber behind it.
    public static let defaultMaximumPayloadSize = 1 << 20
    /// Replay buffer size in bytes, allocated up front: with the rest of a publisher it fits a 256 MiB
    /// container, and it holds 10 s of 3 MB/s.
    public static let defaultRetentionBytes = 32 << 20
    /// Replay buffer size in messages.
    public static let defaultRetentionCount = 100_000
    /// Replay window: comfortably longer than a failover after `kill -9` (the session timeout plus an
    /// election), short enough that each failover replays little.
    public static let defaultRetentionAge: Duration = .seconds(10)

    /// The ZooKeeper ensemble and session timeout.
    public var zookeeper: ZooKeeperConfiguration
    /// CurveZMQ: this process's key pair and the brokers' public key; `nil` runs in clear.
    public var security: CurveSecurity?
    /// The cluster.
    public var layout: ClusterLayout
    /// Direct mode: the local address to listen on.
    public var bindHost: String = "0.0.0.0"
    /// Direct mode: the host subscribers use to reach this publisher; `nil` derives it.
    public var advertiseHost: String?
    /// Direct mode: the port to listen on; `0` picks any free port, and the bound one is registered.
    public var port: Int = PublisherConfiguration.defaultPort
    /// The largest payload ``Publisher/publish(_:on:)`` accepts, in bytes.
    public var maximumPayloadSize: Int = PublisherConfiguration.defaultMaximumPayloadSize
    /// ZMTP heartbeat interval, and the interval of registrations with the leader.
    public var heartbeatInterval: Duration = .seconds(1)
    /// Broker mode: bytes kept for replay to a new leader after a failover (`--retention-bytes`). Half of it
    /// may wait unsent for credit before ``Publisher/publish(_:on:)`` waits too.
    public var retentionBytes: Int = PublisherConfiguration.defaultRetentionBytes
    /// Broker mode: messages kept for replay, at most.
    public var retentionCount: Int = PublisherConfiguration.defaultRetentionCount
    /// Broker mode: how long a message is kept for replay; an outage longer than this loses the older messages,
    /// and subscribers count them as lost.
    public var retentionAge: Duration = PublisherConfiguration.defaultRetentionAge
    /// Messages per topic this publisher asks brokers to keep for late joiners (`herald subscribe --history`).
    public var historyOffered: Int = 0
    /// Ownership strength (`--strength`): of the publishers of a topic that have one, subscribers deliver only
    /// the strongest live one's messages, and the next strongest takes over within a second when it dies. `nil`
    /// (the default) does not contend, and on a topic without contenders every publisher is delivered.
    public var strength: Int?

    /// How often the leader hears from this publisher: a contender registers often enough that its death is
    /// noticed within one owner timeout.
    var registrationInterval: Duration {
        strength == nil ? heartbeatInterval : min(heartbeatInterval, OwnershipTable.contenderRegistrationInterval)
    }

    /// Creates a configuration.
    /// - Parameters:
    ///   - zookeeper: the ZooKeeper ensemble.
    ///   - layout: the cluster.
    public init(zookeeper: ZooKeeperConfiguration, layout: ClusterLayout) {
        self.zookeeper = zookeeper
        self.layout = layout
    }

    /// Checks that the limits fit together.
    /// - Throws: ``HeraldConfigurationError`` naming the setting to change.
    public func validate() throws(HeraldConfigurationError) {
        let largest = maximumPayloadSize + Topic.maximumLength + WireFormat.dataOverhead
        guard RetentionBuffer.footprint(ofFrame: largest) * 2 <= retentionBytes else {
            throw HeraldConfigurationError(
                "the retention buffer of \(retentionBytes) bytes cannot hold two messages of the largest payload (\(maximumPayloadSize) bytes); raise --retention-bytes or lower --max-payload"
            )
        }
        guard retentionCount >= 1 else {
            throw HeraldConfigurationError("the retention count must be at least 1, got \(retentionCount)")
        }
    }
}

/// An error a publisher reports to the application.
public enum PublishError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The payload is larger than ``PublisherConfiguration/maximumPayloadSize``; nothing was sent.
    case payloadTooLarge(size: Int, limit: Int)
    /// The publisher has stopped; nothing was sent.
    case stopped

    /// What went wrong and what to do.
    public var description: String {
        switch self {
        case .payloadTooLarge(let size, let limit):
            "payload of \(size) bytes exceeds the maximum of \(limit); send smaller messages or raise the limit (--max-payload)"
        case .stopped:
            "the publisher has stopped; create a new one"
        }
    }
}

/// Publishes messages on topics, following the cluster's leader through ZooKeeper.
///
/// Run it (``run()``, or in a `ServiceGroup`) for as long as it publishes. In broker mode messages go to the
/// leader broker; in direct mode the publisher listens on its own endpoint, registers it with the leader, and
/// subscribers connect straight to it.
///
/// ## The send path
/// ``publish(_:on:)`` encodes the message once, into the retention buffer, and sends it on the calling thread
/// when the connection is free: no task, thread hop or wake-up per message. When the connection is busy (the
/// leader's credit is used up, or libzmq's queue is full) the publisher's socket thread takes over and sends
/// what waits as credit arrives; callers only append meanwhile, and wait once half the buffer waits unsent.
/// Messages that wait together (one ``publish(contentsOf:on:)`` call, or what queued meanwhile) go as batch
/// frames of one topic each, to a leader that advertises that it takes them (``LeaderRecord/batchBytes``).
///
/// ## Delivery across failovers (broker mode)
/// Every message is numbered per topic and kept in the retention buffer, bounded in bytes
/// (``PublisherConfiguration/retentionBytes``), count and age. After attaching to a new leader the publisher
/// replays what it kept before anything new, since it cannot know what the old leader forwarded before it
/// died; subscribers drop the duplicates. While there is no leader, ``publish(_:on:)`` does not wait: messages
/// wait in the buffer, and one that leaves it before any leader took it is counted (``expiredCount``).
///
/// ```swift
/// let publisher = try Publisher(configuration: config, topics: ["weather"], logger: logger)
/// try await withThrowingDiscardingTaskGroup { group in
///     group.addTask { try await publisher.run() }
///     try await publisher.publish(Array("sunny".utf8), on: "weather")
/// }
/// ```
public final class Publisher: Service, Sendable {
    /// This publisher's identity; new on every start, which subscribers treat as a new sequence epoch. With
    /// CurveZMQ it begins with its key's first bytes (``PublisherID/init(curveKey:)``).
    public let id: PublisherID
    /// The publisher's settings.
    public let configuration: PublisherConfiguration
    /// The topics announced to the leader.
    public let topics: [Topic]
    private let logger: Logger
    private let context: ZMQContext
    private let link: Mutex<Link>
    private let wake: WakeSignal
    private let publishedCounters = TopicCounters(label: Instruments.published)
    private let startedAt = WallClock.nanosecondsSinceEpoch()
    private let threadDone = Completion()

    /// How long stopping waits for the last messages to leave for the leader.
    static let flushLimit: Duration = .seconds(2)

    /// Creates a publisher; it connects when ``run()`` starts.
    /// - Parameters:
    ///   - configuration: the publisher's settings.
    ///   - topics: the topics it will publish on, announced to the leader.
    ///   - logger: where it logs its steps.
    /// - Throws: ``HeraldConfigurationError`` when the limits do not fit together, ``ZMQError`` when ZeroMQ
    ///   cannot start.
    public init(configuration: PublisherConfiguration, topics: [Topic], logger: Logger) throws {
        try configuration.validate()
        self.id = configuration.security.map { PublisherID(curveKey: $0.keyPair.publicKey) } ?? PublisherID()
        self.configuration = configuration
        self.topics = topics
        var logger = logger
        logger[metadataKey: "publisher"] = "\(id.short)"
        self.logger = logger
        self.context = try ZMQContext()
        self.wake = try WakeSignal()
        self.link = Mutex(Link(configuration: configuration))
    }

    /// The leader this publisher is attached to, if any.
    public var attachedLeader: String? { link.withLock { $0.leader?.broker } }

    /// Messages that left the retention buffer while no leader could take them (broker mode); subscribers
    /// count them as lost.
    public var expiredCount: UInt64 { link.withLock { $0.expired } }

    /// Publishes one message.
    /// - Parameters:
    ///   - payload: the message body, at most ``PublisherConfiguration/maximumPayloadSize`` bytes.
    ///   - topic: the topic.
    /// - Returns: the message's sequence number on its topic.
    /// - Throws: ``PublishError`` for an oversized payload (nothing is sent), or when the publisher stopped;
    ///   `CancellationError` when the task is cancelled.
    @discardableResult
    public func publish(_ payload: [UInt8], on topic: Topic) async throws -> UInt64 {
        try await publish(count: 1, on: topic) { body in
            try withUnsafePointer(to: payload) { try body(UnsafeBufferPointer(start: $0, count: 1)) }
        }.upperBound
    }

    /// Publishes several messages on one topic, in order, for the cost of one lock and, usually, no wait. In
    /// broker mode they travel to the leader in batch frames (up to 64 KiB each), so libzmq, the network and the
    /// broker handle one frame for many messages: the fastest way to publish many small messages.
    /// - Parameters:
    ///   - payloads: the message bodies, each at most ``PublisherConfiguration/maximumPayloadSize`` bytes.
    ///   - topic: the topic.
    /// - Returns: the sequence numbers given to the messages.
    /// - Throws: ``PublishError`` for an oversized payload (nothing is sent), or when the publisher stopped;
    ///   `CancellationError` when the task is cancelled (messages before it were published).
    @discardableResult
    public func publish<Payloads: RandomAccessCollection<[UInt8]> & Sendable>(
        contentsOf payloads: Payloads, on topic: Topic
    ) async throws -> ClosedRange<UInt64> where Payloads.Index == Int {
        // A collection that cannot lend its storage is copied once; a value's storage cannot go away, so the
        // lending below always succeeds for one that can.
        guard payloads.withContiguousStorageIfAvailable({ _ in () }) != nil else {
            return try await publish(contentsOf: Array(payloads), on: topic)
        }
        return try await publish(count: payloads.count, on: topic) { body in
            try payloads.withContiguousStorageIfAvailable(body)!
        }
    }

    /// The publishing loop, over payloads that `lend` lends as a buffer for each step. Code generic over the
    /// collection, as the public method is when called from another module, reads an element through a
    /// coroutine whose frame is allocated: a buffer makes a publish call allocate nothing.
    private func publish(
        count: Int, on topic: Topic,
        lend: ((UnsafeBufferPointer<[UInt8]>) throws -> Link.Step) throws -> Link.Step
    ) async throws -> ClosedRange<UInt64> {
        // Checked first: without it, a cancelled publishing loop that never waits would not stop.
        try Task.checkCancellation()
        let limit = configuration.maximumPayloadSize
        let publisher = id
        var first: UInt64?
        var last: UInt64 = 0
        var next = 0
        while next < count {
            let step = try lend { payloads throws -> Link.Step in
                if next == 0, let large = payloads.first(where: { $0.count > limit }) {
                    throw PublishError.payloadTooLarge(size: large.count, limit: limit)
                }
                let lent = LentPayloads(buffer: payloads)
                return try link.withLock { link throws(PublishError) -> Link.Step in
                    try link.publish(lent.buffer, from: &next, topic: topic, publisher: publisher)
                }
            }
            switch step {
            case .published(let range, let wakeThread):
                if first == nil { first = range.lowerBound }
                last = range.upperBound
                if wakeThread { wake.raise() }
            case .waitForMode, .waitForRoom:
                try await waitForRoom()
            }
        }
        return (first ?? last)...last
    }

    /// Payloads a publish call lends to the link for one step. `@unchecked Sendable` because a buffer pointer is
    /// not: it enters the link's lock only for the length of `Link.publish`, which reads the payloads (arrays,
    /// themselves `Sendable`), copies their bytes and keeps no pointer to them, while the caller's lending keeps
    /// the storage alive.
    private struct LentPayloads: @unchecked Sendable {
        let buffer: UnsafeBufferPointer<[UInt8]>
    }

    /// Suspends until the publisher is attached to a leader (or stopped, or the task is cancelled).
    public func waitUntilAttached() async {
        while !Task.isCancelled, link.withLock({ $0.leader == nil && !$0.stopping }) {
            try? await Task.sleep(for: .milliseconds(20))
        }
    }

    /// Suspends until every message published so far has been sent to a leader or has expired unsent, or the
    /// publisher stops, or the task is cancelled, or the leader refused this publisher's wire format. In broker
    /// mode a slow subscriber's flow control can hold messages back for as long as it needs; direct mode keeps
    /// none back.
    /// - Returns: whether every message was sent: none expired unsent, and none is left.
    @discardableResult
    public func waitUntilSent() async -> Bool {
        var noted = false
        let began = ContinuousClock.now
        while !Task.isCancelled {
            // Direct mode sends at once on its own socket: nothing it published waits for a leader.
            let (unsent, expired, blocked) = link.withLock { link in
                (link.mode == .direct ? 0 : link.unsentCount, link.expired, link.stopping || link.formatRefused)
            }
            // Messages that left the retention buffer unsent (an outage longer than its age) never will be.
            guard unsent > 0 else { return expired == 0 }
            guard !blocked else { return false }
            if !noted, ContinuousClock.now - began >= .seconds(1) {
                noted = true
                logger.info(
                    "waiting for messages to leave for the leader (its flow control holds them back while a subscriber is slow)",
                    metadata: ["unsent": "\(unsent)"])
            }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return false
    }

    /// Follows the leader until cancelled or shut down gracefully.
    public func run() async throws {
        // Direct mode with an allow-list: subscribers are authenticated before the publisher socket listens.
        var authenticator: ZMQAuthenticator?
        if let security = configuration.security, security.authorizedKeys != nil {
            authenticator = try await security.startAuthenticator(context: context, logger: logger)
        }
        do {
            try OSThread.start(name: "herald-publisher") { [self] in
                runSocketThread()
                threadDone.complete()
            }
        } catch {
            // As on every other way out: publish calls see a stopped publisher instead of waiting for a thread.
            link.withLock { $0.stopping = true }
            await authenticator?.stop()
            throw error
        }
        var started: Logger.Metadata = ["publisher": "\(id)", "topics": "\(topics.map(\.name).sorted())"]
        if let strength = configuration.strength { started["strength"] = "\(strength)" }
        logger.info("publisher started", metadata: started)
        // All of a publisher's topics go to the group of the first by name: one leader, one replay on a move.
        let routed = topics.map(\.name).min() ?? ""
        let follower = LeaderFollower(
            watcher: ClusterWatcher(zookeeper: configuration.zookeeper, layout: configuration.layout, logger: logger),
            logger: logger, select: { $0.leader(for: routed) })
        // The socket thread is stopped and the last messages flushed on every way out, an error included.
        var failure: (any Error)?
        do {
            try await cancelWhenGracefulShutdown {
                try await follower.run { record in await self.attach(record) }
            }
        } catch {
            failure = error
        }
        link.withLock { $0.stopping = true }
        wake.raise()
        await threadDone.wait()
        await authenticator?.stop()
        // Closed sockets keep their last messages for the linger period, but only a terminated context waits
        // for them: without this, a process that exits right after publishing loses its last messages.
        // Bounded, so that a socket some future change forgets to close costs a log line, not a hung exit.
        let flushed = await firstResult(within: Self.flushLimit + .seconds(1)) { [context] in
            await withCheckedContinuation { (continuation: CheckedContinuation<Bool?, Never>) in
                do {
                    try OSThread.start(name: "herald-flush") {
                        context.terminate()
                        continuation.resume(returning: true)
                    }
                } catch {
                    continuation.resume(returning: nil)
                }
            }
        }
        if flushed == nil { logger.warning("the last messages did not leave within \(Self.flushLimit)") }
        let (expired, unsent) = link.withLock { ($0.expired, $0.unsentCount) }
        // Subscribers can count a gap only between messages they see; these never reached any leader.
        if expired > 0 || unsent > 0 {
            logger.warning(
                "messages never reached a leader; raise --retention-bytes or --retention-age for longer outages",
                metadata: ["expired": "\(expired)", "unsent_at_stop": "\(unsent)"])
            Counter(label: Instruments.expired).increment(by: Int(clamping: expired + UInt64(unsent)))
        }
        logger.info("publisher stopped")
        if let failure { throw failure }
    }

    // MARK: Attachment

    private func attach(_ record: LeaderRecord?) async {
        guard let record else { return await Task.sleepUntilCancelled() }
        if let refusal = record.refusal(by: configuration.security, role: "publisher") {
            logger.error("\(refusal)", metadata: ["leader": "\(record.broker)"])
            return await Task.sleepUntilCancelled()
        }
        link.withLock { $0.commands.append(.attach(record)) }
        wake.raise()
        await Task.sleepUntilCancelled()
        link.withLock { $0.commands.append(.detach(record)) }
        wake.raise()
    }

    /// Waits until the cluster's mode is known and half the retention buffer is free again, or the publisher
    /// stops, or the task is cancelled.
    private func waitForRoom() async throws {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let ready = link.withLock { link -> Bool in
                    if link.stopping || Task.isCancelled || link.hasRoom { return true }
                    link.waiters.append(continuation)
                    return false
                }
                if ready { continuation.resume() }
            }
        } onCancel: {
            // Waking every waiter is simpler than finding this one; the others check again.
            for waiter in link.withLock({ $0.takeWaiters() }) { waiter.resume() }
        }
        try Task.checkCancellation()
        if link.withLock({ $0.stopping }) { throw PublishError.stopped }
    }

    // MARK: The socket thread

    /// The thread that owns the publisher's sockets: it attaches and detaches, registers every heartbeat
    /// interval, reads the leader's credit, and sends what callers could not.
    private func runSocketThread() {
        var poller = ZMQPoller()
        var polledSocket: ObjectIdentifier?
        var socketEntry = -1
        var wakeEntry = poller.register(fileDescriptor: wake.fileDescriptor, for: .readable)
        while true {
            let plan = link.withLock { link in
                link.reportPublished(to: publishedCounters)
                return link.service(
                    context: context, publisher: id, topics: topics, startedAt: startedAt, logger: logger)
            }
            for waiter in plan.resume { waiter.resume() }
            guard let timeout = plan.timeout else { break }
            // The socket is polled only while this thread owns it; callers do not touch it then.
            if let socket = plan.socket {
                if polledSocket != ObjectIdentifier(socket) {
                    poller = ZMQPoller()
                    wakeEntry = poller.register(fileDescriptor: wake.fileDescriptor, for: .readable)
                    socketEntry = poller.register(socket, for: plan.events)
                    polledSocket = ObjectIdentifier(socket)
                } else {
                    poller.update(socketEntry, events: plan.events)
                }
            } else if polledSocket != nil {
                poller = ZMQPoller()
                wakeEntry = poller.register(fileDescriptor: wake.fileDescriptor, for: .readable)
                polledSocket = nil
                socketEntry = -1
            }
            _ = try? poller.poll(timeout: timeout)
            if poller.readyEvents(wakeEntry).contains(.readable) { wake.reset() }
        }
    }
}

// MARK: - The shared state

/// Everything the callers and the socket thread share, under one lock: the sockets, the retention buffer, the
/// credit and the sequence numbers.
///
/// Socket ownership follows libzmq's rule that a socket is used by one thread at a time, with a full memory
/// barrier between users: the lock is that barrier. While ``ownedByThread`` is false, whoever holds the lock
/// may use the sockets (callers send on them directly). While it is true, the socket thread may use them
/// outside the lock (to wait in `zmq_poll`), and callers only append to the buffer.
private struct Link: ~Copyable {
    enum Command {
        case attach(LeaderRecord)
        case detach(LeaderRecord)
    }

    enum Step {
        case published(ClosedRange<UInt64>, wakeThread: Bool)
        case waitForMode
        case waitForRoom
    }

    /// What the socket thread does after a pass: poll `socket` for `events` (or only its wake-up) for at most
    /// `timeout`, or stop when `timeout` is `nil`.
    struct Plan {
        var socket: ZMQSocket?
        var events: ZMQEvents = []
        var timeout: Duration?
        var resume: [CheckedContinuation<Void, Never>] = []
    }

    let configuration: PublisherConfiguration
    var mode: DisseminationMode?
    var leader: LeaderRecord? {
        didSet { attached = leader != nil }
    }
    /// Whether a leader is attached: read on every publish, where copying the record would cost more.
    private(set) var attached = false
    var commands: [Command] = []
    var stopping = false
    /// Broker mode: the connection to the leader, for data and registrations. Direct mode: registrations only.
    var dealer: ZMQSocket?
    /// Direct mode: the socket subscribers connect to; it outlives leader changes.
    var directSocket: ZMQSocket?
    var directEndpoint: String?
    var ownedByThread = false
    /// The largest batch frame for the current leader: 0 when it takes none.
    var batchLimit = 0
    /// Whether the last send found libzmq's queue full.
    var blockedOnWrite = false
    var retention: RetentionBuffer
    /// The first retained message not yet sent to the current leader.
    var unsent: RetentionBuffer.Position = 0
    /// Data bytes sent on the current connection, and the credit the leader granted for it.
    var sent: UInt64 = 0
    var granted: UInt64 = 0
    /// Per topic: the last sequence number given, the topic's key, and messages not yet counted in metrics.
    var streams: [Topic: (sequence: UInt64, key: [UInt8], uncounted: Int)] = [:]
    /// The number of the first retained message not yet sent to the current leader (see ``unsent``).
    var unsentNumber: UInt64 = 0
    var expired: UInt64 = 0
    var waiters: [CheckedContinuation<Void, Never>] = []
    var nextRegistration: ContinuousClock.Instant = .now
    var refusalNoted: ContinuousClock.Instant?
    /// The current leader refused this publisher's wire format: nothing will leave for it.
    var formatRefused = false
    /// CurveZMQ: the connection to the leader, for a refused key.
    let handshakes = HandshakeWatch()

    init(configuration: PublisherConfiguration) {
        self.configuration = configuration
        retention = RetentionBuffer(capacity: configuration.retentionBytes)
    }

    /// Bytes that may wait unsent while a leader is attached before callers wait.
    var unsentLimit: Int { retention.capacity / 2 }

    var unsentBytes: Int { Int(retention.end - min(max(unsent, retention.start), retention.end)) }

    /// Messages not yet sent to any leader.
    var unsentCount: Int {
        Int(retention.endNumber - min(max(unsentNumber, retention.startNumber), retention.endNumber))
    }

    /// Whether a caller may publish now: the mode is known, and unless it is direct (no retention) or no leader
    /// is attached (messages wait for one without limit), less than half the buffer waits unsent.
    var hasRoom: Bool {
        guard let mode else { return false }
        return mode == .direct || !attached
            || (unsentBytes < unsentLimit && unsentCount < configuration.retentionCount / 2)
    }

    mutating func takeWaiters() -> [CheckedContinuation<Void, Never>] {
        defer { waiters = [] }
        return waiters
    }

    // MARK: Callers

    /// Encodes and, when the connection is free, sends as many of `payloads` as fit now; the rest wait for a
    /// later call.
    mutating func publish(
        _ payloads: UnsafeBufferPointer<[UInt8]>, from next: inout Int, topic: Topic, publisher: PublisherID
    ) throws(PublishError) -> Step {
        guard !stopping else { throw .stopped }
        guard mode != nil else { return .waitForMode }
        guard hasRoom else { return .waitForRoom }
        var stream = streams.removeValue(forKey: topic) ?? (0, topic.key, 0)
        defer { streams[topic] = stream }
        let first = stream.sequence + 1
        while next < payloads.endIndex, hasRoom {
            let payload = payloads[next]
            next += 1
            stream.sequence += 1
            stream.uncounted += 1
            let header = MessageHeader(
                publisher: publisher, sequence: stream.sequence, sentAt: WallClock.nanosecondsSinceEpoch())
            if mode == .direct {
                sendDirect(key: stream.key, header: header, payload: payload)
            } else {
                append(key: stream.key, header: header, payload: payload)
            }
        }
        return .published(first...stream.sequence, wakeThread: mode == .broker && sendWaiting())
    }

    /// Moves the counts of published messages to the metrics, off the callers' path.
    mutating func reportPublished(to counters: TopicCounters) {
        for (topic, stream) in streams where stream.uncounted > 0 {
            counters.increment(topic.name, by: stream.uncounted)
            streams[topic]?.uncounted = 0
        }
    }

    /// Direct mode: one frame, encoded in place in libzmq's message and sent on the subscribers' socket, which
    /// never blocks (a subscriber that cannot keep up loses messages, and counts them).
    private mutating func sendDirect(key: [UInt8], header: MessageHeader, payload: [UInt8]) {
        guard let socket = directSocket else { return }
        let size = DataLayout.frameSize(keyCount: key.count, payloadCount: payload.count)
        guard
            var frame = try? ZMQFrame(
                count: size,
                initializingWith: { destination in
                    key.withUnsafeBytes { key in
                        payload.withUnsafeBytes { payload in
                            DataLayout.encode(into: destination, key: key, header: header, payload: payload)
                        }
                    }
                })
        else { return }
        try? socket.send(&frame, dontWait: true)
    }

    /// Broker mode: keeps the message for replay, to be sent by ``sendWaiting()``.
    private mutating func append(key: [UInt8], header: MessageHeader, payload: [UInt8]) {
        let size = DataLayout.frameSize(keyCount: key.count, payloadCount: payload.count)
        let now = WallClock.monotonicNanoseconds()
        trimRetention(now: now)
        let unsentBefore = unsent
        var droppedUnsent: UInt64 = 0
        _ = retention.append(
            size: size, now: now,
            dropping: { dropped in
                // Only while detached can a message leave unsent: attached, callers wait before that.
                if dropped >= unsentBefore { droppedUnsent += 1 }
            },
            encode: { destination in
                key.withUnsafeBytes { key in
                    payload.withUnsafeBytes { payload in
                        DataLayout.encode(into: destination, key: key, header: header, payload: payload)
                    }
                }
            })
        expired += droppedUnsent
        skipDropped()
    }

    /// Broker mode, on the caller's thread: sends what callers appended while the connection is free, a batch
    /// frame for several messages (one call's worth), a plain frame for one. - Returns: whether the socket thread
    /// must take over, because credit ran out or libzmq's queue is full.
    private mutating func sendWaiting() -> Bool {
        guard attached, !ownedByThread, dealer != nil else { return false }
        switch flush() {
        case .done: return false
        case .blocked, .needsCredit:
            ownedByThread = true
            return true
        }
    }

    /// Drops what is older than the retention age or beyond the count. While a leader is attached, what waits
    /// unsent for its credit is not dropped for age: callers wait before the count could force it out.
    private mutating func trimRetention(now: UInt64) {
        let age = configuration.retentionAge.components
        let maximumAge = UInt64(clamping: age.seconds) &* 1_000_000_000 &+ UInt64(age.attoseconds / 1_000_000_000)
        while let oldest = retention.oldestPublishedAt {
            let overCount = retention.count >= configuration.retentionCount
            let tooOld = now &- oldest > maximumAge
            guard overCount || tooOld else { break }
            let oldestUnsent = unsentNumber <= retention.startNumber
            if oldestUnsent && attached && !overCount { break }
            if oldestUnsent { expired += 1 }
            retention.removeFirst()
        }
        skipDropped()
    }

    /// Moves the unsent cursor past messages dropped from the buffer.
    private mutating func skipDropped() {
        if unsentNumber < retention.startNumber || unsent < retention.start {
            unsent = retention.start
            unsentNumber = retention.startNumber
        }
    }

    // MARK: The socket thread

    /// One pass of the socket thread, under the lock.
    mutating func service(
        context: ZMQContext, publisher: PublisherID, topics: [Topic], startedAt: UInt64, logger: Logger
    ) -> Plan {
        var plan = Plan()
        if stopping {
            stop(publisher: publisher, topics: topics, startedAt: startedAt, logger: logger)
            plan.resume = takeWaiters()
            return plan
        }
        // Read first: a refusal asks for a new connection, which the commands below then make.
        readIncoming(logger: logger)
        // A refused CURVE key is looked for at the registration pace, off the path of every publish.
        if let security = configuration.security, let leader, ContinuousClock.now >= nextRegistration,
            handshakes.shouldReconnect(
                now: .now, publicKey: security.keyPair.publicKey, leader: leader.broker, logger: logger)
        {
            commands.insert(.attach(leader), at: 0)
        }
        while !commands.isEmpty {
            switch commands.removeFirst() {
            case .attach(let record): attach(record, context: context, logger: logger)
            case .detach(let record): detach(record, publisher: publisher, topics: topics, startedAt: startedAt)
            }
        }
        let now = ContinuousClock.now
        if dealer != nil, now >= nextRegistration {
            register(.register, publisher: publisher, topics: topics, startedAt: startedAt)
            nextRegistration = now + configuration.registrationInterval
        }
        if ownedByThread {
            switch flush() {
            case .done:
                ownedByThread = false
            case .blocked:
                plan.events = [.readable, .writable]
            case .needsCredit:
                plan.events = .readable
            }
            if ownedByThread, let dealer { plan.socket = dealer }
        }
        if hasRoom || leader == nil { plan.resume = takeWaiters() }
        plan.timeout = mode == nil ? .seconds(1) : max(.milliseconds(1), min(nextRegistration - now, .seconds(1)))
        return plan
    }

    private enum FlushOutcome { case done, blocked, needsCredit }

    /// The largest batch frame a publisher makes: large enough that libzmq's and the broker's per-frame costs
    /// vanish for small messages, small enough to stay in the caches and not to hold a subscriber's window long.
    static let batchBytes = 64 << 10

    /// Sends waiting messages while credit lasts and libzmq takes them. Messages that wait together for a
    /// leader that takes batches go in batch frames of one topic each, up to ``batchBytes``.
    private mutating func flush() -> FlushOutcome {
        guard let dealer, attached else { return .done }
        blockedOnWrite = false
        skipDropped()
        for _ in 0..<4096 {
            guard let (bytes, next) = retention.frame(at: unsent) else { return .done }
            if sent + UInt64(bytes.count) > granted {
                readIncoming()
                if sent + UInt64(bytes.count) > granted { return .needsCredit }
            }
            let (count, end, size) = batch(startingWith: bytes, next: next, limit: min(batchLimit, Int(clamping: granted - sent)))
            do {
                if count == 1 {
                    try dealer.send(bytes: bytes, dontWait: true)
                } else {
                    var position = unsent
                    var frame = try ZMQFrame(count: size) { destination in
                        DataRun.encodeBatch(into: destination, count: count) {
                            let (bytes, next) = retention.frame(at: position)!
                            position = next
                            return bytes
                        }
                    }
                    try dealer.send(&frame, dontWait: true)
                }
            } catch {
                blockedOnWrite = true
                return .blocked
            }
            sent += UInt64(size)
            unsent = end
            unsentNumber += UInt64(count)
        }
        // A full batch: let callers in, then go on.
        return .blocked
    }

    /// How many waiting messages, from the one in `first`, go in one frame: those that follow it on the same
    /// topic while the batch stays within `limit` bytes. - Returns: the count, the position after the last one,
    /// and the frame's size (the message's own when the count is 1).
    private func batch(
        startingWith first: UnsafeRawBufferPointer, next: RetentionBuffer.Position, limit: Int
    ) -> (count: Int, end: RetentionBuffer.Position, size: Int) {
        var count = 1
        var end = next
        var total = first.count
        guard limit > 0, let keyEnd = first[2...].firstIndex(of: 0) else { return (1, next, total) }
        let key = UnsafeRawBufferPointer(rebasing: first[...keyEnd])
        while count < DataRun.batchLimit, let (bytes, after) = retention.frame(at: end),
            DataRun.batchSize(ofFrames: count + 1, totalBytes: total + bytes.count) <= limit,
            bytes.count > key.count, bytes[key.indices].elementsEqual(key)
        {
            count += 1
            total += bytes.count
            end = after
        }
        return count == 1 ? (1, next, total) : (count, end, DataRun.batchSize(ofFrames: count, totalBytes: total))
    }

    /// Reads what the leader sent: credit, and refusals.
    private mutating func readIncoming(logger: Logger? = nil) {
        guard let dealer else { return }
        var frame = ZMQFrame()
        for _ in 0..<64 {
            guard let more = try? dealer.receive(into: &frame, dontWait: true) else { return }
            if more { dealer.discardRemainingFrames() }
            let kind = frame.withUnsafeBytes { WireFormat.kind(of: $0) }
            switch kind {
            case .success(.credit):
                if case .success(let value) = frame.withUnsafeBytes({ ControlFrame.decodeCount($0) }) {
                    // A leader's credit only grows on one connection. Less than before: it forgot this connection
                    // (a pause longer than its registration lives) and took a heartbeat for a new one, whose count
                    // starts at zero where ours does not; waiting for credit would wait for ever. Start over. (A
                    // leader that reads renewals refuses such a heartbeat instead; older ones do not.)
                    if value < granted {
                        startOver("the leader counts this connection anew; reconnecting and replaying", logger: logger)
                        return
                    }
                    granted = max(granted, value)
                }
            case .success(.refused):
                let refusal = frame.withUnsafeBytes { ControlFrame.decode(Refusal.self, from: $0) }
                if case .success(let refusal) = refusal { refused(refusal, logger: logger) }
            default:
                continue
            }
        }
    }

    /// A refusal from the leader: it no longer knows this connection (it restarted its term, or dropped the
    /// registration after a pause), so start over on a new connection and replay.
    private mutating func refused(_ refusal: Refusal, logger: Logger?) {
        switch refusal.reason {
        case .notRegistered, .overCredit:
            startOver(
                "the leader no longer knows this connection; reconnecting and replaying",
                metadata: ["reason": "\(refusal.reason.rawValue)"], logger: logger)
        case .versionMismatch:
            formatRefused = true
            logger?.error("the leader refused this publisher's wire format: \(refusal.detail)")
        default:
            logger?.warning("the leader refused a registration: \(refusal.detail)")
        }
    }

    /// Attaches to the leader again on a new connection, which replays what is kept: the leader no longer counts
    /// this connection as the publisher does. Said at most every 10 s.
    private mutating func startOver(_ message: Logger.Message, metadata: Logger.Metadata = [:], logger: Logger?) {
        guard let leader else { return }
        if let logger, refusalNoted.map({ ContinuousClock.now - $0 > .seconds(10) }) ?? true {
            logger.info(message, metadata: metadata)
            refusalNoted = .now
        }
        commands.insert(.attach(leader), at: 0)
    }

    private mutating func attach(_ record: LeaderRecord, context: ZMQContext, logger: Logger) {
        closeDealer(linger: .zero)
        formatRefused = false
        do {
            let dealer = try ZMQSocket(context: context, type: .dealer)
            try dealer.setHeartbeats(every: configuration.heartbeatInterval)
            // The leader's credit bounds the bytes in flight; the count limit only has to let a window of
            // small messages through.
            try dealer.set(.sendHighWaterMark(0))
            try dealer.set(.maximumMessageSize(WireFormat.maximumControlBody + 2))
            try dealer.set(.linger(Publisher.flushLimit))
            if let security = configuration.security, let key = record.curveKey {
                try security.configureClient(dealer, serverKey: key)
            }
            try dealer.connect(record.requestEndpoint)
            self.dealer = dealer
            if configuration.security != nil { handshakes.watch(dealer) }
        } catch {
            logger.error("cannot attach to leader", metadata: ["leader": "\(record)", "error": "\(error)"])
            return
        }
        if record.mode == .direct, directSocket == nil {
            do {
                let socket = try ZMQSocket(context: context, type: .pub)
                try configuration.security?.configureServer(socket)
                if configuration.security != nil, configuration.security?.authorizedKeys == nil {
                    logger.warning(
                        "subscribers are encrypted but not authorized: any CURVE key may read this publisher's topics; pass --authorized-keys")
                }
                try socket.setHeartbeats(every: configuration.heartbeatInterval)
                try socket.set(.maximumMessageSize(WireFormat.maximumControlBody + 2))
                let bound = try socket.bind("tcp://\(configuration.bindHost):\(configuration.port)")
                directEndpoint = NetworkAddress.advertised(
                    bound, bindHost: configuration.bindHost, advertiseHost: configuration.advertiseHost)
                directSocket = socket
                logger.info("listening for subscribers", metadata: ["endpoint": "\(directEndpoint ?? bound)"])
            } catch {
                logger.error("cannot listen for subscribers", metadata: ["error": "\(error)"])
            }
        }
        if record.mode != mode, mode != nil || record.mode == .direct {
            // Direct mode keeps nothing for replay. The mode can also change under a running publisher (a cluster
            // recreated in the other mode, or a record rewritten by hand): broker mode then gets its whole buffer
            // back, and what waited for a broker-mode leader can no longer reach one.
            if mode == .broker { expired = expired.addingSaturated(UInt64(unsentCount)) }
            retention = RetentionBuffer(capacity: record.mode == .direct ? 64 : configuration.retentionBytes)
        }
        mode = record.mode
        leader = record
        batchLimit = min(record.batchBytes ?? 0, Self.batchBytes)
        sent = 0
        granted = 0
        nextRegistration = .now
        let replaying = record.mode == .broker ? retention.count : 0
        unsent = retention.start
        unsentNumber = retention.startNumber
        ownedByThread = record.mode == .broker
        logger.info(
            record.mode == .broker ? "attached to leader" : "registered with leader",
            metadata: ["leader": "\(record.broker)", "epoch": "\(record.epoch)", "replaying": "\(replaying)"])
    }

    private mutating func detach(_ record: LeaderRecord, publisher: PublisherID, topics: [Topic], startedAt: UInt64) {
        guard leader == record else { return }
        // A clean stop or a leader change tells the old leader at once; a crash is noticed when heartbeats stop.
        register(.unregister, publisher: publisher, topics: topics, startedAt: startedAt)
        closeDealer(linger: .milliseconds(100))
        leader = nil
    }

    private mutating func stop(publisher: PublisherID, topics: [Topic], startedAt: UInt64, logger: Logger) {
        if leader != nil, mode == .broker, dealer != nil {
            // Give what waits a bounded chance to leave, credit permitting.
            let deadline = ContinuousClock.now + Publisher.flushLimit
            while ContinuousClock.now < deadline, flush() != .done {
                if let dealer { _ = try? ZMQPoller.wait(on: dealer, for: .readable, timeout: .milliseconds(50)) }
            }
        }
        if leader != nil { register(.unregister, publisher: publisher, topics: topics, startedAt: startedAt) }
        closeDealer(linger: Publisher.flushLimit)
        directSocket?.close()
        directSocket = nil
        leader = nil
    }

    private mutating func closeDealer(linger: Duration) {
        handshakes.close()
        guard let dealer else { return }
        try? dealer.set(.linger(linger))
        dealer.close()
        self.dealer = nil
        ownedByThread = false
        blockedOnWrite = false
    }

    private mutating func register(
        _ kind: WireFormat.Kind, publisher: PublisherID, topics: [Topic], startedAt: UInt64
    ) {
        guard let dealer else { return }
        let registration = PublisherRegistration(
            publisher: publisher, endpoint: mode == .direct ? directEndpoint ?? "" : "", topics: topics.map(\.name),
            history: configuration.historyOffered, startedAt: startedAt,
            curveKey: mode == .direct ? configuration.security?.keyPair.publicKey : nil, strength: configuration.strength,
            // Once the leader took this connection (it granted credit), heartbeats renew it. Not before: a
            // registration it refused (a limit, a grant) is sent again as a first one, refused for its own reason.
            renewal: mode == .broker && granted > 0 ? true : nil)
        let frame = ControlFrame.encode(kind, registration)
        frame.withUnsafeBytes { _ = try? dealer.send(bytes: $0, dontWait: true) }
    }
}
