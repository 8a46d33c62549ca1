import Foundation
import TestSupport
import Testing
import ZeroMQ

@testable import Herald

@Suite("Sequencer: each publisher's messages once and in order")
struct SequencerTests {
    let publisher = PublisherID()
    let start = ContinuousClock.now

    func message(_ sequence: UInt64, topic: Topic = "t", from publisher: PublisherID? = nil) -> ReceivedMessage {
        ReceivedMessage(
            topic: topic, header: MessageHeader(publisher: publisher ?? self.publisher, sequence: sequence, sentAt: 0),
            payload: [UInt8(truncatingIfNeeded: sequence)], receivedAt: 0)
    }

    func sequences(_ messages: [ReceivedMessage]) -> [UInt64] { messages.map(\.header.sequence) }

    @Test func aStreamStartsAtTheFirstMessageSeen() {
        var sequencer = Sequencer()
        #expect(sequences(sequencer.accept(message(41), now: start)) == [41])
        #expect(sequences(sequencer.accept(message(42), now: start)) == [42])
        #expect(sequencer.statistics == .init(delivered: 2, lost: 0, duplicates: 0, reordered: 0, streams: 1))
    }

    @Test func duplicatesAreDroppedAndCounted() {
        var sequencer = Sequencer()
        for sequence in [1, 2, 3, 2, 1, 3] as [UInt64] { _ = sequencer.accept(message(sequence), now: start) }
        #expect(sequencer.statistics.delivered == 3)
        #expect(sequencer.statistics.duplicates == 3)
    }

    @Test func aGapIsHeldUntilFilledThenDeliveredInOrder() {
        var sequencer = Sequencer()
        _ = sequencer.accept(message(1), now: start)
        #expect(sequencer.accept(message(3), now: start).isEmpty)
        #expect(sequencer.accept(message(4), now: start).isEmpty)
        #expect(sequencer.hasOpenGaps)
        #expect(sequences(sequencer.accept(message(2), now: start)) == [2, 3, 4])
        #expect(!sequencer.hasOpenGaps)
        #expect(sequencer.statistics.reordered == 1)
        #expect(sequencer.statistics.lost == 0)
    }

    @Test func aGapThatOutlivesTheTimeoutIsCountedAsLost() {
        var sequencer = Sequencer(gapTimeout: .seconds(1))
        _ = sequencer.accept(message(1), now: start)
        _ = sequencer.accept(message(5), now: start)
        #expect(sequencer.expireGaps(now: start + .milliseconds(999)).isEmpty)
        #expect(sequences(sequencer.expireGaps(now: start + .seconds(1))) == [5])
        #expect(sequencer.statistics.lost == 3)
        // A late arrival from the expired gap is now a duplicate, never delivered out of order.
        #expect(sequencer.accept(message(3), now: start + .seconds(2)).isEmpty)
        #expect(sequencer.statistics.duplicates == 1)
    }

    @Test func theHoldLimitBoundsMemoryByGivingUpTheOldestGap() {
        var sequencer = Sequencer(holdLimit: 2)
        _ = sequencer.accept(message(1), now: start)
        _ = sequencer.accept(message(3), now: start)
        _ = sequencer.accept(message(4), now: start)
        #expect(sequences(sequencer.accept(message(6), now: start)) == [3, 4])
        #expect(sequencer.statistics.lost == 1)
    }

    @Test func extremeSequenceNumbersSaturateTheCountsInsteadOfTrapping() {
        // Sequence numbers come from the network: a sender may jump to the top of the range on several streams.
        var sequencer = Sequencer(gapTimeout: .seconds(1))
        let other = PublisherID()
        _ = sequencer.accept(message(1), now: start)
        _ = sequencer.accept(message(.max), now: start)
        _ = sequencer.accept(message(1, from: other), now: start)
        _ = sequencer.accept(message(.max, from: other), now: start)
        let delivered = sequencer.expireGaps(now: start + .seconds(2))
        #expect(sequences(delivered) == [.max, .max])
        #expect(sequencer.statistics.lost == .max, "two gaps of 2^64 - 3 saturate the count")
        #expect(sequencer.statistics.delivered == 4)
    }

    @Test func latencyIsTotalForAnySendTime() {
        // A send time far in the future or the past is what a lying or broken sender claims; it must not trap.
        var received = message(1)
        received.receivedAt = 1_000
        received.header.sentAt = .max
        #expect(received.latency == .nanoseconds(Int64.min))
        received.header.sentAt = 0
        received.receivedAt = .max
        #expect(received.latency == .nanoseconds(Int64.max))
        received.receivedAt = 2_000
        received.header.sentAt = 500
        #expect(received.latency == .nanoseconds(1_500))
    }

    @Test func topicsAndPublishersAreSeparateStreams() {
        var sequencer = Sequencer()
        let other = PublisherID()
        #expect(sequences(sequencer.accept(message(1, topic: "a"), now: start)) == [1])
        #expect(sequences(sequencer.accept(message(1, topic: "b"), now: start)) == [1])
        #expect(sequences(sequencer.accept(message(1, topic: "a", from: other), now: start)) == [1])
        #expect(sequencer.statistics.duplicates == 0)
        #expect(sequencer.statistics.streams == 3)
    }

    @Test func aRestartedPublisherIsANewEpochNotAGap() {
        var sequencer = Sequencer()
        for sequence in 1...10 as ClosedRange<UInt64> { _ = sequencer.accept(message(sequence), now: start) }
        let restarted = PublisherID()
        #expect(sequences(sequencer.accept(message(1, from: restarted), now: start)) == [1])
        #expect(sequencer.statistics.lost == 0)
        #expect(sequencer.statistics.duplicates == 0)
    }
}

@Suite("Delivery pipeline: history and recovery requests")
struct DeliveryPipelineTests {
    let publisher = PublisherID()
    let now = ContinuousClock.now
    let context: ZMQContext
    let connection: AsyncZMQSocket

    init() throws {
        context = try ZMQContext()
        connection = try AsyncZMQSocket(context: context, type: .dealer)
    }

    func live(_ sequence: UInt64) -> Subscriber.Input {
        .live(ZMQMessage(frames: frames(sequence)))
    }

    func history(_ sequence: UInt64) -> Subscriber.Input {
        .history(ZMQMessage(frames: [[RequestKind.history.rawValue]] + frames(sequence)))
    }

    func frames(_ sequence: UInt64) -> [[UInt8]] {
        DataFrames(topic: "t", header: MessageHeader(publisher: publisher, sequence: sequence, sentAt: 0), payload: [])
            .frames
    }

    func decode(_ message: ZMQMessage, _ frames: ArraySlice<[UInt8]>) -> ReceivedMessage? {
        DataFrames(frames: frames).map {
            ReceivedMessage(topic: $0.topic, header: $0.header, payload: $0.payload, receivedAt: 0)
        }
    }

    func feed(
        _ pipeline: inout DeliveryPipeline, _ input: Subscriber.Input, at time: ContinuousClock.Instant? = nil
    ) -> (delivered: [UInt64], request: HistoryRequest?) {
        let (messages, request) = pipeline.handle(input, decode: decode, now: time ?? now)
        return (messages.map(\.header.sequence), request)
    }

    func pipeline(history: Int = 0) -> DeliveryPipeline {
        DeliveryPipeline(sequencer: Sequencer(gapTimeout: .seconds(3)), topics: ["t"], initialHistory: history)
    }

    @Test func aFreshSubscriberAsksForNothingItIsNotOwed() {
        var pipeline = pipeline()
        #expect(feed(&pipeline, .attached(connection)).request == nil)
        let first = feed(&pipeline, live(7))
        #expect(first.delivered == [7])
        #expect(first.request == nil)
    }

    @Test func reattachingAsksForWhatCameAfterTheLastDeliveredMessage() {
        var pipeline = pipeline()
        _ = feed(&pipeline, .attached(connection))
        _ = feed(&pipeline, live(1))
        _ = feed(&pipeline, live(2))
        _ = feed(&pipeline, .attached(nil))
        let request = feed(&pipeline, .attached(connection)).request
        #expect(request?.after == [publisher.description: ["t": 3]])
        #expect(request?.limit == nil)
    }

    @Test func theFirstLiveMessageAtANewLeaderAsksAgainToCloseTheSlowJoinerWindow() {
        var pipeline = pipeline()
        _ = feed(&pipeline, .attached(connection))
        _ = feed(&pipeline, live(1))
        _ = feed(&pipeline, .attached(connection))
        // Messages 2 to 4 were forwarded before this subscription took effect at the new leader.
        let first = feed(&pipeline, live(5))
        #expect(first.request?.after == [publisher.description: ["t": 2]])
        #expect(first.delivered.isEmpty)
        let recovered = [2, 3, 4].flatMap { feed(&pipeline, history($0)).delivered }
        #expect(recovered == [2, 3, 4, 5])
    }

    @Test func initialHistoryComesBeforeLiveMessagesWithoutDuplicates() {
        var pipeline = pipeline(history: 3)
        let request = feed(&pipeline, .attached(connection)).request
        #expect(request?.limit == 3)
        #expect(feed(&pipeline, live(10)).delivered.isEmpty)
        for sequence in [8, 9, 10] as [UInt64] { #expect(feed(&pipeline, history(sequence)).delivered.isEmpty) }
        let released = feed(&pipeline, .historyEnd(HistoryEnd(offered: ["t": 3], sent: 3)))
        #expect(released.delivered == [8, 9, 10])
        #expect(pipeline.sequencer.statistics.duplicates == 1)
        // History is asked for once; a later failover asks only for recovery.
        #expect(feed(&pipeline, .attached(connection)).request?.limit == nil)
    }

    @Test func missingHistoryReleasesHeldLiveMessagesAfterATimeout() {
        var pipeline = pipeline(history: 5)
        _ = feed(&pipeline, .attached(connection))
        _ = feed(&pipeline, live(1))
        #expect(feed(&pipeline, .tick, at: now + .seconds(1)).delivered.isEmpty)
        #expect(feed(&pipeline, .tick, at: now + Subscriber.historyTimeout + .milliseconds(1)).delivered == [1])
    }

    @Test func anOpenGapAsksTheLeaderToFillItThenTimesOut() {
        var pipeline = pipeline()
        _ = feed(&pipeline, .attached(connection))
        _ = feed(&pipeline, live(1))
        _ = feed(&pipeline, live(4))
        let tick = feed(&pipeline, .tick, at: now + .milliseconds(300))
        #expect(tick.request?.after == [publisher.description: ["t": 2]])
        // Asked at most once per recovery interval.
        #expect(feed(&pipeline, .tick, at: now + .milliseconds(350)).request == nil)
        let expired = feed(&pipeline, .tick, at: now + .seconds(4))
        #expect(expired.delivered == [4])
        #expect(pipeline.sequencer.statistics.lost == 2)
    }
}

@Suite("AsyncBuffer")
struct AsyncBufferTests {
    @Test func aProducerBlockedOnAFullBufferIsReleasedByCancellation() async throws {
        let buffer = AsyncBuffer<Int>(limit: 2)
        #expect(await buffer.push(1))
        #expect(await buffer.push(2))
        let blocked = Task { await buffer.push(3) }
        try await Task.sleep(for: .milliseconds(50))
        blocked.cancel()
        #expect(try await within(.seconds(5), "cancelled push") { await blocked.value } == false)
    }

    @Test func elementsArriveInOrderAndFinishEndsTheSequence() async throws {
        let buffer = AsyncBuffer<Int>(limit: 4)
        let producer = Task {
            for value in 0..<100 { await buffer.push(value) }
            buffer.finish()
        }
        var received: [Int] = []
        for await value in buffer.elements { received.append(value) }
        await producer.value
        #expect(received == Array(0..<100))
    }
}
