import CoreMetrics
import Foundation
import Logging
import Synchronization
import ZeroMQ

/// The leader broker's data plane: one thread that owns the request socket (ROUTER, where publishers send
/// and clients ask) and the subscriber socket (XPUB, where subscribers connect), and forwards between them.
///
/// Both sockets live on the thread for their whole life, as ZeroMQ requires; the thread polls them with a
/// short timeout so that it notices ``stop()`` and expires direct-mode registrations without a wake-up socket.
final class BrokerEngine: Sendable {
    /// Where the engine listens, as actually bound.
    struct Endpoints: Sendable {
        var request: String
        var subscriber: String
    }

    /// How often the thread looks at its stop flag and its registrations when idle.
    static let pollInterval: Duration = .milliseconds(50)
    /// A publisher unheard of for this long is dropped from discovery and status: three missed heartbeats.
    static let registrationTimeToLive: Duration = .seconds(3)
    /// Messages kept per topic whatever publishers offer, so that a subscriber re-attaching after a failover,
    /// or one whose subscription took effect after the first messages, can recover what it missed.
    static let recoveryHistory = 10_000

    let endpoints: Endpoints
    private let stopRequested: Atomic<Bool>
    private let finished: Mutex<(done: Bool, waiters: [CheckedContinuation<Void, Never>])>
    let counters: BrokerCounters

    private init(endpoints: Endpoints, counters: BrokerCounters) {
        self.endpoints = endpoints
        self.stopRequested = Atomic(false)
        self.finished = Mutex((false, []))
        self.counters = counters
    }

    /// Binds the sockets on a new thread and starts forwarding.
    /// - Parameters:
    ///   - context: the ZeroMQ context.
    ///   - configuration: what to bind and advertise.
    ///   - identity: the broker's identity and mode, for status replies.
    ///   - counters: where to count traffic.
    ///   - logger: for per-connection problems.
    /// - Returns: the running engine, with the endpoints to advertise.
    static func start(
        context: ZMQContext, configuration: BrokerConfiguration, counters: BrokerCounters, logger: Logger
    ) async throws -> BrokerEngine {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<BrokerEngine, any Error>) in
            let thread = Thread {
                let loop: EngineLoop
                let engine: BrokerEngine
                do {
                    loop = try EngineLoop(
                        context: context, configuration: configuration, counters: counters, logger: logger)
                    engine = BrokerEngine(endpoints: loop.advertised, counters: counters)
                } catch {
                    continuation.resume(throwing: error)
                    return
                }
                continuation.resume(returning: engine)
                loop.run(until: engine)
                engine.markFinished()
            }
            thread.name = "herald-broker"
            thread.start()
        }
    }

    /// Whether ``stop()`` was called; read by the thread between polls.
    var isStopRequested: Bool { stopRequested.load(ordering: .acquiring) }

    /// Stops forwarding, closes both sockets (clients see their connections drop) and waits for the thread.
    func stop() async {
        stopRequested.store(true, ordering: .releasing)
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let done = finished.withLock { state -> Bool in
                if state.done { return true }
                state.waiters.append(continuation)
                return false
            }
            if done { continuation.resume() }
        }
    }

    private func markFinished() {
        let waiters = finished.withLock { state in
            state.done = true
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.resume() }
    }
}

/// Traffic counters shared between the broker thread and readers such as `/metrics` and `herald status`.
final class BrokerCounters: Sendable {
    struct Snapshot: Sendable {
        var forwardedPerTopic: [String: UInt64] = [:]
        var subscribedTopics: Set<String> = []
        var registrations: [PublisherRegistration] = []
        var malformed: UInt64 = 0
        var leaderSince: ContinuousClock.Instant?
    }

    let state = Mutex(Snapshot())

    func snapshot() -> Snapshot { state.withLock { $0 } }
}

// MARK: - The thread's loop

/// Everything the broker thread owns. Not `Sendable`: it is created and used on that thread only.
private final class EngineLoop {
    let request: ZMQSocket
    let subscribers: ZMQSocket
    let advertised: BrokerEngine.Endpoints
    let configuration: BrokerConfiguration
    let counters: BrokerCounters
    let logger: Logger
    let clock = ContinuousClock()
    let startedAt: ContinuousClock.Instant

    /// Publishers' registrations, by publisher, with when each was last heard.
    var registrations: [PublisherID: (registration: PublisherRegistration, lastSeen: ContinuousClock.Instant)] = [:]
    /// Counts kept on the thread and published to ``BrokerCounters`` in batches, to keep the lock off the
    /// per-message path.
    var forwarded: [String: UInt64] = [:]
    var dropped: [String: UInt64] = [:]
    let messagesIn = TopicCounters(label: Instruments.brokerMessagesIn)
    let messagesOut = TopicCounters(label: Instruments.brokerMessagesOut)
    var subscribedTopics: Set<String> = []
    var malformed: UInt64 = 0
    var lastHousekeeping: ContinuousClock.Instant
    /// The last messages of each topic, as their three data frames.
    var histories: [String: Ring<[[UInt8]]>] = [:]
    /// The most history any publisher of a topic has offered during this term.
    var offers: [String: Int] = [:]

    init(context: ZMQContext, configuration: BrokerConfiguration, counters: BrokerCounters, logger: Logger) throws {
        self.configuration = configuration
        self.counters = counters
        self.logger = logger
        request = try ZMQSocket(context: context, type: .router)
        subscribers = try ZMQSocket(context: context, type: .xpub)
        for socket in [request, subscribers] {
            try socket.set(.heartbeatInterval(configuration.heartbeatInterval))
            try socket.set(.heartbeatTimeout(configuration.heartbeatInterval * 3))
            try socket.set(.linger(.zero))
        }
        // Subscriptions must reach this thread even when another subscriber already asked for the topic,
        // so the status can list every subscribed topic.
        try subscribers.set(.xpubVerbose(true))
        try subscribers.set(.sendHighWaterMark(configuration.highWaterMark))
        try request.set(.receiveHighWaterMark(configuration.highWaterMark))
        let requestBound = try request.bind("tcp://\(configuration.bindHost):\(configuration.requestPort)")
        let subscriberBound = try subscribers.bind("tcp://\(configuration.bindHost):\(configuration.subscriberPort)")
        advertised = .init(
            request: configuration.advertised(requestBound),
            subscriber: configuration.advertised(subscriberBound)
        )
        startedAt = clock.now
        lastHousekeeping = startedAt
        counters.state.withLock { $0 = .init(leaderSince: startedAt) }
    }

    func run(until engine: BrokerEngine) {
        let poller = ZMQPoller()
        let requestEntry = poller.register(request, for: .readable)
        let subscriberEntry = poller.register(subscribers, for: .readable)
        while !engine.isStopRequested {
            do {
                try poller.poll(timeout: BrokerEngine.pollInterval)
            } catch where error.kind == .interrupted {
                continue
            } catch {
                logger.error("broker sockets failed; stopping", metadata: ["error": "\(error)"])
                break
            }
            if poller.readyEvents(requestEntry).contains(.readable) { drainRequests() }
            if poller.readyEvents(subscriberEntry).contains(.readable) { drainSubscriptions() }
            if clock.now - lastHousekeeping >= BrokerEngine.pollInterval { housekeeping() }
        }
        housekeeping()
        request.close()
        subscribers.close()
    }

    /// Handles what is queued on the request socket, up to a batch so subscriptions are not starved.
    private func drainRequests() {
        for _ in 0..<1024 {
            guard let message = try? request.receive(dontWait: true) else { return }
            handleRequest(message.frames)
        }
    }

    private func handleRequest(_ frames: [[UInt8]]) {
        // A ROUTER prepends the sender's routing id; what follows is the client's message.
        guard frames.count >= 2, let parsed = BrokerRequest(frames: frames[1...]) else {
            malformed += 1
            return
        }
        let identity = frames[0]
        switch parsed {
        case .publish(let data):
            // XPUB never blocks: a subscriber at its high-water mark loses messages, as in any ZeroMQ PUB.
            let frames = Array(frames[2...])
            histories[data.topic.name, default: Ring(capacity: historyCapacity(data.topic.name))].append(frames)
            do {
                try subscribers.send(ZMQMessage(frames: frames), dontWait: true)
                forwarded[data.topic.name, default: 0] += 1
            } catch {
                dropped[data.topic.name, default: 0] += 1
                logger.debug("forwarding failed", metadata: ["error": "\(error)"])
            }
        case .register(let registration):
            for topic in registration.topics where (registration.history ?? 0) > offers[topic] ?? 0 {
                offers[topic] = registration.history
                histories[topic, default: Ring(capacity: 0)].resize(to: historyCapacity(topic))
            }
            if registrations[registration.publisher] == nil {
                var metadata: Logger.Metadata = ["publisher": "\(registration.publisher.short)"]
                if !registration.endpoint.isEmpty { metadata["endpoint"] = "\(registration.endpoint)" }
                logger.info("publisher registered", metadata: metadata)
            }
            registrations[registration.publisher] = (registration, clock.now)
        case .unregister(let registration):
            if registrations.removeValue(forKey: registration.publisher) != nil {
                logger.info("publisher left", metadata: ["publisher": "\(registration.publisher.short)"])
            }
        case .lookup(let query):
            let wanted = Set(query.topics)
            let matching = registrations.values.map(\.registration).filter { !wanted.isDisjoint(with: $0.topics) }
            let reply = DiscoveryReply(
                publishers: matching.sorted { $0.publisher.description < $1.publisher.description },
                complete: clock.now - startedAt >= BrokerEngine.registrationTimeToLive
            )
            respond(to: identity, kind: .lookup, body: (try? JSONEncoder.herald.encode(reply)) ?? Data())
        case .history(let query):
            serveHistory(query, to: identity)
        case .status:
            housekeeping()
            let snapshot = counters.snapshot()
            let status = BrokerStatus(
                broker: configuration.brokerID,
                mode: configuration.mode,
                leaderForSeconds: (clock.now - startedAt).seconds,
                topics: snapshot.forwardedPerTopic,
                subscribedTopics: snapshot.subscribedTopics.sorted(),
                publishers: snapshot.registrations.map { registration in
                    let endpoint = registration.endpoint.isEmpty ? "" : " \(registration.endpoint)"
                    return "\(registration.publisher)\(endpoint) [\(registration.topics.joined(separator: ","))]"
                }.sorted(),
                malformedMessages: snapshot.malformed
            )
            respond(to: identity, kind: .status, body: (try? JSONEncoder.herald.encode(status)) ?? Data())
        }
    }

    /// How many messages to keep for a topic.
    private func historyCapacity(_ topic: String) -> Int {
        max(BrokerEngine.recoveryHistory, min(offers[topic] ?? 0, configuration.historyLimit))
    }

    /// Sends kept messages to one subscriber, then the end marker with what publishers offer.
    private func serveHistory(_ query: HistoryRequest, to identity: [UInt8]) {
        // A client may name a topic twice or name thousands: each is served once, and at most a bounded number.
        var seen = Set<String>()
        let topics = query.topics.prefix(HistoryRequest.maximumTopics).filter { seen.insert($0).inserted }
        var sent = 0
        for topic in topics {
            guard let kept = histories[topic]?.elements, !kept.isEmpty else { continue }
            let selected: ArraySlice<[[UInt8]]>
            if let limit = query.limit {
                // Late joiners get what publishers offered, even though more is kept for recovery.
                selected = kept.suffix(max(0, min(limit, offers[topic] ?? 0)))
            } else {
                selected = kept.filter { frames in
                    guard frames.count == 3, let header = MessageHeader(decoding: frames[1]),
                        let next = query.after[header.publisher.description]?[topic]
                    else { return false }
                    return header.sequence >= next
                }[...]
            }
            for frames in selected {
                do {
                    try request.send(ZMQMessage(frames: [identity, [RequestKind.history.rawValue]] + frames), dontWait: true)
                    sent += 1
                } catch {
                    logger.debug("history reply cut short", metadata: ["error": "\(error)"])
                    break
                }
            }
        }
        var offered: [String: Int] = [:]
        for topic in topics { offered[topic] = offers[topic] ?? 0 }
        let end = HistoryEnd(offered: offered, sent: sent)
        respond(to: identity, kind: .historyEnd, body: (try? JSONEncoder.herald.encode(end)) ?? Data())
    }

    private func respond(to identity: [UInt8], kind: RequestKind, body: Data) {
        do {
            try request.send(ZMQMessage(frames: [identity, [kind.rawValue], Array(body)]), dontWait: true)
        } catch {
            logger.debug("reply dropped", metadata: ["error": "\(error)"])
        }
    }

    /// Reads subscription messages from the XPUB socket: a 1 (subscribe) or 0 (unsubscribe) byte and the key.
    private func drainSubscriptions() {
        for _ in 0..<1024 {
            guard let message = try? subscribers.receive(dontWait: true) else { return }
            guard message.frames.count == 1, let first = message.frames[0].first, first <= 1 else {
                malformed += 1
                continue
            }
            guard let topic = Topic(key: Array(message.frames[0].dropFirst())) else { continue }
            if first == 1 { subscribedTopics.insert(topic.name) }
        }
    }

    /// Expires silent registrations and publishes the thread's counts.
    private func housekeeping() {
        let now = clock.now
        lastHousekeeping = now
        for (publisher, entry) in registrations where now - entry.lastSeen > BrokerEngine.registrationTimeToLive {
            registrations.removeValue(forKey: publisher)
            logger.info("publisher silent; dropped from discovery", metadata: ["publisher": "\(publisher.short)"])
        }
        let registered = registrations.values.map(\.registration)
        for (topic, count) in forwarded {
            messagesIn.increment(topic, by: Int(clamping: count))
            messagesOut.increment(topic, by: Int(clamping: count))
        }
        for (topic, count) in dropped { messagesIn.increment(topic, by: Int(clamping: count)) }
        if malformed > 0 { Counter(label: Instruments.brokerMalformed).increment(by: Int(clamping: malformed)) }
        Gauge(label: Instruments.brokerClients, dimensions: [("kind", "publishers")])
            .record(registrations.count)
        Gauge(label: Instruments.brokerClients, dimensions: [("kind", "subscribed_topics")]).record(subscribedTopics.count)
        counters.state.withLock { state in
            for (topic, count) in forwarded { state.forwardedPerTopic[topic, default: 0] += count }
            state.subscribedTopics.formUnion(subscribedTopics)
            state.registrations = registered
            state.malformed += malformed
        }
        forwarded.removeAll(keepingCapacity: true)
        dropped.removeAll(keepingCapacity: true)
        malformed = 0
    }
}
