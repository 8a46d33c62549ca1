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
    /// ZMTP heartbeat interval, and the interval of direct-mode registrations with the leader.
    public var heartbeatInterval: Duration = .seconds(1)

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
/// subscribers connect straight to it. ``publish(_:on:)`` waits while no leader is known (broker mode) or the
/// mode is not known yet.
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
    /// The topics announced to the leader in direct mode.
    public let topics: [Topic]
    private let logger: Logger
    private let context: ZMQContext
    private let state = Mutex(State())

    private struct State {
        var mode: DisseminationMode?
        var route: AsyncZMQSocket?
        var directSocket: AsyncZMQSocket?
        var directEndpoint: String?
        var waiters: [CheckedContinuation<Void, Never>] = []
        var sequence: UInt64 = 0
        var leader: String?
        var stopped = false
    }

    /// Creates a publisher; it connects when ``run()`` starts.
    /// - Parameters:
    ///   - configuration: the publisher's settings.
    ///   - topics: the topics it will publish on, announced to the leader in direct mode.
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

    /// Publishes one message.
    /// - Parameters:
    ///   - payload: the message body, at most ``PublisherConfiguration/maximumPayloadSize`` bytes.
    ///   - topic: the topic.
    /// - Returns: the message's sequence number.
    /// - Throws: ``PublishError`` for an oversized payload (nothing is sent), or when the publisher stopped.
    @discardableResult
    public func publish(_ payload: [UInt8], on topic: Topic) async throws -> UInt64 {
        guard payload.count <= configuration.maximumPayloadSize else {
            throw PublishError(
                "payload of \(payload.count) bytes exceeds the maximum of \(configuration.maximumPayloadSize); send smaller messages or raise the limit (--max-payload)"
            )
        }
        while true {
            let ready = try state.withLock { state throws -> (AsyncZMQSocket, ZMQMessage, UInt64)? in
                guard !state.stopped else { throw PublishError("the publisher has stopped; create a new one") }
                let socket = state.mode == .direct ? state.directSocket : state.route
                guard let socket else { return nil }
                state.sequence += 1
                let header = MessageHeader(publisher: id, sequence: state.sequence, sentAt: Clock.nanosecondsSinceEpoch())
                var frames = DataFrames(topic: topic, header: header, payload: payload).frames
                if state.mode == .broker { frames.insert([RequestKind.publish.rawValue], at: 0) }
                return (socket, ZMQMessage(frames: frames), state.sequence)
            }
            if let (socket, message, sequence) = ready {
                do {
                    try await socket.send(message)
                    return sequence
                } catch {
                    // A closed socket means the leader changed while sending; the next route takes it.
                    guard error.kind == .socketClosed else { throw error }
                    continue
                }
            }
            try Task.checkCancellation()
            await waitForRoute()
        }
    }

    /// Suspends until a route to subscribers exists (a leader in broker mode, the own socket in direct mode).
    public func waitUntilAttached() async {
        await waitForRoute()
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
        logger.info("publisher stopped")
    }

    // MARK: Attachment

    private func attach(_ record: LeaderRecord?) async {
        guard let record else { return await Task.sleepUntilCancelled() }
        do {
            let dealer = try AsyncZMQSocket(context: context, type: .dealer, name: "herald-publisher") {
                try $0.set(.heartbeatInterval(self.configuration.heartbeatInterval))
                try $0.set(.heartbeatTimeout(self.configuration.heartbeatInterval * 3))
                try $0.set(.sendHighWaterMark(BrokerConfiguration.defaultHighWaterMark))
                try $0.connect(record.requestEndpoint)
            }
            switch record.mode {
            case .broker:
                setRoute(mode: .broker, route: dealer, leader: record.broker)
                logger.info("attached to leader", metadata: ["leader": "\(record.broker)", "endpoint": "\(record.requestEndpoint)"])
                await Task.sleepUntilCancelled()
                state.withLock {
                    if $0.route === dealer { $0.route = nil }
                    $0.leader = nil
                }
            case .direct:
                let endpoint = try await ensureDirectSocket()
                setRoute(mode: .direct, route: nil, leader: record.broker)
                logger.info(
                    "registering with leader", metadata: ["leader": "\(record.broker)", "endpoint": "\(endpoint)"])
                let registration = PublisherRegistration(publisher: id, endpoint: endpoint, topics: topics.map(\.name))
                let body = Array((try? JSONEncoder.herald.encode(registration)) ?? Data())
                while !Task.isCancelled {
                    try? await dealer.send(ZMQMessage(frames: [[RequestKind.register.rawValue], body]))
                    try? await Task.sleep(for: configuration.heartbeatInterval)
                }
                // A clean stop tells the leader at once; a crash is noticed when the heartbeats stop.
                try? await dealer.send(ZMQMessage(frames: [[RequestKind.unregister.rawValue], body]))
                state.withLock { $0.leader = nil }
            }
            await dealer.close()
        } catch {
            logger.error("cannot attach to leader", metadata: ["leader": "\(record)", "error": "\(error)"])
            await Task.sleepUntilCancelled()
        }
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

    private func setRoute(mode: DisseminationMode, route: AsyncZMQSocket?, leader: String) {
        let waiters = state.withLock { state in
            state.mode = mode
            if let route { state.route = route }
            state.leader = leader
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Suspends until a route exists, the publisher stops, or the task is cancelled.
    private func waitForRoute() async {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let ready = state.withLock { state -> Bool in
                    if state.stopped || Task.isCancelled { return true }
                    if (state.mode == .direct ? state.directSocket : state.route) != nil { return true }
                    state.waiters.append(continuation)
                    return false
                }
                if ready { continuation.resume() }
            }
        } onCancel: {
            // Waking every waiter is simpler than tracking which one was cancelled; the others re-check.
            let waiters = state.withLock { state in
                defer { state.waiters = [] }
                return state.waiters
            }
            for waiter in waiters { waiter.resume() }
        }
    }
}

enum Clock {
    /// Wall-clock time for message timestamps: subscribers on other hosts compare it with their own clock.
    static func nanosecondsSinceEpoch() -> UInt64 {
        var time = timespec()
        clock_gettime(CLOCK_REALTIME, &time)
        return UInt64(time.tv_sec) * 1_000_000_000 + UInt64(time.tv_nsec)
    }
}
