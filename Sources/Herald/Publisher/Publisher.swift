import DequeModule
import Foundation
import Logging
import ServiceLifecycle
import Synchronization
import ZeroMQ
import ZooKeeper

/// Settings of a ``Publisher``.
public struct PublisherConfiguration: Sendable {
    /// The default port of a direct-mode publisher's own endpoint; `0` picks any free port.
    public static let defaultPort = 5557
    /// The largest payload accepted: ZeroMQ handles far more, but a pub/sub message this big is usually a
    /// mistake that would stall every subscriber behind it.
    public static let defaultMaximumPayloadSize = 1 << 20
    /// Replay buffer size: 100 s at 1,000 messages per second, a few MB at typical sizes.
    public static let defaultRetentionCount = 100_000
    /// Replay window: comfortably longer than a failover after `kill -9` (the session timeout plus an
    /// election), short enough that each failover replays little.
    public static let defaultRetentionAge: Duration = .seconds(10)

    /// The ZooKeeper ensemble and session timeout.
    public var zookeeper: ZooKeeperConfiguration
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
    /// Broker mode: messages kept for replay to a new leader after a failover, at most.
    public var retentionCount: Int = PublisherConfiguration.defaultRetentionCount
    /// Broker mode: how long a message is kept for replay; an outage longer than this loses the older messages,
    /// and subscribers count them as lost.
    public var retentionAge: Duration = PublisherConfiguration.defaultRetentionAge
    /// Messages per topic this publisher asks brokers to keep for late joiners (`herald subscribe --history`).
    public var historyOffered: Int = 0

    /// Creates a configuration.
    /// - Parameters:
    ///   - zookeeper: the ZooKeeper ensemble.
    ///   - layout: the cluster.
    public init(zookeeper: ZooKeeperConfiguration, layout: ClusterLayout) {
        self.zookeeper = zookeeper
        self.layout = layout
    }
}

/// An error a publisher reports to the application.
public struct PublishError: Error, Sendable, Equatable, CustomStringConvertible {
    /// What went wrong and what to do.
    public let description: String
    init(_ description: String) { self.description = description }
}

/// Publishes messages on topics, following the cluster's leader through ZooKeeper.
///
/// Run it (``run()``, or in a `ServiceGroup`) for as long as it publishes. In broker mode messages go to the
/// leader broker; in direct mode the publisher listens on its own endpoint, registers it with the leader, and
/// subscribers connect straight to it.
///
/// ## Delivery across failovers (broker mode)
/// Every message is numbered per topic and kept in a retention buffer, bounded by
/// ``PublisherConfiguration/retentionCount`` and ``PublisherConfiguration/retentionAge``. After attaching to a
/// new leader the publisher replays what it kept before sending anything new, since it cannot know what the old
/// leader forwarded before it died; subscribers drop the duplicates. ``publish(_:on:)`` therefore never waits
/// for a leader once the cluster's mode is known: while there is none, messages wait in the buffer. A message
/// that leaves the buffer before any leader took it is lost, and subscribers count it as such.
///
/// ```swift
/// let publisher = try Publisher(configuration: config, topics: ["weather"], logger: logger)
/// try await withThrowingDiscardingTaskGroup { group in
///     group.addTask { try await publisher.run() }
///     try await publisher.publish(Array("sunny".utf8), on: "weather")
/// }
/// ```
public final class Publisher: Service, Sendable {
    /// This publisher's identity; new on every start, which subscribers treat as a new sequence epoch.
    public let id = PublisherID()
    /// The publisher's settings.
    public let configuration: PublisherConfiguration
    /// The topics announced to the leader.
    public let topics: [Topic]
    private let logger: Logger
    private let context: ZMQContext
    private let state = Mutex(State())
    private let publishedCounters = TopicCounters(label: Instruments.published)

    /// A message kept for replay: its position in the buffer's numbering and its three data frames.
    private struct Retained {
        var id: UInt64
        var frames: [[UInt8]]
        var publishedAt: ContinuousClock.Instant
    }

    private struct State {
        var mode: DisseminationMode?
        /// Broker mode: the connection to the leader, set once the replay to it has caught up.
        var route: AsyncZMQSocket?
        var directSocket: AsyncZMQSocket?
        var directEndpoint: String?
        var waiters: [CheckedContinuation<Void, Never>] = []
        var sequences: [Topic: UInt64] = [:]
        var retained = Deque<Retained>()
        var nextRetainedID: UInt64 = 0
        var expired: UInt64 = 0
        var leader: String?
        var stopped = false

        /// Drops what is too old or beyond the count; what was never sent is counted.
        mutating func trimRetention(_ configuration: PublisherConfiguration, now: ContinuousClock.Instant) {
            while let first = retained.first,
                retained.count > configuration.retentionCount || now - first.publishedAt > configuration.retentionAge
            {
                retained.removeFirst()
                if route == nil { expired += 1 }
            }
        }
    }

    /// How long stopping waits for the last messages to leave for the leader.
    static let flushLimit: Duration = .seconds(2)

    /// Creates a publisher; it connects when ``run()`` starts.
    /// - Parameters:
    ///   - configuration: the publisher's settings.
    ///   - topics: the topics it will publish on, announced to the leader.
    ///   - logger: where it logs its steps.
    public init(configuration: PublisherConfiguration, topics: [Topic], logger: Logger) throws {
        self.configuration = configuration
        self.topics = topics
        var logger = logger
        logger[metadataKey: "publisher"] = "\(id.short)"
        self.logger = logger
        self.context = try ZMQContext()
    }

    /// The leader this publisher is attached to, if any.
    public var attachedLeader: String? { state.withLock { $0.leader } }

    /// Messages that left the retention buffer while no leader could take them (broker mode); subscribers
    /// count them as lost.
    public var expiredCount: UInt64 { state.withLock { $0.expired } }

    /// Publishes one message.
    /// - Parameters:
    ///   - payload: the message body, at most ``PublisherConfiguration/maximumPayloadSize`` bytes.
    ///   - topic: the topic.
    /// - Returns: the message's sequence number on its topic.
    /// - Throws: ``PublishError`` for an oversized payload (nothing is sent), or when the publisher stopped;
    ///   `CancellationError` when the task is cancelled.
    @discardableResult
    public func publish(_ payload: [UInt8], on topic: Topic) async throws -> UInt64 {
        // Checked first: a send into a full queue returns at once once the task is cancelled, so without this a
        // cancelled publishing loop would spin instead of stopping.
        try Task.checkCancellation()
        guard payload.count <= configuration.maximumPayloadSize else {
            throw PublishError(
                "payload of \(payload.count) bytes exceeds the maximum of \(configuration.maximumPayloadSize); send smaller messages or raise the limit (--max-payload)"
            )
        }
        while true {
            let outcome = try state.withLock { state throws -> (AsyncZMQSocket?, ZMQMessage, UInt64)? in
                guard !state.stopped else { throw PublishError("the publisher has stopped; create a new one") }
                guard let mode = state.mode else { return nil }
                let sequence = state.sequences[topic, default: 0] + 1
                state.sequences[topic] = sequence
                let header = MessageHeader(publisher: id, sequence: sequence, sentAt: Clock.nanosecondsSinceEpoch())
                let frames = DataFrames(topic: topic, header: header, payload: payload).frames
                if mode == .direct { return (state.directSocket, ZMQMessage(frames: frames), sequence) }
                let now = ContinuousClock.now
                state.retained.append(Retained(id: state.nextRetainedID, frames: frames, publishedAt: now))
                state.nextRetainedID += 1
                state.trimRetention(configuration, now: now)
                return (state.route, ZMQMessage(frames: [[RequestKind.publish.rawValue]] + frames), sequence)
            }
            guard let (socket, message, sequence) = outcome else {
                try Task.checkCancellation()
                await waitForMode()
                continue
            }
            publishedCounters.increment(topic.name)
            // Without a route the message waits in the retention buffer; a send that fails because the leader
            // changed meanwhile is replayed to the next one from there too.
            try? await socket?.send(message)
            return sequence
        }
    }

    /// Suspends until the publisher is attached to a leader (or stopped, or the task is cancelled).
    public func waitUntilAttached() async {
        while !Task.isCancelled, state.withLock({ $0.leader == nil && !$0.stopped }) {
            try? await Task.sleep(for: .milliseconds(20))
        }
    }

    /// Follows the leader until cancelled or shut down gracefully.
    public func run() async throws {
        let follower = LeaderFollower(
            watcher: ClusterWatcher(zookeeper: configuration.zookeeper, layout: configuration.layout, logger: logger),
            logger: logger)
        try await cancelWhenGracefulShutdown {
            try await follower.run { record in await self.attach(record) }
        }
        let (sockets, waiters) = state.withLock { state in
            defer {
                state.route = nil
                state.directSocket = nil
                state.stopped = true
                state.waiters = []
            }
            return ([state.route, state.directSocket].compactMap { $0 }, state.waiters)
        }
        for waiter in waiters { waiter.resume() }
        for socket in sockets { await socket.close() }
        // Closed sockets keep their last messages for the linger period, but only a terminated context waits
        // for them: without this, a process that exits right after publishing loses its last messages.
        // Bounded, so that a socket some future change forgets to close costs a log line, not a hung exit.
        let flushed = await firstResult(within: Self.flushLimit + .seconds(1)) { [context] in
            await withCheckedContinuation { (continuation: CheckedContinuation<Bool?, Never>) in
                Thread.detachNewThread {
                    context.terminate()
                    continuation.resume(returning: true)
                }
            }
        }
        if flushed == nil { logger.warning("the last messages did not leave within \(Self.flushLimit)") }
        // Subscribers can count a gap only between messages they see; these never reached any leader.
        if expiredCount > 0 {
            logger.warning(
                "messages left the retention buffer before any leader took them; raise --retention-count or --retention-age",
                metadata: ["count": "\(expiredCount)"])
        }
        logger.info("publisher stopped")
    }

    // MARK: Attachment

    private func attach(_ record: LeaderRecord?) async {
        guard let record else { return await Task.sleepUntilCancelled() }
        let dealer: AsyncZMQSocket
        do {
            dealer = try AsyncZMQSocket(context: context, type: .dealer, name: "herald-publisher") {
                try $0.set(.heartbeatInterval(self.configuration.heartbeatInterval))
                try $0.set(.heartbeatTimeout(self.configuration.heartbeatInterval * 3))
                try $0.set(.sendHighWaterMark(BrokerConfiguration.defaultHighWaterMark))
                // A stopping publisher's queue may hold many messages for a live leader: give them time to leave.
                try $0.set(.linger(Self.flushLimit))
                try $0.connect(record.requestEndpoint)
            }
        } catch {
            logger.error("cannot attach to leader", metadata: ["leader": "\(record)", "error": "\(error)"])
            return await Task.sleepUntilCancelled()
        }
        var registration = PublisherRegistration(
            publisher: id, endpoint: "", topics: topics.map(\.name), history: configuration.historyOffered)
        switch record.mode {
        case .broker:
            state.withLock { $0.mode = .broker }
            resumeWaiters()
            try? await dealer.send(registrationMessage(.register, registration))
            let replayed = await replay(to: dealer, leader: record.broker)
            logger.info(
                "attached to leader",
                metadata: ["leader": "\(record.broker)", "endpoint": "\(record.requestEndpoint)", "replayed": "\(replayed)"])
        case .direct:
            do {
                registration.endpoint = try await ensureDirectSocket()
            } catch {
                logger.error("cannot listen for subscribers", metadata: ["error": "\(error)"])
                await dealer.close()
                return await Task.sleepUntilCancelled()
            }
            state.withLock {
                $0.mode = .direct
                $0.leader = record.broker
                $0.retained.removeAll()
            }
            resumeWaiters()
            logger.info(
                "registered with leader", metadata: ["leader": "\(record.broker)", "endpoint": "\(registration.endpoint)"])
        }
        // Registrations double as heartbeats: the leader forgets a publisher that falls silent.
        while !Task.isCancelled {
            try? await Task.sleep(for: configuration.heartbeatInterval)
            try? await dealer.send(registrationMessage(.register, registration))
        }
        // A clean stop tells the leader at once; a crash is noticed when the heartbeats stop.
        try? await dealer.send(registrationMessage(.unregister, registration))
        state.withLock {
            if $0.route === dealer { $0.route = nil }
            $0.leader = nil
        }
        await dealer.close()
    }

    /// Sends everything retained to a new leader, then makes it the route for new messages.
    /// - Returns: how many messages were replayed.
    private func replay(to dealer: AsyncZMQSocket, leader: String) async -> Int {
        var cursor: UInt64 = 0
        var replayed = 0
        while !Task.isCancelled {
            // Taken in batches under the lock; the last, empty batch switches the route in the same critical
            // section, so a message published meanwhile is either in a batch or sent by `publish` itself.
            let batch = state.withLock { state -> [Retained] in
                state.trimRetention(configuration, now: .now)
                let pending = state.retained.drop { $0.id < cursor }.prefix(512)
                if pending.isEmpty {
                    state.route = dealer
                    state.leader = leader
                }
                return Array(pending)
            }
            guard let last = batch.last else { break }
            for message in batch {
                try? await dealer.send(ZMQMessage(frames: [[RequestKind.publish.rawValue]] + message.frames))
            }
            replayed += batch.count
            cursor = last.id + 1
        }
        return replayed
    }

    private func registrationMessage(_ kind: RequestKind, _ registration: PublisherRegistration) -> ZMQMessage {
        ZMQMessage(frames: [[kind.rawValue], Array((try? JSONEncoder.herald.encode(registration)) ?? Data())])
    }

    /// Binds the direct-mode socket once; it outlives leader changes so data keeps flowing through them.
    private func ensureDirectSocket() async throws -> String {
        if let endpoint = state.withLock({ $0.directEndpoint }) { return endpoint }
        let configuration = self.configuration
        let socket = try AsyncZMQSocket(context: context, type: .pub, name: "herald-direct") {
            try $0.set(.heartbeatInterval(configuration.heartbeatInterval))
            try $0.set(.heartbeatTimeout(configuration.heartbeatInterval * 3))
            try $0.set(.sendHighWaterMark(BrokerConfiguration.defaultHighWaterMark))
            try $0.bind("tcp://\(configuration.bindHost):\(configuration.port)")
        }
        let bound = try await socket.withSocket { try $0.lastEndpoint() }
        let endpoint = NetworkAddress.advertised(
            bound, bindHost: configuration.bindHost, advertiseHost: configuration.advertiseHost)
        state.withLock {
            $0.directSocket = socket
            $0.directEndpoint = endpoint
        }
        logger.info("listening for subscribers", metadata: ["endpoint": "\(endpoint)"])
        return endpoint
    }

    private func resumeWaiters() {
        let waiters = state.withLock { state in
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Suspends until the cluster's mode is known, the publisher stops, or the task is cancelled.
    private func waitForMode() async {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let ready = state.withLock { state -> Bool in
                    if state.stopped || Task.isCancelled || state.mode != nil { return true }
                    state.waiters.append(continuation)
                    return false
                }
                if ready { continuation.resume() }
            }
        } onCancel: {
            // Waking every waiter is simpler than tracking which one was cancelled; the others re-check.
            resumeWaiters()
        }
    }
}

enum Clock {
    /// Wall-clock time for message timestamps: subscribers on other hosts compare it with their own clock.
    /// A `Double` of seconds keeps about a quarter of a microsecond of precision today, finer than any latency
    /// Herald reports.
    static func nanosecondsSinceEpoch() -> UInt64 {
        UInt64(Date().timeIntervalSince1970 * 1e9)
    }
}
