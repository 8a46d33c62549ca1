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

/// Settings of a ``Subscriber``.
public struct SubscriberConfiguration: Sendable {
    /// Bytes the leader may send ahead of this subscriber's acknowledgements: at 1 GB/s a millisecond of
    /// traffic, far more than a loopback round trip, so the window never slows a subscriber that keeps up.
    public static let defaultWindow = 1 << 20
    /// Bytes of delivered messages waiting for the application at most; past it the subscriber stops taking
    /// messages, and the leader, then the publishers, slow down.
    public static let defaultBufferBytes = 16 << 20

    /// The ZooKeeper ensemble and session timeout.
    public var zookeeper: ZooKeeperConfiguration
    /// CurveZMQ: this process's key pair and the brokers' public key; `nil` runs in clear.
    public var security: CurveSecurity?
    /// The cluster.
    public var layout: ClusterLayout
    /// ZMTP heartbeat interval: a dead broker or publisher connection is noticed after three silent ones.
    public var heartbeatInterval: Duration = .seconds(1)
    /// Direct mode: how often the leader is asked for the publishers of the subscribed topics.
    public var discoveryInterval: Duration = .milliseconds(500)
    /// Broker mode: how many of the last messages of each topic to receive before live ones (0: none).
    public var history: Int = 0
    /// How long a gap in a publisher's numbering may wait to be filled before its messages count as lost.
    public var gapTimeout: Duration = Sequencer.defaultGapTimeout
    /// Broker mode: bytes the leader may send ahead of acknowledgements (`--window`).
    public var window: Int = SubscriberConfiguration.defaultWindow
    /// Bytes of delivered messages waiting for the application at most (`--buffer-bytes`).
    public var bufferBytes: Int = SubscriberConfiguration.defaultBufferBytes
    /// Bytes of out-of-order messages held for reordering at most (`--reorder-bytes`).
    public var reorderBytes: Int = Sequencer.defaultHeldBytes
    /// The largest message accepted from a leader or publisher, in bytes (`--max-message-size`).
    public var maximumMessageSize: Int = BrokerConfiguration.defaultMaximumMessageSize
    /// How long the socket thread checks for messages without sleeping before it waits (`--busy-poll-us`; zero:
    /// it sleeps at once). Messages that come closer together than this skip a thread wake-up each, which
    /// lowers latency when a core is free for the spinning thread and raises it when the cores are all busy
    /// (BENCHMARKS.md, Busy-poll). At most ``maximumBusyPoll``.
    public var busyPoll: Duration = .zero
    /// The longest ``busyPoll``: past it a spin keeps a core busy far longer than a wake-up costs.
    public static let maximumBusyPoll: Duration = .milliseconds(10)

    /// Creates a configuration.
    /// - Parameters:
    ///   - zookeeper: the ZooKeeper ensemble.
    ///   - layout: the cluster.
    public init(zookeeper: ZooKeeperConfiguration, layout: ClusterLayout) {
        self.zookeeper = zookeeper
        self.layout = layout
    }
}

/// Receives the messages of some topics, following the cluster's leader through ZooKeeper.
///
/// Run it (``run()``, or in a `ServiceGroup`) and iterate ``batches`` or ``messages`` at the same time. In
/// broker mode it attaches to the leader broker; in direct mode it asks the leader for the publishers of its
/// topics and connects straight to them, keeping those connections through leader changes.
///
/// ## One thread, batches
/// A socket thread receives, decodes and orders messages and hands them to the application in batches: one
/// wake-up per batch, not per message. It acknowledges what it handed on, and the leader sends no more than a
/// window ahead, so a slow application slows the leader and, through it, the publishers: nothing is dropped
/// for speed. The batches waiting for the application are bounded in bytes
/// (``SubscriberConfiguration/bufferBytes``).
///
/// ## Exactly once, in order
/// Every message passes a ``Sequencer``: the application gets each publisher's messages on a topic once and
/// in order. After a failover the subscriber tells the new leader what it is owed per publisher, and the
/// leader sends its log from there; a gap that stays open asks again. What is still missing when a gap times
/// out is counted as lost (``statistics``), never silent.
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
    /// What it receives: topics by name, and patterns (``TopicFilter``).
    public let filters: Set<TopicFilter>
    private let orderedFilters: [TopicFilter]
    private let logger: Logger
    private let context: ZMQContext
    private let wake: WakeSignal
    private let queue: DeliveryQueue
    private let shared = Mutex(Shared())
    private let warnedAboutDirectHistory = Atomic(false)

    /// What the socket thread and the rest share.
    struct Shared {
        var commands: [Command] = []
        var stopping = false
        var leaders: [String: String] = [:]
        var publishers: [String] = []
        var malformed: UInt64 = 0
        var statistics = Sequencer.Statistics()
        var historyNotice: String?
    }

    enum Command {
        /// The leaders of the groups, by group, and every group with brokers (some may be electing a leader).
        case follow([String: LeaderRecord], groups: Set<String>)
    }

    /// Creates a subscriber of some topics; it connects when ``run()`` starts.
    /// - Parameters:
    ///   - configuration: the subscriber's settings.
    ///   - topics: the topics to receive; at least one.
    ///   - logger: where it logs its steps.
    public convenience init(configuration: SubscriberConfiguration, topics: [Topic], logger: Logger) throws {
        try self.init(configuration: configuration, filters: topics.map(TopicFilter.init), logger: logger)
    }

    /// Creates a subscriber of topics and patterns; it connects when ``run()`` starts.
    ///
    /// A pattern's topics arrive as their publishers start, those made after the subscriber too; in broker mode
    /// with history, each matching topic's history comes first.
    /// - Parameters:
    ///   - configuration: the subscriber's settings.
    ///   - filters: topic names and patterns (`sensors/+/temp`, `sensors/#`); at least one.
    ///   - logger: where it logs its steps.
    public init(configuration: SubscriberConfiguration, filters: [TopicFilter], logger: Logger) throws {
        guard !filters.isEmpty else { throw HeraldConfigurationError("a subscriber needs at least one --topic") }
        guard configuration.history >= 0 else {
            throw HeraldConfigurationError("history must not be negative, got \(configuration.history)")
        }
        guard configuration.window >= 64 * 1024 else {
            throw HeraldConfigurationError("the window must be at least 65536 bytes, got \(configuration.window)")
        }
        guard configuration.busyPoll >= .zero, configuration.busyPoll <= SubscriberConfiguration.maximumBusyPoll else {
            throw HeraldConfigurationError(
                "busy-poll must be between 0 (off) and \(SubscriberConfiguration.maximumBusyPoll), got \(configuration.busyPoll)")
        }
        self.configuration = configuration
        self.filters = Set(filters)
        self.orderedFilters = Array(Set(filters)).sorted { $0.text < $1.text }
        self.logger = logger
        self.context = try ZMQContext()
        let wake = try WakeSignal()
        self.wake = wake
        self.queue = DeliveryQueue(limit: configuration.bufferBytes) { wake.raise() }
    }

    /// A leader this subscriber is attached to, if any: the default group's, or the first by group name.
    public var attachedLeader: String? {
        shared.withLock { $0.leaders[ClusterLayout.defaultGroup] ?? $0.leaders.sorted { $0.key < $1.key }.first?.value }
    }

    /// The leaders this subscriber is attached to, by group.
    public var attachedLeaders: [String: String] { shared.withLock { $0.leaders } }

    /// Direct mode: the endpoints of the publishers it is connected to.
    public var connectedPublishers: [String] { shared.withLock { $0.publishers } }

    /// Messages dropped because they were malformed or of a topic not asked for.
    public var malformedCount: UInt64 { shared.withLock { $0.malformed } }

    /// Delivered, lost, duplicate and reordered messages so far.
    public var statistics: Sequencer.Statistics { shared.withLock { $0.statistics } }

    /// Why requested history could not be served in full, if it could not (for example, publishers offer less).
    public var historyNotice: String? { shared.withLock { $0.historyNotice } }

    /// The messages in batches, each publisher's messages on a topic once and in order; ends when the
    /// subscriber stops. One consumer at a time, of this or of ``messages``.
    public var batches: Batches { Batches(queue: queue) }

    /// The messages one at a time: ``batches`` flattened. One consumer at a time, of this or of ``batches``.
    public var messages: Messages { Messages(queue: queue) }

    /// Follows the leader and delivers messages until cancelled or shut down gracefully; then ends ``batches``.
    public func run() async throws {
        let watcher = ClusterWatcher(zookeeper: configuration.zookeeper, layout: configuration.layout, logger: logger)
        let done = Completion()
        // Before the thread starts: should it not, ``batches`` must still end.
        defer { queue.finish() }
        try OSThread.start(name: "herald-subscriber") { [self] in
            SubscriberLoop(subscriber: self).run()
            done.complete()
        }
        do {
            try await cancelWhenGracefulShutdown {
                try await watcher.run { view in self.follow(view) }
            }
        } catch {
            await stopThread(done)
            throw error
        }
        await stopThread(done)
        logger.info("subscriber stopped")
    }

    private func stopThread(_ done: Completion) async {
        shared.withLock { $0.stopping = true }
        wake.raise()
        await done.wait()
        context.terminate()
    }

    /// Hands the socket thread the leaders to attach to: every group's, since each leader sends only the topics
    /// routed to its group, and a topic that moves between groups must be received from both for a while.
    private func follow(_ view: ClusterView) {
        var leaders: [String: LeaderRecord] = [:]
        for (group, record) in view.leaders {
            guard let record else { continue }
            if let refusal = record.refusal(by: configuration.security, role: "subscriber") {
                logger.error("\(refusal)", metadata: ["leader": "\(record.broker)"])
                continue
            }
            if record.mode == .direct, configuration.history > 0, !warnedAboutDirectHistory.exchange(true, ordering: .relaxed) {
                logger.warning("history is kept by brokers, and this cluster runs in direct mode: --history is ignored")
            }
            leaders[group] = record
        }
        let groups = Set(view.leaders.keys)
        shared.withLock { $0.commands.append(.follow(leaders, groups: groups)) }
        wake.raise()
    }

    // MARK: Sequences

    /// The batches of a subscriber.
    public struct Batches: AsyncSequence, Sendable {
        public typealias Element = MessageBatch
        public typealias Failure = Never
        let queue: DeliveryQueue

        /// Creates an iterator.
        public func makeAsyncIterator() -> Iterator { Iterator(queue: queue) }

        /// Iterates the batches.
        public struct Iterator: AsyncIteratorProtocol {
            let queue: DeliveryQueue
            /// The batch returned last: once the application is done with it, the subscriber fills it again.
            var last: MessageBatch?
            /// The next batch, or `nil` once the subscriber stopped or the task is cancelled.
            public mutating func next() async -> MessageBatch? {
                last = await queue.next(recycling: last.take())
                return last
            }
        }
    }

    /// The messages of a subscriber, one at a time.
    public struct Messages: AsyncSequence, Sendable {
        public typealias Element = ReceivedMessage
        public typealias Failure = Never
        let queue: DeliveryQueue

        /// Creates an iterator.
        public func makeAsyncIterator() -> Iterator { Iterator(queue: queue) }

        /// Iterates the messages.
        public struct Iterator: AsyncIteratorProtocol {
            let queue: DeliveryQueue
            var batch: MessageBatch?
            var index = 0

            /// The next message, or `nil` once the subscriber stopped or the task is cancelled.
            public mutating func next() async -> ReceivedMessage? {
                while true {
                    if let batch, index < batch.endIndex {
                        defer { index += 1 }
                        return batch[index]
                    }
                    guard let next = await queue.next(recycling: batch.take()) else { return nil }
                    batch = next
                    index = 0
                }
            }
        }
    }

    // MARK: For the socket thread

    fileprivate var loopParts: (
        configuration: SubscriberConfiguration, filters: [TopicFilter], logger: Logger, context: ZMQContext,
        wake: WakeSignal, queue: DeliveryQueue
    ) { (configuration, orderedFilters, logger, context, wake, queue) }

    fileprivate func withShared<R>(_ body: (inout Shared) -> R) -> R { shared.withLock { body(&$0) } }
}

// MARK: - The socket thread

/// Everything the subscriber's socket thread owns: its sockets, the sequencer and the batch being filled.
/// Not `Sendable`: made and used on that thread only.
private final class SubscriberLoop {
    let subscriber: Subscriber
    let configuration: SubscriberConfiguration
    let filters: [TopicFilter]
    let wanted: TopicFilterSet
    let logger: Logger
    let context: ZMQContext
    let wake: WakeSignal
    let queue: DeliveryQueue
    var core: SubscriberCore
    var batch: MessageBatch
    var frame = ZMQFrame()

    /// The connection to each group's leader, by group.
    var connections: [String: LeaderConnection] = [:]
    /// Direct mode: the socket connected to the publishers.
    var directSocket: ZMQSocket?
    /// Direct mode: publishers connected to, by endpoint, the group whose leader named each, and when each
    /// started.
    var publishers: [String: PublisherID] = [:]
    var publisherGroups: [String: String] = [:]
    /// Direct mode with several groups: publishers missing from their group's list, and since when.
    var departing: [String: ContinuousClock.Instant] = [:]
    var publisherStarts: [PublisherID: UInt64] = [:]
    /// CurveZMQ: the key each publisher endpoint was connected with; a publisher restarted on the same endpoint
    /// with another key is connected to again.
    var publisherKeys: [String: String] = [:]
    /// Direct mode: the strengths of contending publishers seen in registrations, for working out owners while
    /// a fresh leader does not report them yet.
    var strengths: [PublisherID: Int] = [:]
    /// Endpoints already reported as registered without a key, so that each is reported once.
    var unkeyedEndpoints: Set<String> = []
    /// The owners of exclusive topics each group's leader reported; a topic is served by one group.
    var groupOwners: [String: [String: PublisherID]] = [:]

    /// When this subscriber first subscribed (wall clock, and monotonic), and the groups attached to since.
    var subscribedSince: UInt64?
    var firstAttachment: ContinuousClock.Instant?
    var attachedGroups: Set<String> = []
    var lastRecovery: ContinuousClock.Instant?
    var nextTick = ContinuousClock.now
    var paused = false
    var malformed: UInt64 = 0
    var reportedTooManyTopics = false
    var reported = Sequencer.Statistics()
    var lastLatencySample = ContinuousClock.now
    let receivedCounters = TopicCounters(label: Instruments.received)
    /// Messages of each topic (by number) in the batch being recorded: kept, so that recording allocates nothing.
    var topicCounts: [Int] = []
    let latencyTimer = CoreMetrics.Timer(label: Instruments.latency)

    /// How often gaps, acknowledgements and discovery are looked at.
    static let tickInterval: Duration = .milliseconds(100)
    /// How long a gap may stay open before the leader is asked to send again, and how often.
    static let recoveryInterval: Duration = .milliseconds(250)
    /// Acknowledgements also keep the subscription alive at the leader.
    static let keepAliveInterval: Duration = .seconds(1)
    /// Groups found this soon after the first attachment are asked for history; a group that appears later
    /// is asked for everything since the subscriber subscribed, since its topics moved there from another.
    static let startupAttachments: Duration = .seconds(2)
    /// Direct mode with several groups: how long a publisher missing from its group's list is kept connected,
    /// in case its topic moved to another group, whose leader names it at the next lookup.
    static let moveGrace: Duration = .seconds(1)
    /// Messages taken from the socket before the batch is handed on.
    static let batchLimit = 4096
    static let batchBytes = 1 << 20

    init(subscriber: Subscriber) {
        self.subscriber = subscriber
        (configuration, filters, logger, context, wake, queue) = subscriber.loopParts
        wanted = TopicFilterSet(filters)
        core = SubscriberCore(
            filters: filters, sequencer: Sequencer(gapTimeout: configuration.gapTimeout, heldBytes: configuration.reorderBytes))
        batch = MessageBatch(topics: core.topics)
    }

    func run() {
        var poller = ZMQPoller()
        var wakeEntry = poller.register(fileDescriptor: wake.fileDescriptor, for: .readable)
        var entries: [PollEntry] = []
        while true {
            let (commands, stopping) = subscriber.withShared { shared in
                defer { shared.commands = [] }
                return (shared.commands, shared.stopping)
            }
            if stopping { break }
            for command in commands {
                switch command {
                case .follow(let leaders, let groups): follow(leaders, groups: groups)
                }
            }
            let now = ContinuousClock.now
            if now >= nextTick {
                nextTick = now + Self.tickInterval
                tick(now: now)
            }
            handOn()

            // Made again only when a socket came or went: checking allocates nothing, as this runs once per
            // wake-up, which at a paced rate is once per message.
            if !polls(entries) {
                poller = ZMQPoller()
                wakeEntry = poller.register(fileDescriptor: wake.fileDescriptor, for: .readable)
                entries = []
                _ = forEachSocketToPoll { socket, connection, lookups in
                    entries.append(
                        PollEntry(
                            entry: poller.register(socket, for: .readable), socket: socket, connection: connection,
                            lookups: lookups))
                    return true
                }
                // Served group by group, the direct-mode publishers' socket first.
                entries.sort { ($0.connection?.group ?? "") < ($1.connection?.group ?? "") }
            }
            // A full queue: stop reading, so the leaders' windows (broker mode) or libzmq's queue (direct mode)
            // hold the rest.
            paused = !queue.hasRoom
            for entry in entries where !entry.lookups { poller.update(entry.entry, events: paused ? [] : .readable) }
            let timeout = max(.zero, min(nextTick - ContinuousClock.now, Self.tickInterval))
            do {
                try poller.poll(timeout: timeout, spinningUpTo: paused ? .zero : configuration.busyPoll)
            } catch where error.kind == .interrupted {
                continue
            } catch {
                break
            }
            if poller.readyEvents(wakeEntry).contains(.readable) { wake.reset() }
            for entry in entries where poller.readyEvents(entry.entry).contains(.readable) {
                if entry.lookups, let connection = entry.connection {
                    receiveLookups(on: connection)
                } else {
                    receive(from: entry.socket, on: entry.connection)
                }
            }
            handOn()
        }
        handOn()
        for connection in connections.values {
            if let dealer = connection.dealer { sendConsumed(on: connection, dealer) }
            connection.close()
        }
        directSocket?.close()
        subscriber.withShared { $0.leaders = [:] }
    }

    /// A socket the loop polls, and what it belongs to.
    struct PollEntry {
        let entry: Int
        let socket: ZMQSocket
        /// The leader connection it belongs to; `nil` for the direct-mode publishers' socket.
        var connection: LeaderConnection? = nil
        /// Whether it is a direct-mode leader's discovery socket.
        var lookups = false
    }

    /// Calls `body` with each socket to poll (the direct-mode publishers' socket, then each leader connection's),
    /// its connection and whether it is a discovery socket, until `body` returns false. Allocates nothing.
    /// - Returns: whether `body` saw every socket.
    private func forEachSocketToPoll(_ body: (ZMQSocket, LeaderConnection?, _ lookups: Bool) -> Bool) -> Bool {
        if let directSocket, !body(directSocket, nil, false) { return false }
        for connection in connections.values {
            if let dealer = connection.dealer, !body(dealer, connection, false) { return false }
            if let lookups = connection.lookups, !body(lookups, connection, true) { return false }
        }
        return true
    }

    /// Whether `entries` are exactly the sockets to poll now.
    private func polls(_ entries: [PollEntry]) -> Bool {
        var expected = 0
        let all = forEachSocketToPoll { socket, connection, lookups in
            expected += 1
            return entries.contains { $0.socket === socket && $0.connection === connection && $0.lookups == lookups }
        }
        return all && entries.count == expected
    }

    // MARK: Attachment

    /// Attaches to each group's leader, leaving those that are gone or replaced. A group electing a new leader
    /// keeps the owners it reported; one with no brokers left no longer has any.
    private func follow(_ leaders: [String: LeaderRecord], groups: Set<String>) {
        if groupOwners.keys.contains(where: { !groups.contains($0) }) {
            groupOwners = groupOwners.filter { groups.contains($0.key) }
            applyGroupOwners()
        }
        for (group, connection) in connections where leaders[group] != connection.record {
            detach(connection)
        }
        for (group, record) in leaders.sorted(by: { $0.key < $1.key }) where connections[group] == nil {
            attach(record, group: group)
        }
        let attached = connections.mapValues(\.record.broker)
        subscriber.withShared { $0.leaders = attached }
    }

    private func attach(_ record: LeaderRecord, group: String) {
        let connection = LeaderConnection(group: group, record: record)
        let now = ContinuousClock.now
        if firstAttachment == nil { firstAttachment = now }
        // History at start; a group that appears later holds topics that moved there: everything since then.
        let first = !attachedGroups.contains(group) && now - firstAttachment! < Self.startupAttachments
        attachedGroups.insert(group)
        switch record.mode {
        case .broker:
            do {
                connection.dealer = try leaderSocket(to: record.subscriberEndpoint, of: connection) { socket in
                    try configure(socket, mode: .broker)
                }
            } catch {
                logger.error("cannot connect to leader", metadata: ["leader": "\(record)", "error": "\(error)"])
                return
            }
            connections[group] = connection
            subscribe(filters.map(\.text), on: connection, first: first)
            if subscribedSince == nil { subscribedSince = WallClock.nanosecondsSinceEpoch() }
            logger.info(
                "attached to leader",
                metadata: [
                    "leader": "\(record.broker)", "group": "\(group)", "epoch": "\(record.epoch)",
                    "endpoint": "\(record.subscriberEndpoint)",
                ])
        case .direct:
            if subscribedSince == nil { subscribedSince = WallClock.nanosecondsSinceEpoch() }
            do {
                if directSocket == nil {
                    let socket = try ZMQSocket(context: context, type: .sub)
                    try configure(socket, mode: .direct)
                    for filter in filters { try socket.set(.subscribe(filter.subscriptionPrefix)) }
                    directSocket = socket
                }
                connection.lookups = try leaderSocket(to: record.requestEndpoint, of: connection) { socket in
                    try socket.setHeartbeats(every: configuration.heartbeatInterval)
                    try socket.set(.maximumMessageSize(WireFormat.maximumControlBody + 2))
                }
            } catch {
                logger.error("cannot reach leader", metadata: ["leader": "\(record)", "error": "\(error)"])
                return
            }
            connections[group] = connection
            logger.info(
                "using leader for discovery",
                metadata: ["leader": "\(record.broker)", "group": "\(group)", "epoch": "\(record.epoch)"])
        }
    }

    /// Bytes a direct-mode publisher connection may have queued towards this subscriber: with the message size
    /// limit it sets libzmq's count limit, so a publisher cannot fill the subscriber's memory.
    static let directQueueBytes = 64 << 20

    /// A DEALER to one of a leader's endpoints: set up by `prepare`, never lingering, under CURVE when the cluster
    /// uses it (with the handshake watched), connected.
    private func leaderSocket(
        to endpoint: String, of connection: LeaderConnection, prepare: (ZMQSocket) throws -> Void
    ) throws -> ZMQSocket {
        let socket = try ZMQSocket(context: context, type: .dealer)
        try prepare(socket)
        try socket.set(.linger(.zero))
        if let security = configuration.security, let key = connection.record.curveKey {
            try security.configureClient(socket, serverKey: key)
        }
        try socket.connect(endpoint)
        if configuration.security != nil { connection.handshakes.watch(socket) }
        return socket
    }

    private func configure(_ socket: ZMQSocket, mode: DisseminationMode) throws {
        try socket.setHeartbeats(every: configuration.heartbeatInterval)
        try socket.set(.maximumMessageSize(configuration.maximumMessageSize))
        let queue: Int
        switch mode {
        case .broker:
            // The leader sends at most a window ahead; the queue must hold a window of the smallest messages, or
            // the leader would find it full.
            queue = 2 * configuration.window / (WireFormat.dataOverhead + 1)
        case .direct:
            // Nothing paces a publisher: the queue is bounded in bytes (lower the message size limit for more
            // messages of a smaller size).
            queue = Self.directQueueBytes / configuration.maximumMessageSize
        }
        try socket.set(.receiveHighWaterMark(Int32(clamping: max(16, queue))))
    }

    private func detach(_ connection: LeaderConnection) {
        if let dealer = connection.dealer { sendConsumed(on: connection, dealer) }
        connection.close()
        connections[connection.group] = nil
        logger.info("left leader", metadata: ["leader": "\(connection.record.broker)", "group": "\(connection.group)"])
    }

    /// Sends a subscription: the first one asks for history, later ones say what is owed per publisher, so
    /// the leader sends its log from there.
    /// - Parameters:
    ///   - names: filters, or the names of topics with gaps.
    ///   - resumed: the numbers of the topics whose streams to resume; `nil` for all.
    private func subscribe(
        _ names: [String], resuming resumed: Set<Int>? = nil, on connection: LeaderConnection, first: Bool
    ) {
        guard let dealer = connection.dealer else { return }
        let resume = first ? nil : core.owed(onTopics: resumed)
        let request = SubscribeRequest(
            topics: names, window: configuration.window,
            history: first && configuration.history > 0 ? configuration.history : nil,
            resume: resume, since: first ? nil : subscribedSince, batchBytes: configuration.maximumMessageSize,
            skipNotices: true)
        request.encodedWithinLimit().withUnsafeBytes { _ = try? dealer.send(bytes: $0, dontWait: true) }
    }

    // MARK: Receiving

    private func receive(from socket: ZMQSocket, on connection: LeaderConnection?) {
        let now = ContinuousClock.now
        for _ in 0..<Self.batchLimit {
            guard let more = try? socket.receive(into: &frame, dontWait: true) else { break }
            if more {
                socket.discardRemainingFrames()
                malformed += 1
                continue
            }
            // Each frame is stamped as it is taken, not once per wake-up: a frame that arrives while the ones
            // before it are handled would otherwise carry the earlier time, and could read as received before
            // it was sent (measured: latencies down to -316 µs at 16 KiB and 10,000 msg/s). One vDSO call a frame.
            handle(now: now, receivedAt: WallClock.nanosecondsSinceEpoch(), on: connection)
            if batch.footprint >= Self.batchBytes { break }
        }
        if let connection, let dealer = connection.dealer,
            connection.consumed - connection.acknowledged >= UInt64(configuration.window / 4)
        {
            sendConsumed(on: connection, dealer)
        }
    }

    /// Handles the frame just received, from a leader's connection or (`nil`) from the direct-mode publishers.
    private func handle(now: ContinuousClock.Instant, receivedAt: UInt64, on connection: LeaderConnection?) {
        let size = frame.count
        switch frame.withUnsafeBytes({ WireFormat.kind(of: $0) }) {
        case .success(.data), .success(.batch):
            connection?.consumed += UInt64(size)
            let direct = connection == nil
            let since = subscribedSince ?? .max
            let starts = publisherStarts
            var sink = BatchSink(loop: self)
            let outcome = frame.withUnsafeBytes { bytes in
                core.acceptFrame(
                    bytes, receivedAt: receivedAt, now: now,
                    lostBeforeFirst: { direct && (starts[$0].map { $0 > since } ?? false) }, into: &sink)
            }
            switch outcome {
            case .accepted, .notSubscribed, .notOwner: break
            case .malformed: malformed += 1
            case .tooManyTopics:
                malformed += 1
                if !reportedTooManyTopics {
                    reportedTooManyTopics = true
                    logger.warning(
                        "patterns match more than \(SubscriberCore.maximumTopics) topics; messages of further topics are dropped: subscribe to narrower patterns"
                    )
                }
            }
        case .success(.owners):
            guard let connection,
                case .success(let report) = frame.withUnsafeBytes({ ControlFrame.decode(OwnershipReport.self, from: $0) })
            else {
                malformed += 1
                return
            }
            applyOwners(report.owners, from: connection.group)
        case .success(.skipped) where connection != nil:
            guard case .success(let notice) = frame.withUnsafeBytes({ ControlFrame.decode(SkippedNotice.self, from: $0) })
            else {
                malformed += 1
                return
            }
            core.acceptSkipped(notice, now: now)
        case .success(.subscribed) where connection != nil:
            if case .success(let reply) = frame.withUnsafeBytes({ ControlFrame.decode(SubscribeReply.self, from: $0) }) {
                noteHistory(reply)
            }
        case .success(.refused):
            guard let connection,
                case .success(let refusal) = frame.withUnsafeBytes({ ControlFrame.decode(Refusal.self, from: $0) })
            else {
                malformed += 1
                return
            }
            if refusal.reason == .notSubscribed {
                // The leader dropped this subscription (after a pause, or the connection was made again): subscribe
                // again from what is owed. Its window counts from zero, so the acknowledgements do too.
                logger.info("the leader no longer knows this subscription; subscribing again")
                connection.consumed = 0
                connection.acknowledged = 0
                subscribe(filters.map(\.text), on: connection, first: false)
            } else {
                logger.warning("the leader refused the subscription: \(refusal.detail)")
            }
        default:
            malformed += 1
        }
    }

    private func receiveLookups(on connection: LeaderConnection) {
        guard let socket = connection.lookups else { return }
        for _ in 0..<64 {
            guard let more = try? socket.receive(into: &frame, dontWait: true) else { return }
            if more { socket.discardRemainingFrames() }
            guard case .success(.lookup) = frame.withUnsafeBytes({ WireFormat.kind(of: $0) }),
                case .success(let reply) = frame.withUnsafeBytes({ ControlFrame.decode(DiscoveryReply.self, from: $0) })
            else {
                malformed += 1
                continue
            }
            apply(reply, from: connection.group)
        }
    }

    /// Direct mode: connects to new publishers and drops departed ones. Connections made stay up when the
    /// leader changes.
    private func apply(_ reply: DiscoveryReply, from group: String) {
        guard let socket = directSocket else { return }
        if let owners = reply.owners {
            applyOwners(owners, from: group)
        } else {
            applyProvisionalOwners(from: reply.publishers)
        }
        var wanted: [String: PublisherRegistration] = [:]
        for registration in reply.publishers where !registration.endpoint.isEmpty {
            wanted[registration.endpoint] = wanted[registration.endpoint] ?? registration
        }
        // A publisher whose topic moved to this group is the same connection: it changes hands, not sockets.
        for endpoint in wanted.keys where publishers[endpoint] != nil {
            publisherGroups[endpoint] = group
            departing[endpoint] = nil
        }
        if configuration.security != nil {
            for (endpoint, registration) in wanted
            where publishers[endpoint] != nil && publisherKeys[endpoint] != registration.curveKey {
                try? socket.disconnect(endpoint)
                publishers[endpoint] = nil
                publisherKeys[endpoint] = nil
            }
        }
        for (endpoint, registration) in wanted where publishers[endpoint] == nil {
            do {
                if let security = configuration.security {
                    // The leader vouches for the key: it accepts a registration only from a connection that
                    // authenticated with the key it names.
                    guard let key = registration.curveKey, ZMQCurveKeyPair.isValidKey(key) else {
                        if unkeyedEndpoints.count < 1024, unkeyedEndpoints.insert(endpoint).inserted {
                            logger.warning(
                                "publisher registered without a CURVE key; not connecting",
                                metadata: ["publisher": "\(registration.publisher.short)", "endpoint": "\(endpoint)"])
                        }
                        continue
                    }
                    try security.configureClient(socket, serverKey: key)
                    publisherKeys[endpoint] = key
                }
                try socket.connect(endpoint)
                publishers[endpoint] = registration.publisher
                publisherGroups[endpoint] = group
                if let started = registration.startedAt { publisherStarts[registration.publisher] = started }
                logger.info(
                    "connected to publisher",
                    metadata: ["publisher": "\(registration.publisher.short)", "endpoint": "\(endpoint)"])
            } catch {
                logger.warning("cannot connect to publisher", metadata: ["endpoint": "\(endpoint)", "error": "\(error)"])
            }
        }
        // A fresh leader may not have heard every publisher yet: only a complete list removes any, and only of
        // those its group named. With several groups, one that left this group's list may be moving to another:
        // it is kept until another group names it or the move grace passes.
        if reply.complete {
            let now = ContinuousClock.now
            for (endpoint, publisher) in publishers where wanted[endpoint] == nil && publisherGroups[endpoint] == group {
                if connections.count > 1 {
                    let since = departing[endpoint] ?? now
                    departing[endpoint] = since
                    guard now - since >= Self.moveGrace else { continue }
                }
                departing[endpoint] = nil
                try? socket.disconnect(endpoint)
                publishers[endpoint] = nil
                publisherGroups[endpoint] = nil
                publisherKeys[endpoint] = nil
                publisherStarts[publisher] = nil
                logger.info("publisher departed", metadata: ["publisher": "\(publisher.short)", "endpoint": "\(endpoint)"])
            }
        }
        let endpoints = publishers.keys.sorted()
        subscriber.withShared { $0.publishers = endpoints }
    }

    /// Takes a group leader's owners of exclusive topics, logging each change. A topic is served by one group,
    /// so the groups' reports add up.
    private func applyOwners(_ owners: [String: PublisherID], from group: String) {
        // Kept only for topics this subscriber asks for, and bounded in all: a report comes from the network.
        let kept = owners.filter { wanted.matches($0.key) }.prefix(OwnershipTable.maximumReportEntries)
        groupOwners[group] = Dictionary(uniqueKeysWithValues: kept.map { ($0.key, $0.value) })
        applyGroupOwners()
    }

    /// Hands the core the owners all groups reported.
    private func applyGroupOwners() {
        var merged: [String: PublisherID] = [:]
        for (_, reported) in groupOwners.sorted(by: { $0.key < $1.key }) where merged.count < SubscriberCore.maximumTopics {
            merged.merge(reported) { first, _ in first }
        }
        core.applyOwners(merged).prefix(16).forEach(logOwnerChange)
    }

    private func logOwnerChange(_ change: (topic: String, owner: PublisherID?)) {
        logger.info(
            "topic owner changed",
            metadata: ["topic": "\(change.topic)", "owner": "\(change.owner.map { "\($0.short)" } ?? "none: shared")"])
    }

    /// Direct mode, while a fresh leader does not report owners: the strongest contender each registration
    /// names takes a topic from a weaker one, so that a subscriber with no view yet does not deliver them all.
    private func applyProvisionalOwners(from registrations: [PublisherRegistration]) {
        var owners = core.ownersByName
        var changed = false
        for registration in registrations {
            guard let strength = registration.strength else { continue }
            if strengths.count >= SubscriberCore.maximumTopics { strengths.removeAll() }
            strengths[registration.publisher] = strength
            for topic in registration.topics where owners[topic] != registration.publisher {
                if let current = owners[topic] {
                    // An owner the leader named, or a stronger contender, stays.
                    guard let held = strengths[current],
                        OwnershipTable.outranks(registration.publisher, strength, (current, held))
                    else { continue }
                }
                owners[topic] = registration.publisher
                changed = true
            }
        }
        if changed { core.applyOwners(owners).forEach(logOwnerChange) }
    }

    // MARK: Time-driven work

    private func tick(now: ContinuousClock.Instant) {
        for connection in Array(connections.values) {
            if let security = configuration.security,
                connection.handshakes.shouldReconnect(
                    now: now, publicKey: security.keyPair.publicKey, leader: connection.record.broker, logger: logger)
            {
                detach(connection)
                attach(connection.record, group: connection.group)
            }
        }
        var sink = BatchSink(loop: self)
        core.sequencer.expireGaps(now: now, into: &sink)
        core.sequencer.forgetSilentStreams(now: now)
        let gaps = core.sequencer.topicsWithGaps(olderThan: Self.recoveryInterval, now: now)
        let recover = !gaps.isEmpty && (lastRecovery.map { now - $0 >= Self.recoveryInterval } ?? true)
        if recover { lastRecovery = now }
        for connection in connections.values {
            if let dealer = connection.dealer {
                if now - connection.lastAcknowledgement >= Self.keepAliveInterval { sendConsumed(on: connection, dealer) }
                // Whichever group's leader holds the missing messages sends them again.
                if recover { subscribe(gaps.sorted().map { core.topics[$0].name }, resuming: gaps, on: connection, first: false) }
            }
            if let lookups = connection.lookups, now >= connection.nextLookup {
                connection.nextLookup = now + configuration.discoveryInterval
                let query = ControlFrame.encode(.lookup, DiscoveryQuery(topics: filters.map(\.text)))
                query.withUnsafeBytes { _ = try? lookups.send(bytes: $0, dontWait: true) }
            }
        }
    }

    private func sendConsumed(on connection: LeaderConnection, _ dealer: ZMQSocket) {
        if var frame = ControlFrame.countFrame(.consumed, connection.consumed) { try? dealer.send(&frame, dontWait: true) }
        connection.acknowledged = connection.consumed
        connection.lastAcknowledgement = .now
    }

    // MARK: Handing on

    /// Hands the filled batch to the application and publishes the counts: once per batch.
    private func handOn() {
        guard !batch.isEmpty || core.sequencer.statistics != reported || malformed > 0 else { return }
        var full = batch
        // Topics a pattern matched since the last batch: the batch names its messages' topics by number.
        if full.topics.count != core.topics.count { full.topics = core.topics }
        batch = queue.emptyBatch(following: full)
        record(full)
        queue.push(full)
        let statistics = core.sequencer.statistics
        let newlyMalformed = malformed
        malformed = 0
        subscriber.withShared { shared in
            shared.statistics = statistics
            shared.malformed += newlyMalformed
        }
        if newlyMalformed > 0 { Counter(label: Instruments.malformedReceived).increment(by: Int(newlyMalformed)) }
        if statistics.lost > reported.lost {
            Counter(label: Instruments.lost).increment(by: Int(clamping: statistics.lost - reported.lost))
            logger.warning(
                "messages lost", metadata: ["count": "\(statistics.lost - reported.lost)", "total": "\(statistics.lost)"])
        }
        if statistics.duplicates > reported.duplicates {
            Counter(label: Instruments.duplicated).increment(by: Int(clamping: statistics.duplicates - reported.duplicates))
        }
        if statistics.reordered > reported.reordered {
            Counter(label: Instruments.reordered).increment(by: Int(clamping: statistics.reordered - reported.reordered))
        }
        reported = statistics
    }

    /// Per-topic counts once per batch, and latency samples: every message up to one per millisecond, so the
    /// histogram costs little at any rate.
    private func record(_ batch: MessageBatch) {
        guard !batch.isEmpty else { return }
        if topicCounts.count < batch.topics.count {
            topicCounts.append(contentsOf: repeatElement(0, count: batch.topics.count - topicCounts.count))
        }
        let now = ContinuousClock.now
        let sample = now - lastLatencySample >= .milliseconds(1)
        if sample { lastLatencySample = now }
        for entry in batch.entries { topicCounts[Int(entry.topic)] += 1 }
        if sample, let last = batch.entries.last {
            let latency = ReceivedMessage.nanoseconds(from: last.header.sentAt, to: last.receivedAt)
            // A send time in the future (clocks apart, or a lying sender) is no latency worth recording.
            if latency >= 0 { latencyTimer.recordNanoseconds(latency) }
        }
        for topic in batch.topics.indices where topicCounts[topic] > 0 {
            receivedCounters.increment(batch.topics[topic].name, by: topicCounts[topic])
            topicCounts[topic] = 0
        }
    }

    private func noteHistory(_ reply: SubscribeReply) {
        guard configuration.history > 0 else { return }
        let short = reply.offered.filter { $0.value < configuration.history }.sorted { $0.key < $1.key }
        guard !short.isEmpty else { return }
        let detail = short.map { "'\($0.key)' at most \($0.value)" }.joined(separator: ", ")
        let notice =
            "asked for \(configuration.history) messages of history, but publishers offer \(detail); ask for less, or start publishers with a larger --history"
        logger.warning("\(notice)")
        subscriber.withShared { $0.historyNotice = notice }
    }
}

/// Appends what the sequencer delivers to the loop's batch.
private struct BatchSink: Sequencer.Sink {
    let loop: SubscriberLoop

    mutating func deliver(topic: Int, header: MessageHeader, payload: UnsafeRawBufferPointer, receivedAt: UInt64) {
        loop.batch.append(topic: topic, header: header, payload: payload, receivedAt: receivedAt)
    }
}

/// The subscriber's connection to one group's leader.
private final class LeaderConnection {
    let group: String
    let record: LeaderRecord
    /// Broker mode: carries the subscription, the data and the acknowledgements.
    var dealer: ZMQSocket?
    /// Direct mode: carries lookups.
    var lookups: ZMQSocket?
    /// Broker mode: data bytes received on this connection, and the count last acknowledged.
    var consumed: UInt64 = 0
    var acknowledged: UInt64 = 0
    var lastAcknowledgement = ContinuousClock.now
    var nextLookup = ContinuousClock.now
    /// CurveZMQ: a refused key.
    let handshakes = HandshakeWatch()

    init(group: String, record: LeaderRecord) {
        self.group = group
        self.record = record
    }

    func close() {
        handshakes.close()
        dealer?.close()
        lookups?.close()
        dealer = nil
        lookups = nil
    }
}
