import Logging
import ZeroMQ

// Entry points that drive Herald's cores from arbitrary bytes, without sockets, threads or time: for the
// libFuzzer targets in Fuzz/ and for the regression tests that replay what they found. They are SPI: not
// part of Herald's API, only reachable with `@_spi(Drivers) import Herald`.
//
// Each driver reads its input as a program: a byte picks an operation, the following bytes its arguments.
// Operations build frames that are well-formed (with extreme values where the format allows them) or
// ill-formed, so the fuzzer reaches the handlers behind the decoders. Each driver checks the properties its
// core promises and stops the process (`fatalError`) when one fails: that is the finding libFuzzer reports.

/// Reads fuzz input as a sequence of small values; reading past the end gives zeros.
struct FuzzInput {
    private let bytes: UnsafeRawBufferPointer
    private var offset = 0

    init(_ bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

    var isAtEnd: Bool { offset >= bytes.count }

    mutating func byte() -> UInt8 {
        guard offset < bytes.count else { return 0 }
        defer { offset += 1 }
        return bytes[offset]
    }

    mutating func uint64() -> UInt64 {
        var value: UInt64 = 0
        for _ in 0..<8 { value = value << 8 | UInt64(byte()) }
        return value
    }

    /// A count below `limit`, from two bytes.
    mutating func count(below limit: Int) -> Int {
        (Int(byte()) << 8 | Int(byte())) % max(1, limit)
    }

    /// A sequence number: small and dense most of the time, so that streams form, sometimes anything.
    mutating func sequence() -> UInt64 {
        switch byte() % 8 {
        case 0: uint64()
        case 1: .max - UInt64(byte())
        default: UInt64(byte() % 64)
        }
    }

    mutating func bytes(_ count: Int) -> [UInt8] {
        (0..<count).map { _ in byte() }
    }

    /// Bytes up to the next zero or the end, at most `limit`.
    mutating func text(limit: Int) -> [UInt8] {
        var result: [UInt8] = []
        while result.count < limit, !isAtEnd {
            let next = byte()
            if next == 0 { break }
            result.append(next)
        }
        return result
    }
}

/// A logger that drops everything, so fuzzing runs at full speed.
private let silentLogger = Logger(label: "herald.fuzz") { _ in SwiftLogNoOpLogHandler() }

private func require(_ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String) {
    if !condition() { fatalError("fuzz property failed: \(message())") }
}

// MARK: - Broker

/// Drives a ``BrokerCore`` with requests, subscriber messages and time.
@_spi(Drivers) public enum BrokerFuzzing {
    static let topics = ["a", "b", "c/d", "é", "c/d/e", "c"]
    /// What subscribers ask for: names and patterns.
    static let filters = ["a", "b", "c/d", "é", "c/+", "c/#", "#", "+/d", "c/+/e"]
    static let publishers = (0..<4).map { PublisherID(high: 0xF0 | UInt64($0), low: 1) }

    /// Runs one input.
    public static func run(_ data: UnsafeRawBufferPointer) {
        var input = FuzzInput(data)
        var configuration = BrokerConfiguration(
            zookeeper: .init(connectionString: "127.0.0.1:1"), layout: try! ClusterLayout(cluster: "fuzz"))
        // Small limits, so that eviction, stalls and refusals happen within a short input.
        configuration.maximumMessageSize = 4096
        configuration.topicLogBytes = 3 * 4096
        configuration.logBytes = 5 * 4096
        configuration.publisherWindow = 4096
        configuration.maximumSubscriberWindow = 70_000
        configuration.maximumTopics = 6
        configuration.maximumTopicsPerRequest = 5
        configuration.maximumPublishers = 4
        configuration.maximumSubscribers = 3
        configuration.maximumSubscriptions = 7
        configuration.registrationBytes = 1500
        configuration.historyLimit = 50
        configuration.mode = input.byte() % 5 == 0 ? .direct : .broker
        var now = ContinuousClock.Instant.now
        var core = BrokerCore(configuration: configuration, epoch: 1, now: now, logger: silentLogger)
        var output = FuzzOutput()
        while !input.isAtEnd {
            let operation = input.byte()
            let peer = [0, 0, 0, 0, input.byte() % 6].withUnsafeBytes { RoutingID($0)! }
            output.nextOutcome = [.sent, .sent, .sent, .wouldBlock, .unreachable][Int(input.byte() % 5)]
            var bytes: [UInt8]
            var toSubscriberSocket = false
            switch operation % 10 {
            case 0:
                bytes = input.bytes(input.count(below: 300))
            case 1:
                bytes = input.bytes(input.count(below: 300))
                toSubscriberSocket = true
            case 2, 3:
                let topic = input.byte() % 8 < 7 ? Array(topics[Int(input.byte()) % topics.count].utf8) : input.text(limit: 300)
                let publisher = publishers[Int(input.byte()) % publishers.count]
                let sequence = input.sequence()
                // Now and then a batch: consecutive numbers, or (rarely) whatever the input says.
                let count = input.byte() % 4 == 0 ? 1 + Int(input.byte() % 5) : 1
                var frames: [[UInt8]] = []
                for offset in 0..<count {
                    let header = MessageHeader(
                        publisher: publisher,
                        sequence: input.byte() % 16 == 0 ? input.sequence() : sequence &+ UInt64(offset),
                        sentAt: input.byte() % 2 == 0 ? input.uint64() : 1_000)
                    let payload = input.bytes(input.count(below: 3000 / count))
                    let key = [WireFormat.version, WireFormat.Kind.data.rawValue] + topic + [0]
                    frames.append(DataLayout.frame(key: key, header: header, payload: payload))
                }
                bytes = count == 1 ? frames[0] : DataRun.batch(of: frames)
            case 4:
                let registration = PublisherRegistration(
                    publisher: publishers[Int(input.byte()) % publishers.count], endpoint: "tcp://x:1",
                    topics: (0..<Int(input.byte() % 7)).map { _ in topics[Int(input.byte()) % topics.count] },
                    history: Int(truncatingIfNeeded: input.uint64()), startedAt: input.uint64(),
                    strength: input.byte() % 3 == 0 ? nil : Int(input.byte() % 4) - 1)
                let kind: WireFormat.Kind = input.byte() % 4 == 0 ? .unregister : .register
                bytes = ControlFrame.encode(kind, registration)
            case 5:
                var resume: [String: [String: UInt64]] = [:]
                for _ in 0..<Int(input.byte() % 4) {
                    resume[topics[Int(input.byte()) % topics.count], default: [:]][
                        publishers[Int(input.byte()) % publishers.count].description] = input.sequence()
                }
                let request = SubscribeRequest(
                    topics: (0..<Int(input.byte() % 7)).map { _ in filters[Int(input.byte()) % filters.count] },
                    window: Int(truncatingIfNeeded: input.uint64()),
                    history: input.byte() % 2 == 0 ? nil : Int(truncatingIfNeeded: input.uint64()),
                    resume: input.byte() % 2 == 0 ? nil : resume, since: input.byte() % 2 == 0 ? nil : input.uint64(),
                    batchBytes: input.byte() % 4 == 0 ? nil : Int(input.byte()) * 64)
                bytes = ControlFrame.encode(.subscribe, request)
                toSubscriberSocket = true
            case 6:
                bytes = ControlFrame.count(.consumed, input.byte() % 2 == 0 ? input.uint64() : UInt64(input.count(below: 70_000)))
                toSubscriberSocket = true
            case 7:
                bytes = input.byte() % 2 == 0
                    ? ControlFrame.empty(.status)
                    : ControlFrame.encode(.lookup, DiscoveryQuery(topics: [filters[Int(input.byte()) % filters.count]]))
            case 8:
                now += .milliseconds(Int(input.byte()) * 50)
                core.tick(now: now, output: &output)
                continue
            default:
                bytes = [UInt8(input.byte() % 3), input.byte()] + input.bytes(input.count(below: 64))
            }
            guard var frame = try? ZMQFrame(bytes) else { continue }
            if toSubscriberSocket {
                core.handleSubscriberMessage(from: peer, &frame, now: now, output: &output)
            } else {
                core.handleRequest(from: peer, &frame, now: now, output: &output)
            }
            let counts = core.takeCounters()
            let largest = configuration.maximumMessageSize + LogEntry.overhead
            require(counts.logBytes <= configuration.logBytes + largest, "log holds \(counts.logBytes) bytes")
            require(counts.logBytes >= 0, "log bytes went negative")
        }
    }
}

/// Stands in for the engine's sockets: releases what it is given and answers deliveries as told.
private struct FuzzOutput: BrokerOutput {
    var nextOutcome: DeliveryOutcome = .sent

    mutating func reply(to client: RoutingID, _ frame: inout ZMQFrame) {
        let valid = frame.withUnsafeBytes { (try? WireFormat.kind(of: $0).get()) != nil }
        require(valid, "a reply that is not a valid frame")
        frame.clear()
    }

    mutating func deliver(to subscriber: RoutingID, _ frame: inout ZMQFrame) -> DeliveryOutcome {
        let kind = frame.withUnsafeBytes { try? WireFormat.kind(of: $0).get() }
        require(kind != nil, "a delivery that is not a valid frame")
        if kind == .batch {
            let run = frame.withUnsafeBytes { try? DataRun.decode($0).get() }
            require(run != nil, "a batch forwarded that is not one topic and publisher numbered in order")
        }
        if nextOutcome == .sent { frame.clear() }
        return nextOutcome
    }
}

// MARK: - Subscriber

/// Drives a ``SubscriberCore`` with data frames and time, and checks that each stream is delivered in
/// strictly increasing order with its payload intact, and that held bytes stay within their limit.
@_spi(Drivers) public enum SubscriberFuzzing {
    static let publishers = (0..<4).map { PublisherID(high: 0xA0 | UInt64($0), low: 2) }

    /// Runs one input.
    public static func run(_ data: UnsafeRawBufferPointer) {
        var input = FuzzInput(data)
        let heldLimit = 4096
        // Two names and a pattern, whose topics are numbered as they first arrive.
        var core = SubscriberCore(
            filters: ["a", "b", "p/+"],
            sequencer: Sequencer(
                gapTimeout: .seconds(1), holdLimit: 16, heldBytes: heldLimit, streamLimit: 6,
                streamIdleTimeout: .seconds(10)))
        var now = ContinuousClock.Instant.now
        var sink = OrderCheckingSink()
        while !input.isAtEnd {
            switch input.byte() % 6 {
            case 0:
                now += .milliseconds(Int(input.byte()) * 20)
                core.sequencer.expireGaps(now: now, into: &sink)
                core.sequencer.forgetSilentStreams(now: now)
                sink.forget(except: core.sequencer)
            case 1:
                let frame = input.bytes(input.count(below: 200))
                // As before every delivery: a stream the sequencer forgot (evicted by the last step) starts afresh.
                sink.forget(except: core.sequencer)
                frame.withUnsafeBytes { bytes in
                    // Raw bytes can make a valid data frame with any payload: the sink is told what it was fed.
                    if case .success(let layout) = DataLayout.decode(bytes) {
                        // A new name the pattern takes is numbered next.
                        let name = Array(bytes[layout.topic])
                        let topic = core.topics.firstIndex { Array($0.name.utf8) == name } ?? core.topics.count
                        sink.expect(
                            Array(bytes[layout.payload]), sequence: layout.header.sequence,
                            of: Sequencer.StreamKey(publisher: layout.header.publisher, topic: topic))
                    }
                    _ = core.acceptFrame(bytes, receivedAt: 0, now: now, into: &sink)
                }
                sink.forget(except: core.sequencer)
            default:
                let names: [Topic] = ["a", "b", "zz", "p/x", "p/y", "p/x/z", "p"]
                let topic = names[Int(input.byte()) % names.count]
                let publisher = publishers[Int(input.byte()) % publishers.count]
                let first = input.sequence()
                // Now and then a batch of consecutive messages, as a publisher under load sends them.
                let count = input.byte() % 4 == 0 ? 1 + Int(input.byte() % 5) : 1
                var frames: [[UInt8]] = []
                for offset in 0..<count {
                    let header = MessageHeader(publisher: publisher, sequence: first &+ UInt64(offset), sentAt: input.uint64())
                    let payload = OrderCheckingSink.payload(for: header.sequence, count: input.count(below: 600 / count))
                    frames.append(DataLayout.frame(key: topic.key, header: header, payload: payload))
                }
                let frame = count == 1 ? frames[0] : DataRun.batch(of: frames)
                let owedFromFirst = input.byte() % 4 == 0
                sink.forget(except: core.sequencer)
                _ = frame.withUnsafeBytes {
                    core.acceptFrame($0, receivedAt: 0, now: now, lostBeforeFirst: { _ in owedFromFirst }, into: &sink)
                }
            }
            require(core.sequencer.heldByteCount <= heldLimit, "holds \(core.sequencer.heldByteCount) bytes")
            require(core.sequencer.heldByteCount >= 0, "held bytes went negative")
        }
    }
}

/// Checks what a sequencer delivers: per stream, sequence numbers strictly increase, and each payload is the
/// one made for its number.
private struct OrderCheckingSink: Sequencer.Sink {
    struct Message: Hashable {
        var stream: Sequencer.StreamKey
        var sequence: UInt64
    }

    var last: [Sequencer.StreamKey: UInt64] = [:]
    /// Payloads fed in raw frames, which need not follow ``payload(for:count:)``.
    var fed: [Message: Set<[UInt8]>] = [:]

    static func payload(for sequence: UInt64, count: Int) -> [UInt8] {
        (0..<count).map { UInt8(truncatingIfNeeded: sequence &+ UInt64($0)) }
    }

    mutating func expect(_ payload: [UInt8], sequence: UInt64, of stream: Sequencer.StreamKey) {
        fed[Message(stream: stream, sequence: sequence), default: []].insert(payload)
    }

    mutating func deliver(topic: Int, header: MessageHeader, payload: UnsafeRawBufferPointer, receivedAt: UInt64) {
        let key = Sequencer.StreamKey(publisher: header.publisher, topic: topic)
        if let previous = last[key] {
            require(header.sequence > previous, "stream delivered \(header.sequence) after \(previous)")
        }
        last[key] = header.sequence
        let intact =
            payload.elementsEqual(Self.payload(for: header.sequence, count: payload.count))
            || fed[Message(stream: key, sequence: header.sequence)]?.contains(Array(payload)) == true
        require(intact, "the payload of \(header.sequence) changed on the way")
    }

    /// Drops streams the sequencer forgot: a forgotten stream starts afresh, by design.
    mutating func forget(except sequencer: Sequencer) {
        for key in last.keys where !sequencer.knows(key) { last[key] = nil }
    }
}

// MARK: - ZooKeeper records

/// Drives the parsers of what Herald reads from ZooKeeper (leader records, candidate names, the mode) and of
/// control-message bodies, checking round trips and the election's decisions.
@_spi(Drivers) public enum RecordFuzzing {
    /// Runs one input.
    public static func run(_ data: UnsafeRawBufferPointer) {
        let bytes = Array(data)
        if let record = LeaderRecord(decoding: bytes) {
            require(LeaderRecord(decoding: record.encoded()) == record, "a leader record does not round-trip")
        }
        _ = DisseminationMode(rawValue: String(decoding: bytes, as: UTF8.self))
        _ = try? ClusterLayout(cluster: String(decoding: bytes.prefix(80), as: UTF8.self))

        let names = bytes.split(separator: 0, omittingEmptySubsequences: true).map { String(decoding: $0, as: UTF8.self) }
        for me in names.prefix(4) + ["candidate-0000000005"] {
            let mine = LeaderElection.sequenceNumber(of: me)
            switch LeaderElection.nextStep(candidates: names, me: me) {
            case .lead:
                require(mine != nil && names.contains(me), "leads without being a candidate")
                let lower = names.contains { name in
                    guard let other = LeaderElection.sequenceNumber(of: name) else { return false }
                    return (other, name) < (mine!, me)
                }
                require(!lower, "leads with a lower candidate present")
            case .watch(let predecessor):
                require(names.contains(predecessor), "watches a predecessor that is not a candidate")
                require(
                    (LeaderElection.sequenceNumber(of: predecessor)!, predecessor) < (mine!, me),
                    "watches a candidate after itself")
            case .rejoin:
                require(mine == nil || !names.contains(me), "rejoins while being a valid candidate")
            }
        }

        do {
            let frame = data
            _ = ControlFrame.decode(PublisherRegistration.self, from: frame)
            _ = ControlFrame.decode(DiscoveryQuery.self, from: frame)
            _ = ControlFrame.decode(DiscoveryReply.self, from: frame)
            _ = ControlFrame.decode(SubscribeRequest.self, from: frame)
            _ = ControlFrame.decode(SubscribeReply.self, from: frame)
            _ = ControlFrame.decode(Refusal.self, from: frame)
            _ = ControlFrame.decode(BrokerStatus.self, from: frame)
            _ = ControlFrame.decodeCount(frame)
            _ = WireFormat.kind(of: frame)
            if case .success(let layout) = DataLayout.decode(frame) {
                require(layout.payload.upperBound == frame.count, "the payload does not end the frame")
                require(layout.topic.lowerBound == 2 && frame[layout.topic.upperBound] == 0, "the topic is misplaced")
            }
        }
    }
}
