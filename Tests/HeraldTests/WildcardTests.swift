import Foundation
import TestSupport
import Testing
import ZeroMQ
import ZooKeeper

@testable import Herald

@Suite("Topic filters: MQTT-style patterns")
struct TopicFilterTests {
    @Test(
        "A filter matches as MQTT's do",
        arguments: [
            ("sensors/+/temp", "sensors/lab1/temp", true),
            ("sensors/+/temp", "sensors/lab1/humidity", false),
            ("sensors/+/temp", "sensors/lab1/x/temp", false),
            ("sensors/+/temp", "sensors//temp", true),
            ("sensors/+", "sensors", false),
            ("sensors/+", "sensors/", true),
            ("sensors/#", "sensors", true),
            ("sensors/#", "sensors/lab1", true),
            ("sensors/#", "sensors/lab1/temp", true),
            ("sensors/#", "sensorsX", false),
            ("sensors/#", "sensorsX/lab1", false),
            ("#", "anything/at/all", true),
            ("+", "top", true),
            ("+", "top/level", false),
            ("+/+", "a/b", true),
            ("+/#", "a", true),
            ("weather", "weather", true),
            ("weather", "weatherX", false),
            ("c++", "c++", true),
            ("c++", "c", false),
        ])
    func matching(filter: String, topic: String, matches: Bool) throws {
        #expect(try TopicFilter(filter).matches(Topic(topic)) == matches)
    }

    @Test func wildcardsAreWholeLevelsAndAHashComesLast() throws {
        for invalid in ["sensors/#/temp", "#/a", ""] {
            #expect(throws: HeraldConfigurationError.self, "\(invalid)") { _ = try TopicFilter(invalid) }
        }
        let patterns = try ["c++", "issue#12", "a/+", "#", "a/b"].map { try TopicFilter($0).isPattern }
        #expect(patterns == [false, false, true, true, false], "'+' and '#' inside a level are characters")
    }

    @Test func configurationErrorsSayWhatKindTheyAreAndKeepTheirCause() throws {
        func reason(_ body: () throws(HeraldConfigurationError) -> Void) -> HeraldConfigurationError.Reason? {
            do {
                try body()
                return nil
            } catch {
                return error.reason
            }
        }
        // Variables, not literals: a literal converts through the non-throwing literal initializer.
        let (topic, filter, group) = ("a/#", "#/a", "a b")
        let names = [
            reason { () throws(HeraldConfigurationError) in _ = try Topic(topic) },
            reason { () throws(HeraldConfigurationError) in _ = try TopicFilter(filter) },
            reason { () throws(HeraldConfigurationError) in _ = try ClusterLayout(cluster: "c", group: group) },
        ]
        #expect(names == [.invalidName, .invalidName, .invalidName])
        var configuration = PublisherConfiguration(
            zookeeper: .init(connectionString: "127.0.0.1:1"), layout: try ClusterLayout(cluster: "c"))
        configuration.retentionCount = 0
        let setting = reason { () throws(HeraldConfigurationError) in try configuration.validate() }
        #expect(setting == .invalidSetting)
        let refused = HeraldConfigurationError.zooKeeperRefused(
            ZooKeeperError(code: .noAuth, path: "/herald/c/mode"), layout: try ClusterLayout(cluster: "c"), identity: nil)
        #expect(refused.reason == .zooKeeperRefused)
        #expect((refused.underlying as? ZooKeeperError)?.code == .noAuth, "the library's code is kept")
    }

    @Test func aTopicNameCannotHaveAWildcardLevelSoAnExactFilterMeansOneThing() throws {
        for name in ["+", "#", "a/+", "a/#/b", "+/b"] {
            #expect(throws: HeraldConfigurationError.self, "\(name)") { try Topic(name) }
            #expect(Array(name.utf8).withUnsafeBytes { Topic(validating: $0) } == nil, "from the network: \(name)")
        }
        for name in ["c++", "a/b+", "#a", "a/++/b"] { #expect(throws: Never.self) { try Topic(name) } }
    }

    @Test func aPatternNeedsAGrantOfEverythingItCanMatch() throws {
        var grant = TopicGrant.none
        grant.add(["sensors/*", "sensors", "alerts"])
        var narrow = TopicGrant.none
        narrow.add(["sensors/*"])
        let cases: [(TopicGrant, String, Bool)] = [
            (grant, "sensors/+/temp", true),
            (grant, "sensors/#", true),  // sensors itself is granted too
            (grant, "alerts", true),
            (grant, "alerts/#", false),  // alerts/x is not granted
            (grant, "#", false),
            (grant, "+/temp", false),
            (narrow, "sensors/#", false),  // sensors itself is not granted
            (narrow, "sensors/+", true),
            (.all, "#", true),
        ]
        for (grant, filter, allowed) in cases {
            let parsed = try TopicFilter(filter)
            #expect(grant.allows(parsed) == allowed, "\(filter)")
        }
    }

    @Test func aDirectModeSocketSubscribesToTheLiteralPartOfAPattern() throws {
        let prefixes = try ["sensors/+/temp", "sensors/#", "#"].map {
            String(decoding: try TopicFilter($0).subscriptionPrefix.dropFirst(2), as: UTF8.self)
        }
        #expect(prefixes == ["sensors/", "sensors", ""], "sensors/# also matches sensors itself")
        let exact = TopicFilter("weather").subscriptionPrefix
        let key = Topic("weather").key
        #expect(exact == key, "a whole name with its end")
    }
}

@Suite("Topic filters: the subscriber's core")
struct SubscriberPatternTests {
    struct Collect: Sequencer.Sink {
        var delivered: [(topic: Int, sequence: UInt64)] = []
        mutating func deliver(topic: Int, header: MessageHeader, payload: UnsafeRawBufferPointer, receivedAt: UInt64) {
            delivered.append((topic, header.sequence))
        }
    }

    func frame(_ topic: String, _ sequence: UInt64, from publisher: PublisherID) -> [UInt8] {
        dataFrame(topic: Topic(checked: topic), header: MessageHeader(publisher: publisher, sequence: sequence, sentAt: 0), payload: [1])
    }

    @Test func exactTopicsComeFirstAndMatchedTopicsAreNumberedAsTheyArrive() throws {
        var core = SubscriberCore(filters: ["weather", "sensors/+/temp"], sequencer: Sequencer())
        var sink = Collect()
        let publisher = PublisherID()
        let now = ContinuousClock.now
        let arrivals: [(String, UInt64)] = [
            ("sensors/lab2/temp", 1), ("weather", 1), ("sensors/lab1/temp", 1), ("sensors/lab1/humidity", 1),
            ("sensors/lab2/temp", 2),
        ]
        let outcomes = arrivals.map { topic, sequence in
                frame(topic, sequence, from: publisher).withUnsafeBytes {
                    core.acceptData($0, receivedAt: 0, now: now, into: &sink)
                }
            }
        #expect(outcomes == [.accepted, .accepted, .accepted, .notSubscribed, .accepted])
        #expect(core.topics.map(\.name) == ["weather", "sensors/lab2/temp", "sensors/lab1/temp"])
        #expect(sink.delivered.map(\.topic) == [1, 0, 2, 1])
        #expect(core.owed().keys.sorted() == ["sensors/lab1/temp", "sensors/lab2/temp", "weather"])
    }

    @Test func aPublisherInventingMatchingNamesCannotGrowTheSubscriberWithoutEnd() throws {
        var core = SubscriberCore(filters: ["#"], sequencer: Sequencer())
        var sink = Collect()
        let publisher = PublisherID()
        let now = ContinuousClock.now
        for number in 0..<SubscriberCore.maximumTopics {
            let outcome = frame("t\(number)", 1, from: publisher).withUnsafeBytes {
                core.acceptData($0, receivedAt: 0, now: now, into: &sink)
            }
            try #require(outcome == .accepted)
        }
        let past = frame("one-too-many", 1, from: publisher).withUnsafeBytes {
            core.acceptData($0, receivedAt: 0, now: now, into: &sink)
        }
        #expect(past == .tooManyTopics)
        #expect(core.topics.count == SubscriberCore.maximumTopics)
        let known = frame("t7", 2, from: publisher).withUnsafeBytes { core.acceptData($0, receivedAt: 0, now: now, into: &sink) }
        #expect(known == .accepted, "topics already known keep arriving")
    }
}

@Suite("Topic filters: the broker's core")
struct BrokerPatternTests {
    let publisher = PublisherID()
    let client = CoreHarness.id(1)
    let subscriber = CoreHarness.id(2)

    func topicsDelivered(to subscriber: RoutingID, in output: RecordingOutput) -> [String] {
        output.deliveries.filter { $0.subscriber == subscriber }.compactMap { delivery in
            delivery.bytes.withUnsafeBytes { bytes in
                (try? DataLayout.decode(bytes).get()).map { String(decoding: bytes[$0.topic], as: UTF8.self) }
            }
        }
    }

    @Test func aPatternFollowsMatchingTopicsWithTheirHistoryAndThoseMadeLater() throws {
        var harness = try CoreHarness()
        harness.register(publisher, topics: ["sensors/lab1/temp", "sensors/lab1/rh", "weather"], history: 2, from: client)
        for sequence in 1...3 as ClosedRange<UInt64> {
            for topic in ["sensors/lab1/temp", "sensors/lab1/rh", "weather"] {
                harness.publish(publisher, sequence, topic: Topic(checked: topic), from: client)
            }
        }
        harness.subscribe(SubscribeRequest(topics: ["sensors/+/temp"], window: 1 << 20, history: 2), from: subscriber)
        #expect(topicsDelivered(to: subscriber, in: harness.output) == ["sensors/lab1/temp", "sensors/lab1/temp"])
        #expect(harness.output.sequences(to: subscriber) == [2, 3], "the last two of the matching topic")

        harness.publish(publisher, 1, topic: "sensors/lab2/temp", from: client)
        harness.publish(publisher, 4, topic: "weather", from: client)
        harness.publish(publisher, 4, topic: "sensors/lab1/temp", from: client)
        #expect(
            topicsDelivered(to: subscriber, in: harness.output).suffix(2) == ["sensors/lab2/temp", "sensors/lab1/temp"],
            "a topic made later arrives from its first message; others never")
        #expect(harness.output.sequences(to: subscriber).suffix(2) == [1, 4])
    }

    @Test func patternsCountAsSubscriptionsAndWhatTheyCannotFollowIsRefusedWithAReason() throws {
        var harness = try CoreHarness { $0.maximumTopicsPerRequest = 3 }
        harness.register(publisher, topics: ["a/1", "a/2", "a/3"], from: client)
        for topic in ["a/1", "a/2", "a/3"] { harness.publish(publisher, 1, topic: Topic(checked: topic), from: client) }
        harness.subscribe(SubscribeRequest(topics: ["a/+"], window: 1 << 20), from: subscriber)
        for topic in ["a/1", "a/2", "a/3"] { harness.publish(publisher, 2, topic: Topic(checked: topic), from: client) }
        // One pattern and two of its three topics fill the three places.
        #expect(topicsDelivered(to: subscriber, in: harness.output).count == 2)
        let refusals = harness.output.deliveries.filter { $0.subscriber == subscriber }.compactMap { delivery in
            delivery.bytes.withUnsafeBytes { try? ControlFrame.decode(Refusal.self, from: $0).get() }
        }
        #expect(refusals.map(\.reason) == [.tooManyTopics])
        #expect(refusals.first?.detail.contains("patterns match 1 more topics") == true, "\(refusals)")
    }

    @Test func aSubscriberHoldsAFewPatternsSinceEachIsMatchedAgainstEveryNewTopic() throws {
        var harness = try CoreHarness()
        let limit = BrokerCore.maximumPatternsPerSubscriber
        let patterns = (0...limit).map { "p\($0)/+" }
        harness.subscribe(SubscribeRequest(topics: patterns, window: 1 << 20), from: subscriber)
        let refusals = harness.output.deliveries.filter { $0.subscriber == subscriber }.compactMap { delivery in
            delivery.bytes.withUnsafeBytes { try? ControlFrame.decode(Refusal.self, from: $0).get() }
        }
        #expect(refusals.map(\.reason) == [.tooManyTopics])
        #expect(refusals.first?.detail.contains("\(limit) patterns at most") == true)
        harness.subscribe(SubscribeRequest(topics: Array(patterns.prefix(limit)), window: 1 << 20), from: subscriber)
        #expect(harness.output.deliveries.filter { $0.subscriber == subscriber }.count == 2, "the limit itself is fine")
    }

    @Test func directModeLooksUpAndAnnouncesThePublishersOfMatchingTopics() throws {
        var harness = try CoreHarness { $0.mode = .direct }
        let matching = PublisherRegistration(publisher: publisher, endpoint: "tcp://127.0.0.1:1", topics: ["sensors/a"])
        let other = PublisherRegistration(publisher: PublisherID(), endpoint: "tcp://127.0.0.1:2", topics: ["weather"])
        harness.request(ControlFrame.encode(.register, matching), from: client)
        harness.request(ControlFrame.encode(.register, other), from: CoreHarness.id(3))
        let looker = CoreHarness.id(5)
        harness.request(ControlFrame.encode(.lookup, DiscoveryQuery(topics: ["sensors/#"])), from: looker)
        let reply = try #require(harness.output.replies.last { $0.client == looker }).bytes.withUnsafeBytes {
            try ControlFrame.decode(DiscoveryReply.self, from: $0).get()
        }
        #expect(reply.publishers == [matching])

        let later = PublisherRegistration(publisher: PublisherID(), endpoint: "tcp://127.0.0.1:4", topics: ["sensors"])
        harness.request(ControlFrame.encode(.register, later), from: CoreHarness.id(4))
        let announced = try #require(harness.output.replies.last { $0.client == looker }).bytes.withUnsafeBytes {
            try ControlFrame.decode(DiscoveryReply.self, from: $0).get()
        }
        #expect(announced.publishers == [later], "sensors/# matches sensors")
    }
}

// End to end: real brokers, publishers and subscribers.
@Suite("Topic filters: real processes", .serialized)
struct WildcardProcessTests {
    static let startup: Duration = .seconds(15)
    static let perTopic = 60

    @Test("Pattern subscribers get every matching topic, those first published after they subscribed too, and nothing else", arguments: ["broker", "direct"])
    func patternSubscribers(mode: String) async throws {
        try await withCluster(mode: mode) { cluster in
            _ = try await cluster.broker("b1")
            _ = try await cluster.waitForLeader(timeout: Self.startup)
            let attached = mode == "direct" ? "using leader for discovery" : "attached to leader"
            let oneLevel = try await cluster.subscriber(["sensors/+/temp"], name: "subscriber of sensors/+/temp")
            let everything = try await cluster.subscriber(["sensors/#", "weather"], name: "subscriber of sensors/# and weather")
            for subscriber in [oneLevel, everything] { try await subscriber.waitForLine(containing: attached, timeout: Self.startup) }

            let topics = ["sensors/lab1/temp", "sensors/lab2/temp", "sensors/lab1/humidity", "sensors", "weather", "other/temp"]
            var publishers: [HeraldProcess] = []
            for topic in topics {
                let publisher = try await cluster.start(
                    "publisher of \(topic)",
                    ["publish", "--topic", topic, "--rate", "200", "--count", "\(Self.perTopic)", "--size", "16"])
                publishers.append(publisher)
            }
            for publisher in publishers {
                #expect(try await publisher.waitForExit(timeout: Self.startup) == 0, "\(publisher.diagnostics())")
            }
            try await Task.sleep(for: .seconds(1))
            for (subscriber, wanted) in [
                (oneLevel, ["sensors/lab1/temp", "sensors/lab2/temp"]),
                (everything, ["sensors", "sensors/lab1/humidity", "sensors/lab1/temp", "sensors/lab2/temp", "weather"]),
            ] {
                subscriber.kill(SIGINT)
                #expect(try await subscriber.waitForExit(timeout: .seconds(10)) == 0, "\(subscriber.diagnostics())")
                let messages = subscriber.messages
                let summary = try #require(
                    subscriber.stderrLines.lazy.compactMap(SubscriptionSummary.init(line:)).first, "\(subscriber.diagnostics())")
                #expect(Set(messages.map(\.topic)) == Set(wanted), "topics printed: \(Set(messages.map(\.topic)).sorted())")
                #expect(sequenceProblems(in: messages).isEmpty, "\(sequenceProblems(in: messages))")
                for topic in wanted {
                    let seqs = messages.filter { $0.topic == topic }.map(\.seq)
                    if mode == "broker" {
                        #expect(seqs == Array(1...UInt64(Self.perTopic)), "\(topic): \(seqs.first ?? 0)...\(seqs.last ?? 0)")
                    } else {
                        // Direct mode keeps no replay: what a publisher sent before the subscriber found it is lost,
                        // and counted; what follows arrives whole.
                        #expect(seqs.last == UInt64(Self.perTopic), "\(topic): \(seqs.first ?? 0)...\(seqs.last ?? 0)")
                    }
                }
                #expect(summary.received == messages.count, "\(summary)")
                #expect(summary.received + Int(summary.lost) == wanted.count * Self.perTopic, "\(summary)")
                #expect(summary.duplicates == 0, "\(summary)")
                print("[wildcards] \(mode) \(wanted.count) topics: \(summary)")
            }
        }
    }

    @Test("History for a pattern is the history of each matching topic")
    func historyForAPattern() async throws {
        try await withCluster(mode: "broker") { cluster in
            _ = try await cluster.broker("b1")
            _ = try await cluster.waitForLeader(timeout: Self.startup)
            for topic in ["news/sport", "news/weather", "gossip"] {
                let publisher = try await cluster.start(
                    "publisher of \(topic)",
                    ["publish", "--topic", topic, "--rate", "1000", "--count", "30", "--size", "16", "--history", "10"])
                #expect(try await publisher.waitForExit(timeout: Self.startup) == 0, "\(publisher.diagnostics())")
            }
            let late = try await cluster.start(
                "late subscriber", ["subscribe", "--topic", "news/#", "--history", "5", "--count", "10", "--json"])
            #expect(try await late.waitForExit(timeout: Self.startup) == 0, "\(late.diagnostics())")
            let got = Dictionary(grouping: late.messages, by: \.topic).mapValues { $0.map(\.seq) }
            #expect(got == ["news/sport": Array(26...30), "news/weather": Array(26...30)], "\(got)")
        }
    }
}
