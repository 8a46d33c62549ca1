/// Turns what arrives from the network — live messages, replays after a failover, history — into each
/// publisher's messages exactly once and in order, and counts what could not be delivered that way.
///
/// Each publisher numbers its messages per topic from 1, so a (publisher, topic) pair is one stream. For each
/// stream the sequencer knows the next sequence number it owes the application:
/// - a lower number is a duplicate (a replay, or history overlapping live traffic) and is dropped;
/// - the expected number is delivered, with any held successors that now follow on;
/// - a higher number is held while the gap before it may still be filled (by a replay or by history), for at
///   most ``gapTimeout``; then the missing numbers are counted as lost and the held messages delivered.
///
/// A stream starts at the first message seen from it, so a new subscriber is not owed what was published
/// before it subscribed; history asked for explicitly is fed in first, so it starts streams earlier.
/// A publisher that restarts has a new identity, so its numbering starts a new stream instead of looking like
/// a gap or like duplicates.
public struct Sequencer: Sendable {
    /// How long a gap may stay open: long enough for a publisher to reattach to a new leader and replay, short
    /// enough that a lost message holds up its successors only briefly.
    public static let defaultGapTimeout: Duration = .seconds(3)
    /// Messages held per stream at most; beyond that the oldest gap is declared lost at once, bounding memory.
    public static let defaultHoldLimit = 100_000

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
    }

    struct StreamKey: Hashable, Sendable {
        var publisher: PublisherID
        var topic: Topic
    }

    private struct Stream: Sendable {
        var next: UInt64
        var held: [UInt64: ReceivedMessage] = [:]
        var gapOpenedAt: ContinuousClock.Instant?
    }

    /// How long a gap may stay open.
    public let gapTimeout: Duration
    /// Messages held per stream at most.
    public let holdLimit: Int
    /// The counts so far.
    public private(set) var statistics = Statistics()
    private var streams: [StreamKey: Stream] = [:]

    /// Creates an empty sequencer.
    /// - Parameters:
    ///   - gapTimeout: how long a gap may stay open.
    ///   - holdLimit: messages held per stream at most.
    public init(gapTimeout: Duration = Sequencer.defaultGapTimeout, holdLimit: Int = Sequencer.defaultHoldLimit) {
        self.gapTimeout = gapTimeout
        self.holdLimit = max(1, holdLimit)
    }

    /// Whether any stream has a gap open.
    public var hasOpenGaps: Bool { streams.values.contains { $0.gapOpenedAt != nil } }

    /// The next sequence number owed for each stream, for asking a broker to replay what came after.
    var expectations: [StreamKey: UInt64] { streams.mapValues(\.next) }

    /// Takes one message and returns what can now be delivered, in order.
    /// - Parameters:
    ///   - message: the message as received.
    ///   - now: the current time, for gap timeouts.
    public mutating func accept(_ message: ReceivedMessage, now: ContinuousClock.Instant) -> [ReceivedMessage] {
        let key = StreamKey(publisher: message.header.publisher, topic: message.topic)
        let sequence = message.header.sequence
        // Taken out of the dictionary while it changes, so that its held messages are never copied on write.
        guard var stream = streams.removeValue(forKey: key) else {
            statistics.streams += 1
            streams[key] = Stream(next: sequence &+ 1)
            statistics.delivered += 1
            return [message]
        }
        defer { streams[key] = stream }
        if sequence < stream.next || stream.held[sequence] != nil {
            statistics.duplicates = statistics.duplicates.addingSaturated(1)
            return []
        }
        if sequence > stream.next {
            stream.held[sequence] = message
            if stream.gapOpenedAt == nil { stream.gapOpenedAt = now }
            if stream.held.count > holdLimit { return skipGap(&stream, now: now) }
            return []
        }
        if !stream.held.isEmpty { statistics.reordered = statistics.reordered.addingSaturated(1) }
        var delivered = [message]
        stream.next = sequence &+ 1
        drain(&stream, into: &delivered, now: now)
        statistics.delivered = statistics.delivered.addingSaturated(UInt64(delivered.count))
        return delivered
    }

    /// Declares gaps older than the timeout lost and returns the held messages that then follow on.
    /// - Parameter now: the current time.
    public mutating func expireGaps(now: ContinuousClock.Instant) -> [ReceivedMessage] {
        var delivered: [ReceivedMessage] = []
        let expired = streams.filter { _, stream in stream.gapOpenedAt.map { now - $0 >= gapTimeout } ?? false }.keys
        for key in expired {
            guard var stream = streams.removeValue(forKey: key) else { continue }
            delivered += skipGap(&stream, now: now)
            streams[key] = stream
        }
        return delivered
    }

    /// Counts the missing numbers before the lowest held message as lost and delivers what follows on.
    private mutating func skipGap(_ stream: inout Stream, now: ContinuousClock.Instant) -> [ReceivedMessage] {
        guard let lowest = stream.held.keys.min() else {
            stream.gapOpenedAt = nil
            return []
        }
        // Sequence numbers come from the network: a sender may jump to any of them, so the count saturates.
        statistics.lost = statistics.lost.addingSaturated(lowest - stream.next)
        stream.next = lowest
        var delivered: [ReceivedMessage] = []
        drain(&stream, into: &delivered, now: now)
        statistics.delivered = statistics.delivered.addingSaturated(UInt64(delivered.count))
        return delivered
    }

    /// Moves held messages that follow on from `next` into `delivered`, and restarts the gap clock if a gap
    /// remains.
    private func drain(_ stream: inout Stream, into delivered: inout [ReceivedMessage], now: ContinuousClock.Instant) {
        while let message = stream.held.removeValue(forKey: stream.next) {
            delivered.append(message)
            stream.next &+= 1
        }
        stream.gapOpenedAt = stream.held.isEmpty ? nil : now
    }
}

extension UInt64 {
    /// The sum, or `UInt64.max` when it would overflow: for counts driven by values from the network.
    func addingSaturated(_ other: UInt64) -> UInt64 {
        let (sum, overflow) = addingReportingOverflow(other)
        return overflow ? .max : sum
    }
}
