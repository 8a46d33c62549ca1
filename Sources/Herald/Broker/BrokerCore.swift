import FoundationEssentials
import Logging
import ZeroMQ

#if canImport(Glibc)
    import Glibc
#endif

/// Where the broker's decisions go: the engine sends them through its sockets, a fuzzer or a test records them.
protocol BrokerOutput {
    /// Sends `frame` to a client of the request socket (a reply: credit, a refusal, a status).
    mutating func reply(to client: RoutingID, _ frame: inout ZMQFrame)
    /// Sends `frame` to a subscriber.
    mutating func deliver(to subscriber: RoutingID, _ frame: inout ZMQFrame) -> DeliveryOutcome
}

/// What happened to a frame sent to a subscriber.
enum DeliveryOutcome: Sendable, Equatable {
    /// Queued for the subscriber.
    case sent
    /// Its queue is full for now: try again later.
    case wouldBlock
    /// It is gone.
    case unreachable
}

/// The leader's logic, without sockets or threads: frames in, decisions out through a ``BrokerOutput``.
///
/// ## The data path
/// A publisher's frame is decoded in place (topic, header), appended to its topic's log by moving the frame
/// there, and sent on to each subscriber whose cursor has reached it, as a shared copy of the same libzmq
/// content: no byte of the payload is copied and nothing is allocated per message.
///
/// ## Flow control
/// Each topic keeps a log bounded in bytes. Each subscriber has a cursor per topic and a window: the leader
/// sends while the bytes in flight to it are below its window, and it reports what it took
/// (``WireFormat/Kind/consumed``). Each publisher connection has credit, a cumulative byte limit the leader
/// raises as it accepts data, unless a live subscriber of one of the publisher's topics lags more than half
/// a topic log behind: then the publisher waits, and a full-speed publisher cannot outrun a slower subscriber.
/// Many topics can each lag by less than that and together by more than the bound of all logs holds: when
/// what live subscribers have yet to be sent passes half of that bound, a subscriber more than a publisher
/// window behind holds its topics' publishers back too.
/// A subscriber that takes nothing for ``BrokerConfiguration/stallTimeout`` stops holding publishers back;
/// what leaves the log before it returns is lost to it, and counted on both sides.
struct BrokerCore: ~Copyable {
    let configuration: BrokerConfiguration
    let epoch: UInt64
    let startedAt: ContinuousClock.Instant
    private let logger: Logger

    private var topicIndex = NameIndex()
    private(set) var topics: [TopicState] = []
    private var logBytes = 0
    private var evictionCursor = 0
    /// Data bytes appended to logs and sent to subscribers, in all: how far the measure of what subscribers have
    /// yet to be sent may have moved since it was taken.
    private var bytesMoved: UInt64 = 0
    private var unsentMeasure: (bytes: UInt64, bytesMoved: UInt64)?
    private var connections: [RoutingID: PublisherConnection] = [:]
    private var registrations: [PublisherID: Registered] = [:]
    /// Direct mode: the publisher each advertised endpoint is registered by, so that no other key can claim
    /// the endpoint and send subscribers to it with the wrong key.
    private var endpointOwners: [String: PublisherID] = [:]
    /// Direct mode: the subscribers that looked up topics lately, and which topics, so that a publisher that
    /// registers is announced to them at once instead of at their next lookup (its first messages would be
    /// lost to them meanwhile). Bounded by the number of subscribers a broker serves, and forgotten when stale.
    private var discoverers: [RoutingID: (filters: TopicFilterSet, lastSeen: ContinuousClock.Instant)] = [:]
    /// The footprints of all registrations, bounded by the configuration's `registrationBytes`.
    private var registrationBytes = 0
    /// Topics followed, over all subscribers, bounded by the configuration's `maximumSubscriptions`.
    private var subscriptionCount = 0
    private var statusBudget = RateBudget(perSecond: BrokerCore.statusRepliesPerSecond)
    private var subscribers: [RoutingID: SubscriberState] = [:]
    /// The subscribers with patterns, whom a new topic may concern.
    private var patternSubscribers: Set<RoutingID> = []
    /// Who owns each exclusive topic, and whether this leader has led long enough to have heard every live
    /// contender: until then it reports no owners, and subscribers keep what they knew.
    private var ownership = OwnershipTable()
    private var ownershipKnown = false
    /// Subscribers whose queue was full, to be pumped again.
    private var blockedSubscribers: Set<RoutingID> = []
    /// Connections whose credit is held back by a slow subscriber.
    private var waitingConnections: Set<RoutingID> = []
    private var lastLog: [String: ContinuousClock.Instant] = [:]
    /// What happened since the counters were last taken (``takeCounters()``).
    private var counters = BrokerCounts()
    /// Malformed and refused messages since this term began, for status.
    private var malformedTotal: UInt64 = 0
    private var refusedTotal: [Refusal.Reason: UInt64] = [:]

    /// How long a publisher connection or registration lives without a heartbeat: three missed ones.
    static let registrationTimeToLive: Duration = .seconds(3)
    /// How long a subscriber lives without a consumption report (it sends one every second).
    static let subscriberTimeToLive: Duration = .seconds(5)
    /// The smallest window a subscriber gets, whatever it asks for: enough for a few large messages.
    static let minimumSubscriberWindow = 64 * 1024

    init(configuration: BrokerConfiguration, epoch: UInt64, now: ContinuousClock.Instant, logger: Logger) {
        self.configuration = configuration
        self.epoch = epoch
        self.startedAt = now
        self.logger = logger
    }

    deinit {
        // Topics and their subscribers refer to each other; without this every term would leak its logs.
        for topic in topics { topic.subscribers.removeAll() }
    }

    // MARK: Input

    /// Handles one message from the request socket (publishers and other clients).
    mutating func handleRequest(
        from client: RoutingID, _ frame: inout ZMQFrame, now: ContinuousClock.Instant, output: inout some BrokerOutput
    ) {
        let kind = frame.withUnsafeBytes { WireFormat.kind(of: $0) }
        switch kind {
        case .failure(let failure):
            malformed(failure, from: client, frame: frame, output: &output)
        case .success(.data), .success(.batch):
            guard configuration.mode == .broker else { return malformed(.unknownKind, from: client, frame: frame, output: &output) }
            handleData(from: client, &frame, now: now, output: &output)
        case .success(.register), .success(.unregister):
            switch frame.withUnsafeBytes({ ControlFrame.decode(PublisherRegistration.self, from: $0) }) {
            case .failure(let failure): malformed(failure, from: client, frame: frame, output: &output)
            case .success(let registration):
                if case .success(.register) = kind {
                    // The CURVE key the connection authenticated with, as the ZAP handler named it; none
                    // without CurveZMQ.
                    let key = frame.metadata("User-Id")
                    register(registration, from: client, key: key, now: now, output: &output)
                } else {
                    unregister(registration, from: client, now: now, output: &output)
                }
            }
        case .success(.lookup):
            switch frame.withUnsafeBytes({ ControlFrame.decode(DiscoveryQuery.self, from: $0) }) {
            case .failure(let failure): malformed(failure, from: client, frame: frame, output: &output)
            case .success(let query): lookup(query, from: client, key: frame.metadata("User-Id"), now: now, output: &output)
            }
        case .success(.status):
            guard frame.count == 2 else { return malformed(.truncated, from: client, frame: frame, output: &output) }
            // A report costs up to half a megabyte for a two-byte request, and a client need not read it:
            // answered at a bounded rate in all.
            guard statusBudget.take(now: now) else {
                return refuse(.rateLimited, "more than \(Self.statusRepliesPerSecond) status requests per second", to: client, output: &output)
            }
            reply(to: client, ControlFrame.encode(.status, status(now: now)), output: &output)
        case .success(.subscribe), .success(.subscribed), .success(.credit), .success(.consumed), .success(.refused),
            .success(.owners), .success(.skipped):
            malformed(.unknownKind, from: client, frame: frame, output: &output)
        }
    }

    /// Handles one message from the subscriber socket (broker mode).
    mutating func handleSubscriberMessage(
        from subscriber: RoutingID, _ frame: inout ZMQFrame, now: ContinuousClock.Instant,
        output: inout some BrokerOutput
    ) {
        switch frame.withUnsafeBytes({ WireFormat.kind(of: $0) }) {
        case .failure(let failure):
            noteMalformed(failure)
            if failure == .versionMismatch { noteVersionMismatch(frame: frame, client: subscriber) }
        case .success(.subscribe):
            switch frame.withUnsafeBytes({ ControlFrame.decode(SubscribeRequest.self, from: $0) }) {
            case .failure(let failure): noteMalformed(failure)
            case .success(let request):
                subscribe(request, key: frame.metadata("User-Id"), from: subscriber, now: now, output: &output)
            }
        case .success(.consumed):
            switch frame.withUnsafeBytes({ ControlFrame.decodeCount($0) }) {
            case .failure(let failure): noteMalformed(failure)
            case .success(let consumed): acknowledge(consumed, from: subscriber, now: now, output: &output)
            }
        case .success:
            noteMalformed(.unknownKind)
        }
    }

    /// Time-driven work: expiring silent clients, noticing stalled subscribers, retrying what was blocked.
    mutating func tick(now: ContinuousClock.Instant, output: inout some BrokerOutput) {
        for (client, connection) in connections where now - connection.lastHeard > Self.registrationTimeToLive {
            connections[client] = nil
            waitingConnections.remove(client)
        }
        for (publisher, entry) in registrations where now - entry.lastSeen > Self.registrationTimeToLive {
            forget(publisher)
            logger.info("publisher silent; dropped", metadata: ["publisher": "\(publisher.short)"])
        }
        for (client, entry) in discoverers where now - entry.lastSeen > Self.subscriberTimeToLive {
            discoverers[client] = nil
        }
        for (id, subscriber) in subscribers {
            if now - subscriber.lastHeard > Self.subscriberTimeToLive {
                removeSubscriber(id, reason: "silent for \(Self.subscriberTimeToLive)")
                continue
            }
            if !subscriber.stalled, subscriber.inFlight > 0,
                now - subscriber.lastProgress > configuration.stallTimeout
            {
                subscriber.stalled = true
                counters.stalls += 1
                logger.info(
                    "subscriber takes nothing; publishers no longer wait for it",
                    metadata: ["subscriber": "\(id)", "in_flight_bytes": "\(subscriber.inFlight)"])
            }
        }
        for id in blockedSubscribers {
            blockedSubscribers.remove(id)
            if let subscriber = subscribers[id] { pump(subscriber, now: now, output: &output) }
        }
        // Subscribers stalled or went: what they had yet to be sent holds nobody back now.
        unsentMeasure = nil
        retryWaitingGrants(output: &output)
        updateOwnership(now: now, output: &output)
    }

    // MARK: Publishers

    private mutating func handleData(
        from client: RoutingID, _ frame: inout ZMQFrame, now: ContinuousClock.Instant, output: inout some BrokerOutput
    ) {
        guard let connection = connections[client] else {
            return refuse(.notRegistered, "register before publishing", to: client, output: &output)
        }
        let run: DataRun
        switch frame.withUnsafeBytes({ DataRun.decode($0) }) {
        case .failure(let failure): return malformed(failure, from: client, frame: frame, output: &output)
        case .success(let decoded): run = decoded
        }
        let size = frame.count
        connection.lastHeard = now
        // A connection publishes only under the identities it registered, which CurveZMQ binds to its key.
        guard connection.owns(run.publisher) else {
            return refuse(
                .notOwner, "data under publisher \(run.publisher.short), which this connection did not register",
                to: client, output: &output)
        }
        guard connection.publishGrant == nil
            || frame.withUnsafeBytes({ connection.mayPublish(on: UnsafeRawBufferPointer(rebasing: $0[run.topic])) })
        else {
            // At most a valid name's length: the refusal must fit a control message, whatever the frame held.
            let name = frame.withUnsafeBytes {
                String(decoding: $0[run.topic].prefix(Topic.maximumLength), as: UTF8.self)
            }
            return refuse(.forbidden, "this key may not publish on '\(name)'", to: client, output: &output)
        }
        guard connection.received + UInt64(size) <= connection.granted else {
            return refuse(.overCredit, "sent beyond the credit granted", to: client, output: &output)
        }
        guard let topic = topic(named: run.topic, in: frame, creating: true, client: client, output: &output) else {
            return
        }
        connection.received += UInt64(size)
        connection.notePublished(on: topic)
        // A publisher that registers again with this leader replays what it kept, most of which this log took
        // already: taking it twice would cost the log the bytes of older messages and every subscriber the
        // bandwidth (as a Kafka broker drops an idempotent producer's resent batches).
        if topic.takes(run) {
            topic.received += UInt64(run.count)
            topic.totalReceived += UInt64(run.count)
            append(take(&frame), run: run, size: size, to: topic)
            for subscriber in topic.subscribers where subscriber.isCaughtUp(on: topic) {
                pump(subscriber, now: now, output: &output)
            }
        } else {
            counters.duplicates += UInt64(run.count)
        }
        if connection.granted - connection.received < UInt64(configuration.publisherWindow / 2) {
            grant(client, connection, output: &output)
        }
    }

    private mutating func register(
        _ registration: PublisherRegistration, from client: RoutingID, key: String?, now: ContinuousClock.Instant,
        output: inout some BrokerOutput
    ) {
        if registration.renewal == true, configuration.mode == .broker, connections[client] == nil {
            return refuse(
                .notRegistered,
                "this leader no longer knows this connection (silent for more than \(Self.registrationTimeToLive)); attach again and replay",
                to: client, output: &output)
        }
        // CurveZMQ: a publisher identity begins with its key's first bytes, so only that key can register it;
        // and a direct-mode publisher's advertised key must be the one it authenticated with, since
        // subscribers trust it.
        if let key, !registration.publisher.isBound(to: key) {
            return refuse(
                .notOwner, "publisher \(registration.publisher.short) is not bound to this connection's CURVE key",
                to: client, output: &output)
        }
        if let known = registrations[registration.publisher], known.key != key {
            return refuse(
                .notOwner, "publisher \(registration.publisher.short) is registered to another key", to: client,
                output: &output)
        }
        if let key, configuration.mode == .direct, registration.curveKey != key {
            return refuse(
                .notOwner, "the registration's CURVE key is not the one this connection authenticated with",
                to: client, output: &output)
        }
        if !registration.endpoint.isEmpty, let owner = endpointOwners[registration.endpoint],
            owner != registration.publisher, let held = registrations[owner], held.key != key
        {
            return refuse(
                .notOwner, "endpoint \(registration.endpoint) is registered by another key", to: client, output: &output)
        }
        guard registration.topics.count <= configuration.maximumTopicsPerRequest else {
            return refuse(
                .tooManyTopics,
                "\(registration.topics.count) topics in one registration; the limit is \(configuration.maximumTopicsPerRequest)",
                to: client, output: &output)
        }
        guard registration.topics.allSatisfy({ (try? Topic($0)) != nil }) else {
            return refuse(.invalidTopic, "a registered topic is not a valid name", to: client, output: &output)
        }
        let grant = grants(forKey: key)?.publish
        if let grant, let denied = registration.topics.first(where: { !grant.allows($0) }) {
            return refuse(.forbidden, "this key may not publish on '\(denied)'", to: client, output: &output)
        }
        guard registration.endpoint.utf8.count <= PublisherRegistration.maximumEndpointLength else {
            return refuse(
                .registrationLimit, "an endpoint longer than \(PublisherRegistration.maximumEndpointLength) bytes",
                to: client, output: &output)
        }
        let previousFootprint = registrations[registration.publisher]?.registration.footprint ?? 0
        guard registrationBytes - previousFootprint + registration.footprint <= configuration.registrationBytes else {
            return refuse(
                .registrationLimit, "this broker holds \(configuration.registrationBytes) bytes of registrations already",
                to: client, output: &output)
        }
        let isNew = registrations[registration.publisher] == nil
        if isNew {
            guard registrations.count < configuration.maximumPublishers else {
                return refuse(
                    .publisherLimit, "this broker knows \(configuration.maximumPublishers) publishers already",
                    to: client, output: &output)
            }
            var metadata: Logger.Metadata = ["publisher": "\(registration.publisher.short)"]
            if !registration.endpoint.isEmpty { metadata["endpoint"] = "\(registration.endpoint)" }
            logger.info("publisher registered", metadata: metadata)
        }
        defer { if isNew, !registration.endpoint.isEmpty { announce(registration, output: &output) } }
        if let previous = registrations[registration.publisher]?.client, previous != client {
            // The identity moved to another connection of its key (a reconnection): the old one loses it.
            connections[previous]?.disown(registration.publisher)
        }
        if let previous = registrations[registration.publisher]?.registration.endpoint,
            previous != registration.endpoint, endpointOwners[previous] == registration.publisher
        {
            endpointOwners[previous] = nil
        }
        if !registration.endpoint.isEmpty { endpointOwners[registration.endpoint] = registration.publisher }
        registrations[registration.publisher] = Registered(
            registration: registration, lastSeen: now, client: client, key: key)
        registrationBytes += registration.footprint - previousFootprint
        ownership.note(registration, now: now)
        updateOwnership(now: now, output: &output)
        if let offer = registration.history, offer > 0 {
            for name in registration.topics {
                let bytes = Array(name.utf8)
                guard let topic = bytes.withUnsafeBytes({ topicState(for: $0, creating: true, output: &output) }) else {
                    continue
                }
                topic.offered = max(topic.offered, min(offer, configuration.historyLimit))
            }
        }
        guard configuration.mode == .broker else { return }
        if let connection = connections[client] {
            connection.publishGrant = grant
            guard connection.adopt(registration.publisher) else {
                return refuse(
                    .publisherLimit, "more than \(PublisherConnection.maximumPublishers) publishers on one connection",
                    to: client, output: &output)
            }
            connection.lastHeard = now
            // Every heartbeat is answered with the current credit, so a lost grant costs at most one interval.
            if !waitingConnections.contains(client) { sendCredit(client, connection, output: &output) }
        } else {
            guard connections.count < configuration.maximumPublishers else {
                return refuse(
                    .publisherLimit, "this broker serves \(configuration.maximumPublishers) publisher connections already",
                    to: client, output: &output)
            }
            let connection = PublisherConnection(lastHeard: now, granted: UInt64(configuration.publisherWindow))
            connection.publishGrant = grant
            _ = connection.adopt(registration.publisher)
            connections[client] = connection
            sendCredit(client, connection, output: &output)
        }
    }

    private mutating func unregister(
        _ registration: PublisherRegistration, from client: RoutingID, now: ContinuousClock.Instant,
        output: inout some BrokerOutput
    ) {
        guard let known = registrations[registration.publisher] else { return }
        // Anyone can name a publisher; only the connection it registered from can remove it.
        guard known.client == client else {
            return refuse(.notOwner, "unregistering another connection's publisher", to: client, output: &output)
        }
        forget(registration.publisher)
        connections[client] = nil
        waitingConnections.remove(client)
        logger.info("publisher left", metadata: ["publisher": "\(registration.publisher.short)"])
        updateOwnership(now: now, output: &output)
    }

    private mutating func forget(_ publisher: PublisherID) {
        guard let removed = registrations.removeValue(forKey: publisher) else { return }
        registrationBytes -= removed.registration.footprint
        ownership.remove(publisher)
        if endpointOwners[removed.registration.endpoint] == publisher {
            endpointOwners[removed.registration.endpoint] = nil
        }
        // A connection publishes only under identities registered now: one that expired may next be
        // registered by another key.
        connections[removed.client]?.disown(publisher)
    }

    /// Direct mode: tells the subscribers that looked up one of a new publisher's topics about it at once. The
    /// reply is marked incomplete, so it adds the publisher and removes none.
    private mutating func announce(_ registration: PublisherRegistration, output: inout some BrokerOutput) {
        guard configuration.mode == .direct, !discoverers.isEmpty else { return }
        let interested = discoverers.filter { $0.value.filters.matchesAny(registration.topics) }.keys
        guard !interested.isEmpty else { return }
        let frame = ControlFrame.encode(.lookup, DiscoveryReply(publishers: [registration], complete: false))
        for client in interested { reply(to: client, frame, output: &output) }
    }

    /// The valid filters among `texts`, each once; invalid ones are left out, as a topic nobody publishes on.
    private static func filters(_ texts: [String]) -> [TopicFilter] {
        var seen = Set<String>()
        return texts.compactMap { seen.insert($0).inserted ? try? TopicFilter($0) : nil }
    }

    /// Patterns one subscriber may hold: each is matched against every topic the broker makes, and a new one
    /// against every topic it holds, so they are few; names are looked up by hash and have the larger limit.
    static let maximumPatternsPerSubscriber = 64

    /// What a CURVE key may do, from the brokers' list; `nil` when every client may do everything (no
    /// CurveZMQ, or no list). A key no longer in the list may do nothing.
    private func grants(forKey key: String?) -> KeyPermissions? {
        guard let key, let list = configuration.security?.authorizedKeys else { return nil }
        let permissions = list.permissions(for: key) ?? KeyPermissions(publish: .none, subscribe: .none)
        return permissions == .all ? nil : permissions
    }

    /// The filter a key may not subscribe to, of `filters`: a pattern needs a grant of everything it can match.
    private func firstDenied(_ filters: [TopicFilter], key: String?) -> TopicFilter? {
        guard let grant = grants(forKey: key)?.subscribe else { return nil }
        return filters.first { !grant.allows($0) }
    }

    private mutating func lookup(
        _ query: DiscoveryQuery, from client: RoutingID, key: String?, now: ContinuousClock.Instant,
        output: inout some BrokerOutput
    ) {
        guard query.topics.count <= configuration.maximumTopicsPerRequest else {
            return refuse(
                .tooManyTopics, "\(query.topics.count) topics in one lookup; the limit is \(configuration.maximumTopicsPerRequest)",
                to: client, output: &output)
        }
        let filters = Self.filters(query.topics)
        guard filters.filter(\.isPattern).count <= Self.maximumPatternsPerSubscriber else {
            return refuse(
                .tooManyTopics, "more than \(Self.maximumPatternsPerSubscriber) patterns in one lookup", to: client,
                output: &output)
        }
        if let denied = firstDenied(filters, key: key) {
            return refuse(.forbidden, "this key may not subscribe to '\(denied)'", to: client, output: &output)
        }
        let wanted = TopicFilterSet(filters)
        if discoverers[client] != nil || discoverers.count < configuration.maximumSubscribers {
            discoverers[client] = (wanted, now)
        }
        let matching = registrations.values.map(\.registration).filter { wanted.matchesAny($0.topics) }
        let reply = DiscoveryReply(
            publishers: matching.sorted { $0.publisher.description < $1.publisher.description },
            complete: now - startedAt >= Self.registrationTimeToLive,
            owners: ownershipKnown ? ownership.report(where: wanted.matches) : nil)
        self.reply(to: client, ControlFrame.encode(.lookup, reply), output: &output)
    }

    /// Raises a connection's credit to a window beyond what it sent, unless a slow subscriber must catch up.
    private mutating func grant(_ client: RoutingID, _ connection: PublisherConnection, output: inout some BrokerOutput) {
        if slowSubscriber(holdingBack: connection) {
            waitingConnections.insert(client)
            counters.creditWaits += 1
            return
        }
        waitingConnections.remove(client)
        connection.granted = connection.received + UInt64(configuration.publisherWindow)
        sendCredit(client, connection, output: &output)
    }

    private mutating func sendCredit(_ client: RoutingID, _ connection: PublisherConnection, output: inout some BrokerOutput) {
        guard var frame = ControlFrame.countFrame(.credit, connection.granted) else { return }
        output.reply(to: client, &frame)
    }

    private mutating func retryWaitingGrants(output: inout some BrokerOutput) {
        for client in waitingConnections {
            guard let connection = connections[client] else {
                waitingConnections.remove(client)
                continue
            }
            grant(client, connection, output: &output)
        }
    }

    /// Whether a live subscriber of a topic this connection publishes on lags more than half a topic log, or,
    /// when live subscribers have yet to be sent more than half the bound of all logs, more than a publisher
    /// window.
    private mutating func slowSubscriber(holdingBack connection: PublisherConnection) -> Bool {
        let topicLimit = UInt64(configuration.topicLogBytes / 2)
        let sharedLimit = min(topicLimit, UInt64(configuration.publisherWindow))
        var largest: UInt64 = 0
        func lagging(_ topic: TopicState) -> Bool {
            for subscriber in topic.subscribers where !subscriber.stalled {
                largest = max(largest, subscriber.lag(on: topic))
                if largest > topicLimit { return true }
            }
            return false
        }
        if connection.publishedOnManyTopics ? topics.contains(where: lagging) : connection.topics.contains(where: lagging) {
            return true
        }
        return largest > sharedLimit && unsentCost() > UInt64(configuration.logBytes / 2)
    }

    /// What the log entries that live subscribers have yet to be sent cost, in all logs, as the bound of all logs
    /// counts it (a topic's counted once, for its furthest-behind subscriber); measured again once a sixty-fourth
    /// of that bound has been appended or sent since, or after a tick: a measure looks at every topic and
    /// subscription.
    private mutating func unsentCost() -> UInt64 {
        // Logs that cost less than half their bound hold less than that unsent.
        guard logBytes > configuration.logBytes / 2 else { return UInt64(logBytes) }
        if let unsentMeasure, bytesMoved - unsentMeasure.bytesMoved < UInt64(configuration.logBytes / 64) {
            return unsentMeasure.bytes
        }
        for topic in topics { topic.unsent = 0 }
        for subscriber in subscribers.values where !subscriber.stalled {
            for follow in subscriber.follows { follow.topic.unsent = max(follow.topic.unsent, follow.unsentCost) }
        }
        let bytes = topics.reduce(0) { $0 + $1.unsent }
        unsentMeasure = (bytes, bytesMoved)
        return bytes
    }

    // MARK: Subscribers

    private mutating func subscribe(
        _ request: SubscribeRequest, key: String?, from id: RoutingID, now: ContinuousClock.Instant,
        output: inout some BrokerOutput
    ) {
        guard request.topics.count <= configuration.maximumTopicsPerRequest else {
            return refuseSubscriber(
                .tooManyTopics, "\(request.topics.count) topics in one subscription; the limit is \(configuration.maximumTopicsPerRequest)",
                id, output: &output)
        }
        let filters = Self.filters(request.topics)
        if let denied = firstDenied(filters, key: key) {
            return refuseSubscriber(.forbidden, "this key may not subscribe to '\(denied)'", id, output: &output)
        }
        // Each subscription costs memory, and work on every message of its topic (a pattern: on every new
        // topic): bounded per subscriber and in all, whatever the number of requests. Checked before anything
        // changes, so a refusal leaves no trace.
        let existing = subscribers[id]
        let newPatterns = filters.filter { $0.isPattern && !(existing?.patterns.contains($0) ?? false) }.count
        var newSubscriptions = newPatterns
        for filter in filters where !filter.isPattern {
            let followed = Array(filter.text.utf8).withUnsafeBytes { bytes in
                topicState(for: bytes, creating: false, output: &output).map { existing?.cursor(on: $0) != nil } ?? false
            }
            if !followed { newSubscriptions += 1 }
        }
        guard (existing?.patterns.count ?? 0) + newPatterns <= Self.maximumPatternsPerSubscriber else {
            return refuseSubscriber(
                .tooManyTopics, "a subscriber holds \(Self.maximumPatternsPerSubscriber) patterns at most", id,
                output: &output)
        }
        let existingSubscriptions = (existing?.follows.count ?? 0) + (existing?.patterns.count ?? 0)
        guard existingSubscriptions + newSubscriptions <= configuration.maximumTopicsPerRequest else {
            return refuseSubscriber(
                .tooManyTopics, "a subscriber follows \(configuration.maximumTopicsPerRequest) topics and patterns at most",
                id, output: &output)
        }
        guard subscriptionCount + newSubscriptions <= configuration.maximumSubscriptions else {
            return refuseSubscriber(
                .subscriberLimit, "this broker holds \(configuration.maximumSubscriptions) subscriptions already", id,
                output: &output)
        }
        let subscriber: SubscriberState
        if let existing {
            subscriber = existing
        } else {
            guard subscribers.count < configuration.maximumSubscribers else {
                return refuseSubscriber(
                    .subscriberLimit, "this broker serves \(configuration.maximumSubscribers) subscribers already", id,
                    output: &output)
            }
            subscriber = SubscriberState(id: id, now: now)
            subscribers[id] = subscriber
            logger.info("subscriber attached", metadata: ["subscriber": "\(id)", "topics": "\(request.topics.count)"])
        }
        subscriber.window = min(
            max(request.window, Self.minimumSubscriberWindow), max(configuration.maximumSubscriberWindow, Self.minimumSubscriberWindow))
        subscriber.lastHeard = now
        subscriber.lastProgress = now
        subscriber.stalled = false
        subscriber.batchBytes = max(request.batchBytes ?? 0, 0)
        subscriber.skipNotices = request.skipNotices ?? false
        let resume = Resume(request)
        var offered: [String: Int] = [:]
        var backlog: [String: Int] = [:]
        func follow(_ topic: TopicState) {
            let current = subscriber.following(topic)
            if current == nil { subscriptionCount += 1 }
            let (cursor, from) = startingCursor(in: topic, request: request, resume: resume, current: current)
            subscriber.follow(topic, from: cursor, sequence: from)
            offered[topic.name] = topic.offered
            backlog[topic.name] = Int(topic.log.endIndex - cursor)
        }
        var patterns: [TopicFilter] = []
        for filter in filters {
            guard filter.isPattern else {
                if let topic = Array(filter.text.utf8).withUnsafeBytes({ topicState(for: $0, creating: true, output: &output) }) {
                    follow(topic)
                }
                continue
            }
            patterns.append(filter)
            if !subscriber.patterns.contains(filter) {
                subscriber.patterns.append(filter)
                subscriptionCount += 1
            }
        }
        if !patterns.isEmpty {
            patternSubscribers.insert(id)
            var unfollowed = 0
            for topic in topics where Array(topic.name.utf8).withUnsafeBytes({ name in patterns.contains { $0.matches(name: name) } }) {
                if subscriber.cursor(on: topic) != nil || mayAddFollow(subscriber) {
                    follow(topic)
                } else {
                    unfollowed += 1
                }
            }
            if unfollowed > 0 { refuseUnfollowed(unfollowed, subscriber, output: &output) }
        }
        let reply = SubscribeReply(offered: offered, backlog: backlog, window: subscriber.window)
        if var frame = try? ZMQFrame(ControlFrame.encode(.subscribed, reply)),
            output.deliver(to: id, &frame) == .unreachable
        {
            return removeSubscriber(id, reason: "gone")
        }
        // Before any data: whose messages it may deliver on the exclusive topics it follows.
        if ownershipKnown { sendOwners(to: subscriber, output: &output) }
        pump(subscriber, now: now, output: &output)
    }

    /// Whether one more topic that a pattern matches may be followed, within the per-subscriber and total
    /// bounds.
    private func mayAddFollow(_ subscriber: SubscriberState) -> Bool {
        subscriber.follows.count + subscriber.patterns.count < configuration.maximumTopicsPerRequest
            && subscriptionCount < configuration.maximumSubscriptions
    }

    /// Tells a subscriber that its patterns match more topics than it may follow, and how many it misses.
    private mutating func refuseUnfollowed(_ count: Int, _ subscriber: SubscriberState, output: inout some BrokerOutput) {
        refuseSubscriber(
            .tooManyTopics,
            "patterns match \(count) more topics than a subscriber may follow (\(configuration.maximumTopicsPerRequest) topics and patterns) or this broker holds (\(configuration.maximumSubscriptions) subscriptions); their messages are not sent: subscribe to narrower patterns",
            subscriber.id, output: &output)
    }

    /// A new topic: the subscribers whose patterns match it follow it from its first message.
    private mutating func followByPattern(_ topic: TopicState, output: inout some BrokerOutput) {
        guard !patternSubscribers.isEmpty else { return }
        Array(topic.name.utf8).withUnsafeBytes { name in
            for id in patternSubscribers {
                guard let subscriber = subscribers[id], subscriber.patterns.contains(where: { $0.matches(name: name) })
                else { continue }
                guard mayAddFollow(subscriber) else {
                    refuseUnfollowed(1, subscriber, output: &output)
                    continue
                }
                subscriptionCount += 1
                subscriber.follow(topic, from: topic.log.endIndex)
            }
        }
    }

    /// Where a subscription of `topic` starts in its log: live, some history back, or where a re-attaching
    /// subscriber stopped. A batch is a single entry of the log: `from` is the first sequence number of the
    /// entry at `cursor` to send, so that a subscriber owed the end of a batch gets only that end.
    ///
    /// A subscriber that asks again on the same connection (`current`) has a gap to fill: its cursor moves back
    /// only to a message it is owed exactly, since anything later it has already been sent; otherwise it goes on
    /// where it was, a pending start inside a batch included.
    private func startingCursor(
        in topic: TopicState, request: SubscribeRequest, resume: Resume, current: SubscriberState.Follow?
    ) -> (cursor: UInt64, from: UInt64) {
        let end = topic.log.endIndex
        if let current {
            let owed = resume.streams[topic.name] ?? [:]
            var index = topic.log.firstIndex
            while index < min(current.cursor, end) {
                let from = topic.log.withElement(at: index) { entry -> UInt64? in
                    guard let next = owed[entry.publisher], (entry.firstSequence...entry.lastSequence).contains(next)
                    else { return nil }
                    return next
                }
                if let from = from.flatMap({ $0 }) { return (index, from) }
                index += 1
            }
            return (current.cursor, current.from)
        }
        if request.resume != nil || request.since != nil {
            let owed = resume.streams[topic.name] ?? [:]
            let since = request.since ?? .max
            var index = topic.log.firstIndex
            while index < end {
                let from = topic.log.withElement(at: index) { entry -> UInt64? in
                    if let next = owed[entry.publisher] { return entry.lastSequence >= next ? next : nil }
                    guard entry.lastSentAt >= since else { return nil }
                    return entry.frame.withUnsafeBytes { DataRun.firstSequence(in: $0) { $0.sentAt >= since } } ?? 0
                }
                if let from = from.flatMap({ $0 }) { return (index, from) }
                index += 1
            }
            return (end, 0)
        }
        // Counted in messages: a batch in the log holds several.
        let history = min(max(request.history ?? 0, 0), topic.offered, configuration.historyLimit)
        var start = end
        var counted = 0
        var from: UInt64 = 0
        while counted < history, start > topic.log.firstIndex {
            start -= 1
            topic.log.withElement(at: start) { entry in
                counted += entry.count
                from = entry.firstSequence + UInt64(max(counted - history, 0))
            }
        }
        return (start, from)
    }

    private mutating func acknowledge(
        _ consumed: UInt64, from id: RoutingID, now: ContinuousClock.Instant, output: inout some BrokerOutput
    ) {
        guard let subscriber = subscribers[id] else {
            return refuseSubscriber(.notSubscribed, "subscribe again", id, output: &output)
        }
        subscriber.lastHeard = now
        // A report beyond what was sent, or going backwards, comes from a broken or hostile client: clamp it.
        let acknowledged = min(consumed, subscriber.sent)
        guard acknowledged > subscriber.acknowledged else { return }
        subscriber.acknowledged = acknowledged
        subscriber.lastProgress = now
        if subscriber.stalled {
            subscriber.stalled = false
            logger.info("subscriber takes messages again", metadata: ["subscriber": "\(id)"])
        }
        pump(subscriber, now: now, output: &output)
        if !waitingConnections.isEmpty { retryWaitingGrants(output: &output) }
    }

    /// A frame the pump sends out of one log entry: messages `first...last` of it.
    private struct Outgoing: ~Copyable {
        var frame: ZMQFrame
        let first: UInt64
        let last: UInt64
        /// Whether `last` is the entry's last message: the subscriber's cursor moves on to the next entry.
        let endsEntry: Bool
        /// Where the message after `last` starts in the entry's frame, for the next slice.
        let nextOffset: Int
    }

    /// Sends a subscriber what its cursors have not reached yet, while its window allows, one topic after the
    /// other.
    private mutating func pump(
        _ subscriber: SubscriberState, now: ContinuousClock.Instant, output: inout some BrokerOutput
    ) {
        if subscriber.ownersOutdated {
            sendOwners(to: subscriber, output: &output)
            if subscriber.ownersOutdated { return }
        }
        var idle = 0
        while subscriber.inFlight < UInt64(subscriber.window), idle < subscriber.follows.count {
            let position = subscriber.nextFollow
            subscriber.nextFollow = (position + 1) % subscriber.follows.count
            let topic = subscriber.follows[position].topic
            var cursor = subscriber.follows[position].cursor
            if cursor < topic.log.firstIndex {
                // Left the log before this subscriber got it. It sees a gap between two messages it receives, but
                // not the end of a stream that stops: it is told, before anything that follows. (A stream it never
                // received from, it cannot place, and this broker's count alone has its loss.)
                if subscriber.skipNotices {
                    let skipped = topic.evicted(since: cursor)
                    if !skipped.isEmpty,
                        var frame = try? ZMQFrame(ControlFrame.encode(.skipped, SkippedNotice(topic: topic.name, through: skipped))),
                        !send(&frame, to: subscriber, output: &output)
                    {
                        return
                    }
                }
                counters.skipped += topic.log.firstIndex - cursor
                cursor = topic.log.firstIndex
                subscriber.follows[position].move(to: cursor)
            }
            // A fresh leader does not know every contender yet: a contested topic waits, rather than reach a
            // subscriber with no view of its owner.
            guard cursor < topic.log.endIndex, ownershipKnown || !ownership.isContested(topic.name) else {
                idle += 1
                continue
            }
            idle = 0
            let (from, offset) = (subscriber.follows[position].from, subscriber.follows[position].offset)
            // What goes out of the entry at the cursor: all of it (a shared copy) or, when it is owed only from its
            // middle or is larger than the subscriber takes, a slice of it as a new frame, on rare paths (history,
            // recovery, older or small-limit subscribers).
            guard var outgoing = topic.log.updateElement(at: cursor, { entry -> Outgoing? in
                let first = min(max(from, entry.firstSequence), entry.lastSequence)
                if first == entry.firstSequence, entry.count == 1 || entry.frame.count <= subscriber.batchBytes {
                    guard let shared = try? entry.frame.share() else { return nil }
                    return Outgoing(frame: shared, first: first, last: entry.lastSequence, endsEntry: true, nextOffset: 0)
                }
                let last = entry.lastSequence
                return entry.frame.withUnsafeBytes { bytes -> Outgoing? in
                    guard let slice = DataRun.slice(of: bytes, from: first, offset: offset, limit: subscriber.batchBytes)
                    else { return nil }
                    return Outgoing(
                        frame: slice.frame, first: first, last: slice.last, endsEntry: slice.last == last,
                        nextOffset: slice.nextOffset)
                }
            }) else { break }
            let size = outgoing.frame.count
            guard send(&outgoing.frame, to: subscriber, output: &output) else { return }
            // A subscriber's stall clock runs from when it was first owed something, not from its last
            // acknowledgement: one that was idle longer than the stall timeout is not stalled by the first
            // message of a burst, which would let publishers run past it and the log drop what it is owed.
            if subscriber.inFlight == 0 { subscriber.lastProgress = now }
            if outgoing.endsEntry {
                subscriber.follows[position].move(to: cursor + 1)
            } else {
                subscriber.follows[position].from = outgoing.last + 1
                subscriber.follows[position].offset = outgoing.nextOffset
            }
            subscriber.sent += UInt64(size)
            bytesMoved += UInt64(size)
            topic.delivered += outgoing.last - outgoing.first + 1
        }
    }

    /// Hands a frame to a subscriber's queue.
    /// - Returns: whether it was taken; when not, the subscriber's queue is full (it is pumped again once there
    ///   is room) or it is gone (and forgotten), and the pump stops for it.
    private mutating func send(
        _ frame: inout ZMQFrame, to subscriber: SubscriberState, output: inout some BrokerOutput
    ) -> Bool {
        switch output.deliver(to: subscriber.id, &frame) {
        case .sent:
            return true
        case .wouldBlock:
            blockedSubscribers.insert(subscriber.id)
            return false
        case .unreachable:
            removeSubscriber(subscriber.id, reason: "gone")
            return false
        }
    }

    private mutating func removeSubscriber(_ id: RoutingID, reason: String) {
        guard let subscriber = subscribers.removeValue(forKey: id) else { return }
        subscriptionCount -= subscriber.follows.count + subscriber.patterns.count
        patternSubscribers.remove(id)
        for follow in subscriber.follows { follow.topic.subscribers.removeAll { $0 === subscriber } }
        blockedSubscribers.remove(id)
        logger.info("subscriber detached", metadata: ["subscriber": "\(id)", "reason": "\(reason)"])
    }

    // MARK: Ownership

    /// Works out the owners of exclusive topics again, and tells the subscribers concerned when one changed.
    /// A fresh leader first waits one owner timeout, so that every live contender has registered.
    private mutating func updateOwnership(now: ContinuousClock.Instant, output: inout some BrokerOutput) {
        guard ownershipKnown else {
            guard now - startedAt >= OwnershipTable.ownerTimeout else { return }
            ownershipKnown = true
            _ = ownership.update(now: now)
            // Subscribers may hold owners from the previous leader: every one learns this leader's view once,
            // then gets the contested topics held back until now.
            for subscriber in subscribers.values {
                sendOwners(to: subscriber, output: &output)
                pump(subscriber, now: now, output: &output)
            }
            return
        }
        let changed = ownership.update(now: now)
        guard !changed.isEmpty else { return }
        for topic in changed.sorted().prefix(16) {
            let owner = ownership.owners[topic]
            logger.info(
                "topic owner changed",
                metadata: ["topic": "\(topic)", "owner": "\(owner.map { "\($0.short)" } ?? "none: shared")"])
        }
        switch configuration.mode {
        case .broker:
            for subscriber in subscribers.values where subscriber.concerned.matchesAny(Array(changed)) {
                sendOwners(to: subscriber, output: &output)
            }
        case .direct:
            for (client, entry) in discoverers where entry.filters.matchesAny(Array(changed)) {
                let owners = ownership.report(where: entry.filters.matches)
                let update = DiscoveryReply(publishers: [], complete: false, owners: owners)
                reply(to: client, ControlFrame.encode(.lookup, update), output: &output)
            }
        }
    }

    /// Sends a broker-mode subscriber the owners of the exclusive topics it follows or matches.
    private mutating func sendOwners(to subscriber: SubscriberState, output: inout some BrokerOutput) {
        let report = OwnershipReport(owners: ownership.report(where: subscriber.concerned.matches))
        guard var frame = try? ZMQFrame(ControlFrame.encode(.owners, report)) else { return }
        // A subscriber with a full queue gets it when the queue has room: a report it missed would leave it
        // delivering the wrong publisher until the next change.
        subscriber.ownersOutdated = output.deliver(to: subscriber.id, &frame) == .wouldBlock
        if subscriber.ownersOutdated { blockedSubscribers.insert(subscriber.id) }
    }

    // MARK: Topics and logs

    /// The state of the topic spelled by the bytes at `range` of `frame`, created (after validating the name)
    /// when it is new and allowed; `nil` after refusing.
    private mutating func topic(
        named range: Range<Int>, in frame: borrowing ZMQFrame, creating: Bool, client: RoutingID,
        output: inout some BrokerOutput
    ) -> TopicState? {
        let found = frame.withUnsafeBytes { bytes in
            topicIndex.find(UnsafeRawBufferPointer(rebasing: bytes[range]))
        }
        if let found { return topics[found] }
        let name = frame.withUnsafeBytes { Topic(validating: UnsafeRawBufferPointer(rebasing: $0[range])) }
        guard let name else {
            malformed(.badTopic, from: client, frame: frame, output: &output)
            return nil
        }
        guard topics.count < configuration.maximumTopics else {
            refuse(.topicLimit, "this broker holds \(configuration.maximumTopics) topics already", to: client, output: &output)
            return nil
        }
        return addTopic(name, output: &output)
    }

    /// The state of a topic named by `bytes`, created when allowed; `nil` for invalid names or past the limit.
    private mutating func topicState(
        for bytes: UnsafeRawBufferPointer, creating: Bool, output: inout some BrokerOutput
    ) -> TopicState? {
        if let found = topicIndex.find(bytes) { return topics[found] }
        guard creating, topics.count < configuration.maximumTopics, let name = Topic(validating: bytes) else {
            return nil
        }
        return addTopic(name, output: &output)
    }

    private mutating func addTopic(_ name: Topic, output: inout some BrokerOutput) -> TopicState {
        let state = TopicState(name: name.name)
        Array(name.name.utf8).withUnsafeBytes { _ = topicIndex.insert($0) }
        topics.append(state)
        followByPattern(state, output: &output)
        return state
    }

    private mutating func append(_ frame: consuming ZMQFrame, run: DataRun, size: Int, to topic: TopicState) {
        let cost = size + LogEntry.overhead
        topic.log.append(
            LogEntry(
                frame: frame, publisher: run.publisher, firstSequence: run.firstSequence,
                lastSequence: run.lastSequence, lastSentAt: run.lastSentAt, offset: topic.appendedBytes, cost: cost))
        topic.appendedBytes += UInt64(size)
        bytesMoved += UInt64(size)
        topic.bytes += cost
        logBytes += cost
        while topic.bytes > configuration.topicLogBytes, topic.log.count > 1 { evictOldest(of: topic) }
        // Over the bound of all logs together, topics give up their oldest entries in turn: first only entries
        // every live subscriber of theirs was sent, so that an idle topic's history goes before what a busy
        // topic's subscriber has yet to read; only when there are none of those (or finding one would cost more
        // than `probes` allows) does a subscriber lose a message it was not sent, and count it.
        var probes = Self.evictionProbes
        for pass in 0..<2 {
            let sentOnly = pass == 0
            var attempts = 0
            while logBytes > configuration.logBytes, attempts < topics.count, !sentOnly || probes > 0 {
                let candidate = topics[evictionCursor % topics.count]
                evictionCursor = (evictionCursor + 1) % topics.count
                if candidate.log.count > (candidate === topic ? 1 : 0),
                    !sentOnly || Self.wasSent(oldestOf: candidate, probes: &probes)
                {
                    evictOldest(of: candidate)
                    attempts = 0
                    // The budget bounds a search that finds nothing, not how many entries one large message needs
                    // (one 16 KiB message may need a hundred small ones): each entry goes once, so evictions are
                    // paid for by the appends that made them. Spent per eviction, it made a busy topic's subscriber
                    // lose messages while an idle topic still had history to give.
                    if sentOnly { probes = Self.evictionProbes }
                } else {
                    attempts += 1
                }
            }
        }
    }

    /// Topics and subscriptions one append may look at for an entry that costs no subscriber a message, between two
    /// it finds: a bound on the work, whatever the number of topics and subscribers, when none of them has such an
    /// entry.
    static let evictionProbes = 64

    /// Whether every live subscriber of `topic` was sent the oldest entry of its log, looking at no more than
    /// `probes` more topics and subscriptions (answering no past them). A stalled subscriber holds nothing back,
    /// as it holds no publisher back.
    private static func wasSent(oldestOf topic: TopicState, probes: inout Int) -> Bool {
        probes -= 1
        let oldest = topic.log.firstIndex
        for subscriber in topic.subscribers where !subscriber.stalled {
            probes -= 1
            if probes < 0 || (subscriber.cursor(on: topic) ?? .max) <= oldest { return false }
        }
        return probes >= 0
    }

    private mutating func evictOldest(of topic: TopicState) {
        guard let entry = topic.log.removeFirst() else { return }
        topic.noteEvicted(entry.publisher, through: entry.lastSequence, at: topic.log.firstIndex - 1)
        topic.bytes -= entry.cost
        logBytes -= entry.cost
        counters.evicted += UInt64(entry.count)
    }

    // MARK: Replies, refusals and counts

    private mutating func reply(to client: RoutingID, _ bytes: [UInt8], output: inout some BrokerOutput) {
        guard var frame = try? ZMQFrame(bytes) else { return }
        output.reply(to: client, &frame)
    }

    private mutating func refuse(
        _ reason: Refusal.Reason, _ detail: String, to client: RoutingID, output: inout some BrokerOutput
    ) {
        noteRefused(reason)
        reply(to: client, ControlFrame.encode(.refused, Refusal(reason: reason, detail: detail)), output: &output)
        logRarely("refused", reason.rawValue, "refused a request: \(detail)", client: client)
    }

    private mutating func refuseSubscriber(
        _ reason: Refusal.Reason, _ detail: String, _ id: RoutingID, output: inout some BrokerOutput
    ) {
        noteRefused(reason)
        if var frame = try? ZMQFrame(ControlFrame.encode(.refused, Refusal(reason: reason, detail: detail))) {
            _ = output.deliver(to: id, &frame)
        }
        logRarely("refused", reason.rawValue, "refused a subscriber: \(detail)", client: id)
    }

    private mutating func malformed(
        _ failure: WireFormat.DecodeFailure, from client: RoutingID, frame: borrowing ZMQFrame,
        output: inout some BrokerOutput
    ) {
        noteMalformed(failure)
        if failure == .versionMismatch {
            noteVersionMismatch(frame: frame, client: client)
            reply(
                to: client,
                ControlFrame.encode(
                    .refused, Refusal(reason: .versionMismatch, detail: "this broker speaks wire format \(WireFormat.version)")),
                output: &output)
        }
    }

    private mutating func noteVersionMismatch(frame: borrowing ZMQFrame, client: RoutingID) {
        let version = frame.withUnsafeBytes { WireFormat.foreignVersion(of: $0) } ?? 0
        logRarely(
            "version", "\(version)",
            "a client speaks Herald wire format \(version), this broker speaks \(WireFormat.version); run the same Herald version everywhere",
            client: client, level: .warning)
    }

    /// Logs at most once a minute per kind, so that a flood of bad requests costs a few lines.
    private mutating func logRarely(
        _ category: String, _ key: String, _ message: String, client: RoutingID, level: Logger.Level = .info
    ) {
        let now = ContinuousClock.now
        let slot = category + "/" + key
        if let last = lastLog[slot], now - last < .seconds(60) { return }
        if lastLog.count > 256 { lastLog.removeAll() }
        lastLog[slot] = now
        logger.log(level: level, "\(message)", metadata: ["client": "\(client)"])
    }

    /// Counts a message dropped before it reached the core, for example one with too many frames.
    mutating func noteMalformed(_ failure: WireFormat.DecodeFailure) {
        counters.malformed[failure, default: 0] += 1
        malformedTotal += 1
    }

    private mutating func noteRefused(_ reason: Refusal.Reason) {
        counters.refused[reason, default: 0] += 1
        refusedTotal[reason, default: 0] += 1
    }

    /// What happened since the last call, for metrics and status; resets the counts.
    mutating func takeCounters() -> BrokerCounts {
        var taken = counters
        counters = BrokerCounts()
        taken.logBytes = logBytes
        taken.topicCount = topics.count
        taken.subscriberCount = subscribers.count
        for topic in topics where topic.received > 0 || topic.delivered > 0 {
            taken.perTopic.append((topic.name, topic.received, topic.delivered))
            topic.received = 0
            topic.delivered = 0
        }
        return taken
    }

    /// Status replies per second at most, in all.
    static let statusRepliesPerSecond = 20
    /// Bytes of topic names, and of publisher descriptions, a status report lists at most: with the rest it
    /// stays well under the 1 MiB a client accepts for a control message.
    static let statusListBytes = 256 * 1024

    /// What `herald status` shows.
    func status(now: ContinuousClock.Instant) -> BrokerStatus {
        var listed = 0
        let sortedTopics = topics.sorted { $0.name < $1.name }
        let shownTopics = sortedTopics.prefix { topic in
            listed += topic.name.utf8.count + 24
            return listed <= Self.statusListBytes
        }
        let shownNames = Set(shownTopics.map(\.name))
        listed = 0
        let descriptions = registrations.values.map { entry in
            let registration = entry.registration
            let endpoint = registration.endpoint.isEmpty ? "" : " \(registration.endpoint)"
            let strength = registration.strength.map { " strength \($0)" } ?? ""
            return "\(registration.publisher)\(endpoint) [\(registration.topics.joined(separator: ","))]\(strength)"
        }.sorted()
        let shownPublishers = descriptions.prefix { description in
            listed += description.utf8.count + 4
            return listed <= Self.statusListBytes
        }
        return BrokerStatus(
            broker: configuration.brokerID, mode: configuration.mode, epoch: epoch,
            leaderForSeconds: (now - startedAt).seconds,
            topics: Dictionary(shownTopics.map { ($0.name, $0.totalReceived) }, uniquingKeysWith: max),
            subscribedTopics: shownTopics.filter { !$0.subscribers.isEmpty }.map(\.name),
            subscribers: subscribers.count,
            publishers: Array(shownPublishers),
            malformedMessages: malformedTotal,
            refused: refusedTotal.reduce(into: [:]) { $0[$1.key.rawValue] = $1.value },
            logBytes: logBytes, logLimitBytes: configuration.logBytes,
            omittedTopics: topics.count > shownTopics.count ? topics.count - shownTopics.count : nil,
            owners: ownership.isEmpty ? nil : ownership.report { shownNames.contains($0) },
            omittedPublishers: descriptions.count > shownPublishers.count ? descriptions.count - shownPublishers.count : nil)
    }

    /// Direct-mode registrations, for status.
    var registeredPublishers: [PublisherRegistration] { registrations.values.map(\.registration) }
}

/// Moves a frame out of an `inout` parameter, leaving an empty one.
func take(_ frame: inout ZMQFrame) -> ZMQFrame {
    let taken = consume frame
    frame = ZMQFrame()
    return taken
}

// MARK: - State

/// Counts a broker reports, by kind; taken and reset in batches.
struct BrokerCounts: Sendable {
    var malformed: [WireFormat.DecodeFailure: UInt64] = [:]
    var refused: [Refusal.Reason: UInt64] = [:]
    var evicted: UInt64 = 0
    /// Messages a publisher sent again that the log had taken already, dropped.
    var duplicates: UInt64 = 0
    /// Log entries (messages, or batches of them) subscribers never got because they left the log first.
    var skipped: UInt64 = 0
    var stalls: UInt64 = 0
    var creditWaits: UInt64 = 0
    var perTopic: [(topic: String, received: UInt64, delivered: UInt64)] = []
    var logBytes = 0
    var topicCount = 0
    var subscriberCount = 0
}

/// One message kept in a topic's log.
struct LogEntry: ~Copyable {
    /// Bytes a kept message costs beyond its frame: this entry, and libzmq's counted block and allocator
    /// header around the content.
    static let overhead = MemoryLayout<LogEntry>.stride + 64

    /// A data frame, or a batch of one publisher's consecutive messages.
    var frame: ZMQFrame
    let publisher: PublisherID
    let firstSequence: UInt64
    let lastSequence: UInt64
    let lastSentAt: UInt64
    /// Data bytes appended to the topic before this message: how far behind a cursor here is.
    let offset: UInt64
    let cost: Int

    /// How many messages it holds: more than one for a batch.
    var count: Int { Int(lastSequence - firstSequence) + 1 }
}

/// A topic the leader knows: its log and the subscribers that follow it.
final class TopicState {
    let name: String
    var log = Ring<LogEntry>()
    /// Bytes the log costs, entries included.
    var bytes = 0
    /// Data bytes ever appended.
    var appendedBytes: UInt64 = 0
    var subscribers: [SubscriberState] = []
    /// What the entries its furthest-behind live subscriber had yet to be sent cost, when last measured.
    var unsent: UInt64 = 0
    /// Per publisher, the number of its last message that left the log and that message's place in it: what a
    /// subscriber the log skipped is told (``SkippedNotice``). At most ``maximumEvictedStreams`` publishers, the
    /// one whose message left longest ago making room for a new one: a few hundred bytes per topic.
    private var evictedThrough: [PublisherID: (sequence: UInt64, index: UInt64)] = [:]
    static let maximumEvictedStreams = 16
    /// Per publisher, the numbers of its messages this log took: what it does not take again (``takes(_:)``).
    /// At most ``maximumTakenStreams`` publishers, the one heard from longest ago making room.
    private var taken: [TakenNumbers] = []
    static let maximumTakenStreams = 16
    /// Runs this log was asked to take, to tell which publisher was heard from longest ago.
    private var runsOffered: UInt64 = 0
    /// The most history any publisher of the topic offers.
    var offered = 0
    /// Messages received and delivered since the counters were last taken, and received in all.
    var received: UInt64 = 0
    var delivered: UInt64 = 0
    var totalReceived: UInt64 = 0

    init(name: String) { self.name = name }

    /// Notes that `publisher`'s messages through `sequence` left the log, the last of them from place `index`.
    func noteEvicted(_ publisher: PublisherID, through sequence: UInt64, at index: UInt64) {
        // Updated in place: one lookup, and no allocation once the publisher is known.
        if let slot = evictedThrough.index(forKey: publisher) {
            evictedThrough.values[slot] = (max(evictedThrough.values[slot].sequence, sequence), index)
            return
        }
        if evictedThrough.count >= Self.maximumEvictedStreams,
            let oldest = evictedThrough.min(by: { $0.value.index < $1.value.index })?.key
        {
            evictedThrough[oldest] = nil
        }
        evictedThrough[publisher] = (sequence, index)
    }

    /// Whether the log should take `run`: not when every message of it was taken already. Only numbers known to
    /// have been taken are refused; a run partly taken is taken whole (for the subscribers to drop the rest), and
    /// a publisher the table has no room for is taken as it comes. Updated in place: no allocation but for a
    /// publisher new to the topic.
    func takes(_ run: DataRun) -> Bool {
        runsOffered &+= 1
        guard let slot = taken.firstIndex(where: { $0.publisher == run.publisher }) else {
            let numbers = TakenNumbers(publisher: run.publisher, first: run.firstSequence, last: run.lastSequence, heard: runsOffered)
            if taken.count < Self.maximumTakenStreams {
                taken.append(numbers)
            } else if let oldest = taken.indices.min(by: { taken[$0].heard < taken[$1].heard }) {
                taken[oldest] = numbers
            }
            return true
        }
        taken[slot].heard = runsOffered
        if taken[slot].contains(run.firstSequence, through: run.lastSequence) { return false }
        taken[slot].insert(run.firstSequence, through: run.lastSequence)
        return true
    }

    /// Per publisher (UUID text), the number of its last message that left the log from place `cursor` on.
    func evicted(since cursor: UInt64) -> [String: UInt64] {
        var through: [String: UInt64] = [:]
        for (publisher, last) in evictedThrough where last.index >= cursor { through[publisher.description] = last.sequence }
        return through
    }
}

/// Numbers of one publisher's messages that a topic's log took, as a few ranges: a publisher that loses messages
/// on a connection (a pause past its registration) and replays them opens a gap above what was taken, then fills
/// it from below, and each side of the gap must be known to be taken.
struct TakenNumbers {
    let publisher: PublisherID
    /// When the publisher was last heard on the topic, in runs the log was offered.
    var heard: UInt64
    /// `firsts[i]...lasts[i]` for `i` below `count`: apart from each other, neither overlapping nor adjacent.
    private var firsts = InlineArray<4, UInt64>(repeating: 0)
    private var lasts = InlineArray<4, UInt64>(repeating: 0)
    private var count = 0

    init(publisher: PublisherID, first: UInt64, last: UInt64, heard: UInt64) {
        self.publisher = publisher
        self.heard = heard
        insert(first, through: last)
    }

    /// Whether every number of `first...last` was taken.
    func contains(_ first: UInt64, through last: UInt64) -> Bool {
        for index in 0..<count where firsts[index] <= first && last <= lasts[index] { return true }
        return false
    }

    /// Notes that `first...last` was taken: the ranges it overlaps or adjoins join it, and past four ranges the
    /// lowest is forgotten, the numbers a replay (which climbs from the oldest message its publisher kept) is
    /// least likely to bring again.
    mutating func insert(_ first: UInt64, through last: UInt64) {
        var (first, last) = (first, last)
        var index = count - 1
        while index >= 0 {
            // Written without `+ 1`, which a forged number at the top of the range would trap on.
            let touches =
                (first <= lasts[index] || first - lasts[index] == 1)
                && (last >= firsts[index] || firsts[index] - last == 1)
            if touches {
                first = min(first, firsts[index])
                last = max(last, lasts[index])
                remove(at: index)
            }
            index -= 1
        }
        if count == firsts.count {
            var lowest = 0
            for candidate in 1..<count where firsts[candidate] < firsts[lowest] { lowest = candidate }
            remove(at: lowest)
        }
        firsts[count] = first
        lasts[count] = last
        count += 1
    }

    private mutating func remove(at index: Int) {
        count -= 1
        firsts[index] = firsts[count]
        lasts[index] = lasts[count]
    }
}

/// A publisher connection's credit.
final class PublisherConnection {
    var lastHeard: ContinuousClock.Instant
    /// The cumulative byte limit granted.
    var granted: UInt64
    /// Data bytes received in all.
    var received: UInt64 = 0
    /// The topics it published on, for deciding whether a slow subscriber holds it back.
    private(set) var topics: [TopicState] = []
    private(set) var publishedOnManyTopics = false
    private static let trackedTopics = 16
    /// The identities registered on this connection: one for a Herald publisher.
    private var publishers: [PublisherID] = []
    /// Identities one connection may register.
    static let maximumPublishers = 16

    init(lastHeard: ContinuousClock.Instant, granted: UInt64) {
        self.lastHeard = lastHeard
        self.granted = granted
    }

    /// Whether data under `publisher` may come from this connection.
    func owns(_ publisher: PublisherID) -> Bool {
        // The common case first: one publisher per connection, compared without a search.
        publishers.first == publisher || publishers.contains(publisher)
    }

    /// The topics its key may publish on; `nil` for every topic.
    var publishGrant: TopicGrant? {
        didSet { grantedTopic = [] }
    }
    /// The last topic found granted, so that a restricted publisher's steady stream is checked by one comparison.
    private var grantedTopic: [UInt8] = []

    /// Whether its key may publish on the topic whose name is `topic`.
    func mayPublish(on topic: UnsafeRawBufferPointer) -> Bool {
        guard let publishGrant else { return true }
        if !grantedTopic.isEmpty, topic.elementsEqual(grantedTopic) { return true }
        guard publishGrant.allows(bytes: topic) else { return false }
        grantedTopic = Array(topic)
        return true
    }

    /// Forgets that `publisher` registered on this connection.
    func disown(_ publisher: PublisherID) {
        publishers.removeAll { $0 == publisher }
    }

    /// Notes that `publisher` registered on this connection; `false` past ``maximumPublishers``.
    func adopt(_ publisher: PublisherID) -> Bool {
        if owns(publisher) { return true }
        guard publishers.count < Self.maximumPublishers else { return false }
        publishers.append(publisher)
        return true
    }

    func notePublished(on topic: TopicState) {
        guard !publishedOnManyTopics, topics.last !== topic, !topics.contains(where: { $0 === topic }) else { return }
        if topics.count == Self.trackedTopics {
            publishedOnManyTopics = true
            topics = []
        } else {
            topics.append(topic)
        }
    }
}

/// A subscriber: what it follows, and its window.
final class SubscriberState {
    struct Follow {
        let topic: TopicState
        var cursor: UInt64
        /// The first sequence number to send of the entry at the cursor: a batch may be owed only from its
        /// middle. 0 sends it whole.
        var from: UInt64 = 0
        /// Where message `from` starts in the entry's frame, when the pump sent the messages before it (0: not
        /// known), so that a large batch goes to a small-limit subscriber in slices without reading it again from
        /// the start for each.
        var offset = 0

        /// Points it at the entry at `cursor`, from message `sequence` on (0: all of it); where that message
        /// starts is not known yet.
        mutating func move(to cursor: UInt64, from sequence: UInt64 = 0) {
            self.cursor = cursor
            from = sequence
            offset = 0
        }

        /// Data bytes of the topic appended after the cursor.
        var lag: UInt64 {
            guard cursor < topic.log.endIndex else { return 0 }
            let from = max(cursor, topic.log.firstIndex)
            let offset = topic.log.withElement(at: from) { $0.offset } ?? topic.appendedBytes
            return topic.appendedBytes - offset
        }

        /// What the log entries from the cursor on cost, as the logs' bounds count it.
        var unsentCost: UInt64 {
            guard cursor < topic.log.endIndex else { return 0 }
            let entries = topic.log.endIndex - max(cursor, topic.log.firstIndex)
            return lag + entries * UInt64(LogEntry.overhead)
        }
    }

    let id: RoutingID
    var follows: [Follow] = []
    /// Its patterns: it follows every topic they match, those made later too.
    var patterns: [TopicFilter] = []
    var nextFollow = 0
    var window = BrokerCore.minimumSubscriberWindow
    /// Data bytes sent and acknowledged, in all, on this connection.
    var sent: UInt64 = 0
    var acknowledged: UInt64 = 0
    var lastHeard: ContinuousClock.Instant
    var lastProgress: ContinuousClock.Instant
    var stalled = false
    /// An ownership report could not be sent: it goes before any more data.
    var ownersOutdated = false
    /// The largest batch frame it takes (0: none, an older subscriber); a larger batch goes one message per frame.
    var batchBytes = 0
    /// Whether it takes ``WireFormat/Kind/skipped`` notices.
    var skipNotices = false

    init(id: RoutingID, now: ContinuousClock.Instant) {
        self.id = id
        lastHeard = now
        lastProgress = now
    }

    var inFlight: UInt64 { sent - acknowledged }

    func follow(_ topic: TopicState, from cursor: UInt64, sequence: UInt64 = 0) {
        if let index = follows.firstIndex(where: { $0.topic === topic }) {
            follows[index].move(to: cursor, from: sequence)
        } else {
            follows.append(Follow(topic: topic, cursor: cursor, from: sequence))
            topic.subscribers.append(self)
        }
    }

    /// Where it is in `topic`'s log, if it follows it.
    func following(_ topic: TopicState) -> Follow? { follows.first { $0.topic === topic } }

    func cursor(on topic: TopicState) -> UInt64? { following(topic)?.cursor }

    /// The topics it follows and its patterns, for matching names against both.
    var concerned: TopicFilterSet { TopicFilterSet(names: follows.map(\.topic.name), patterns: patterns) }

    func isCaughtUp(on topic: TopicState) -> Bool {
        // The newest message was just appended: a cursor one short of the end had reached everything before it.
        cursor(on: topic).map { $0 + 1 >= topic.log.endIndex } ?? false
    }

    /// Data bytes of `topic` appended after this subscriber's cursor.
    func lag(on topic: TopicState) -> UInt64 { following(topic)?.lag ?? 0 }
}

/// A publisher's registration and who sent it.
struct Registered {
    var registration: PublisherRegistration
    var lastSeen: ContinuousClock.Instant
    var client: RoutingID
    /// The CURVE key it registered with; `nil` without CurveZMQ.
    var key: String?
}

/// A subscribe request's resume information, keyed for lookups per log entry.
private struct Resume {
    var streams: [String: [PublisherID: UInt64]] = [:]

    init(_ request: SubscribeRequest) {
        for (topic, owed) in request.resume ?? [:] {
            var byPublisher: [PublisherID: UInt64] = [:]
            for (text, next) in owed {
                if let publisher = PublisherID(text) { byPublisher[publisher] = next }
            }
            streams[topic] = byPublisher
        }
    }
}

/// A token bucket: up to `perSecond` takes in any second, refilled continuously.
struct RateBudget {
    let perSecond: Int
    private var tokens: Double
    private var refilledAt: ContinuousClock.Instant?

    init(perSecond: Int) {
        self.perSecond = max(1, perSecond)
        tokens = Double(self.perSecond)
    }

    mutating func take(now: ContinuousClock.Instant) -> Bool {
        if let refilledAt, now > refilledAt {
            tokens = min(Double(perSecond), tokens + (now - refilledAt).seconds * Double(perSecond))
        }
        refilledAt = now
        guard tokens >= 1 else { return false }
        tokens -= 1
        return true
    }
}
