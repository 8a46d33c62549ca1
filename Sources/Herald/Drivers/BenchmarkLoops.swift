import Logging
import ZeroMQ

// The hot paths, ready to be timed and their allocations counted by the micro-benchmarks in Benchmarks/:
// each loop is set up once, and `run` then does `iterations` messages' worth of work in the steady state.
// SPI, like the fuzz drivers: reachable with `@_spi(Drivers) import Herald`.

private let silentLogger = Logger(label: "herald.benchmark") { _ in SwiftLogNoOpLogHandler() }

/// Encodes data frames into one reused buffer, as a publisher does into its retention buffer.
@_spi(Drivers) public struct EncodeLoop {
    private var buffer: [UInt8]
    private let key: [UInt8]
    private let payload: [UInt8]
    private var sequence: UInt64 = 0
    let publisher = PublisherID()

    /// Prepares frames of `payloadSize` bytes of payload on a short topic.
    public init(payloadSize: Int) {
        key = Topic("bench").key
        payload = [UInt8](repeating: 0x2E, count: payloadSize)
        buffer = [UInt8](repeating: 0, count: DataLayout.frameSize(keyCount: key.count, payloadCount: payloadSize))
    }

    /// Encodes `iterations` frames.
    public mutating func run(_ iterations: Int) {
        for _ in 0..<iterations {
            sequence += 1
            let header = MessageHeader(publisher: publisher, sequence: sequence, sentAt: sequence)
            buffer.withUnsafeMutableBytes { destination in
                key.withUnsafeBytes { key in
                    payload.withUnsafeBytes { DataLayout.encode(into: destination, key: key, header: header, payload: $0) }
                }
            }
        }
    }
}

/// Decodes one data frame again and again, as a broker or subscriber does with each arrival.
@_spi(Drivers) public struct DecodeLoop {
    private let frame: [UInt8]
    /// Sums the decoded sequence numbers, so the work cannot be optimised away.
    public private(set) var checksum: UInt64 = 0

    /// Prepares a frame of `payloadSize` bytes of payload.
    public init(payloadSize: Int) {
        var encode = EncodeLoop(payloadSize: payloadSize)
        encode.run(1)
        frame = encode.frame
    }

    /// Decodes `iterations` times.
    public mutating func run(_ iterations: Int) {
        for _ in 0..<iterations {
            if case .success(let layout) = frame.withUnsafeBytes({ DataLayout.decode($0) }) {
                checksum &+= layout.header.sequence &+ UInt64(layout.payload.count)
            }
        }
    }
}

extension EncodeLoop {
    fileprivate var frame: [UInt8] { buffer }
}

/// A broker core forwarding a publisher's frames to subscribers that keep up, with its log at its byte limit:
/// the broker's per-message work without its sockets.
@_spi(Drivers) public struct ForwardLoop: ~Copyable {
    private var core: BrokerCore
    private var output: CountingOutput
    private var frames: Ring<ZMQFrame>
    /// Where each message's number sits in a frame: a frame is numbered anew each time it goes, since a broker
    /// takes each of a publisher's numbers once.
    private let sequenceOffsets: [Int]
    private var sequence: UInt64 = 0
    private let publisher: RoutingID
    private let subscribers: [RoutingID]
    private var now: ContinuousClock.Instant
    private var iteration: Int
    private let messagesPerFrame: Int
    /// Messages of a frame not forwarded yet by ``run(_:)``, which counts in messages.
    private var carried = 0

    /// Sets up a broker with one publisher and `subscribers` subscribers, and fills its log; with
    /// `messagesPerFrame` above 1 the publisher sends batches of that many messages. The subscribers take batches
    /// up to `subscriberBatchBytes` (`nil`: none, as an older subscriber).
    public init(
        payloadSize: Int, subscribers: Int = 1, messagesPerFrame: Int = 1, subscriberBatchBytes: Int? = 1 << 20
    ) throws {
        var configuration = BrokerConfiguration(
            zookeeper: .init(connectionString: "127.0.0.1:1"), layout: try ClusterLayout(cluster: "bench"))
        configuration.logBytes = 8 << 20
        configuration.topicLogBytes = 4 << 20
        let now = ContinuousClock.now
        // Everything that can throw happens before the noncopyable properties are set.
        var encode = EncodeLoop(payloadSize: payloadSize)
        var register = try ZMQFrame(
            ControlFrame.encode(
                .register, PublisherRegistration(publisher: encode.publisher, endpoint: "", topics: ["bench"])))
        let subscriberIDs = (0..<subscribers).map { RoutingID.loop(UInt8(2 + $0)) }
        var subscriptions: [[UInt8]] = []
        for _ in subscriberIDs {
            subscriptions.append(
                ControlFrame.encode(.subscribe, SubscribeRequest(
                        topics: ["bench"], window: 4 << 20, history: nil, batchBytes: subscriberBatchBytes)))
        }
        var messages: [[UInt8]] = []
        for _ in 0..<messagesPerFrame {
            encode.run(1)
            messages.append(encode.frame)
        }
        let encoded = messagesPerFrame == 1 ? messages[0] : DataRun.batch(of: messages)
        let message = messages[0]
        let numberOffset = (try? message.withUnsafeBytes { try DataLayout.decode($0).get() }.sequenceOffset) ?? 0
        let sequenceOffsets = messagesPerFrame == 1
            ? [numberOffset]
            : (0..<messagesPerFrame).map { 2 + $0 * (4 + message.count) + 4 + numberOffset }
        // More frames than the log holds entries, so that a frame is renumbered only once no entry shares it.
        let logEntries = configuration.topicLogBytes / (encoded.count + LogEntry.overhead) + 1
        var core = BrokerCore(configuration: configuration, epoch: 1, now: now, logger: silentLogger)
        var output = CountingOutput()
        core.handleRequest(from: RoutingID.loop(1), &register, now: now, output: &output)
        for (subscriber, subscription) in zip(subscriberIDs, subscriptions) {
            guard var frame = try? ZMQFrame(subscription) else { continue }
            core.handleSubscriberMessage(from: subscriber, &frame, now: now, output: &output)
        }
        // Frames made once; each iteration forwards a shared copy, as libzmq would hand the broker a new one.
        var frames = Ring<ZMQFrame>()
        for _ in 0..<(logEntries + 64) {
            if let frame = try? ZMQFrame(encoded) { frames.append(frame) }
        }
        self.core = core
        self.output = output
        self.frames = frames
        self.sequenceOffsets = sequenceOffsets
        self.subscribers = subscriberIDs
        self.now = now
        self.publisher = RoutingID.loop(1)
        self.iteration = 0
        self.messagesPerFrame = messagesPerFrame
        run(100_000)
    }

    /// Forwards `iterations` messages' worth of frames, acknowledging for the subscribers as they would.
    public mutating func run(_ iterations: Int) {
        carried += iterations
        let frameCount = carried / messagesPerFrame
        carried %= messagesPerFrame
        // Acknowledged every 256 messages or every frame, well within the subscribers' window.
        let acknowledgeEvery = max(1, 256 / messagesPerFrame)
        for _ in 0..<frameCount {
            guard var frame = frames.updateElement(at: UInt64(iteration % frames.count), { master -> ZMQFrame? in
                master.withUnsafeMutableBytes { bytes in
                    for offset in sequenceOffsets {
                        sequence += 1
                        bytes.storeBytes(of: sequence.bigEndian, toByteOffset: offset, as: UInt64.self)
                    }
                }
                return try? master.share()
            })
            else { break }
            core.handleRequest(from: publisher, &frame, now: now, output: &output)
            iteration += 1
            if iteration % acknowledgeEvery == 0 {
                for subscriber in subscribers {
                    guard var consumed = ControlFrame.countFrame(.consumed, output.deliveredBytes) else { continue }
                    core.handleSubscriberMessage(from: subscriber, &consumed, now: now, output: &output)
                }
            }
        }
    }

    /// Frames delivered to subscribers so far.
    public var delivered: Int { output.delivered }
}

/// Releases what a core sends, counting it.
private struct CountingOutput: BrokerOutput {
    var delivered = 0
    var deliveredBytes: UInt64 = 0

    mutating func reply(to client: RoutingID, _ frame: inout ZMQFrame) { frame.clear() }

    mutating func deliver(to subscriber: RoutingID, _ frame: inout ZMQFrame) -> DeliveryOutcome {
        delivered += 1
        deliveredBytes += UInt64(frame.count)
        frame.clear()
        return .sent
    }
}

extension RoutingID {
    fileprivate static func loop(_ value: UInt8) -> RoutingID { [0, 0, 0, 0, value].withUnsafeBytes { RoutingID($0)! } }
}

/// A subscriber decoding and ordering one publisher's frames as they arrive, into batches.
@_spi(Drivers) public struct SequenceLoop {
    private var core: SubscriberCore
    private var frame: [UInt8]
    private var sequence: UInt64 = 0
    private var sequenceOffset: Int
    private var now = ContinuousClock.now
    private var batch: MessageBatch
    /// Messages delivered so far.
    public private(set) var delivered = 0

    /// Prepares frames of `payloadSize` bytes of payload.
    public init(payloadSize: Int) {
        let topics: [Topic] = ["bench"]
        core = SubscriberCore(topics: topics, sequencer: Sequencer())
        var encode = EncodeLoop(payloadSize: payloadSize)
        encode.run(1)
        frame = encode.frame
        sequenceOffset = (try? frame.withUnsafeBytes { try DataLayout.decode($0).get() }.sequenceOffset) ?? 0
        batch = MessageBatch(topics: topics, capacity: 1 << 20)
        run(10_000)
    }

    /// Takes `iterations` frames in order; the batch is handed on every 1024 messages, as the socket thread does.
    public mutating func run(_ iterations: Int) {
        var sink = BatchAppender(batch: batch)
        batch = MessageBatch(topics: core.topics)
        for _ in 0..<iterations {
            sequence += 1
            let next = sequence
            let offset = sequenceOffset
            frame.withUnsafeMutableBytes { $0.storeBytes(of: next.bigEndian, toByteOffset: offset, as: UInt64.self) }
            _ = frame.withUnsafeBytes { core.acceptData($0, receivedAt: 0, now: now, into: &sink) }
            if sink.batch.count == 1024 {
                // Handed on: the application keeps that batch, and a new one is filled.
                delivered += sink.batch.count
                sink.batch = MessageBatch(following: sink.batch)
            }
        }
        batch = sink.batch
    }
}

/// Appends deliveries to a batch.
private struct BatchAppender: Sequencer.Sink {
    var batch: MessageBatch

    mutating func deliver(topic: Int, header: MessageHeader, payload: UnsafeRawBufferPointer, receivedAt: UInt64) {
        batch.append(topic: topic, header: header, payload: payload, receivedAt: receivedAt)
    }
}

/// Prints the messages of a full batch as `herald subscribe` does: one line each into one reused buffer, emptied
/// once per batch, where the printer writes it.
@_spi(Drivers) public struct PrintLoop {
    private let batch: MessageBatch
    private let encoder: MessageLineEncoder
    private var output: [UInt8] = []
    /// Bytes printed so far.
    public private(set) var printed = 0

    /// Prepares a batch of 1,024 messages of `payloadSize` bytes of printable text.
    /// - Parameters:
    ///   - json: JSON lines, else plain ones.
    ///   - payload: how payloads are printed.
    public init(payloadSize: Int, json: Bool, payload: MessageLineEncoder.PayloadStyle) {
        encoder = MessageLineEncoder(json: json, payload: payload)
        var batch = MessageBatch(topics: ["bench/readings"])
        let publisher = PublisherID()
        let text = [UInt8](repeating: UInt8(ascii: "x"), count: payloadSize)
        text.withUnsafeBytes { payload in
            for sequence in 1...1024 {
                let header = MessageHeader(publisher: publisher, sequence: UInt64(sequence), sentAt: 1_700_000_000_000_000_000)
                batch.append(topic: 0, header: header, payload: payload, receivedAt: 1_700_000_000_000_250_000)
            }
        }
        self.batch = batch
        run(10_000)
    }

    /// Prints `iterations` messages.
    public mutating func run(_ iterations: Int) {
        var index = 0
        for _ in 0..<iterations {
            encoder.append(batch[index], to: &output)
            index += 1
            if index == batch.endIndex {
                printed += output.count
                output.removeAll(keepingCapacity: true)
                index = 0
            }
        }
    }
}
