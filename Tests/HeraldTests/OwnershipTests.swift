import Foundation
import Synchronization
import TestSupport
import Testing
import ZeroMQ

@testable import Herald

@Suite("Ownership strength: the leader's table")
struct OwnershipTableTests {
    let strong = PublisherID(high: 1, low: 1)
    let weak = PublisherID(high: 2, low: 2)
    let start = ContinuousClock.now

    func registration(_ publisher: PublisherID, strength: Int?, topics: [String] = ["t"]) -> PublisherRegistration {
        PublisherRegistration(publisher: publisher, endpoint: "", topics: topics, strength: strength)
    }

    @Test func theStrongestLiveContenderOwnsEachOfItsTopics() {
        var table = OwnershipTable()
        table.note(registration(weak, strength: 5, topics: ["t", "u"]), now: start)
        table.note(registration(strong, strength: 10), now: start)
        table.note(registration(PublisherID(), strength: nil), now: start)
        #expect(table.update(now: start) == ["t", "u"])
        #expect(table.owners == ["t": strong, "u": weak], "a publisher without strength does not contend")
        #expect(table.update(now: start).isEmpty, "nothing changed")
    }

    @Test func onEqualStrengthTheLowerIdentityOwns() {
        var table = OwnershipTable()
        table.note(registration(weak, strength: 7), now: start)
        table.note(registration(strong, strength: 7), now: start)
        _ = table.update(now: start)
        #expect(table.owners["t"] == strong)
    }

    @Test func aSilentOwnerIsReplacedAfterTheTimeoutAndTakesOverAgainWhenHeard() {
        var table = OwnershipTable()
        table.note(registration(strong, strength: 10), now: start)
        table.note(registration(weak, strength: 5), now: start)
        _ = table.update(now: start)
        // The weak one keeps registering; the strong one falls silent.
        let later = start + OwnershipTable.ownerTimeout + .milliseconds(100)
        table.note(registration(weak, strength: 5), now: later)
        #expect(table.update(now: start + OwnershipTable.ownerTimeout).isEmpty, "not before the timeout")
        #expect(table.update(now: later) == ["t"])
        #expect(table.owners["t"] == weak)
        table.note(registration(strong, strength: 10), now: later)
        #expect(table.update(now: later) == ["t"])
        #expect(table.owners["t"] == strong)
    }

    @Test func aTopicWhoseContendersAllLeftIsSharedAgain() {
        var table = OwnershipTable()
        table.note(registration(strong, strength: 10), now: start)
        _ = table.update(now: start)
        table.remove(strong)
        #expect(table.update(now: start) == ["t"])
        #expect(table.owners.isEmpty)
        // A strength dropped from a registration is leaving the contest too.
        table.note(registration(weak, strength: 3), now: start)
        _ = table.update(now: start)
        table.note(registration(weak, strength: nil), now: start)
        #expect(table.update(now: start) == ["t"])
    }
}

@Suite("Ownership strength: the subscriber's core")
struct OwnershipSubscriberTests {
    struct Collect: Sequencer.Sink {
        var delivered: [(publisher: PublisherID, sequence: UInt64)] = []
        mutating func deliver(topic: Int, header: MessageHeader, payload: UnsafeRawBufferPointer, receivedAt: UInt64) {
            delivered.append((header.publisher, header.sequence))
        }
    }

    let owner = PublisherID(high: 1, low: 1)
    let next = PublisherID(high: 2, low: 2)
    let shared = PublisherID(high: 3, low: 3)

    func feed(
        _ core: inout SubscriberCore, _ sink: inout Collect, _ publisher: PublisherID, _ sequences: ClosedRange<UInt64>,
        lostBeforeFirst: Bool = false
    ) -> [SubscriberCore.Outcome] {
        sequences.map { sequence in
            dataFrame(topic: "t", header: MessageHeader(publisher: publisher, sequence: sequence, sentAt: 0), payload: [])
                .withUnsafeBytes {
                    core.acceptData($0, receivedAt: 0, now: .now, lostBeforeFirst: { _ in lostBeforeFirst }, into: &sink)
                }
        }
    }

    @Test func onlyTheOwnersMessagesAreDeliveredAndATakeoverCountsNothingLost() {
        var core = SubscriberCore(topics: ["t"], sequencer: Sequencer())
        var sink = Collect()
        // Shared at first: everyone is delivered.
        _ = feed(&core, &sink, shared, 1...2)
        _ = feed(&core, &sink, next, 1...2)
        core.applyOwners(["t": owner])
        #expect(feed(&core, &sink, next, 3...5) == Array(repeating: .notOwner, count: 3))
        #expect(feed(&core, &sink, shared, 3...5) == Array(repeating: .notOwner, count: 3))
        _ = feed(&core, &sink, owner, 1...3)
        // The owner dies; the next one continues from its next message, and nothing it sent meanwhile is owed.
        core.applyOwners(["t": next])
        _ = feed(&core, &sink, owner, 4...4)
        _ = feed(&core, &sink, next, 9...10)
        // All contenders left: shared again, and the publisher without strength continues where it is.
        core.applyOwners([:])
        _ = feed(&core, &sink, shared, 20...21)
        #expect(
            sink.delivered.map { "\($0.publisher.high)/\($0.sequence)" }
                == ["3/1", "3/2", "2/1", "2/2", "1/1", "1/2", "1/3", "2/9", "2/10", "3/20", "3/21"])
        var ticks = Collect()
        core.sequencer.expireGaps(now: .now + .seconds(60), into: &ticks)
        #expect(core.sequencer.statistics.lost == 0)
        #expect(core.sequencer.statistics.duplicates == 0)
    }

    @Test func aStreamFirstSeenAfterAnOwnerChangeIsNotOwedWhatCameBefore() {
        var core = SubscriberCore(topics: ["t"], sequencer: Sequencer())
        var sink = Collect()
        core.applyOwners(["t": next])
        // Direct mode, a publisher that started after the subscriber: normally owed from its first message.
        _ = feed(&core, &sink, next, 40...41, lostBeforeFirst: true)
        #expect(core.sequencer.statistics.lost == 0)
        #expect(sink.delivered.map(\.sequence) == [40, 41])
    }

    @Test func anOwnerChangeNeverDeliversAnythingTwice() {
        var core = SubscriberCore(topics: ["t"], sequencer: Sequencer())
        var sink = Collect()
        core.applyOwners(["t": owner])
        _ = feed(&core, &sink, owner, 1...5)
        core.applyOwners(["t": next])
        core.applyOwners(["t": owner])
        // A replay after a failover, overlapping what was delivered.
        _ = feed(&core, &sink, owner, 3...7)
        #expect(sink.delivered.map(\.sequence) == [1, 2, 3, 4, 5, 6, 7])
        #expect(core.sequencer.statistics.duplicates == 3)
    }
}

@Suite("Ownership strength: the broker's core")
struct OwnershipBrokerTests {
    let strong = PublisherID(high: 1, low: 1)
    let weak = PublisherID(high: 2, low: 2)
    let subscriber = CoreHarness.id(9)

    func reports(to subscriber: RoutingID, in output: RecordingOutput) -> [[String: PublisherID]] {
        output.deliveries.filter { $0.subscriber == subscriber }.compactMap { delivery in
            delivery.bytes.withUnsafeBytes { bytes -> [String: PublisherID]? in
                guard case .success(.owners) = WireFormat.kind(of: bytes) else { return nil }
                return try? ControlFrame.decode(OwnershipReport.self, from: bytes).get().owners
            }
        }
    }

    func register(_ harness: inout CoreHarness, _ publisher: PublisherID, strength: Int?, from client: UInt8) {
        harness.request(
            ControlFrame.encode(
                .register, PublisherRegistration(publisher: publisher, endpoint: "", topics: ["t"], strength: strength)),
            from: CoreHarness.id(client))
    }

    @Test func subscribersLearnTheOwnerBeforeDataAndEveryChangeAfter() throws {
        var harness = try CoreHarness()
        register(&harness, weak, strength: 5, from: 2)
        // A fresh leader waits one owner timeout for every contender to register, and says nothing before.
        harness.subscribe(SubscribeRequest(topics: ["t"], window: 1 << 20), from: subscriber)
        #expect(reports(to: subscriber, in: harness.output).isEmpty)
        harness.tick(after: OwnershipTable.ownerTimeout)
        #expect(reports(to: subscriber, in: harness.output) == [["t": weak]])

        register(&harness, strong, strength: 10, from: 1)
        #expect(reports(to: subscriber, in: harness.output).last == ["t": strong])
        // The owner falls silent while the weak one keeps registering: it takes over after the timeout.
        harness.now += OwnershipTable.ownerTimeout / 2
        register(&harness, weak, strength: 5, from: 2)
        harness.now += OwnershipTable.ownerTimeout / 2 + .milliseconds(100)
        register(&harness, weak, strength: 5, from: 2)
        harness.tick(after: .zero)
        #expect(reports(to: subscriber, in: harness.output).last == ["t": weak])

        // A subscriber that comes later learns the owner with its subscription, before any data.
        let late = CoreHarness.id(10)
        harness.subscribe(SubscribeRequest(topics: ["t"], window: 1 << 20), from: late)
        let kinds = harness.output.deliveries.filter { $0.subscriber == late }.map { $0.bytes[1] }
        #expect(kinds.prefix(2) == [WireFormat.Kind.subscribed.rawValue, WireFormat.Kind.owners.rawValue])

        // The last contender leaves cleanly: shared again, at once.
        harness.request(
            ControlFrame.encode(
                .unregister, PublisherRegistration(publisher: weak, endpoint: "", topics: ["t"], strength: 5)),
            from: CoreHarness.id(2))
        #expect(reports(to: subscriber, in: harness.output).last == [:])
    }

    @Test func directModeLookupsCarryTheOwnersOnceTheLeaderKnowsThem() throws {
        var harness = try CoreHarness { $0.mode = .direct }
        harness.request(
            ControlFrame.encode(
                .register,
                PublisherRegistration(publisher: strong, endpoint: "tcp://127.0.0.1:1", topics: ["t"], strength: 1)),
            from: CoreHarness.id(1))
        let looker = CoreHarness.id(5)
        func lastReply() throws -> DiscoveryReply {
            try #require(harness.output.replies.last { $0.client == looker }).bytes.withUnsafeBytes {
                try ControlFrame.decode(DiscoveryReply.self, from: $0).get()
            }
        }
        harness.request(ControlFrame.encode(.lookup, DiscoveryQuery(topics: ["#"])), from: looker)
        #expect(try lastReply().owners == nil, "not known yet: the subscriber keeps what it knew")
        harness.tick(after: OwnershipTable.ownerTimeout)
        harness.request(ControlFrame.encode(.lookup, DiscoveryQuery(topics: ["#"])), from: looker)
        #expect(try lastReply().owners == ["t": strong])
        // A change is pushed to the subscribers that looked the topic up.
        harness.request(
            ControlFrame.encode(
                .unregister,
                PublisherRegistration(publisher: strong, endpoint: "tcp://127.0.0.1:1", topics: ["t"], strength: 1)),
            from: CoreHarness.id(1))
        #expect(try lastReply().owners == [:])
    }
}

// End to end: a strong, a middle and an unranked publisher of one topic, and a subscriber.
@Suite("Ownership strength: real processes", .serialized)
struct OwnershipProcessTests {
    static let startup: Duration = .seconds(15)

    @Test(
        "Only the strongest live publisher is delivered; the next takes over after kill -9, and a shared topic after the last contender stops",
        arguments: ["broker", "direct"])
    func takeover(mode: String) async throws {
        try await withCluster(mode: mode) { cluster in
            _ = try await cluster.broker("b1")
            _ = try await cluster.waitForLeader(timeout: Self.startup)
            let subscriber = try await cluster.subscriber(["feed"])
            try await subscriber.waitForLine(
                containing: mode == "direct" ? "using leader for discovery" : "attached to leader", timeout: Self.startup)
            func publisher(_ name: String, strength: Int?) async throws -> (HeraldProcess, String) {
                let process = try await cluster.start(
                    name,
                    ["publish", "--topic", "feed", "--rate", "200", "--size", "16"]
                        + (strength.map { ["--strength", "\($0)"] } ?? []))
                let line = try await process.waitForLine(containing: "publisher started", timeout: Self.startup)
                let id = try #require(
                    line.firstMatch(of: /publisher=([0-9a-f-]{36})/).map { String($0.1) }, "no id in \(line)")
                return (process, id)
            }
            let (strong, strongID) = try await publisher("strong", strength: 20)
            let (middle, middleID) = try await publisher("middle", strength: 10)
            let (unranked, unrankedID) = try await publisher("unranked", strength: nil)
            let names = [strongID: "strong", middleID: "middle", unrankedID: "unranked"]

            // Once the strong one is delivered, nothing else is, however long the others publish.
            _ = try await subscriber.waitFor("the strong publisher's messages", timeout: Self.startup) {
                subscriber.messages.filter { $0.publisher == strongID }.count >= 200 ? true : nil
            }
            let beforeKill = subscriber.messages
            let firstStrong = try #require(beforeKill.firstIndex { $0.publisher == strongID })
            let intruders = beforeKill[firstStrong...].filter { $0.publisher != strongID }
            #expect(
                intruders.isEmpty,
                "\(intruders.count) messages of others delivered while the strong one owned, first \(intruders.first.map { "\(names[$0.publisher] ?? $0.publisher) #\($0.seq)" } ?? ""); logs in \(cluster.saveLogs())")

            // kill -9: the middle one takes over within the owner timeout of the strong one's last registration.
            let killedAt = wallClockNanoseconds()
            strong.kill(SIGKILL)
            let firstMiddle = try await subscriber.waitFor("the middle publisher's messages", timeout: .seconds(10)) {
                subscriber.messages.dropFirst(beforeKill.count).first { $0.publisher == middleID }
            }
            let crashTakeover = Double(Int64(firstMiddle.receivedAt) - Int64(killedAt)) / 1e9
            // SIGTERM: the middle one unregisters, no contender is left, and the topic is shared again.
            let afterMiddle = subscriber.messages.count
            let stoppedAt = wallClockNanoseconds()
            middle.kill(SIGTERM)
            let firstShared = try await subscriber.waitFor("the unranked publisher's messages", timeout: .seconds(10)) {
                subscriber.messages.dropFirst(afterMiddle).first { $0.publisher == unrankedID }
            }
            let stopTakeover = Double(Int64(firstShared.receivedAt) - Int64(stoppedAt)) / 1e9
            try await Task.sleep(for: .milliseconds(500))
            let summary = try await stopCleanly(publishers: [unranked], subscriber: subscriber)
            let messages = subscriber.messages
            // Each publisher's messages at most once and in order; one that was not delivered for a while skips
            // what it sent meanwhile, which is not lost: it was never owed.
            var last: [String: UInt64] = [:]
            var backwards = 0
            for message in messages {
                if let previous = last[message.publisher], message.seq <= previous { backwards += 1 }
                last[message.publisher] = message.seq
            }
            #expect(backwards == 0, "\(backwards) repeated or out of order")
            #expect(summary.duplicates == 0, "\(summary)")
            // Direct mode keeps no replay: what a publisher sent before the subscriber found it is lost, and
            // counted (the unranked one's first messages, before any contender registered).
            if mode == "broker" { #expect(summary.lost == 0, "\(summary)") }
            // Which publisher was delivered, in runs: the unranked one may lead before the contenders register.
            var runs: [String] = []
            for message in messages {
                let name = names[message.publisher] ?? "unknown"
                if runs.last != name { runs.append(name) }
            }
            #expect(
                runs.drop { $0 != "strong" } == ["strong", "middle", "unranked"],
                "delivered in turn: \(runs.prefix(12))")
            print(
                "[ownership] \(mode): kill -9 of the owner to the next one's first message \(String(format: "%.2f", crashTakeover)) s; SIGTERM to the shared topic \(String(format: "%.2f", stopTakeover)) s; \(summary)"
            )
        }
    }
}
