import Foundation
import Testing
import ZeroMQ
import ZooKeeper

@testable import Herald

/// Records what a broker core decides, as bytes, and answers deliveries as told.
struct RecordingOutput: BrokerOutput {
    var replies: [(client: RoutingID, bytes: [UInt8])] = []
    var deliveries: [(subscriber: RoutingID, bytes: [UInt8])] = []
    /// What a delivery to each subscriber returns (sent when absent).
    var outcomes: [RoutingID: DeliveryOutcome] = [:]
    /// Deliveries to each subscriber that succeed before its queue is full (unlimited when absent).
    var room: [RoutingID: Int] = [:]

    mutating func reply(to client: RoutingID, _ frame: inout ZMQFrame) {
        replies.append((client, frame.bytes))
        frame.clear()
    }

    mutating func deliver(to subscriber: RoutingID, _ frame: inout ZMQFrame) -> DeliveryOutcome {
        var outcome = outcomes[subscriber] ?? .sent
        if outcome == .sent, let left = room[subscriber] {
            if left == 0 { outcome = .wouldBlock } else { room[subscriber] = left - 1 }
        }
        if outcome == .sent {
            deliveries.append((subscriber, frame.bytes))
            frame.clear()
        }
        return outcome
    }

    func kinds(to client: RoutingID) -> [WireFormat.Kind] {
        replies.filter { $0.client == client }.compactMap { reply in
            reply.bytes.withUnsafeBytes { try? WireFormat.kind(of: $0).get() }
        }
    }

    func refusals(to client: RoutingID) -> [Refusal.Reason] {
        replies.filter { $0.client == client }.compactMap { reply in
            reply.bytes.withUnsafeBytes { try? ControlFrame.decode(Refusal.self, from: $0).get().reason }
        }
    }

    func credit(to client: RoutingID) -> UInt64? {
        replies.filter { $0.client == client }.compactMap { reply -> UInt64? in
            reply.bytes.withUnsafeBytes { bytes in
                guard case .success(.credit) = WireFormat.kind(of: bytes) else { return nil }
                return try? ControlFrame.decodeCount(bytes).get()
            }
        }.last
    }

    /// The data frames delivered to `subscriber`, decoded to their sequence numbers.
    func sequences(to subscriber: RoutingID) -> [UInt64] {
        deliveries.filter { $0.subscriber == subscriber }.compactMap { delivery in
            delivery.bytes.withUnsafeBytes { try? DataLayout.decode($0).get().header.sequence }
        }
    }
}

/// A broker core driven by frames, as the engine drives it.
struct CoreHarness: ~Copyable {
    var core: BrokerCore
    var output = RecordingOutput()
    var now = ContinuousClock.now

    /// The defaults, for a cluster that no test reaches through ZooKeeper.
    static func configuration() throws -> BrokerConfiguration {
        BrokerConfiguration(
            zookeeper: ZooKeeperConfiguration(connectionString: "127.0.0.1:1"), layout: try ClusterLayout(cluster: "test"))
    }

    init(configure: (inout BrokerConfiguration) -> Void = { _ in }) throws {
        var configuration = try Self.configuration()
        configuration.brokerID = "core"
        configure(&configuration)
        core = BrokerCore(configuration: configuration, epoch: 1, now: now, logger: .init(label: "test"))
    }

    /// Longer than a broker remembers a silent subscriber or discoverer.
    static let subscriberSilence = BrokerCore.subscriberTimeToLive + .seconds(1)

    static func id(_ value: UInt8) -> RoutingID { [0, 0, 0, 0, value].withUnsafeBytes { RoutingID($0)! } }

    mutating func request(_ bytes: [UInt8], from client: RoutingID) {
        var frame = try! ZMQFrame(bytes)
        core.handleRequest(from: client, &frame, now: now, output: &output)
    }

    mutating func subscriberMessage(_ bytes: [UInt8], from subscriber: RoutingID) {
        var frame = try! ZMQFrame(bytes)
        core.handleSubscriberMessage(from: subscriber, &frame, now: now, output: &output)
    }

    mutating func register(_ publisher: PublisherID, topics: [String] = ["t"], history: Int? = nil, from client: RoutingID) {
        request(
            ControlFrame.encode(.register, PublisherRegistration(publisher: publisher, endpoint: "", topics: topics, history: history)),
            from: client)
    }

    mutating func publish(
        _ publisher: PublisherID, _ sequence: UInt64, topic: Topic = "t", payload: [UInt8] = [1, 2, 3], sentAt: UInt64 = 0,
        from client: RoutingID
    ) {
        request(dataFrame(topic: topic, header: MessageHeader(publisher: publisher, sequence: sequence, sentAt: sentAt), payload: payload), from: client)
    }

    mutating func subscribe(_ request: SubscribeRequest, from subscriber: RoutingID) {
        subscriberMessage(ControlFrame.encode(.subscribe, request), from: subscriber)
    }

    mutating func tick(after duration: Duration) {
        now += duration
        core.tick(now: now, output: &output)
    }
}

@Suite("Broker core: frames in, decisions out")
struct BrokerCoreTests {
    let publisher = PublisherID()
    let client = CoreHarness.id(1)
    let subscriber = CoreHarness.id(2)

    func subscription(topics: [String] = ["t"], window: Int = 1 << 20, history: Int? = nil) -> SubscribeRequest {
        SubscribeRequest(topics: topics, window: window, history: history, resume: nil, since: nil)
    }

    @Test func aRegisteredPublisherGetsCreditAndItsFramesReachSubscribersUnchanged() throws {
        var harness = try CoreHarness()
        harness.subscribe(subscription(), from: subscriber)
        harness.register(publisher, from: client)
        #expect(harness.output.credit(to: client) == UInt64(BrokerConfiguration.defaultPublisherWindow))
        let frame = dataFrame(topic: "t", header: MessageHeader(publisher: publisher, sequence: 1, sentAt: 42), payload: [9, 9])
        harness.request(frame, from: client)
        #expect(harness.output.deliveries.last?.bytes == frame, "forwarded byte for byte")
        #expect(harness.output.sequences(to: subscriber) == [1])
    }

    @Test func dataFromAConnectionThatNeverRegisteredIsRefused() throws {
        var harness = try CoreHarness()
        harness.subscribe(subscription(), from: subscriber)
        harness.publish(publisher, 1, from: client)
        #expect(harness.output.refusals(to: client) == [.notRegistered])
        #expect(harness.output.sequences(to: subscriber).isEmpty)
    }

    @Test func directModeAnnouncesANewPublisherAtOnceToSubscribersThatLookedItsTopicsUp() throws {
        var harness = try CoreHarness { $0.mode = .direct }
        let (interested, other) = (CoreHarness.id(5), CoreHarness.id(6))
        harness.request(ControlFrame.encode(.lookup, DiscoveryQuery(topics: ["t"])), from: interested)
        harness.request(ControlFrame.encode(.lookup, DiscoveryQuery(topics: ["u"])), from: other)
        #expect(harness.output.kinds(to: interested) == [.lookup] && harness.output.kinds(to: other) == [.lookup])

        let registration = PublisherRegistration(publisher: publisher, endpoint: "tcp://127.0.0.1:1", topics: ["t"])
        harness.request(ControlFrame.encode(.register, registration), from: client)
        let announced = try #require(harness.output.replies.last { $0.client == interested }).bytes.withUnsafeBytes {
            try ControlFrame.decode(DiscoveryReply.self, from: $0).get()
        }
        #expect(announced.publishers == [registration] && !announced.complete, "adds the publisher, removes none")
        #expect(harness.output.kinds(to: other) == [.lookup], "a subscriber of other topics hears nothing")
        // A heartbeat registration is no news.
        harness.request(ControlFrame.encode(.register, registration), from: client)
        #expect(harness.output.kinds(to: interested) == [.lookup, .lookup])
        // A subscriber that stopped looking up is forgotten.
        harness.tick(after: CoreHarness.subscriberSilence)
        let late = PublisherRegistration(publisher: PublisherID(), endpoint: "tcp://127.0.0.1:2", topics: ["t"])
        harness.request(ControlFrame.encode(.register, late), from: CoreHarness.id(7))
        #expect(harness.output.kinds(to: interested) == [.lookup, .lookup])
    }

    @Test func aConnectionPublishesOnlyUnderIdentitiesItHoldsNow() throws {
        var harness = try CoreHarness()
        harness.subscribe(subscription(), from: subscriber)
        let other = PublisherID()
        let otherClient = CoreHarness.id(3)
        harness.register(publisher, from: client)
        harness.register(other, from: otherClient)
        harness.publish(publisher, 1, from: otherClient)
        #expect(harness.output.refusals(to: otherClient) == [.notOwner], "another connection's identity")
        harness.publish(publisher, 1, from: client)
        #expect(harness.output.sequences(to: subscriber) == [1])

        // The identity registers again from a new connection (a reconnection): the old one loses it.
        let reconnected = CoreHarness.id(4)
        harness.register(publisher, from: reconnected)
        harness.publish(publisher, 2, from: client)
        #expect(harness.output.refusals(to: client) == [.notOwner])
        harness.publish(publisher, 2, from: reconnected)
        #expect(harness.output.sequences(to: subscriber) == [1, 2])
    }

    /// A broker with small logs and a 2 s stall timeout, a subscriber with the smallest window that never
    /// acknowledges, and a registered publisher.
    func slowSubscriberHarness() throws -> CoreHarness {
        var harness = try CoreHarness {
            $0.topicLogBytes = 64 * 1024
            $0.logBytes = 256 * 1024
            $0.publisherWindow = 8 * 1024
            $0.stallTimeout = .seconds(2)
        }
        harness.subscribe(subscription(window: 0), from: subscriber)
        harness.register(publisher, from: client)
        return harness
    }

    /// Publishes as if credit did not exist: the subscriber's window fills, then its lag passes half the topic
    /// log, then the publisher's credit runs out and what it sends beyond is refused.
    /// - Returns: the credit the publisher was held at.
    func publishUntilCreditStops(_ harness: inout CoreHarness) throws -> UInt64 {
        let payload = [UInt8](repeating: 0, count: 1000)
        var sequence: UInt64 = 0
        while sequence < 500, !harness.output.refusals(to: client).contains(.overCredit) {
            sequence += 1
            harness.publish(publisher, sequence, payload: payload, from: client)
        }
        #expect(harness.output.refusals(to: client).contains(.overCredit), "credit stopped at the slow subscriber")
        #expect(sequence < 500)
        return try #require(harness.output.credit(to: client))
    }

    @Test func aSlowSubscriberHoldsCreditBackUntilItStallsAndThenItIsLeftBehind() throws {
        var harness = try slowSubscriberHarness()
        let held = try publishUntilCreditStops(&harness)
        // Past the stall timeout the subscriber no longer holds publishers back.
        harness.tick(after: .seconds(3))
        #expect(try #require(harness.output.credit(to: client)) > held, "credit flows again")
    }

    @Test func aSubscriberIdleLongerThanTheStallTimeoutStillHoldsCreditBackWhenABurstBegins() throws {
        var harness = try slowSubscriberHarness()
        // Nothing published for longer than the stall timeout (a quiet topic), the subscriber heard from meanwhile.
        harness.tick(after: .seconds(3))
        harness.subscriberMessage(ControlFrame.count(.consumed, 0), from: subscriber)
        let held = try publishUntilCreditStops(&harness)
        // Its first message of the burst went out moments ago: it is slow, not stalled, and still holds publishers
        // back, so the log keeps what it is owed.
        harness.tick(after: .milliseconds(100))
        #expect(try #require(harness.output.credit(to: client)) == held, "no credit past a subscriber that is only slow")
        // Past the stall timeout counted from that first message, it is left behind as before.
        harness.tick(after: .seconds(2))
        #expect(try #require(harness.output.credit(to: client)) > held, "credit flows again")
    }


    /// A subscriber the log skipped is told which publishers' numbers left it, before what follows, when it asks;
    /// one that does not ask (an older subscriber) gets no frame it does not know.
    @Test(arguments: [true, false])
    func aSubscriberTheLogSkippedIsToldWhatLeftItWhenItAsks(asks: Bool) throws {
        var harness = try CoreHarness {
            $0.topicLogBytes = 16 * 1024
            $0.logBytes = 64 * 1024
        }
        let other = PublisherID()
        harness.register(publisher, from: client)
        harness.register(other, from: CoreHarness.id(3))
        var request = subscription()
        request.skipNotices = asks
        harness.subscribe(request, from: subscriber)
        harness.publish(publisher, 1, from: client)
        #expect(harness.output.sequences(to: subscriber) == [1])
        // Its queue full meanwhile, the topic's log gives up the oldest of what it was not sent.
        harness.output.outcomes[subscriber] = .wouldBlock
        let payload = [UInt8](repeating: 1, count: 1000)
        for sequence in 2...40 as ClosedRange<UInt64> { harness.publish(publisher, sequence, payload: payload, from: client) }
        for sequence in 1...3 as ClosedRange<UInt64> {
            harness.publish(other, sequence, payload: payload, from: CoreHarness.id(3))
        }
        harness.output.outcomes[subscriber] = nil
        harness.tick(after: .milliseconds(50))
        let frames = harness.output.deliveries.filter { $0.subscriber == subscriber }.dropFirst(2)
        let notices = frames.compactMap { frame in
            frame.bytes.withUnsafeBytes { try? ControlFrame.decode(SkippedNotice.self, from: $0).get() }
        }
        let first = try #require(harness.output.sequences(to: subscriber).dropFirst().first)
        #expect(first > 2, "the log gave some up")
        if asks {
            #expect(notices == [SkippedNotice(topic: "t", through: [publisher.description: first - 1])])
            #expect(frames.first.map { $0.bytes[1] } == WireFormat.Kind.skipped.rawValue, "before what follows")
        } else {
            #expect(notices.isEmpty)
        }
        #expect(harness.core.takeCounters().skipped > 0)
    }

    @Test func aTopicLogOfFewerThanFourPublisherWindowsDrawsAWarningNamingTheSettings() throws {
        var configuration = try CoreHarness.configuration()
        #expect(configuration.flowControlWarning == nil, "the defaults leave flow control room")
        configuration.topicLogBytes = 4 << 20
        try configuration.validate()
        let warning = try #require(configuration.flowControlWarning)
        #expect(warning.contains("--topic-log-bytes") && warning.contains("--publisher-window"))
        configuration.topicLogBytes = 4 * configuration.publisherWindow
        #expect(configuration.flowControlWarning == nil)
    }

    /// Three busy topics, each behind at one slow subscriber by less than half its own log, but together by more
    /// than the bound of all logs allows: per topic no publisher would wait, and the bound of all logs would take
    /// messages the subscriber was never sent.
    @Test func slowSubscribersOfManyTopicsHoldPublishersBackBeforeTheBoundOfAllLogsTakesWhatTheyWereNotSent() throws {
        var harness = try CoreHarness {
            $0.topicLogBytes = 64 * 1024
            $0.logBytes = 96 * 1024
            $0.publisherWindow = 8 * 1024
        }
        let names = ["a", "b", "c"]
        let topics = try names.map { try Topic($0) }
        let publishers = names.map { _ in PublisherID() }
        let clients = names.indices.map { CoreHarness.id(UInt8(10 + $0)) }
        harness.subscribe(subscription(topics: names, window: 0), from: subscriber)
        for index in names.indices { harness.register(publishers[index], topics: [names[index]], from: clients[index]) }
        let payload = [UInt8](repeating: 7, count: 1000)
        let frameSize = UInt64(
            dataFrame(topic: "a", header: MessageHeader(publisher: publishers[0], sequence: 1, sentAt: 0), payload: payload).count)
        let perTopic: UInt64 = 400
        var published = [UInt64](repeating: 0, count: names.count)
        /// Each publisher sends what its credit allows, as a real one does.
        func publishWhileCreditLasts(_ harness: inout CoreHarness) {
            var progress = true
            while progress {
                progress = false
                for index in names.indices where published[index] < perTopic {
                    let credit = harness.output.credit(to: clients[index]) ?? 0
                    guard (published[index] + 1) * frameSize <= credit else { continue }
                    published[index] += 1
                    harness.publish(
                        publishers[index], published[index], topic: topics[index], payload: payload, from: clients[index])
                    progress = true
                }
            }
        }
        // The subscriber takes nothing for a while (less than the stall timeout).
        publishWhileCreditLasts(&harness)
        #expect(published.allSatisfy { $0 < perTopic }, "the publishers wait")
        #expect(harness.core.takeCounters().logBytes <= 96 * 1024)
        // Then it takes everything it is sent, and the publishers go on to the end.
        for _ in 0..<10_000 where published.contains(where: { $0 < perTopic }) {
            harness.subscriberMessage(ControlFrame.count(.consumed, .max), from: subscriber)
            publishWhileCreditLasts(&harness)
        }
        harness.subscriberMessage(ControlFrame.count(.consumed, .max), from: subscriber)
        #expect(published.allSatisfy { $0 == perTopic })
        let received = harness.output.deliveries.filter { $0.subscriber == subscriber }.compactMap { delivery in
            delivery.bytes.withUnsafeBytes { try? DataLayout.decode($0).get().header }
        }
        for publisher in publishers {
            #expect(received.filter { $0.publisher == publisher }.map(\.sequence) == Array(1...perTopic), "every message, once")
        }
        #expect(harness.core.takeCounters().skipped == 0)
    }
    @Test func lateJoinersGetTheHistoryPublishersOffer() throws {
        var harness = try CoreHarness()
        harness.register(publisher, history: 3, from: client)
        for sequence in 1...10 as ClosedRange<UInt64> { harness.publish(publisher, sequence, from: client) }
        harness.subscribe(subscription(history: 5), from: subscriber)
        #expect(harness.output.sequences(to: subscriber) == [8, 9, 10], "at most what publishers offer")
        let reply = try #require(harness.output.deliveries.first { $0.bytes[1] == WireFormat.Kind.subscribed.rawValue })
        let answer = try reply.bytes.withUnsafeBytes { try ControlFrame.decode(SubscribeReply.self, from: $0).get() }
        #expect(answer.offered == ["t": 3])
        #expect(answer.backlog == ["t": 3])
    }

    @Test func aReattachingSubscriberGetsWhatItIsOwedAndNewPublishersFromWhenItSubscribed() throws {
        var harness = try CoreHarness()
        let other = PublisherID()
        harness.register(publisher, from: client)
        harness.register(other, from: CoreHarness.id(3))
        for sequence in 1...5 as ClosedRange<UInt64> { harness.publish(publisher, sequence, sentAt: 100, from: client) }
        for sequence in 1...2 as ClosedRange<UInt64> { harness.publish(other, sequence, sentAt: 50, from: CoreHarness.id(3)) }
        harness.publish(other, 3, sentAt: 200, from: CoreHarness.id(3))
        harness.subscribe(
            SubscribeRequest(topics: ["t"], window: 1 << 20, history: nil, resume: ["t": [publisher.description: 4]], since: 150),
            from: subscriber)
        #expect(harness.output.sequences(to: subscriber) == [4, 5, 1, 2, 3], "from the first owed message on, in log order")
    }

    @Test func aGapOnTheSameConnectionRewindsOnlyToAMessageItIsOwed() throws {
        var harness = try CoreHarness()
        harness.register(publisher, from: client)
        harness.subscribe(subscription(), from: subscriber)
        for sequence in [1, 2, 3, 5, 6] as [UInt64] { harness.publish(publisher, sequence, from: client) }
        let before = harness.output.sequences(to: subscriber).count
        // Owed 4, which this leader never had: nothing is sent again.
        harness.subscribe(SubscribeRequest(topics: ["t"], window: 1 << 20, resume: ["t": [publisher.description: 4]], since: 0), from: subscriber)
        #expect(harness.output.sequences(to: subscriber).count == before)
        // Owed 2, which it has: from there on.
        harness.subscribe(SubscribeRequest(topics: ["t"], window: 1 << 20, resume: ["t": [publisher.description: 2]], since: 0), from: subscriber)
        #expect(harness.output.sequences(to: subscriber).suffix(4) == [2, 3, 5, 6])
    }

    @Test func aPublisherThatRegistersAgainReplaysNothingTheLogTookIntoItTwice() throws {
        var harness = try CoreHarness()
        harness.subscribe(subscription(), from: subscriber)
        harness.register(publisher, from: client)
        for sequence in 1...10 as ClosedRange<UInt64> { harness.publish(publisher, sequence, from: client) }
        // A reconnection: a new connection, the whole retention buffer again, then what is new.
        let again = CoreHarness.id(3)
        harness.register(publisher, from: again)
        for sequence in 1...12 as ClosedRange<UInt64> { harness.publish(publisher, sequence, from: again) }
        #expect(harness.output.sequences(to: subscriber) == Array(1...12))
        #expect(harness.core.takeCounters().duplicates == 10)
        // Nor is what is already taken taken again by a late joiner's history.
        harness.register(publisher, history: 100, from: again)
        let late = CoreHarness.id(4)
        harness.subscribe(subscription(history: 100), from: late)
        #expect(harness.output.sequences(to: late) == Array(1...12))
    }

    @Test func aRenewalFromAConnectionTheLeaderForgotIsRefusedSoThePublisherAttachesAgain() throws {
        var harness = try CoreHarness()
        func renewal(from client: RoutingID) {
            harness.request(
                ControlFrame.encode(
                    .register, PublisherRegistration(publisher: publisher, endpoint: "", topics: ["t"], renewal: true)),
                from: client)
        }
        harness.register(publisher, from: client)
        renewal(from: client)
        #expect(harness.output.refusals(to: client).isEmpty, "a heartbeat of a connection the leader knows")
        // Silent past its registration (a paused process): forgotten, and its next heartbeat is refused rather
        // than taken as a new connection whose credit and messages start from zero.
        harness.tick(after: BrokerCore.registrationTimeToLive + .seconds(1))
        renewal(from: client)
        #expect(harness.output.refusals(to: client) == [.notRegistered])
        harness.publish(publisher, 1, from: client)
        #expect(harness.output.refusals(to: client) == [.notRegistered, .notRegistered], "and so is its data")
        // Attached again: a new connection's first registration is taken.
        let again = CoreHarness.id(3)
        harness.register(publisher, from: again)
        #expect(harness.output.credit(to: again) == UInt64(BrokerConfiguration.defaultPublisherWindow))
    }

    @Test func aReplayFillsGapsAndNothingTheLogDidNotTakeIsRefused() throws {
        var harness = try CoreHarness()
        harness.subscribe(subscription(), from: subscriber)
        harness.register(publisher, from: client)
        // 4, 5 and 8 to 10 never came (refused on a connection the leader forgot); the replay brings them back.
        for sequence in [1, 2, 3, 6, 7, 11, 12] as [UInt64] { harness.publish(publisher, sequence, from: client) }
        for sequence in 1...13 as ClosedRange<UInt64> { harness.publish(publisher, sequence, from: client) }
        #expect(harness.output.sequences(to: subscriber) == [1, 2, 3, 6, 7, 11, 12, 4, 5, 8, 9, 10, 13], "each once")
        #expect(harness.core.takeCounters().duplicates == 7)
    }

    @Test func aBatchIsTakenWholeUnlessTheLogHadEveryMessageOfIt() throws {
        var harness = try CoreHarness()
        harness.subscribe(subscription(), from: subscriber)
        harness.register(publisher, from: client)
        func batch(_ numbers: ClosedRange<UInt64>) -> [UInt8] {
            DataRun.batch(of: numbers.map { dataFrame(topic: "t", header: MessageHeader(publisher: publisher, sequence: $0, sentAt: 0), payload: [1]) })
        }
        harness.request(batch(1...10), from: client)
        harness.request(batch(8...12), from: client)
        harness.request(batch(3...5), from: client)
        harness.request(batch(11...12), from: client)
        #expect(
            harness.output.sequences(to: subscriber) == Array(1...10) + Array(8...12),
            "the overlapping batch whole, for the subscriber to drop 8 to 10")
        #expect(harness.core.takeCounters().duplicates == 5)
    }

    @Test func forgedNumbersAtTheTopOfTheRangeAndManyPublishersNeitherTrapNorRefuseWhatTheLogNeverTook() throws {
        var harness = try CoreHarness()
        harness.subscribe(subscription(), from: subscriber)
        harness.register(publisher, from: client)
        for sequence in [UInt64.max, .max, 2, 1, .max - 1, .max] { harness.publish(publisher, sequence, from: client) }
        #expect(harness.output.sequences(to: subscriber) == [.max, 2, 1, .max - 1])
        // Four ranges apart are kept; a fifth makes the lowest forgotten, whose numbers are then taken again.
        let gaps = PublisherID()
        harness.register(gaps, from: CoreHarness.id(9))
        for sequence in [10, 20, 30, 40, 50, 20, 30, 40, 50, 10] as [UInt64] { harness.publish(gaps, sequence, from: CoreHarness.id(9)) }
        #expect(harness.output.sequences(to: subscriber).suffix(6) == [10, 20, 30, 40, 50, 10])
        // One more publisher than a topic remembers: the one heard from longest ago is forgotten, and its
        // messages are taken as they come again.
        let others = (0...TopicState.maximumTakenStreams).map { _ in PublisherID() }
        for (index, other) in others.enumerated() {
            harness.register(other, from: CoreHarness.id(UInt8(10 + index)))
            harness.publish(other, 1, from: CoreHarness.id(UInt8(10 + index)))
        }
        let before = harness.output.sequences(to: subscriber).count
        harness.publish(others[others.count - 1], 1, from: CoreHarness.id(UInt8(10 + others.count - 1)))
        #expect(harness.output.sequences(to: subscriber).count == before, "still remembered: refused")
        harness.publish(publisher, .max, from: client)
        #expect(harness.output.sequences(to: subscriber).count == before + 1, "forgotten: taken again")
    }

    @Test func topicLogsAreBoundedInBytesAndWhatASubscriberMissedIsCounted() throws {
        var harness = try CoreHarness {
            $0.topicLogBytes = 16 * 1024
            $0.logBytes = 64 * 1024
        }
        harness.register(publisher, history: 1000, from: client)
        let payload = [UInt8](repeating: 1, count: 1000)
        for sequence in 1...100 as ClosedRange<UInt64> {
            harness.publish(publisher, sequence, payload: payload, from: client)
            if sequence % 10 == 0 { harness.register(publisher, history: 1000, from: client) }
        }
        let counts = harness.core.takeCounters()
        #expect(counts.logBytes <= 16 * 1024)
        #expect(counts.evicted > 80)
        harness.subscribe(subscription(history: 1000), from: subscriber)
        let delivered = harness.output.sequences(to: subscriber)
        #expect(delivered.last == 100)
        #expect(delivered.count < 20, "only what the log still holds")
    }

    /// With one reader of the idle topic, its history is found and goes first; with more readers than one append
    /// may look through (``BrokerCore/evictionProbes``), the search gives up and the oldest entries go in turn, so
    /// that a hostile crowd of subscribers cannot make every append slow.
    @Test(arguments: [1, BrokerCore.evictionProbes + 8])
    func overTheBoundOfAllLogsAnIdleTopicsHistoryGoesBeforeWhatASubscriberWasNotSent(idleReaders: Int) throws {
        var harness = try CoreHarness {
            $0.topicLogBytes = 80 * 1024
            $0.logBytes = 96 * 1024
        }
        let other = PublisherID()
        let otherClient = CoreHarness.id(4)
        let payload = [UInt8](repeating: 1, count: 1000)
        // An idle topic whose subscribers have everything: 50 KB of history.
        harness.register(other, topics: ["idle"], from: otherClient)
        for reader in 0..<idleReaders {
            harness.subscribe(subscription(topics: ["idle"]), from: CoreHarness.id(UInt8(10 + reader)))
        }
        for sequence in 1...50 as ClosedRange<UInt64> {
            harness.publish(other, sequence, topic: "idle", payload: payload, from: otherClient)
        }
        #expect(harness.output.sequences(to: CoreHarness.id(10)).count == 50)
        // A busy topic whose subscriber is momentarily full: 55 KB it was not sent yet, within the topic's own
        // bound but over the bound of all logs.
        harness.register(publisher, topics: ["busy"], from: client)
        harness.subscribe(subscription(topics: ["busy"]), from: subscriber)
        harness.output.outcomes[subscriber] = .wouldBlock
        for sequence in 1...55 as ClosedRange<UInt64> {
            harness.publish(publisher, sequence, topic: "busy", payload: payload, from: client)
        }
        let counts = harness.core.takeCounters()
        #expect(counts.logBytes <= 96 * 1024, "the bound of all logs holds")
        #expect(counts.evicted > 0)
        harness.output.outcomes[subscriber] = nil
        harness.tick(after: .milliseconds(50))
        let received = harness.output.sequences(to: subscriber)
        if idleReaders <= BrokerCore.evictionProbes {
            #expect(received == Array(1...55), "the idle topic paid for the busy one")
        } else {
            #expect(received.count < 55 && received.last == 55, "past the probes, the oldest went in turn")
        }
    }

    /// Room for one large message can take many small entries of an idle topic: the search is bounded by what it
    /// looks at without finding one, not by how many it evicts.
    @Test func oneLargeMessageTakesAsManySmallIdleEntriesAsItNeedsBeforeABusyTopicLosesOne() throws {
        var harness = try CoreHarness {
            $0.topicLogBytes = 80 * 1024
            $0.logBytes = 96 * 1024
        }
        let other = PublisherID()
        let otherClient = CoreHarness.id(4)
        let reader = CoreHarness.id(10)
        // An idle topic whose subscriber has everything: its whole log in entries of 64 bytes.
        harness.register(other, topics: ["idle"], from: otherClient)
        harness.subscribe(subscription(topics: ["idle"]), from: reader)
        for sequence in 1...1500 as ClosedRange<UInt64> {
            harness.publish(other, sequence, topic: "idle", payload: [UInt8](repeating: 1, count: 64), from: otherClient)
        }
        #expect(harness.output.sequences(to: reader).count == 1500)
        // A busy topic whose subscriber is momentarily full, in messages of 12 KB: each needs more small entries
        // evicted than the probes would allow if every eviction spent them.
        harness.register(publisher, topics: ["busy"], from: client)
        harness.subscribe(subscription(topics: ["busy"]), from: subscriber)
        harness.output.outcomes[subscriber] = .wouldBlock
        for sequence in 1...5 as ClosedRange<UInt64> {
            harness.publish(publisher, sequence, topic: "busy", payload: [UInt8](repeating: 2, count: 12_000), from: client)
        }
        #expect(harness.core.takeCounters().logBytes <= 96 * 1024, "the bound of all logs holds")
        harness.output.outcomes[subscriber] = nil
        harness.tick(after: .milliseconds(50))
        #expect(harness.output.sequences(to: subscriber) == Array(1...5), "the idle topic paid for the busy one")
    }

    @Test func limitsOnTopicsPublishersAndSubscribersAreRefusedWithReasons() throws {
        var harness = try CoreHarness {
            $0.maximumTopics = 2
            $0.maximumTopicsPerRequest = 3
            $0.maximumPublishers = 1
            $0.maximumSubscribers = 1
        }
        harness.register(publisher, topics: ["a", "b", "c", "d"], from: client)
        #expect(harness.output.refusals(to: client) == [.tooManyTopics])
        harness.register(publisher, topics: ["a"], from: client)
        harness.register(PublisherID(), topics: ["a"], from: CoreHarness.id(9))
        #expect(harness.output.refusals(to: CoreHarness.id(9)) == [.publisherLimit])
        harness.publish(publisher, 1, topic: "a", from: client)
        harness.publish(publisher, 1, topic: "b", from: client)
        harness.publish(publisher, 1, topic: "c", from: client)
        #expect(harness.output.refusals(to: client).last == .topicLimit)
        harness.subscribe(subscription(topics: ["a"]), from: subscriber)
        harness.subscribe(subscription(topics: ["a"]), from: CoreHarness.id(8))
        #expect(harness.output.deliveries.contains { $0.subscriber == CoreHarness.id(8) && $0.bytes[1] == WireFormat.Kind.refused.rawValue })
        let status = harness.core.status(now: harness.now)
        #expect(status.refused?["too_many_topics"] == 1)
        #expect(status.refused?["publisher_limit"] == 1)
        #expect(status.refused?["subscriber_limit"] == 1)
    }

    @Test func registrationsAreBoundedInBytesAndLongEndpointsAreRefused() throws {
        var harness = try CoreHarness { $0.registrationBytes = 4096 }
        let long = PublisherRegistration(
            publisher: publisher, endpoint: "tcp://" + String(repeating: "x", count: 2000) + ":1", topics: ["t"])
        harness.request(ControlFrame.encode(.register, long), from: client)
        #expect(harness.output.refusals(to: client) == [.registrationLimit])
        #expect(harness.core.status(now: harness.now).publishers.isEmpty)

        // Registrations of 20 topics of 100 bytes each: the second no longer fits in 4 KiB.
        let topics = (0..<20).map { String(repeating: "t", count: 99) + "\($0 % 10)" }
        harness.register(publisher, topics: topics, from: client)
        harness.register(PublisherID(), topics: topics, from: CoreHarness.id(9))
        #expect(harness.output.refusals(to: CoreHarness.id(9)) == [.registrationLimit])
        #expect(harness.core.status(now: harness.now).publishers.count == 1)
        // Registering again in place (a heartbeat) still fits; once the first leaves, the second fits.
        harness.register(publisher, topics: topics, from: client)
        #expect(harness.output.refusals(to: client) == [.registrationLimit])
        harness.request(ControlFrame.encode(.unregister, PublisherRegistration(publisher: publisher, endpoint: "", topics: topics)), from: client)
        harness.register(PublisherID(), topics: topics, from: CoreHarness.id(9))
        #expect(harness.output.refusals(to: CoreHarness.id(9)) == [.registrationLimit])
        #expect(harness.core.status(now: harness.now).publishers.count == 1)
    }

    @Test func subscriptionsAreBoundedPerSubscriberAndInAllWhateverTheNumberOfRequests() throws {
        var harness = try CoreHarness {
            $0.maximumTopicsPerRequest = 3
            $0.maximumSubscriptions = 4
        }
        func refusals(_ id: RoutingID) -> Int {
            harness.output.deliveries.filter { $0.subscriber == id && $0.bytes[1] == WireFormat.Kind.refused.rawValue }.count
        }
        harness.subscribe(subscription(topics: ["a", "b"]), from: subscriber)
        harness.subscribe(subscription(topics: ["a", "b"]), from: subscriber)
        harness.subscribe(subscription(topics: ["c"]), from: subscriber)
        #expect(refusals(subscriber) == 0, "subscribing again to followed topics adds nothing")
        harness.subscribe(subscription(topics: ["d"]), from: subscriber)
        #expect(refusals(subscriber) == 1, "a fourth topic for one subscriber")
        let other = CoreHarness.id(8)
        harness.subscribe(subscription(topics: ["a"]), from: other)
        harness.subscribe(subscription(topics: ["b"]), from: other)
        #expect(refusals(other) == 1, "a fifth subscription in all")
        #expect(harness.core.status(now: harness.now).refused?["subscriber_limit"] == 1)
        #expect(harness.core.status(now: harness.now).refused?["too_many_topics"] == 1)
        // The refused requests changed nothing: data on "a" reaches both, on "d" neither.
        harness.register(publisher, topics: ["a", "d"], from: client)
        harness.publish(publisher, 1, topic: "a", from: client)
        harness.publish(publisher, 2, topic: "d", from: client)
        #expect(harness.output.sequences(to: subscriber) == [1])
        #expect(harness.output.sequences(to: other) == [1])
    }

    @Test func statusReportsFitOneControlMessageAndAreAnsweredAtABoundedRate() throws {
        var harness = try CoreHarness {
            $0.maximumTopics = 5000
            $0.maximumTopicsPerRequest = 5000
        }
        // 5,000 topics of 200 bytes: 1 MB of names, more than a client accepts in one control message.
        let names = (0..<5000).map { String(format: "%05d", $0) + String(repeating: "n", count: 195) }
        harness.register(publisher, topics: Array(names.prefix(1000)), history: 1, from: client)
        for start in stride(from: 1000, to: 5000, by: 1000) {
            harness.register(PublisherID(), topics: Array(names[start..<(start + 1000)]), history: 1, from: CoreHarness.id(UInt8(start / 1000 + 10)))
        }
        harness.output.replies.removeAll()
        for _ in 0..<(BrokerCore.statusRepliesPerSecond + 5) { harness.request(ControlFrame.empty(.status), from: client) }
        #expect(harness.output.kinds(to: client).filter { $0 == .status }.count == BrokerCore.statusRepliesPerSecond)
        #expect(harness.output.refusals(to: client) == Array(repeating: .rateLimited, count: 5))
        let report = try #require(harness.output.replies.first { $0.bytes[1] == WireFormat.Kind.status.rawValue })
        #expect(report.bytes.count <= WireFormat.maximumControlBody + 2)
        let status = try report.bytes.withUnsafeBytes { try ControlFrame.decode(BrokerStatus.self, from: $0).get() }
        #expect(status.topics.count + (status.omittedTopics ?? 0) == 5000)
        #expect((status.omittedTopics ?? 0) > 0)
        #expect(status.publishers.count + (status.omittedPublishers ?? 0) == 5)
        // A second later the budget is back.
        harness.now += .seconds(1)
        harness.request(ControlFrame.empty(.status), from: client)
        #expect(harness.output.kinds(to: client).filter { $0 == .status }.count == BrokerCore.statusRepliesPerSecond + 1)
    }

    @Test func anUnregistrationFromAnotherConnectionIsRefused() throws {
        var harness = try CoreHarness()
        harness.register(publisher, from: client)
        let spoofer = CoreHarness.id(7)
        harness.request(ControlFrame.encode(.unregister, PublisherRegistration(publisher: publisher, endpoint: "", topics: ["t"])), from: spoofer)
        #expect(harness.output.refusals(to: spoofer) == [.notOwner])
        #expect(harness.core.status(now: harness.now).publishers.count == 1)
        harness.request(ControlFrame.encode(.unregister, PublisherRegistration(publisher: publisher, endpoint: "", topics: ["t"])), from: client)
        #expect(harness.core.status(now: harness.now).publishers.isEmpty)
    }

    @Test func aSubscriberThatIsGoneIsForgottenAndOneThatIsFullIsRetried() throws {
        var harness = try CoreHarness()
        harness.register(publisher, from: client)
        harness.subscribe(subscription(), from: subscriber)
        harness.output.outcomes[subscriber] = .wouldBlock
        harness.publish(publisher, 1, from: client)
        harness.publish(publisher, 2, from: client)
        #expect(harness.output.sequences(to: subscriber).isEmpty)
        harness.output.outcomes[subscriber] = nil
        harness.tick(after: .milliseconds(50))
        #expect(harness.output.sequences(to: subscriber) == [1, 2], "retried in order once there is room")
        harness.output.outcomes[subscriber] = .unreachable
        harness.publish(publisher, 3, from: client)
        #expect(harness.core.status(now: harness.now).subscribers == 0)
    }

    @Test func malformedAndForeignFramesAreCountedByReason() throws {
        var harness = try CoreHarness()
        harness.request([], from: client)
        harness.request([1], from: client)
        harness.request([2, 77], from: client)
        harness.request([2, WireFormat.Kind.register.rawValue] + Array("{".utf8), from: client)
        harness.subscriberMessage([2, WireFormat.Kind.consumed.rawValue, 1], from: subscriber)
        let counts = harness.core.takeCounters()
        #expect(counts.malformed[.truncated] == 2)
        #expect(counts.malformed[.versionMismatch] == 1)
        #expect(counts.malformed[.unknownKind] == 1)
        #expect(counts.malformed[.badBody] == 1)
        #expect(harness.output.refusals(to: client) == [.versionMismatch])
    }

    @Test func aTermsTopicsAndSubscribersAreReleasedWithItsCore() throws {
        // Found by the broker fuzzer: topics and subscribers refer to each other, and leaked every term's logs.
        weak var topic: TopicState?
        do {
            var harness = try CoreHarness()
            harness.register(publisher, from: client)
            harness.subscribe(subscription(), from: subscriber)
            harness.publish(publisher, 1, from: client)
            topic = harness.core.topics.first
            #expect(topic != nil)
        }
        #expect(topic == nil, "released with the core")
    }
}
