import Foundation
import TestSupport
import Testing
import ZeroMQ

@testable import Herald

/// Records what a sequencer delivers.
struct RecordingSink: Sequencer.Sink {
    var delivered: [(topic: Int, sequence: UInt64, payload: [UInt8])] = []

    mutating func deliver(topic: Int, header: MessageHeader, payload: UnsafeRawBufferPointer, receivedAt: UInt64) {
        delivered.append((topic, header.sequence, Array(payload)))
    }
}

/// A sequencer driven the way the subscriber drives it, returning what each step delivers.
struct SequencerHarness {
    var sequencer: Sequencer
    let publisher = PublisherID()

    init(_ sequencer: Sequencer = Sequencer()) { self.sequencer = sequencer }

    mutating func accept(
        _ sequence: UInt64, topic: Int = 0, from publisher: PublisherID? = nil, lostBeforeFirst: Bool = false,
        now: ContinuousClock.Instant
    ) -> [UInt64] {
        var sink = RecordingSink()
        let payload: [UInt8] = [UInt8(truncatingIfNeeded: sequence)]
        payload.withUnsafeBytes { bytes in
            sequencer.accept(
                topic: topic, header: MessageHeader(publisher: publisher ?? self.publisher, sequence: sequence, sentAt: 0),
                payload: bytes, receivedAt: 0, lostBeforeFirst: lostBeforeFirst, now: now, into: &sink)
        }
        for entry in sink.delivered { #expect(entry.payload == [UInt8(truncatingIfNeeded: entry.sequence)]) }
        return sink.delivered.map(\.sequence)
    }

    /// Like ``accept(_:topic:from:lostBeforeFirst:now:)``, with an empty payload.
    mutating func acceptEmpty(_ sequence: UInt64, now: ContinuousClock.Instant) -> [UInt64] {
        var sink = RecordingSink()
        [UInt8]().withUnsafeBytes { bytes in
            sequencer.accept(
                topic: 0, header: MessageHeader(publisher: publisher, sequence: sequence, sentAt: 0),
                payload: bytes, receivedAt: 0, lostBeforeFirst: false, now: now, into: &sink)
        }
        return sink.delivered.map(\.sequence)
    }

    mutating func expireGaps(now: ContinuousClock.Instant) -> [UInt64] {
        var sink = RecordingSink()
        sequencer.expireGaps(now: now, into: &sink)
        return sink.delivered.map(\.sequence)
    }

    mutating func giveUp(through: UInt64, topic: Int = 0, from publisher: PublisherID? = nil, now: ContinuousClock.Instant) {
        sequencer.giveUp(topic: topic, publisher: publisher ?? self.publisher, through: through, now: now)
    }

    var statistics: Sequencer.Statistics { sequencer.statistics }
}

@Suite("Sequencer: each publisher's messages once and in order")
struct SequencerTests {
    @Test func numbersTheLeaderGaveUpAreCountedLostWhenTheGapExpiresAndWhatWasHeldAmongThemIsDelivered() {
        var harness = SequencerHarness(Sequencer(gapTimeout: .seconds(1)))
        let now = ContinuousClock.now
        #expect(harness.accept(1, now: now) == [1])
        #expect(harness.accept(4, now: now).isEmpty && harness.accept(6, now: now).isEmpty && harness.accept(9, now: now).isEmpty)
        // 2-7 left the leader's log; 2 still comes (a replay), and the rest waits for the gap timeout.
        harness.giveUp(through: 7, now: now)
        #expect(harness.accept(2, now: now) == [2])
        #expect(harness.expireGaps(now: now + .milliseconds(500)).isEmpty && harness.statistics.lost == 0)
        // 3, 5 and 7 are lost; 4 and 6 were received and are delivered; 9 waits for 8, which may still come.
        #expect(harness.expireGaps(now: now + .seconds(1)) == [4, 6])
        #expect(harness.statistics.lost == 3)
        #expect(harness.accept(8, now: now + .seconds(1)) == [8, 9])
        #expect(!harness.sequencer.hasOpenGaps)
        // The end of a stream, with nothing after it to show a gap: the notice opens one.
        harness.giveUp(through: 12, now: now + .seconds(2))
        #expect(harness.sequencer.hasOpenGaps)
        #expect(harness.expireGaps(now: now + .seconds(3)).isEmpty)
        #expect(harness.statistics.lost == 6)
        #expect(harness.accept(11, now: now + .seconds(3)).isEmpty && harness.statistics.duplicates == 1, "already given up")
        #expect(harness.accept(13, now: now + .seconds(3)) == [13])
        // Numbers already delivered, and a stream never seen, change nothing.
        harness.giveUp(through: 10, now: now + .seconds(3))
        harness.giveUp(through: 50, from: PublisherID(), now: now + .seconds(3))
        #expect(!harness.sequencer.hasOpenGaps)
        #expect(harness.statistics.lost == 6 && harness.statistics.delivered == 7)
    }

    /// A publisher that registers again with the same leader replays what it retained into the same log, so a
    /// notice can name numbers that are still on their way behind the subscriber's cursor.
    @Test func numbersTheLeaderGaveUpThatAReplayBringsBackAreDeliveredNotLost() {
        var harness = SequencerHarness(Sequencer(gapTimeout: .seconds(1)))
        let now = ContinuousClock.now
        #expect(harness.accept(1, now: now) == [1])
        harness.giveUp(through: 1000, now: now)
        for number in 2...1000 as ClosedRange<UInt64> { #expect(harness.accept(number, now: now) == [number]) }
        #expect(!harness.sequencer.hasOpenGaps)
        #expect(harness.expireGaps(now: now + .seconds(2)).isEmpty)
        #expect(harness.statistics.lost == 0 && harness.statistics.delivered == 1000)
    }

    /// A notice comes off the network: naming a stream many times, or numbers far ahead, costs constant work
    /// each, and the count saturates.
    @Test func aNoticeFarAheadCountsWhatIsMissingUpToIt() {
        var harness = SequencerHarness(Sequencer(gapTimeout: .seconds(1)))
        let now = ContinuousClock.now
        #expect(harness.accept(1, now: now) == [1])
        for _ in 0..<10_000 { harness.giveUp(through: 5, now: now) }
        harness.giveUp(through: .max, now: now)
        #expect(harness.expireGaps(now: now + .seconds(1)).isEmpty)
        #expect(harness.statistics.lost == UInt64.max - 1)
        #expect(harness.accept(2, now: now + .seconds(1)).isEmpty && harness.statistics.duplicates == 1, "the stream ended")
    }

    let start = ContinuousClock.now

    @Test func aStreamStartsAtTheFirstMessageSeen() {
        var harness = SequencerHarness()
        #expect(harness.accept(41, now: start) == [41])
        #expect(harness.accept(42, now: start) == [42])
        #expect(harness.statistics == .init(delivered: 2, lost: 0, duplicates: 0, reordered: 0, streams: 1))
    }

    @Test func duplicatesAreDroppedAndCounted() {
        var harness = SequencerHarness()
        for sequence in [1, 2, 3, 2, 1, 3] as [UInt64] { _ = harness.accept(sequence, now: start) }
        #expect(harness.statistics.delivered == 3)
        #expect(harness.statistics.duplicates == 3)
    }

    @Test func aGapIsHeldUntilFilledThenDeliveredInOrder() {
        var harness = SequencerHarness()
        _ = harness.accept(1, now: start)
        #expect(harness.accept(3, now: start).isEmpty)
        #expect(harness.accept(4, now: start).isEmpty)
        #expect(harness.sequencer.hasOpenGaps)
        #expect(harness.sequencer.heldByteCount == 2 * Sequencer.holdingCost(ofPayload: 1))
        #expect(harness.accept(2, now: start) == [2, 3, 4])
        #expect(!harness.sequencer.hasOpenGaps)
        #expect(harness.sequencer.heldByteCount == 0)
        #expect(harness.statistics.reordered == 1)
        #expect(harness.statistics.lost == 0)
    }

    @Test func aGapThatOutlivesTheTimeoutIsCountedAsLost() {
        var harness = SequencerHarness(Sequencer(gapTimeout: .seconds(1)))
        _ = harness.accept(1, now: start)
        _ = harness.accept(5, now: start)
        #expect(harness.expireGaps(now: start + .milliseconds(999)).isEmpty)
        #expect(harness.expireGaps(now: start + .seconds(1)) == [5])
        #expect(harness.statistics.lost == 3)
        // A late arrival from the expired gap is now a duplicate, never delivered out of order.
        #expect(harness.accept(3, now: start + .seconds(2)).isEmpty)
        #expect(harness.statistics.duplicates == 1)
    }

    @Test func theHoldLimitBoundsMemoryByGivingUpTheOldestGap() {
        var harness = SequencerHarness(Sequencer(holdLimit: 2))
        _ = harness.accept(1, now: start)
        _ = harness.accept(3, now: start)
        _ = harness.accept(4, now: start)
        #expect(harness.accept(6, now: start) == [3, 4])
        #expect(harness.statistics.lost == 1)
    }

    @Test func theHeldBytesLimitBoundsReorderMemory() {
        // One byte per payload, room for two held: the third held message gives the gap up.
        var harness = SequencerHarness(Sequencer(heldBytes: 2 * Sequencer.holdingCost(ofPayload: 1)))
        _ = harness.accept(1, now: start)
        _ = harness.accept(3, now: start)
        _ = harness.accept(4, now: start)
        #expect(harness.accept(5, now: start) == [3, 4, 5])
        #expect(harness.statistics.lost == 1)
        #expect(harness.sequencer.heldByteCount == 0)
    }

    @Test func messagesWithEmptyPayloadsCountAgainstTheHeldBytesLimit() {
        // A sender of empty payloads that keeps a gap open must not hold without bound: each held message costs.
        var harness = SequencerHarness(Sequencer(holdLimit: 100_000, heldBytes: 10 * Sequencer.holdingCost(ofPayload: 0)))
        _ = harness.accept(1, now: start)
        for sequence in stride(from: 3 as UInt64, through: 2001, by: 2) {
            _ = harness.acceptEmpty(sequence, now: start)
            #expect(harness.sequencer.heldByteCount <= 10 * Sequencer.holdingCost(ofPayload: 0))
        }
        #expect(harness.statistics.lost > 900)
    }

    @Test func extremeSequenceNumbersSaturateTheCountsInsteadOfTrapping() {
        // Sequence numbers come from the network: a sender may jump to the top of the range on several streams.
        var harness = SequencerHarness(Sequencer(gapTimeout: .seconds(1)))
        let other = PublisherID()
        _ = harness.accept(1, now: start)
        _ = harness.accept(.max, now: start)
        _ = harness.accept(1, from: other, now: start)
        _ = harness.accept(.max, from: other, now: start)
        #expect(harness.expireGaps(now: start + .seconds(2)) == [.max, .max])
        #expect(harness.statistics.lost == .max, "two gaps of 2^64 - 3 saturate the count")
        #expect(harness.statistics.delivered == 4)
        // The highest number ends its stream instead of wrapping around to deliver 0 or 1 again.
        #expect(harness.accept(.max, now: start + .seconds(3)).isEmpty)
        #expect(harness.accept(1, now: start + .seconds(3)).isEmpty)
    }

    @Test func aStreamThatOpensAtTheHighestNumberAcceptsNothingMore() {
        var harness = SequencerHarness()
        #expect(harness.accept(.max, now: start) == [.max])
        #expect(harness.accept(.max, now: start).isEmpty)
        #expect(harness.statistics.duplicates == 1)
    }

    @Test func latencyIsTotalForAnySendTime() {
        // A send time far in the future or the past is what a lying or broken sender claims; it must not trap.
        var received = ReceivedMessage(
            topic: "t", header: MessageHeader(publisher: PublisherID(), sequence: 1, sentAt: .max), payload: [],
            receivedAt: 1_000)
        #expect(received.latency == .nanoseconds(Int64.min))
        received.header.sentAt = 0
        received.receivedAt = .max
        #expect(received.latency == .nanoseconds(Int64.max))
        received.receivedAt = 2_000
        received.header.sentAt = 500
        #expect(received.latency == .nanoseconds(1_500))
    }

    @Test func topicsAndPublishersAreSeparateStreams() {
        var harness = SequencerHarness()
        let other = PublisherID()
        #expect(harness.accept(1, topic: 0, now: start) == [1])
        #expect(harness.accept(1, topic: 1, now: start) == [1])
        #expect(harness.accept(1, topic: 0, from: other, now: start) == [1])
        #expect(harness.statistics.duplicates == 0)
        #expect(harness.statistics.streams == 3)
    }

    @Test func aRestartedPublisherIsANewEpochNotAGap() {
        var harness = SequencerHarness()
        for sequence in 1...10 as ClosedRange<UInt64> { _ = harness.accept(sequence, now: start) }
        #expect(harness.accept(1, from: PublisherID(), now: start) == [1])
        #expect(harness.statistics.lost == 0)
        #expect(harness.statistics.duplicates == 0)
    }

    @Test func aStreamOwedFromItsFirstMessageCountsWhatItMissedAsLost() {
        var harness = SequencerHarness()
        #expect(harness.accept(5, lostBeforeFirst: true, now: start) == [5])
        #expect(harness.statistics.lost == 4)
    }

    @Test func silentStreamsAreForgottenAndTheStreamLimitHolds() {
        var harness = SequencerHarness(Sequencer(streamLimit: 2, streamIdleTimeout: .seconds(10)))
        let publishers = (0..<3).map { _ in PublisherID() }
        for (offset, publisher) in publishers.enumerated() {
            _ = harness.accept(1, from: publisher, now: start + .seconds(offset))
        }
        #expect(harness.sequencer.expectations.count == 2, "the longest silent stream made room")
        harness.sequencer.forgetSilentStreams(now: start + .seconds(12))
        #expect(harness.sequencer.expectations.count == 1, "streams silent for 10 s are forgotten")
    }
}
