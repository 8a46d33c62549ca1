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
    public var latency: Duration {
        .nanoseconds(Int64(receivedAt) - Int64(header.sentAt))
    }
}

/// Receives the messages of some topics, following the cluster's leader through ZooKeeper.
///
/// Run it (``run()``, or in a `ServiceGroup`) and iterate ``messages`` at the same time. In broker mode it
/// connects to the leader broker; in direct mode it asks the leader for the publishers of its topics and
/// connects straight to them, keeping those connections through leader changes.
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

    private struct State {
        var leader: String?
        /// Direct mode: the publishers connected to, by endpoint.
        var publishers: [String: PublisherID] = [:]
        var malformed: UInt64 = 0
    }

    /// Creates a subscriber; it connects when ``run()`` starts.
    /// - Parameters:
    ///   - configuration: the subscriber's settings.
    ///   - topics: the topics to receive; at least one.
    ///   - logger: where it logs its steps.
    public init(configuration: SubscriberConfiguration, topics: [Topic], logger: Logger) throws {
        guard !topics.isEmpty else { throw HeraldConfigurationError("a subscriber needs at least one --topic") }
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

    /// The received messages of the subscribed topics, in arrival order; ends when the subscriber stops.
    public var messages: some AsyncSequence<ReceivedMessage, Never> & Sendable {
        socket.messages.compactMap { @Sendable [self] message in self.decode(message) }
    }

    private func decode(_ message: ZMQMessage) -> ReceivedMessage? {
        let now = Clock.nanosecondsSinceEpoch()
        guard let data = DataFrames(frames: message.frames[...]), topics.contains(data.topic) else {
            state.withLock { $0.malformed += 1 }
            return nil
        }
        return ReceivedMessage(topic: data.topic, header: data.header, payload: data.payload, receivedAt: now)
    }

    /// Follows the leader until cancelled or shut down gracefully; then ends ``messages``.
    public func run() async throws {
        let follower = LeaderFollower(
            watcher: ClusterWatcher(zookeeper: configuration.zookeeper, layout: configuration.layout, logger: logger),
            logger: logger)
        do {
            try await cancelWhenGracefulShutdown {
                try await follower.run { record in await self.attach(record) }
            }
        } catch {
            await socket.close()
            throw error
        }
        await socket.close()
        logger.info("subscriber stopped")
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
            await Task.sleepUntilCancelled()
            state.withLock { $0.leader = nil }
            _ = try? await socket.withSocket { try $0.disconnect(endpoint) }
        case .direct:
            state.withLock { $0.leader = record.broker }
            logger.info("using leader for discovery", metadata: ["leader": "\(record.broker)"])
            await discover(through: record)
            state.withLock { $0.leader = nil }
        }
    }

    /// Direct mode: asks the leader for publishers until cancelled, connecting to new ones and dropping
    /// departed ones. Connections already made stay up when the leader changes.
    private func discover(through record: LeaderRecord) async {
        let dealer: AsyncZMQSocket
        do {
            dealer = try AsyncZMQSocket(context: context, type: .dealer, name: "herald-discovery") {
                try $0.set(.heartbeatInterval(self.configuration.heartbeatInterval))
                try $0.set(.heartbeatTimeout(self.configuration.heartbeatInterval * 3))
                // Queued lookups are worthless once a fresher one can be sent.
                try $0.set(.sendHighWaterMark(4))
                try $0.connect(record.requestEndpoint)
            }
        } catch {
            logger.error("cannot reach leader for discovery", metadata: ["error": "\(error)"])
            return await Task.sleepUntilCancelled()
        }
        let query = Array((try? JSONEncoder.herald.encode(DiscoveryQuery(topics: topics.map(\.name).sorted()))) ?? Data())
        await withDiscardingTaskGroup { group in
            group.addTask {
                for await reply in dealer.messages {
                    guard reply.frames.count == 2, reply.frames[0] == [RequestKind.lookup.rawValue],
                        let answer = try? JSONDecoder().decode(DiscoveryReply.self, from: Data(reply.frames[1]))
                    else { continue }
                    await self.apply(answer)
                }
            }
            group.addTask {
                while !Task.isCancelled {
                    try? await dealer.send(ZMQMessage(frames: [[RequestKind.lookup.rawValue], query]))
                    try? await Task.sleep(for: self.configuration.discoveryInterval)
                }
                await dealer.close()
            }
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
