import Foundation
import TestSupport
import Testing

@testable import Herald

@Suite("Broker groups: routing")
struct TopicRoutingTests {
    @Test func aGroupKeepsItsZnodesUnderGroupsAndTheDefaultOneWhereTheyAlwaysWere() throws {
        let main = try ClusterLayout(cluster: "c")
        let blue = try ClusterLayout(cluster: "c", group: "blue")
        #expect(main.leaderPath == "/herald/c/leader" && main.groupName == "default")
        #expect(blue.leaderPath == "/herald/c/groups/blue/leader")
        #expect(blue.electionPath == "/herald/c/groups/blue/election")
        #expect(blue.modePath == main.modePath, "one mode per cluster")
        #expect(try ClusterLayout(cluster: "c", group: "default") == main)
        for bad in ["", "a/b", "..", String(repeating: "g", count: 65)] {
            #expect(throws: HeraldConfigurationError.self, "\(bad)") { try ClusterLayout(cluster: "c", group: bad) }
        }
    }

    @Test func anAssignmentWinsWhileItsGroupHasBrokers() {
        let routing = TopicRouting(assignments: ["t": "blue"], groups: ["blue", "default", "green"])
        #expect(routing.group(for: "t") == "blue")
        let orphaned = TopicRouting(assignments: ["t": "gone"], groups: ["blue", "default"])
        #expect(orphaned.group(for: "t") == TopicRouting(assignments: [:], groups: ["blue", "default"]).group(for: "t"))
        #expect(TopicRouting(assignments: [:], groups: []).group(for: "t") == nil)
    }

    @Test func hashingSpreadsTopicsAndAGroupThatLeavesMovesOnlyItsOwn() {
        let topics = (0..<3000).map { "sensor/\($0)" }
        let three = TopicRouting(assignments: [:], groups: ["a", "b", "c"])
        let counts = Dictionary(grouping: topics) { three.group(for: $0)! }.mapValues(\.count)
        #expect(counts.values.allSatisfy { $0 > 800 }, "\(counts)")
        let two = TopicRouting(assignments: [:], groups: ["a", "b"])
        let moved = topics.filter { three.group(for: $0) != two.group(for: $0) }
        #expect(moved.allSatisfy { three.group(for: $0) == "c" }, "only c's topics move")
        // Every process computes the same: the weights are fixed, not seeded per process.
        #expect(TopicRouting.weight("x", "a") == TopicRouting.weight("x", "a"))
        #expect(TopicRouting.weight("x", "a") != TopicRouting.weight("x", "b"))
    }

    @Test func assignmentsFromZooKeeperAreBoundedAndValidated() {
        let table = TopicAssignments(decoding: Array(#"{"topics":{"ok":"blue","a/+":"blue","t":"bad/group"}}"#.utf8))
        #expect(table?.topics == ["ok": "blue"])
        #expect(TopicAssignments(decoding: Array("not json".utf8)) == nil)
        #expect(TopicAssignments(decoding: [UInt8](repeating: 0x20, count: TopicAssignments.maximumEncodedSize + 1)) == nil)
    }
}

// End to end: two groups, a topic moved under load, and one group's leader killed.
@Suite("Broker groups: real processes", .serialized)
struct GroupProcessTests {
    static let startup: Duration = .seconds(15)
    static let perTopic = 1200

    @Test(
        "Two groups share the topics; a topic moved under load and a group's leader killed lose and duplicate nothing",
        arguments: ["broker", "direct"])
    func twoGroups(mode: String) async throws {
        try await withCluster(mode: mode) { cluster in
            _ = try await cluster.broker("main-1")
            let blue = [
                try await cluster.start("broker blue-1", ["broker", "--broker-id", "blue-1", "--group", "blue", "--mode", mode]),
                try await cluster.start("broker blue-2", ["broker", "--broker-id", "blue-2", "--group", "blue", "--mode", mode]),
            ]
            let topics = ["t1", "t2", "t3", "t4"]
            let subscriber = try await cluster.subscriber(topics)
            let attached = mode == "direct" ? "using leader for discovery" : "attached to leader"
            try await subscriber.waitForLine(containing: "group=blue", timeout: Self.startup)
            try await subscriber.waitForLine(containing: "group=default", timeout: Self.startup)
            #expect(subscriber.stderrLines.filter { $0.contains(attached) }.count == 2)

            let routes = try await cluster.run(["topics"] + topics)
            print("[groups] before: \(routes.filter { $0.contains("→") })")
            var publishers: [HeraldProcess] = []
            for topic in topics {
                publishers.append(
                    try await cluster.start(
                        "publisher of \(topic)",
                        ["publish", "--topic", topic, "--rate", "200", "--count", "\(Self.perTopic)", "--size", "16"]))
            }
            try await Task.sleep(for: .milliseconds(1500))
            // Every topic to the group it is not in now.
            var moved: [String: String] = [:]
            for line in routes where line.contains("→") {
                let parts = line.split(separator: " ").map(String.init)
                guard parts.count == 3 else { continue }
                moved[parts[0]] = parts[2] == "blue" ? "default" : "blue"
            }
            #expect(moved.count == topics.count, "\(routes)")
            for (topic, group) in moved.sorted(by: { $0.key < $1.key }) {
                _ = try await cluster.run(["topics", "assign", topic, group])
            }
            try await Task.sleep(for: .milliseconds(1500))
            // kill -9 of blue's leader: its standby takes over after the session timeout; the default group
            // serves on.
            let view = try await cluster.run(["topics"])
            let blueLeader = try #require(
                view.first { $0.contains("blue: led by") }?.split(separator: " ").last.map(String.init), "\(view)")
            let victim = try #require(blue.first { $0.name == "broker \(blueLeader)" })
            if mode == "direct" {
                #expect(
                    subscriber.stderrLines.filter { $0.contains("publisher departed") }.isEmpty,
                    "a move keeps the subscriber's connections to the publishers")
            }
            victim.kill(SIGKILL)
            for publisher in publishers {
                #expect(try await publisher.waitForExit(timeout: .seconds(30)) == 0, "\(publisher.diagnostics())")
            }
            let publisherLogs = publishers.flatMap(\.stderrLines)
            #expect(
                publisherLogs.filter { $0.contains("attached to leader") || $0.contains("registered with leader") }.count
                    >= 2 * topics.count,
                "each publisher followed its topic to the other group")
            try await Task.sleep(for: .seconds(2))
            subscriber.kill(SIGINT)
            #expect(try await subscriber.waitForExit(timeout: .seconds(10)) == 0, "\(subscriber.diagnostics())")
            let messages = subscriber.messages
            let summary = try #require(
                subscriber.stderrLines.lazy.compactMap(SubscriptionSummary.init(line:)).first, "\(subscriber.diagnostics())")
            #expect(sequenceProblems(in: messages).isEmpty, "\(sequenceProblems(in: messages))")
            for topic in topics {
                let seqs = messages.filter { $0.topic == topic }.map(\.seq)
                if mode == "broker" {
                    #expect(seqs == Array(1...UInt64(Self.perTopic)), "\(topic): \(seqs.count) messages")
                } else {
                    // Direct mode: a move changes only who answers lookups; what a publisher sent before the
                    // subscriber found it at start is lost, and counted.
                    #expect(seqs.last == UInt64(Self.perTopic), "\(topic): \(seqs.first ?? 0)...\(seqs.last ?? 0)")
                }
            }
            #expect(summary.received + Int(summary.lost) == topics.count * Self.perTopic, "\(summary)")
            print("[groups] \(mode): \(summary); moved \(moved.sorted(by: { $0.key < $1.key })); killed \(blueLeader)")
        }
    }

    @Test("A group that starts under load takes the topics hashing gives it, and nothing is lost or duplicated")
    func aNewGroupTakesItsTopics() async throws {
        try await withCluster(mode: "broker") { cluster in
            _ = try await cluster.broker("main-1")
            _ = try await cluster.waitForLeader(timeout: Self.startup)
            let topics = (1...6).map { "n\($0)" }
            let subscriber = try await cluster.subscriber(topics)
            try await subscriber.waitForLine(containing: "attached to leader", timeout: Self.startup)
            var publishers: [HeraldProcess] = []
            for topic in topics {
                publishers.append(
                    try await cluster.start(
                        "publisher of \(topic)", ["publish", "--topic", topic, "--rate", "100", "--count", "500", "--size", "16"]))
            }
            try await Task.sleep(for: .seconds(1))
            _ = try await cluster.start("broker blue-1", ["broker", "--broker-id", "blue-1", "--group", "blue", "--mode", "broker"])
            try await subscriber.waitForLine(containing: "group=blue", timeout: Self.startup)
            let routes = try await cluster.run(["topics"] + topics).filter { $0.contains("→ blue") }
            #expect(!routes.isEmpty, "hashing gives the new group some of six topics")
            for publisher in publishers {
                #expect(try await publisher.waitForExit(timeout: .seconds(30)) == 0, "\(publisher.diagnostics())")
            }
            let moved = publishers.filter { $0.stderrLines.contains { $0.contains("leader=blue-1") } }.count
            #expect(moved == routes.count, "the publishers of the topics routed to blue moved there: \(routes)")
            try await Task.sleep(for: .seconds(1))
            let summary = try await stopCleanly(publishers: [], subscriber: subscriber)
            let messages = subscriber.messages
            #expect(sequenceProblems(in: messages).isEmpty, "\(sequenceProblems(in: messages))")
            for topic in topics {
                #expect(messages.filter { $0.topic == topic }.map(\.seq) == Array(1...500), "\(topic)")
            }
            #expect(summary.lost == 0, "\(summary)")
            print("[groups] a new group under load took \(routes.count) of 6 topics: \(summary)")
        }
    }
}
