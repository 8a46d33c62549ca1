/// Turns what arrives from the network (live messages, replays after a failover, history) into each
/// publisher's messages exactly once and in order, and counts what could not be delivered that way.
///
/// Each publisher numbers its messages per topic from 1, so a (publisher, topic) pair is one stream. For each
/// stream the sequencer knows the next sequence number it owes the application:
/// - a lower number is a duplicate (a replay, or history overlapping live traffic) and is dropped;
/// - the expected number is delivered, with any held successors that now follow on;
/// - a higher number is held while the gap before it may still be filled, for at most ``gapTimeout``; then
///   the missing numbers are counted as lost and the held messages delivered.
///
/// A stream starts at the first message seen from it, so a new subscriber is not owed what was published
/// before it subscribed; a publisher that restarts has a new identity, so its numbering starts a new stream.
///
/// The state of a stream is updated in place and a message in order is handed on without being copied, so
/// the steady state allocates nothing; only held messages are copied. Held bytes, held messages per stream and
/// the number of streams are bounded: past them the oldest gap is given up (and counted), and streams that
/// fell silent are forgotten.
public struct Sequencer: Sendable {
    /// How long a gap may stay open: long enough for a publisher to reattach to a new leader and replay, short
    /// enough that a lost message holds up its successors only briefly.
    public static let defaultGapTimeout: Duration = .seconds(3)
    /// Messages held per stream at most; beyond that the oldest gap is declared lost at once.
    public static let defaultHoldLimit = 100_000
    /// Bytes of payload held across all streams at most: out-of-order messages wait here, so this bounds the
    /// subscriber's reorder memory.
    public static let defaultHeldBytes = 16 << 20
    /// Streams remembered at most; past it the one silent longest is forgotten.
    public static let defaultStreamLimit = 100_000
    /// A stream silent this long is forgotten: far longer than a publisher retains messages for replay, so a
    /// forgotten stream has nothing left that could come back as a duplicate.
    public static let defaultStreamIdleTimeout: Duration = .seconds(120)

    /// What the sequencer counted so far.
    public struct Statistics: Sendable, Equatable {
        /// Messages handed to the application.
        public var delivered: UInt64 = 0
        /// Sequence numbers never received before their gap timed out.
        public var lost: UInt64 = 0
        /// Messages received again after delivery, and dropped.
        public var duplicates: UInt64 = 0
        /// Messages that arrived after a later one of their stream and were put back in order.
        public var reordered: UInt64 = 0
        /// Streams (publisher and topic pairs) seen.
        public var streams: Int = 0

        /// Creates counts.
        public init(delivered: UInt64 = 0, lost: UInt64 = 0, duplicates: UInt64 = 0, reordered: UInt64 = 0, streams: Int = 0) {
            self.delivered = delivered
            self.lost = lost
            self.duplicates = duplicates
            self.reordered = reordered
            self.streams = streams
        }
    }

    /// One stream: a publisher on a topic (a topic is numbered by its owner).
    struct StreamKey: Hashable, Sendable {
        var publisher: PublisherID
        var topic: Int
    }

    /// Where delivered messages go, in order.
    protocol Sink {
        mutating func deliver(topic: Int, header: MessageHeader, payload: UnsafeRawBufferPointer, receivedAt: UInt64)
    }

    private struct Held: Sendable {
        var header: MessageHeader
        var payload: [UInt8]
        var receivedAt: UInt64

        /// What holding it costs, as counted against the byte limit: its payload, and the entry and the
        /// payload's array header, so that messages with empty payloads are not free to hold.
        var cost: Int { Held.cost(ofPayload: payload.count) }

        static func cost(ofPayload count: Int) -> Int { count + 96 }
    }

    private struct Stream: Sendable {
        var next: UInt64
        var held: [UInt64: Held] = [:]
        var gapOpenedAt: ContinuousClock.Instant?
        var lastSeen: ContinuousClock.Instant
        /// The highest number was delivered: nothing more can follow.
        var exhausted = false
        /// Its topic's owner changed: its next message continues it from there, since what its publisher sent
        /// while another owned the topic was never owed.
        var resyncing = false
        /// The highest number a leader said left its log before this subscriber was sent it: those not received
        /// by the time the gap expires are lost.
        var givenUpThrough: UInt64?
    }

    /// How long a gap may stay open.
    public let gapTimeout: Duration
    /// Messages held per stream at most.
    public let holdLimit: Int
    /// Bytes held at most: payloads, and a fixed share per message held.
    public let heldBytesLimit: Int
    /// Streams remembered at most.
    public let streamLimit: Int
    /// How long a silent stream is remembered.
    public let streamIdleTimeout: Duration
    /// The counts so far.
    public private(set) var statistics = Statistics()
    private var streams: [StreamKey: Stream] = [:]
    private var heldBytes = 0
    /// Topics whose owner changed: a stream first seen on one starts where it is first seen, even in direct
    /// mode, since what came before belonged to another owner.
    private var topicsStartingFresh: Set<Int> = []

    /// Creates an empty sequencer.
    /// - Parameters:
    ///   - gapTimeout: how long a gap may stay open.
    ///   - holdLimit: messages held per stream at most.
    ///   - heldBytes: bytes held at most: payloads, and a fixed share per message.
    ///   - streamLimit: streams remembered at most.
    ///   - streamIdleTimeout: how long a silent stream is remembered.
    public init(
        gapTimeout: Duration = Sequencer.defaultGapTimeout, holdLimit: Int = Sequencer.defaultHoldLimit,
        heldBytes: Int = Sequencer.defaultHeldBytes, streamLimit: Int = Sequencer.defaultStreamLimit,
        streamIdleTimeout: Duration = Sequencer.defaultStreamIdleTimeout
    ) {
        self.gapTimeout = gapTimeout
        self.holdLimit = max(1, holdLimit)
        self.heldBytesLimit = max(0, heldBytes)
        self.streamLimit = max(1, streamLimit)
        self.streamIdleTimeout = streamIdleTimeout
    }

    /// Whether any stream has a gap open.
    public var hasOpenGaps: Bool { streams.values.contains { $0.gapOpenedAt != nil } }

    /// The topics with a gap open for at least `age`, for asking the leader to send them again.
    func topicsWithGaps(olderThan age: Duration, now: ContinuousClock.Instant) -> Set<Int> {
        var topics = Set<Int>()
        for (key, stream) in streams where stream.gapOpenedAt.map({ now - $0 >= age }) ?? false {
            topics.insert(key.topic)
        }
        return topics
    }

    /// The next sequence number owed for each stream, for asking a leader to resume from there.
    var expectations: [StreamKey: UInt64] { streams.filter { !$0.value.exhausted }.mapValues(\.next) }

    /// The owner of `topic` changed (ownership strength): each of its streams continues from its next message,
    /// since what a publisher sent while another owned the topic was never owed, and is not lost.
    mutating func resync(topic: Int) {
        topicsStartingFresh.insert(topic)
        let keys = streams.keys.filter { $0.topic == topic }
        for key in keys {
            if let index = streams.index(forKey: key) { streams.values[index].resyncing = true }
        }
    }

    /// Whether the sequencer remembers a stream.
    func knows(_ key: StreamKey) -> Bool { streams[key] != nil }

    /// Bytes held for reordering now, as counted against ``heldBytesLimit``.
    var heldByteCount: Int { heldBytes }

    /// What holding one message with `payloadCount` bytes of payload counts against the limit.
    static func holdingCost(ofPayload payloadCount: Int) -> Int { Held.cost(ofPayload: payloadCount) }

    /// Takes one message; what can now be delivered goes to `sink`, in order.
    /// - Parameters:
    ///   - topic: the message's topic, as numbered by the caller.
    ///   - header: its header.
    ///   - payload: its payload, read only during the call (copied if held).
    ///   - receivedAt: when it arrived, in nanoseconds since the Unix epoch.
    ///   - lostBeforeFirst: for a stream first seen with this message, whether the numbers before it are owed
    ///     and cannot come any more (direct mode, a publisher that started after the subscriber): they are
    ///     counted as lost.
    ///   - now: the current time, for gap timeouts.
    ///   - sink: where deliveries go.
    mutating func accept(
        topic: Int, header: MessageHeader, payload: UnsafeRawBufferPointer, receivedAt: UInt64,
        lostBeforeFirst: Bool = false, now: ContinuousClock.Instant, into sink: inout some Sink
    ) {
        let key = StreamKey(publisher: header.publisher, topic: topic)
        let sequence = header.sequence
        guard let index = streams.index(forKey: key) else {
            if streams.count >= streamLimit { forgetLongestSilent() }
            statistics.streams += 1
            let fresh = !topicsStartingFresh.isEmpty && topicsStartingFresh.contains(topic)
            if lostBeforeFirst, !fresh, sequence > 1 { statistics.lost = statistics.lost.addingSaturated(sequence - 1) }
            var stream = Stream(next: sequence, lastSeen: now)
            Self.deliver(
                &stream, topic: topic, header: header, payload: payload, receivedAt: receivedAt, now: now,
                statistics: &statistics, heldBytes: &heldBytes, into: &sink)
            streams[key] = stream
            return
        }
        if streams.values[index].resyncing { resync(at: index, to: sequence) }
        // Changed in place through the index: the stream, and its held messages, are never copied.
        switch Self.classify(&streams.values[index], sequence: sequence, now: now) {
        case .duplicate:
            statistics.duplicates = statistics.duplicates.addingSaturated(1)
            return
        case .early:
            hold(at: index, header: header, payload: payload, receivedAt: receivedAt, now: now, into: &sink)
            return
        case .next(let fillsGap):
            if fillsGap { statistics.reordered = statistics.reordered.addingSaturated(1) }
        }
        Self.deliver(
            &streams.values[index], topic: topic, header: header, payload: payload, receivedAt: receivedAt, now: now,
            statistics: &statistics, heldBytes: &heldBytes, into: &sink)
    }

    /// Takes a leader's word that a stream's numbers through `through` left its log before this subscriber was
    /// sent them. They are not counted lost at once: the same numbers may still come, in a publisher's replay
    /// into that log or from another group's leader while a topic moves. So the word opens a gap up to `through`,
    /// which a stream that stopped has no later message to show, and when the gap expires (``gapTimeout``) the
    /// numbers through it still missing are counted lost. A stream not seen yet, or whose topic changed owner, is
    /// left alone. Constant work, whatever the stream holds: a notice may name thousands of streams.
    mutating func giveUp(topic: Int, publisher: PublisherID, through: UInt64, now: ContinuousClock.Instant) {
        guard let index = streams.index(forKey: StreamKey(publisher: publisher, topic: topic)) else { return }
        let stream = streams.values[index]
        guard !stream.resyncing, !stream.exhausted, through >= stream.next else { return }
        streams.values[index].givenUpThrough = max(stream.givenUpThrough ?? 0, through)
        if stream.gapOpenedAt == nil { streams.values[index].gapOpenedAt = now }
    }

    /// Declares gaps older than the timeout lost and delivers the held messages that then follow on.
    mutating func expireGaps(now: ContinuousClock.Instant, into sink: inout some Sink) {
        // Keys first: iterating the dictionary's indices while changing its values would copy it.
        let expired = streams.compactMap { key, stream in
            stream.gapOpenedAt.map { now - $0 >= gapTimeout } == true ? key : nil
        }
        for key in expired {
            if let index = streams.index(forKey: key) { skipGap(at: index, now: now, into: &sink) }
        }
    }

    /// Forgets streams silent for longer than ``streamIdleTimeout`` with nothing held.
    mutating func forgetSilentStreams(now: ContinuousClock.Instant) {
        let silent = streams.filter { now - $0.value.lastSeen > streamIdleTimeout && $0.value.held.isEmpty }.keys
        for key in silent { streams[key] = nil }
    }

    // MARK: Internals

    /// Moves a resyncing stream on to `sequence` when it is ahead: nothing before it is owed, and messages held
    /// from before are let go.
    private mutating func resync(at index: Dictionary<StreamKey, Stream>.Index, to sequence: UInt64) {
        guard !streams.values[index].exhausted, sequence >= streams.values[index].next else { return }
        streams.values[index].resyncing = false
        let released = streams.values[index].held.filter { $0.key < sequence }
        for (number, held) in released {
            heldBytes -= held.cost
            streams.values[index].held[number] = nil
        }
        streams.values[index].next = sequence
        streams.values[index].givenUpThrough = nil
        if streams.values[index].held.isEmpty { streams.values[index].gapOpenedAt = nil }
    }

    private enum Arrival { case duplicate, early, next(fillsGap: Bool) }

    /// Where a message falls in its stream, noting that the stream was heard from.
    private static func classify(_ stream: inout Stream, sequence: UInt64, now: ContinuousClock.Instant) -> Arrival {
        stream.lastSeen = now
        if stream.exhausted || sequence < stream.next || stream.held[sequence] != nil { return .duplicate }
        if sequence > stream.next { return .early }
        return .next(fillsGap: !stream.held.isEmpty)
    }

    /// Delivers a message that is next in its stream, then the held ones that follow on.
    private static func deliver(
        _ stream: inout Stream, topic: Int, header: MessageHeader, payload: UnsafeRawBufferPointer, receivedAt: UInt64,
        now: ContinuousClock.Instant, statistics: inout Statistics, heldBytes: inout Int, into sink: inout some Sink
    ) {
        sink.deliver(topic: topic, header: header, payload: payload, receivedAt: receivedAt)
        statistics.delivered = statistics.delivered.addingSaturated(1)
        advance(&stream, past: header.sequence)
        drain(&stream, topic: topic, now: now, statistics: &statistics, heldBytes: &heldBytes, into: &sink)
    }

    /// The next number owed after `sequence`; the highest number ends the stream rather than wrap around.
    private static func advance(_ stream: inout Stream, past sequence: UInt64) {
        if sequence == .max {
            stream.exhausted = true
            stream.next = .max
        } else {
            stream.next = sequence + 1
        }
    }

    /// Delivers held messages that follow on, and restarts the gap clock if a gap remains.
    private static func drain(
        _ stream: inout Stream, topic: Int, now: ContinuousClock.Instant, statistics: inout Statistics,
        heldBytes: inout Int, into sink: inout some Sink
    ) {
        while !stream.exhausted, let held = stream.held.removeValue(forKey: stream.next) {
            heldBytes -= held.cost
            held.payload.withUnsafeBytes {
                sink.deliver(topic: topic, header: held.header, payload: $0, receivedAt: held.receivedAt)
            }
            statistics.delivered = statistics.delivered.addingSaturated(1)
            advance(&stream, past: held.header.sequence)
        }
        if stream.exhausted, !stream.held.isEmpty {
            for (_, held) in stream.held { heldBytes -= held.cost }
            statistics.duplicates = statistics.duplicates.addingSaturated(UInt64(stream.held.count))
            stream.held = [:]
        }
        if let through = stream.givenUpThrough, stream.exhausted || stream.next > through { stream.givenUpThrough = nil }
        stream.gapOpenedAt = stream.held.isEmpty && stream.givenUpThrough == nil ? nil : now
    }

    private mutating func hold(
        at index: Dictionary<StreamKey, Stream>.Index, header: MessageHeader, payload: UnsafeRawBufferPointer,
        receivedAt: UInt64, now: ContinuousClock.Instant, into sink: inout some Sink
    ) {
        streams.values[index].held[header.sequence] = Held(header: header, payload: Array(payload), receivedAt: receivedAt)
        heldBytes += Held.cost(ofPayload: payload.count)
        if streams.values[index].gapOpenedAt == nil { streams.values[index].gapOpenedAt = now }
        if streams.values[index].held.count > holdLimit { skipGap(at: index, now: now, into: &sink) }
        // Over the byte limit: give up gaps, this stream's first, until the held bytes fit.
        while heldBytes > heldBytesLimit {
            if !streams.values[index].held.isEmpty {
                skipGap(at: index, now: now, into: &sink)
            } else if let other = streams.first(where: { !$0.value.held.isEmpty })?.key,
                let otherIndex = streams.index(forKey: other)
            {
                skipGap(at: otherIndex, now: now, into: &sink)
            } else {
                break
            }
        }
    }

    /// Counts the missing numbers before the lowest held message as lost and delivers what follows on; or, when
    /// a leader gave numbers up, those of them still missing, then what follows on.
    private mutating func skipGap(
        at index: Dictionary<StreamKey, Stream>.Index, now: ContinuousClock.Instant, into sink: inout some Sink
    ) {
        if let through = streams.values[index].givenUpThrough { return skip(at: index, through: through, now: now, into: &sink) }
        guard let lowest = streams.values[index].held.keys.min() else {
            streams.values[index].gapOpenedAt = nil
            return
        }
        skip(at: index, to: lowest, now: now, into: &sink)
    }

    /// Counts the missing numbers before held message `number` as lost and delivers from it what follows on.
    private mutating func skip(
        at index: Dictionary<StreamKey, Stream>.Index, to number: UInt64, now: ContinuousClock.Instant,
        into sink: inout some Sink
    ) {
        let topic = streams.keys[index].topic
        // Sequence numbers come from the network: a sender may jump to any of them, so the count saturates.
        statistics.lost = statistics.lost.addingSaturated(number - streams.values[index].next)
        streams.values[index].next = number
        Self.drain(
            &streams.values[index], topic: topic, now: now, statistics: &statistics, heldBytes: &heldBytes, into: &sink)
    }

    /// Counts the numbers through `through` not received as lost, delivering the held ones among them, then
    /// what follows on.
    private mutating func skip(
        at index: Dictionary<StreamKey, Stream>.Index, through: UInt64, now: ContinuousClock.Instant,
        into sink: inout some Sink
    ) {
        // The held numbers it covers, in order, each found once: a stream may hold a hundred thousand.
        let held = streams.values[index].held.keys.filter { $0 <= through }.sorted()
        for number in held where number >= streams.values[index].next && !streams.values[index].exhausted {
            skip(at: index, to: number, now: now, into: &sink)
        }
        let topic = streams.keys[index].topic
        if !streams.values[index].exhausted, streams.values[index].next <= through {
            statistics.lost = statistics.lost.addingSaturated((through - streams.values[index].next).addingSaturated(1))
            Self.advance(&streams.values[index], past: through)
        }
        Self.drain(
            &streams.values[index], topic: topic, now: now, statistics: &statistics, heldBytes: &heldBytes, into: &sink)
    }

    private mutating func forgetLongestSilent() {
        guard let oldest = streams.min(by: { $0.value.lastSeen < $1.value.lastSeen })?.key else { return }
        if let stream = streams.removeValue(forKey: oldest) {
            for (_, held) in stream.held { heldBytes -= held.cost }
            // What it held can no longer be ordered: counted as lost rather than delivered out of order.
            statistics.lost = statistics.lost.addingSaturated(UInt64(stream.held.count))
        }
    }
}

extension UInt64 {
    /// The sum, or `UInt64.max` when it would overflow: for counts driven by values from the network.
    func addingSaturated(_ other: UInt64) -> UInt64 {
        let (sum, overflow) = addingReportingOverflow(other)
        return overflow ? .max : sum
    }
}
