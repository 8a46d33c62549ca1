import CoreMetrics
import Foundation
import Logging
import ServiceLifecycle
import Synchronization
import ZeroMQ
import ZooKeeper

/// Settings of a ``Subscriber``.
public struct SubscriberConfiguration: Sendable {
    /// The ZooKeeper ensemble and session timeout.
    public var zookeeper: ZooKeeperConfiguration
    /// The cluster.
    public var layout: ClusterLayout
    /// ZMTP heartbeat interval: a dead broker or publisher connection is noticed after three silent ones.
    public var heartbeatInterval: Duration = .seconds(1)
    /// Direct mode: how often the leader is asked for the publishers of the subscribed topics.
    public var discoveryInterval: Duration = .milliseconds(500)
    /// Per-connection queue limit in messages.
    public var receiveHighWaterMark: Int32 = BrokerConfiguration.defaultHighWaterMark
    /// Broker mode: how many of the last messages of each topic to receive before live ones (0: none).
    public var history: Int = 0
    /// How long a gap in a publisher's numbering may wait to be filled before its messages count as lost.
    public var gapTimeout: Duration = Sequencer.defaultGapTimeout

    /// Creates a configuration.
    /// - Parameters:
    ///   - zookeeper: the ZooKeeper ensemble.
    ///   - layout: the cluster.
    public init(zookeeper: ZooKeeperConfiguration, layout: ClusterLayout) {
        self.zookeeper = zookeeper
        self.layout = layout
    }
}

/// A message as a subscriber receives it.
public struct ReceivedMessage: Sendable, Hashable {
    /// The topic it was published on.
    public var topic: Topic
    /// Its publisher, sequence number and send time.
    public var header: MessageHeader
    /// The message body.
    public var payload: [UInt8]
    /// When it arrived, in nanoseconds since the Unix epoch.
    public var receivedAt: UInt64

    /// End-to-end latency from the publisher's send to this arrival (publisher and subscriber clocks must agree
    /// when they run on different hosts).
    /// Total for any send time a publisher claims: a difference beyond `Int64`'s range saturates.
    public var latency: Duration {
        .nanoseconds(Self.nanoseconds(from: header.sentAt, to: receivedAt))
    }

    /// `to - from` in nanoseconds, saturated to `Int64`'s range: a send time comes from the network, so it
    /// may be anything.
    static func nanoseconds(from start: UInt64, to end: UInt64) -> Int64 {
        if end >= start {
            let difference = end - start
            return difference > UInt64(Int64.max) ? .max : Int64(difference)
        }
        let difference = start - end
        return difference > UInt64(Int64.max) ? .min : -Int64(difference)
    }
}

/// Receives the messages of some topics, following the cluster's leader through ZooKeeper.
///
/// Run it (``run()``, or in a `ServiceGroup`) and iterate ``messages`` at the same time. In broker mode it
/// connects to the leader broker; in direct mode it asks the leader for the publishers of its topics and
/// connects straight to them, keeping those connections through leader changes.
///
/// ## Exactly once, in order
/// Every message passes a ``Sequencer``: the application gets each publisher's messages on a topic once and
/// in order. In broker mode, after attaching to a leader (first or after a failover), after its first live
/// message there, and whenever a gap stays open, the subscriber asks the leader for what it kept from the next
/// number owed onwards; together with publishers replaying their retention buffers this closes the window in
/// which a new SUB connection misses messages (the slow-joiner problem) and the messages a dead leader never
/// forwarded. What is still missing when a gap times out is counted as lost (``statistics``), never silent.
///
/// ```swift
/// let subscriber = try Subscriber(configuration: config, topics: ["weather"], logger: logger)
/// try await withThrowingDiscardingTaskGroup { group in
///     group.addTask { try await subscriber.run() }
///     for await message in subscriber.messages {
///         print(message.topic, message.header.sequence, message.latency)
///     }
/// }
/// ```
public final class Subscriber: Service, Sendable {
    /// The subscriber's settings.
    public let configuration: SubscriberConfiguration
    /// The topics it receives.
    public let topics: Set<Topic>
    private let logger: Logger
    private let context: ZMQContext
    private let socket: AsyncZMQSocket
    private let state = Mutex(State())
    /// Everything the delivery pipeline reacts to, in arrival order.
    private let inputs = AsyncBuffer<Input>(limit: 4096)
    /// What the application gets.
    private let output = AsyncBuffer<ReceivedMessage>(limit: 4096)
    private let receivedCounters = TopicCounters(label: Instruments.received)
    private let latencyTimer = CoreMetrics.Timer(label: Instruments.latency)

    /// How often gaps are checked and, while one is open, the leader asked to fill it.
    static let recoveryInterval: Duration = .milliseconds(250)
    /// How long to wait for requested history before delivering live messages without it.
    static let historyTimeout: Duration = .seconds(3)

    private struct State {
        var leader: String?
        /// Direct mode: the publishers connected to, by endpoint.
        var publishers: [String: PublisherID] = [:]
        var malformed: UInt64 = 0
        var statistics = Sequencer.Statistics()
        var historyNotice: String?
    }

    enum Input: Sendable {
        case live(ZMQMessage)
        /// Broker mode: a connection to a new leader for history requests, or `nil` when detached.
        case attached(AsyncZMQSocket?)
        case history(ZMQMessage)
        case historyEnd(HistoryEnd)
        case tick
    }

    /// Creates a subscriber; it connects when ``run()`` starts.
    /// - Parameters:
    ///   - configuration: the subscriber's settings.
    ///   - topics: the topics to receive; at least one.
    ///   - logger: where it logs its steps.
    public init(configuration: SubscriberConfiguration, topics: [Topic], logger: Logger) throws {
        guard !topics.isEmpty else { throw HeraldConfigurationError("a subscriber needs at least one --topic") }
        guard configuration.history >= 0 else {
            throw HeraldConfigurationError("history must not be negative, got \(configuration.history)")
        }
        self.configuration = configuration
        self.topics = Set(topics)
        self.logger = logger
        self.context = try ZMQContext()
        socket = try AsyncZMQSocket(context: context, type: .sub, name: "herald-subscriber", receiveBufferLimit: 4096) {
            try $0.set(.heartbeatInterval(configuration.heartbeatInterval))
            try $0.set(.heartbeatTimeout(configuration.heartbeatInterval * 3))
            try $0.set(.receiveHighWaterMark(configuration.receiveHighWaterMark))
            for topic in topics { try $0.set(.subscribe(topic.key)) }
        }
    }

    /// The leader this subscriber is attached to, if any.
    public var attachedLeader: String? { state.withLock { $0.leader } }

    /// Direct mode: the endpoints of the publishers it is connected to.
    public var connectedPublishers: [String] { state.withLock { $0.publishers.keys.sorted() } }

    /// Messages dropped because they were malformed or of a topic not asked for.
    public var malformedCount: UInt64 { state.withLock { $0.malformed } }

    /// Delivered, lost, duplicate and reordered messages so far.
    public var statistics: Sequencer.Statistics { state.withLock { $0.statistics } }

    /// Why requested history could not be served in full, if it could not (for example, publishers offer less).
    public var historyNotice: String? { state.withLock { $0.historyNotice } }

    /// Each publisher's messages on the subscribed topics, once and in order; ends when the subscriber stops.
    /// One consumer at a time.
    public var messages: some AsyncSequence<ReceivedMessage, Never> & Sendable { output.elements }

    /// Follows the leader and delivers messages until cancelled or shut down gracefully; then ends ``messages``.
    public func run() async throws {
        let follower = LeaderFollower(
            watcher: ClusterWatcher(zookeeper: configuration.zookeeper, layout: configuration.layout, logger: logger),
            logger: logger)
        defer { output.finish() }
        try await cancelWhenGracefulShutdown {
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { await self.deliver() }
                group.addTask {
                    for await message in self.socket.messages { await self.inputs.push(.live(message)) }
                }
                group.addTask {
                    while !Task.isCancelled {
                        try? await Task.sleep(for: Self.recoveryInterval)
                        await self.inputs.push(.tick)
                    }
                }
                group.addTask { try await follower.run { record in await self.attach(record) } }
                try await group.next()
                // Every child runs until cancelled; one that ends on its own is a fault worth a log line,
                // since the subscriber then stops.
                if !Task.isCancelled { self.logger.error("a subscriber task ended unexpectedly; stopping") }
                group.cancelAll()
            }
        }
        await socket.close()
        inputs.finish()
        logger.info("subscriber stopped")
    }

    // MARK: Delivery

    /// The one task that owns the sequencer: it orders what arrives and hands it to the application.
    private func deliver() async {
        var pipeline = DeliveryPipeline(
            sequencer: Sequencer(gapTimeout: configuration.gapTimeout), topics: topics.map(\.name).sorted(),
            initialHistory: configuration.history)
        for await input in inputs.elements {
            let now = ContinuousClock.now
            let before = pipeline.sequencer.statistics
            let (delivered, request) = pipeline.handle(input, decode: decode, now: now)
            if let request, let connection = pipeline.connection {
                try? await connection.send(
                    ZMQMessage(frames: [[RequestKind.history.rawValue], Array((try? JSONEncoder.herald.encode(request)) ?? Data())]))
            }
            if case .historyEnd(let end) = input { noteHistoryEnd(end) }
            for message in delivered {
                receivedCounters.increment(message.topic.name)
                // A send time in the future (clocks apart, or a lying sender) is no latency worth recording.
                let latency = ReceivedMessage.nanoseconds(from: message.header.sentAt, to: message.receivedAt)
                if latency >= 0 { latencyTimer.recordNanoseconds(latency) }
                await output.push(message)
            }
            let after = pipeline.sequencer.statistics
            if after != before { record(before, after) }
        }
    }

    private func record(_ before: Sequencer.Statistics, _ after: Sequencer.Statistics) {
        state.withLock { $0.statistics = after }
        if after.lost > before.lost {
            Counter(label: Instruments.lost).increment(by: Int(clamping: after.lost - before.lost))
            logger.warning("messages lost", metadata: ["count": "\(after.lost - before.lost)", "total": "\(after.lost)"])
        }
        if after.duplicates > before.duplicates {
            Counter(label: Instruments.duplicated).increment(by: Int(clamping: after.duplicates - before.duplicates))
        }
        if after.reordered > before.reordered {
            Counter(label: Instruments.reordered).increment(by: Int(clamping: after.reordered - before.reordered))
        }
    }

    private func noteHistoryEnd(_ end: HistoryEnd) {
        guard configuration.history > 0 else { return }
        let short = end.offered.filter { $0.value < configuration.history }.sorted { $0.key < $1.key }
        guard !short.isEmpty else { return }
        let detail = short.map { "'\($0.key)' at most \($0.value)" }.joined(separator: ", ")
        let notice =
            "asked for \(configuration.history) messages of history, but publishers offer \(detail); ask for less, or start publishers with a larger --history"
        logger.warning("\(notice)")
        state.withLock { $0.historyNotice = notice }
    }

    private func decode(_ message: ZMQMessage, _ frames: ArraySlice<[UInt8]>) -> ReceivedMessage? {
        guard let data = DataFrames(frames: frames), topics.contains(data.topic) else {
            state.withLock { $0.malformed += 1 }
            return nil
        }
        return ReceivedMessage(
            topic: data.topic, header: data.header, payload: data.payload, receivedAt: Clock.nanosecondsSinceEpoch())
    }

    // MARK: Attachment

    private func attach(_ record: LeaderRecord?) async {
        guard let record else { return await Task.sleepUntilCancelled() }
        switch record.mode {
        case .broker:
            let endpoint = record.subscriberEndpoint
            do {
                try await socket.withSocket { try $0.connect(endpoint) }
            } catch {
                logger.error("cannot connect to leader", metadata: ["endpoint": "\(endpoint)", "error": "\(error)"])
                return await Task.sleepUntilCancelled()
            }
            state.withLock { $0.leader = record.broker }
            logger.info("attached to leader", metadata: ["leader": "\(record.broker)", "endpoint": "\(endpoint)"])
            await withLeaderConnection(record) { dealer in
                await self.inputs.push(.attached(dealer))
                await Task.sleepUntilCancelled()
                await self.inputs.push(.attached(nil))
            }
            state.withLock { $0.leader = nil }
            _ = try? await socket.withSocket { try $0.disconnect(endpoint) }
        case .direct:
            if configuration.history > 0 {
                logger.warning("history is kept by brokers, and this cluster runs in direct mode: --history is ignored")
            }
            state.withLock { $0.leader = record.broker }
            logger.info("using leader for discovery", metadata: ["leader": "\(record.broker)"])
            await withLeaderConnection(record) { dealer in await self.discover(through: dealer) }
            state.withLock { $0.leader = nil }
        }
    }

    /// Opens a request connection to the leader, reads its replies into the pipeline, and runs `body` with it
    /// until cancelled.
    private func withLeaderConnection(
        _ record: LeaderRecord, _ body: @escaping @Sendable (AsyncZMQSocket) async -> Void
    ) async {
        let dealer: AsyncZMQSocket
        do {
            dealer = try AsyncZMQSocket(context: context, type: .dealer, name: "herald-requests") {
                try $0.set(.heartbeatInterval(self.configuration.heartbeatInterval))
                try $0.set(.heartbeatTimeout(self.configuration.heartbeatInterval * 3))
                try $0.set(.receiveHighWaterMark(BrokerConfiguration.defaultHighWaterMark))
                try $0.connect(record.requestEndpoint)
            }
        } catch {
            logger.error("cannot reach leader", metadata: ["leader": "\(record)", "error": "\(error)"])
            return await Task.sleepUntilCancelled()
        }
        await withDiscardingTaskGroup { group in
            group.addTask {
                for await reply in dealer.messages { await self.handleReply(reply) }
            }
            group.addTask {
                await body(dealer)
                await dealer.close()
            }
        }
    }

    private func handleReply(_ reply: ZMQMessage) async {
        guard let kind = reply.frames.first.flatMap({ $0.count == 1 ? RequestKind(rawValue: $0[0]) : nil }) else {
            state.withLock { $0.malformed += 1 }
            return
        }
        switch kind {
        case .history:
            await inputs.push(.history(reply))
        case .historyEnd:
            if reply.frames.count == 2, let end = try? JSONDecoder().decode(HistoryEnd.self, from: Data(reply.frames[1])) {
                await inputs.push(.historyEnd(end))
            }
        case .lookup:
            if reply.frames.count == 2,
                let answer = try? JSONDecoder().decode(DiscoveryReply.self, from: Data(reply.frames[1]))
            {
                await apply(answer)
            }
        case .publish, .register, .unregister, .status:
            state.withLock { $0.malformed += 1 }
        }
    }

    /// Direct mode: asks the leader for publishers until cancelled, connecting to new ones and dropping
    /// departed ones. Connections already made stay up when the leader changes.
    private func discover(through dealer: AsyncZMQSocket) async {
        let query = Array((try? JSONEncoder.herald.encode(DiscoveryQuery(topics: topics.map(\.name).sorted()))) ?? Data())
        while !Task.isCancelled {
            try? await dealer.send(ZMQMessage(frames: [[RequestKind.lookup.rawValue], query]))
            try? await Task.sleep(for: configuration.discoveryInterval)
        }
    }

    private func apply(_ reply: DiscoveryReply) async {
        let wanted = Dictionary(reply.publishers.map { ($0.endpoint, $0.publisher) }, uniquingKeysWith: { a, _ in a })
        let (added, removed) = state.withLock { state -> ([String: PublisherID], [String]) in
            let added = wanted.filter { state.publishers[$0.key] == nil }
            // A fresh leader may not have heard every publisher yet: only a complete list removes any.
            let removed = reply.complete ? state.publishers.keys.filter { wanted[$0] == nil } : []
            return (added, removed)
        }
        for (endpoint, publisher) in added {
            do {
                try await socket.withSocket { try $0.connect(endpoint) }
                state.withLock { $0.publishers[endpoint] = publisher }
                logger.info("connected to publisher", metadata: ["publisher": "\(publisher.short)", "endpoint": "\(endpoint)"])
            } catch {
                logger.warning("cannot connect to publisher", metadata: ["endpoint": "\(endpoint)", "error": "\(error)"])
            }
        }
        for endpoint in removed {
            _ = try? await socket.withSocket { try $0.disconnect(endpoint) }
            let publisher = state.withLock { $0.publishers.removeValue(forKey: endpoint) }
            logger.info("publisher departed", metadata: ["publisher": "\(publisher?.short ?? "?")", "endpoint": "\(endpoint)"])
        }
    }
}

/// The subscriber's delivery logic without its I/O: what to deliver and which history to ask for, given what
/// arrived. Owned by one task.
struct DeliveryPipeline {
    var sequencer: Sequencer
    let topics: [String]
    /// Late-joiner history still to be asked for (0: none, or already served).
    var initialHistory: Int
    /// The current leader's request connection, if attached in broker mode.
    var connection: AsyncZMQSocket?
    /// While initial history is on its way: what it brought so far, and live messages held behind it.
    var awaitingHistory: (since: ContinuousClock.Instant, history: [ReceivedMessage], live: [ReceivedMessage])?
    /// Whether the first live message since attaching should trigger a recovery request.
    var recoverOnFirstLive = false
    var lastRecoveryRequest: ContinuousClock.Instant?

    init(sequencer: Sequencer, topics: [String], initialHistory: Int) {
        self.sequencer = sequencer
        self.topics = topics
        self.initialHistory = initialHistory
    }

    /// Handles one input.
    /// - Returns: the messages to deliver now, in order, and a history request to send to the leader, if any.
    mutating func handle(
        _ input: Subscriber.Input, decode: (ZMQMessage, ArraySlice<[UInt8]>) -> ReceivedMessage?,
        now: ContinuousClock.Instant
    ) -> ([ReceivedMessage], HistoryRequest?) {
        switch input {
        case .live(let raw):
            guard let message = decode(raw, raw.frames[...]) else { return ([], nil) }
            if awaitingHistory != nil {
                awaitingHistory?.live.append(message)
                return ([], nil)
            }
            var request: HistoryRequest?
            if recoverOnFirstLive {
                // The subscription at this leader is in effect now: whatever the leader forwarded before that
                // moment is in its history.
                recoverOnFirstLive = false
                request = recoveryRequest(now: now)
            }
            return (sequencer.accept(message, now: now), request)
        case .attached(let connection):
            self.connection = connection
            guard connection != nil else { return ([], nil) }
            recoverOnFirstLive = true
            if initialHistory > 0 {
                defer { initialHistory = 0 }
                awaitingHistory = (now, [], [])
                return ([], HistoryRequest(topics: topics, limit: initialHistory, after: [:]))
            }
            return ([], recoveryRequest(now: now))
        case .history(let raw):
            guard let message = decode(raw, raw.frames.dropFirst()) else { return ([], nil) }
            if awaitingHistory != nil {
                awaitingHistory?.history.append(message)
                return ([], nil)
            }
            return (sequencer.accept(message, now: now), nil)
        case .historyEnd:
            return (releaseHeldHistory(now: now), nil)
        case .tick:
            if let waiting = awaitingHistory, now - waiting.since > Subscriber.historyTimeout {
                return (releaseHeldHistory(now: now), nil)
            }
            let delivered = sequencer.expireGaps(now: now)
            let request: HistoryRequest? =
                sequencer.hasOpenGaps && (lastRecoveryRequest.map { now - $0 >= Subscriber.recoveryInterval } ?? true)
                ? recoveryRequest(now: now) : nil
            return (delivered, request)
        }
    }

    /// Feeds held history (oldest first, so streams start there) and then the live messages held behind it.
    private mutating func releaseHeldHistory(now: ContinuousClock.Instant) -> [ReceivedMessage] {
        guard let waiting = awaitingHistory else { return [] }
        awaitingHistory = nil
        var delivered: [ReceivedMessage] = []
        for message in waiting.history + waiting.live { delivered += sequencer.accept(message, now: now) }
        return delivered
    }

    /// Asks for what the leader kept from each stream's next owed number on; `nil` when no stream is known.
    private mutating func recoveryRequest(now: ContinuousClock.Instant) -> HistoryRequest? {
        let expectations = sequencer.expectations
        guard !expectations.isEmpty, connection != nil else { return nil }
        lastRecoveryRequest = now
        var after: [String: [String: UInt64]] = [:]
        for (key, next) in expectations { after[key.publisher.description, default: [:]][key.topic.name] = next }
        return HistoryRequest(topics: topics, limit: nil, after: after)
    }
}
