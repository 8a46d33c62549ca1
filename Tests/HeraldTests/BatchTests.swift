import Foundation
import Testing
import ZeroMQ
import ZooKeeper

@testable import Herald

@Suite("Batches: several messages of one topic and publisher in one frame")
struct BatchTests {
    let publisher = PublisherID()
    let client = CoreHarness.id(1)
    let subscriber = CoreHarness.id(2)

    func frame(_ sequence: UInt64, topic: Topic = "t", from publisher: PublisherID? = nil, sentAt: UInt64 = 0) -> [UInt8] {
        dataFrame(
            topic: topic, header: MessageHeader(publisher: publisher ?? self.publisher, sequence: sequence, sentAt: sentAt),
            payload: Array("message \(sequence)".utf8))
    }

    func batch(_ sequences: ClosedRange<UInt64>) -> [UInt8] { DataRun.batch(of: sequences.map { frame($0, sentAt: $0 * 10) }) }

    // MARK: Wire format

    @Test func aBatchDecodesToItsTopicPublisherAndNumbers() throws {
        let bytes = batch(4...9)
        let run = try bytes.withUnsafeBytes { try DataRun.decode($0).get() }
        #expect(run.publisher == publisher)
        #expect(run.firstSequence == 4 && run.lastSequence == 9 && run.count == 6)
        #expect(run.lastSentAt == 90)
        #expect(String(decoding: bytes[run.topic], as: UTF8.self) == "t")
        let single = try frame(3).withUnsafeBytes { try DataRun.decode($0).get() }
        #expect(single.firstSequence == 3 && single.lastSequence == 3 && single.count == 1)
    }

    @Test func thePublishersEncoderWritesTheSameBatch() {
        let frames = (1...3).map { frame(UInt64($0)) }
        let flat = frames.flatMap { $0 }
        var bytes = [UInt8](repeating: 0xEE, count: DataRun.batchSize(ofFrames: 3, totalBytes: flat.count))
        flat.withUnsafeBytes { flat in
            var offset = 0
            var next = 0
            bytes.withUnsafeMutableBytes { destination in
                DataRun.encodeBatch(into: destination, count: 3) {
                    defer { offset += frames[next].count; next += 1 }
                    return UnsafeRawBufferPointer(rebasing: flat[offset..<(offset + frames[next].count)])
                }
            }
        }
        #expect(bytes == DataRun.batch(of: frames))
    }

    @Test func aBatchThatMixesTopicsPublishersOrNumbersIsRefusedWhole() {
        let cases: [(String, [UInt8], WireFormat.DecodeFailure)] = [
            ("two topics", DataRun.batch(of: [frame(1), frame(2, topic: "u")]), .badBatch),
            ("two publishers", DataRun.batch(of: [frame(1), frame(2, from: PublisherID())]), .badBatch),
            ("a gap", DataRun.batch(of: [frame(1), frame(3)]), .badBatch),
            ("numbers going back", DataRun.batch(of: [frame(2), frame(1)]), .badBatch),
            ("the same number twice", DataRun.batch(of: [frame(2), frame(2)]), .badBatch),
            ("no messages", [WireFormat.version, WireFormat.Kind.batch.rawValue], .truncated),
            ("a length past the end", Array(DataRun.batch(of: [frame(1)]).dropLast()), .truncated),
            ("a partial length", DataRun.batch(of: [frame(1)]) + [0, 0], .truncated),
            ("a message that is no data frame", DataRun.batch(of: [frame(1), [WireFormat.version, 2, 0]]), .unknownKind),
            ("sequence zero", DataRun.batch(of: [frame(0)]), .badSequence),
        ]
        for (name, bytes, failure) in cases {
            let result = bytes.withUnsafeBytes { DataRun.decode($0) }
            #expect(result == .failure(failure), "\(name)")
        }
    }

    @Test func aLeaderRecordAdvertisesItsBatchSizeAndAnImpossibleOneReadsAsAbsent() throws {
        let record = LeaderRecord(
            broker: "b", mode: .broker, requestEndpoint: "tcp://h:1", subscriberEndpoint: "tcp://h:2", epoch: 1,
            batchBytes: 65_536)
        #expect(LeaderRecord(decoding: record.encoded())?.batchBytes == 65_536)
        for hostile in ["-1", "0", "9223372036854775807", "\"big\""] {
            let json = #"{"broker":"b","mode":"broker","requestEndpoint":"tcp://h:1","subscriberEndpoint":"tcp://h:2","epoch":1,"protocol":2,"batchBytes":\#(hostile)}"#
            let decoded = try #require(LeaderRecord(decoding: Array(json.utf8)), "\(hostile)")
            #expect(decoded.batchBytes == nil, "\(hostile)")
        }
    }

    // MARK: Broker

    /// What reached the subscriber that carries messages (not the subscription's reply).
    func messages(in output: RecordingOutput) -> [[UInt8]] {
        output.deliveries.map(\.bytes).filter { $0.count > 1 && [WireFormat.Kind.data.rawValue, WireFormat.Kind.batch.rawValue].contains($0[1]) }
    }

    /// A subscription again after a failover, owed this test's publisher's messages from `next` on.
    func resuming(at next: UInt64) -> SubscribeRequest {
        SubscribeRequest(topics: ["t"], window: 1 << 20, resume: ["t": [publisher.description: next]], since: 0, batchBytes: 1 << 20)
    }

    func subscription(history: Int? = nil, batchBytes: Int? = 1 << 20) -> SubscribeRequest {
        SubscribeRequest(topics: ["t"], window: 1 << 20, history: history, resume: nil, since: nil, batchBytes: batchBytes)
    }

    @Test func theBrokerForwardsABatchUnchangedAndCountsItsMessages() throws {
        var harness = try CoreHarness()
        harness.subscribe(subscription(), from: subscriber)
        harness.register(publisher, from: client)
        let bytes = batch(1...5)
        harness.request(bytes, from: client)
        #expect(harness.output.deliveries.last?.bytes == bytes, "forwarded byte for byte")
        let counts = harness.core.takeCounters()
        #expect(counts.perTopic.map(\.received) == [5])
        #expect(counts.perTopic.map(\.delivered) == [5])
        #expect(harness.output.refusals(to: client).isEmpty)
    }

    @Test func theBrokerRefusesAMalformedBatchAndKeepsNothingOfIt() throws {
        var harness = try CoreHarness()
        harness.subscribe(subscription(), from: subscriber)
        harness.register(publisher, from: client)
        harness.request(DataRun.batch(of: [frame(1), frame(3)]), from: client)
        #expect(messages(in: harness.output).isEmpty)
        #expect(harness.core.takeCounters().malformed == [.badBatch: 1])
    }

    @Test func aBatchFromAnIdentityTheConnectionDidNotRegisterIsRefused() throws {
        var harness = try CoreHarness()
        harness.subscribe(subscription(), from: subscriber)
        harness.register(publisher, from: client)
        let stranger = PublisherID()
        harness.request(DataRun.batch(of: [frame(1, from: stranger), frame(2, from: stranger)]), from: client)
        #expect(harness.output.refusals(to: client) == [.notOwner])
        #expect(messages(in: harness.output).isEmpty)
    }

    @Test func aSubscriberOwedAMessageInsideABatchGetsItFromThereOn() throws {
        var harness = try CoreHarness()
        harness.register(publisher, from: client)
        harness.request(batch(1...4), from: client)
        harness.request(batch(5...8), from: client)
        harness.subscribe(resuming(at: 6), from: subscriber)
        #expect(messages(in: harness.output) == [batch(6...8)], "the rest of the batch holding 6, and nothing before it")
        let other = CoreHarness.id(3)
        harness.subscribe(resuming(at: 8), from: other)
        let last = harness.output.deliveries.filter { $0.subscriber == other }.map(\.bytes).last
        #expect(last == frame(8, sentAt: 80), "one message left of a batch goes as a plain data frame")
    }

    @Test func aSubscriberAskingAgainBeforeItWasSentKeepsItsStartInsideABatch() throws {
        var harness = try CoreHarness()
        harness.register(publisher, from: client)
        harness.request(batch(1...4), from: client)
        harness.request(batch(5...8), from: client)
        // Owed 6, inside the second batch, while its queue is full: nothing is sent yet.
        harness.output.outcomes[subscriber] = .wouldBlock
        harness.subscribe(resuming(at: 6), from: subscriber)
        // It asks again on the same connection before anything left; it is still owed from 6, not from 5.
        harness.subscribe(subscription(), from: subscriber)
        harness.output.outcomes[subscriber] = nil
        harness.tick(after: .milliseconds(50))
        #expect(messages(in: harness.output) == [batch(6...8)])
    }

    @Test func aSubscriberThatJoinedAtSomeTimeGetsTheMessagesOfABatchSentSinceThen() throws {
        var harness = try CoreHarness()
        harness.register(publisher, from: client)
        harness.request(batch(1...4), from: client)
        harness.request(batch(5...8), from: client)
        harness.subscribe(
            SubscribeRequest(topics: ["t"], window: 1 << 20, resume: [:], since: 65, batchBytes: 1 << 20), from: subscriber)
        #expect(messages(in: harness.output) == [batch(7...8)], "sent at 70 and 80")
    }

    @Test func historyIsCountedInMessagesNotInBatches() throws {
        var harness = try CoreHarness()
        harness.register(publisher, history: 100, from: client)
        harness.request(batch(1...4), from: client)
        harness.request(batch(5...8), from: client)
        harness.request(batch(9...12), from: client)
        harness.subscribe(subscription(history: 6), from: subscriber)
        #expect(messages(in: harness.output) == [batch(7...8), batch(9...12)], "the last 6 messages")
        let counts = harness.core.takeCounters()
        #expect(counts.perTopic.map(\.delivered) == [6])
    }

    @Test(
        "A subscriber that takes no batch (an older one), or none holding two of these messages, gets one message per frame",
        arguments: [nil, 40] as [Int?])
    func aBatchTooLargeForASubscriberGoesOneMessagePerFrame(limit: Int?) throws {
        var harness = try CoreHarness()
        harness.subscribe(subscription(batchBytes: limit), from: subscriber)
        harness.register(publisher, from: client)
        harness.request(frame(1), from: client)
        harness.request(batch(2...4), from: client)
        harness.request(frame(5), from: client)
        #expect(messages(in: harness.output) == (1...5).map { frame($0, sentAt: $0 == 1 || $0 == 5 ? 0 : $0 * 10) })
        let refused = harness.output.deliveries.filter { $0.subscriber == subscriber && $0.bytes[1] == WireFormat.Kind.refused.rawValue }
        #expect(refused.isEmpty, "served, not refused")
        #expect(harness.core.takeCounters().perTopic.map(\.delivered) == [5])
        // A subscriber whose limit fits the batch, on the same topic, gets it whole.
        let other = CoreHarness.id(3)
        harness.subscribe(resuming(at: 2), from: other)
        #expect(harness.output.deliveries.filter { $0.subscriber == other }.map(\.bytes).contains(batch(2...4)))
    }

    @Test func aSubscriberWithASmallLimitGetsALargeBatchInSlicesThatFitIt() throws {
        var harness = try CoreHarness()
        let limit = batch(1...3).count
        harness.subscribe(subscription(batchBytes: limit), from: subscriber)
        harness.register(publisher, from: client)
        // Room for two frames only: the rest goes when the subscriber's queue has room again, from where it stopped.
        harness.output.room[subscriber] = 2
        harness.request(batch(1...10), from: client)
        #expect(messages(in: harness.output) == [batch(1...3), batch(4...6)])
        harness.output.room[subscriber] = nil
        harness.tick(after: .milliseconds(50))
        let sent = messages(in: harness.output)
        #expect(sent == [batch(1...3), batch(4...6), batch(7...9), frame(10, sentAt: 100)])
        #expect(sent.allSatisfy { $0.count <= limit })
        #expect(harness.core.takeCounters().perTopic.map(\.delivered) == [10])
    }

    @Test func aSliceOfABatchIsRightWhateverOffsetItIsGiven() {
        let bytes = batch(1...9)
        let size = frame(1).count
        bytes.withUnsafeBytes { batch in
            // Read slice by slice with the offsets each returns, it is the batch again.
            var next: UInt64 = 1
            var offset = 0
            var slices: [[UInt8]] = []
            while next <= 9 {
                guard let slice = DataRun.slice(of: batch, from: next, offset: offset, limit: 2 + 2 * (4 + size)) else {
                    Issue.record("no slice from \(next)")
                    return
                }
                slices.append(slice.frame.bytes)
                next = slice.last + 1
                offset = slice.nextOffset
            }
            let pairs: [[UInt8]] = [self.batch(1...2), self.batch(3...4), self.batch(5...6), self.batch(7...8)]
            #expect(slices == pairs + [frame(9, sentAt: 90)], "the last message alone goes as a data frame")
            // Offsets that are not where the message starts: another message's, inside one, past the end.
            let ninth = DataRun.slice(of: batch, from: 9, limit: 0)?.frame.bytes
            #expect(ninth == frame(9, sentAt: 90))
            for offset in [2, 2 + 4 + size, 3, 17, batch.count - 3, batch.count, -5, .max] {
                #expect(DataRun.slice(of: batch, from: 9, offset: offset, limit: 0)?.frame.bytes == ninth, "\(offset)")
            }
            #expect(DataRun.slice(of: batch, from: 10, limit: 0)?.last == nil)
            #expect(DataRun.slice(of: batch, from: 0, limit: 0)?.last == nil)
        }
    }

    // MARK: Subscriber

    struct Collect: Sequencer.Sink {
        var delivered: [(sequence: UInt64, payload: String)] = []
        mutating func deliver(topic: Int, header: MessageHeader, payload: UnsafeRawBufferPointer, receivedAt: UInt64) {
            delivered.append((header.sequence, String(decoding: payload, as: UTF8.self)))
        }
    }

    @Test func aSubscriberDeliversEachMessageOfABatchInOrderAndDropsDuplicates() {
        var core = SubscriberCore(topics: ["t"], sequencer: Sequencer())
        var sink = Collect()
        let now = ContinuousClock.now
        #expect(batch(1...3).withUnsafeBytes { core.acceptFrame($0, receivedAt: 0, now: now, into: &sink) } == .accepted)
        // A replay after a failover overlaps what arrived.
        #expect(batch(2...5).withUnsafeBytes { core.acceptFrame($0, receivedAt: 0, now: now, into: &sink) } == .accepted)
        #expect(sink.delivered.map(\.sequence) == [1, 2, 3, 4, 5])
        #expect(sink.delivered.last?.payload == "message 5")
        #expect(core.sequencer.statistics.duplicates == 2)
    }

    @Test func aSubscriberDeliversNothingOfAMalformedBatch() {
        var core = SubscriberCore(topics: ["t"], sequencer: Sequencer())
        var sink = Collect()
        let bytes = DataRun.batch(of: [frame(1), frame(2), frame(4)])
        #expect(bytes.withUnsafeBytes { core.acceptFrame($0, receivedAt: 0, now: .now, into: &sink) } == .malformed)
        #expect(sink.delivered.isEmpty)
        let other = DataRun.batch(of: [frame(1, topic: "u"), frame(2, topic: "u")])
        #expect(other.withUnsafeBytes { core.acceptFrame($0, receivedAt: 0, now: .now, into: &sink) } == .notSubscribed)
    }
}

@Suite("Batches: the hand-over from the socket thread to the application")
struct DeliveryQueueTests {
    func batch(_ payloads: [String], topics: [Topic] = ["t"]) -> MessageBatch {
        var batch = MessageBatch(topics: topics)
        for (index, payload) in payloads.enumerated() {
            Array(payload.utf8).withUnsafeBytes {
                batch.append(
                    topic: 0, header: MessageHeader(publisher: PublisherID(), sequence: UInt64(index + 1), sentAt: 0),
                    payload: $0, receivedAt: 0)
            }
        }
        return batch
    }

    @Test func aBatchTheApplicationIsDoneWithIsFilledAgainAndOneItKeptIsNotOverwritten() async throws {
        let queue = DeliveryQueue(limit: 1 << 20, onRoom: {})
        let second = String(repeating: "s", count: 1000)
        queue.push(batch(["first", second]))
        var first = await queue.next()
        let kept = try #require(first?[1])
        let capacity = first?.storage.capacity ?? 0
        // Given back: the producer's next batch is that one, emptied, with its room.
        queue.push(batch(["third"]))
        let third = await queue.next(recycling: first.take())
        var refill = queue.emptyBatch(following: try #require(third))
        #expect(refill.isEmpty)
        #expect(capacity >= 1005 && refill.storage.capacity >= capacity)
        Array("overwrite".utf8).withUnsafeBytes {
            refill.append(
                topic: 0, header: MessageHeader(publisher: PublisherID(), sequence: 9, sentAt: 0), payload: $0, receivedAt: 0)
        }
        #expect(String(decoding: kept.payload, as: UTF8.self) == second, "a message the application kept")
        #expect(String(decoding: refill[0].payload, as: UTF8.self) == "overwrite")
        // Nothing given back: a new batch.
        #expect(queue.emptyBatch(following: refill).storage.capacity >= refill.storage.count)
    }
}

@Suite("Batches: a real publisher against a leader it cannot trust", .serialized)
struct PublisherBatchTests {
    /// A leader of our own: a ROUTER named in a forged leader record, which grants credit as `credit` says and
    /// collects every data and batch frame a real `herald publish` sends it.
    @Test(
        "A full-speed publisher sends batches to a leader that takes them, none to one that does not, and survives a grant of 2^64-1",
        arguments: [65_536, nil] as [Int?])
    func aPublisherBatchesOnlyForALeaderThatSaysSo(batchBytes: Int?) async throws {
        try await withCluster(mode: "broker") { cluster in
            let leader = try await ForgedLeader(on: cluster, batchBytes: batchBytes)
            defer { leader.close() }
            let router = leader.router
            let count = 20_000
            let publisher = try await cluster.start(
                "publisher", ["publish", "--topic", "forged", "--rate", "0", "--count", "\(count)", "--size", "64"])

            var sequences: [UInt64] = []
            var batches = 0
            var granted = false
            let deadline = ContinuousClock.now + .seconds(20)
            while sequences.count < count, ContinuousClock.now < deadline {
                guard let message = try? router.receive(dontWait: true) else {
                    try await Task.sleep(for: .milliseconds(5))
                    continue
                }
                guard message.frames.count == 2 else { continue }
                let (peer, body) = (message.frames[0], message.frames[1])
                switch body.withUnsafeBytes({ try? WireFormat.kind(of: $0).get() }) {
                case .register where !granted:
                    // More credit than any counter can hold: the publisher must neither trap nor wrap.
                    try router.send(ZMQMessage(peer, ControlFrame.count(.credit, .max)))
                    granted = true
                case .data:
                    sequences.append(try body.withUnsafeBytes { try DataLayout.decode($0).get().header.sequence })
                case .batch:
                    batches += 1
                    let run = try body.withUnsafeBytes { try DataRun.decode($0).get() }
                    sequences += Array(run.firstSequence...run.lastSequence)
                default:
                    continue
                }
            }
            let everyMessageOnceInOrder = sequences.elementsEqual(1...UInt64(count))
            #expect(everyMessageOnceInOrder, "got \(sequences.count) of \(count), ending \(sequences.suffix(3))")
            if batchBytes == nil {
                #expect(batches == 0, "a leader that does not advertise batches gets none")
            } else {
                #expect(batches > 0, "messages published together travel in batches")
            }
            #expect(try await publisher.waitForExit(timeout: .seconds(15)) == 0, "\(publisher.diagnostics(lines: 20))")
        }
    }

    /// A leader that forgot a paused publisher's connection takes its next heartbeat for a new one, and counts its
    /// credit from zero again, below what the publisher was granted: waiting for more would wait for ever.
    @Test("A publisher whose leader's credit goes back reconnects and replays rather than wait for credit for ever")
    func aPublisherWhoseCreditGoesBackReconnectsAndReplays() async throws {
        try await withCluster(mode: "broker") { cluster in
            let leader = try await ForgedLeader(on: cluster)
            defer { leader.close() }
            let router = leader.router
            let count = 5_000
            let publisher = try await cluster.start(
                "publisher", ["publish", "--topic", "forgotten", "--rate", "0", "--count", "\(count)", "--size", "64"])
            var first: [UInt8]?
            var firstSequences: [UInt64] = []
            var replayed: [UInt64] = []
            var wentBack = false
            let deadline = ContinuousClock.now + .seconds(20)
            while replayed.count < count, ContinuousClock.now < deadline {
                guard let message = try? router.receive(dontWait: true) else {
                    // The first connection stopped at its credit: the leader now counts it from zero.
                    if first != nil, !wentBack, firstSequences.count > 100 {
                        try await Task.sleep(for: .milliseconds(200))
                        try router.send(ZMQMessage(try #require(first), ControlFrame.count(.credit, 16 << 10)))
                        wentBack = true
                    }
                    try await Task.sleep(for: .milliseconds(5))
                    continue
                }
                guard message.frames.count == 2 else { continue }
                let (peer, body) = (message.frames[0], message.frames[1])
                let onFirst = first == nil || peer == first
                switch body.withUnsafeBytes({ try? WireFormat.kind(of: $0).get() }) {
                case .register where first == nil:
                    first = peer
                    try router.send(ZMQMessage(peer, ControlFrame.count(.credit, 64 << 10)))
                case .register where !onFirst && replayed.isEmpty:
                    try router.send(ZMQMessage(peer, ControlFrame.count(.credit, .max)))
                case .data, .batch:
                    let run = try body.withUnsafeBytes { try DataRun.decode($0).get() }
                    if onFirst { firstSequences += Array(run.firstSequence...run.lastSequence) } else {
                        replayed += Array(run.firstSequence...run.lastSequence)
                    }
                default:
                    continue
                }
            }
            #expect(wentBack && firstSequences.count < count, "the first connection stopped at its credit")
            #expect(replayed.elementsEqual(1...UInt64(count)), "a new connection replayed every message: \(replayed.count), from \(replayed.first ?? 0)")
            #expect(try await publisher.waitForExit(timeout: .seconds(15)) == 0, "\(publisher.diagnostics(lines: 20))")
            #expect(publisher.stderrLines.contains { $0.contains("the leader counts this connection anew") })
        }
    }

    /// A counted publisher waits for its messages to leave for the leader; one that refuses its wire format will
    /// never take them, and the publisher must say so and exit rather than wait for ever.
    @Test("A counted publisher whose leader refuses its wire format says so and exits, counting what never left")
    func aCountedPublisherExitsWhenTheLeaderRefusesItsWireFormat() async throws {
        try await withCluster(mode: "broker") { cluster in
            let leader = try await ForgedLeader(on: cluster)
            defer { leader.close() }
            let router = leader.router
            let publisher = try await cluster.start(
                "publisher", ["publish", "--topic", "refused", "--rate", "0", "--count", "100", "--size", "64"])
            let refusal = ControlFrame.encode(.refused, Refusal(reason: .versionMismatch, detail: "this leader speaks version 9"))
            let deadline = ContinuousClock.now + .seconds(15)
            while publisher.isRunning, ContinuousClock.now < deadline {
                guard let message = try? router.receive(dontWait: true) else {
                    try await Task.sleep(for: .milliseconds(5))
                    continue
                }
                guard message.frames.count == 2 else { continue }
                if message.frames[1].withUnsafeBytes({ try? WireFormat.kind(of: $0).get() }) == .register {
                    try router.send(ZMQMessage(message.frames[0], refusal))
                }
            }
            #expect(try await publisher.waitForExit(timeout: .seconds(5)) == 0, "\(publisher.diagnostics(lines: 20))")
            #expect(publisher.stderrLines.contains { $0.contains("the leader refused this publisher's wire format") })
            #expect(publisher.stderrLines.contains { $0.contains("unsent_at_stop=100") }, "\(publisher.diagnostics(lines: 20))")
            #expect(!publisher.stderrLines.contains { $0.contains("published every message") })
        }
    }
}

/// A leader of a test's own: a ROUTER named in a forged leader record, for a real publisher to attach to; it
/// answers only as the test does.
private struct ForgedLeader {
    let router: ZMQSocket
    private let context: ZMQContext
    private let writer: ZooKeeperSession

    init(on cluster: HeraldCluster, batchBytes: Int? = nil) async throws {
        let (layout, writer) = try await LeadershipTests.outsideSession(on: cluster)
        self.writer = writer
        context = try ZMQContext()
        router = try ZMQSocket(context: context, type: .router)
        try router.set(.linger(.zero))
        let endpoint = try router.bind("tcp://127.0.0.1:0")
        let record = LeaderRecord(
            broker: "forged", mode: .broker, requestEndpoint: endpoint, subscriberEndpoint: "tcp://127.0.0.1:1",
            epoch: 1, batchBytes: batchBytes)
        try await writer.create(layout.leaderPath, data: record.encoded(), mode: .ephemeral)
    }

    func close() {
        router.close()
        Task { [writer] in await writer.close() }
    }
}
