import CoreMetrics
import FoundationEssentials
import OSThreads
import Logging
import Synchronization
import ZeroMQ

#if canImport(Glibc)
    import Glibc
#endif

/// The leader broker's data plane: one thread that owns the request socket (a ROUTER, where publishers send
/// and clients ask) and the subscriber socket (a ROUTER, where subscribers attach), and runs a
/// ``BrokerCore`` between them.
///
/// Both sockets live on the thread for their whole life, as ZeroMQ requires. The thread receives into two
/// reusable frames and hands them to the core, which forwards them without copying, so the hot loop
/// allocates nothing; it polls with a short timeout so that it notices ``stop()`` and runs the core's
/// time-driven work without a wake-up socket.
final class BrokerEngine: Sendable {
    /// Where the engine listens, as advertised to clients.
    struct Endpoints: Sendable {
        var request: String
        var subscriber: String
    }

    /// How often the thread looks at its stop flag, expires silent clients and publishes its counts.
    static let pollInterval: Duration = .milliseconds(50)
    /// Messages handled per socket before looking at the other one, so neither starves.
    static let batch = 1024
    /// Bytes a client may have queued towards the broker before libzmq stops reading its connection: with
    /// the message size limit this gives each connection's receive queue (a count in libzmq) a bound in bytes.
    static let connectionQueueBytes = 64 << 20

    let endpoints: Endpoints
    private let stopRequested = Atomic(false)
    private let finished = Completion()

    private init(endpoints: Endpoints) {
        self.endpoints = endpoints
    }

    /// Binds the sockets on a new thread and starts serving.
    /// - Parameters:
    ///   - context: the ZeroMQ context; it should not share receive buffers (``ZMQContext/init(ioThreads:zeroCopyReceive:)``),
    ///     since the broker keeps frames in its logs.
    ///   - configuration: what to bind, advertise and bound.
    ///   - epoch: the term this engine serves, for status.
    ///   - logger: for the broker's steps.
    /// - Returns: the running engine, with the endpoints to advertise.
    static func start(
        context: ZMQContext, configuration: BrokerConfiguration, epoch: UInt64, logger: Logger
    ) async throws -> BrokerEngine {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<BrokerEngine, any Error>) in
            let serve: @Sendable () -> Void = {
                let loop: EngineLoop
                let engine: BrokerEngine
                do {
                    loop = try EngineLoop(context: context, configuration: configuration, epoch: epoch, logger: logger)
                    engine = BrokerEngine(endpoints: loop.advertised)
                } catch {
                    continuation.resume(throwing: error)
                    return
                }
                continuation.resume(returning: engine)
                loop.run(until: engine)
                engine.markFinished()
            }
            do {
                try OSThread.start(name: "herald-broker", serve)
            } catch {
                continuation.resume(throwing: error)
            }
        }
    }

    /// Whether ``stop()`` was called; read by the thread between polls.
    fileprivate var isStopRequested: Bool { stopRequested.load(ordering: .acquiring) }

    /// Stops serving, closes both sockets (clients see their connections drop) and waits for the thread.
    func stop() async {
        stopRequested.store(true, ordering: .releasing)
        await finished.wait()
    }

    fileprivate func markFinished() { finished.complete() }
}

// MARK: - The thread's loop

/// Everything the broker thread owns. Not `Sendable`: it is created and used on that thread only.
private final class EngineLoop {
    let request: ZMQSocket
    let subscribers: ZMQSocket
    let advertised: BrokerEngine.Endpoints
    let logger: Logger
    let metrics: BrokerMetrics
    var core: BrokerCore
    var output: SocketOutput
    var lastTick: ContinuousClock.Instant
    /// Reused for every message: receiving into them allocates nothing.
    var identity = ZMQFrame()
    var body = ZMQFrame()

    init(context: ZMQContext, configuration: BrokerConfiguration, epoch: UInt64, logger: Logger) throws {
        self.logger = logger
        request = try ZMQSocket(context: context, type: .router)
        subscribers = try ZMQSocket(context: context, type: .router)
        for socket in [request, subscribers] {
            try configuration.security?.configureServer(socket)
            try socket.setHeartbeats(every: configuration.heartbeatInterval)
            try socket.set(.linger(.zero))
        }
        try request.set(.maximumMessageSize(configuration.maximumMessageSize))
        try request.set(.receiveHighWaterMark(Self.highWaterMark(
            bytes: BrokerEngine.connectionQueueBytes, messageSize: configuration.maximumMessageSize)))
        // Subscribers send only control messages; what the broker sends them is bounded by their windows, so
        // the send queue may hold a window of the smallest messages.
        let controlLimit = WireFormat.maximumControlBody + 2
        try subscribers.set(.maximumMessageSize(controlLimit))
        try subscribers.set(.receiveHighWaterMark(Self.highWaterMark(
            bytes: BrokerEngine.connectionQueueBytes, messageSize: controlLimit)))
        try subscribers.set(.sendHighWaterMark(Self.highWaterMark(
            bytes: 2 * configuration.maximumSubscriberWindow, messageSize: WireFormat.dataOverhead + 1)))
        // A subscriber that is gone or whose queue is full is reported, not silently skipped: its cursor must
        // only move past what it was really sent.
        try subscribers.set(.routerMandatory(true))
        let requestBound = try request.bind("tcp://\(configuration.bindHost):\(configuration.requestPort)")
        let subscriberBound = try subscribers.bind("tcp://\(configuration.bindHost):\(configuration.subscriberPort)")
        advertised = .init(
            request: configuration.advertised(requestBound),
            subscriber: configuration.advertised(subscriberBound))
        let now = ContinuousClock.now
        lastTick = now
        core = BrokerCore(configuration: configuration, epoch: epoch, now: now, logger: logger)
        output = SocketOutput(request: request, subscribers: subscribers)
        metrics = BrokerMetrics(topicLimit: configuration.metricTopicLimit)
    }

    /// A count high-water mark under which `bytes` hold at least one message of `messageSize`.
    static func highWaterMark(bytes: Int, messageSize: Int) -> Int32 {
        Int32(clamping: max(16, bytes / max(1, messageSize)))
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
            if poller.readyEvents(requestEntry).contains(.readable) { drain(request, isRequest: true) }
            if poller.readyEvents(subscriberEntry).contains(.readable) { drain(subscribers, isRequest: false) }
            let now = ContinuousClock.now
            if now - lastTick >= BrokerEngine.pollInterval {
                lastTick = now
                core.tick(now: now, output: &output)
                metrics.record(core.takeCounters())
            }
        }
        metrics.record(core.takeCounters())
        request.close()
        subscribers.close()
    }

    /// Handles what is queued on a socket, up to a batch.
    private func drain(_ socket: ZMQSocket, isRequest: Bool) {
        let now = ContinuousClock.now
        for _ in 0..<BrokerEngine.batch {
            // A ROUTER delivers the sender's routing id, then the client's one frame.
            guard let more = try? socket.receive(into: &identity, dontWait: true) else { return }
            guard more, (try? socket.receive(into: &body, dontWait: true)) == false else {
                if more { socket.discardRemainingFrames() }
                core.noteMalformed(.extraFrames)
                continue
            }
            guard let client = identity.withUnsafeBytes({ RoutingID($0) }) else {
                core.noteMalformed(.truncated)
                continue
            }
            if isRequest {
                core.handleRequest(from: client, &body, now: now, output: &output)
            } else {
                core.handleSubscriberMessage(from: client, &body, now: now, output: &output)
            }
        }
    }
}

/// Sends the core's decisions through the ROUTER sockets, addressing each message with its routing id.
private struct SocketOutput: BrokerOutput {
    let request: ZMQSocket
    let subscribers: ZMQSocket

    mutating func reply(to client: RoutingID, _ frame: inout ZMQFrame) {
        // A reply to a client that is gone or does not read is dropped: replies are answers to requests the
        // client repeats (heartbeats, status), never data.
        _ = send(frame: &frame, to: client, through: request)
    }

    mutating func deliver(to subscriber: RoutingID, _ frame: inout ZMQFrame) -> DeliveryOutcome {
        send(frame: &frame, to: subscriber, through: subscribers)
    }

    private func send(frame: inout ZMQFrame, to peer: RoutingID, through socket: ZMQSocket) -> DeliveryOutcome {
        guard var address = try? peer.frame() else { return .wouldBlock }
        do {
            // With mandatory routing the routing id is where a full or missing peer is reported; once it is
            // accepted, the frame that follows is too.
            try socket.send(&address, more: true, dontWait: true)
            try socket.send(&frame, dontWait: true)
            return .sent
        } catch where error.kind == .wouldBlock {
            return .wouldBlock
        } catch {
            return .unreachable
        }
    }
}

/// The broker's metrics, fed from the core's counts in batches, off the per-message path.
private struct BrokerMetrics {
    let messagesIn = TopicCounters(label: Instruments.brokerMessagesIn)
    let messagesOut = TopicCounters(label: Instruments.brokerMessagesOut)
    let evicted = Counter(label: Instruments.brokerEvicted)
    let skipped = Counter(label: Instruments.brokerSkipped)
    let duplicates = Counter(label: Instruments.brokerDuplicates)
    let stalls = Counter(label: Instruments.brokerStalls)
    let logBytes = Gauge(label: Instruments.brokerLogBytes)
    let subscribers = Gauge(label: Instruments.brokerClients, dimensions: [("kind", "subscribers")])
    let topics = Gauge(label: Instruments.brokerTopics)

    init(topicLimit: Int) {
        messagesIn.limit = topicLimit
        messagesOut.limit = topicLimit
    }

    func record(_ counts: BrokerCounts) {
        for (topic, received, delivered) in counts.perTopic {
            if received > 0 { messagesIn.increment(topic, by: Int(clamping: received)) }
            if delivered > 0 { messagesOut.increment(topic, by: Int(clamping: delivered)) }
        }
        for (reason, count) in counts.malformed {
            Counter(label: Instruments.brokerMalformed, dimensions: [("reason", reason.rawValue)])
                .increment(by: Int(clamping: count))
        }
        for (reason, count) in counts.refused {
            Counter(label: Instruments.brokerRefused, dimensions: [("reason", reason.rawValue)])
                .increment(by: Int(clamping: count))
        }
        if counts.evicted > 0 { evicted.increment(by: Int(clamping: counts.evicted)) }
        if counts.skipped > 0 { skipped.increment(by: Int(clamping: counts.skipped)) }
        if counts.duplicates > 0 { duplicates.increment(by: Int(clamping: counts.duplicates)) }
        if counts.stalls > 0 { stalls.increment(by: Int(clamping: counts.stalls)) }
        logBytes.record(counts.logBytes)
        subscribers.record(counts.subscriberCount)
        topics.record(counts.topicCount)
    }
}
