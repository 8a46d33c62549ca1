import Foundation
import TestSupport
import Testing

// End-to-end tests of the `herald` executable: a private ZooKeeper, real broker, publisher and subscriber
// processes on loopback, and failures made with signals. Serialized so that parallel clusters do not eat
// into the deadlines that tell a graceful handover from one that waited for the session timeout.
@Suite("Cluster", .serialized)
struct ClusterFailoverTests {
    static let modes = ["broker", "direct"]

    /// Time for processes started on a running ZooKeeper to find each other; generous for a busy 2-core box.
    static let startup: Duration = .seconds(15)
    /// A kill -9'd leader is replaced once its session expires; the rest is election, announcement, attachment.
    static let crashTakeover: Duration = HeraldCluster.sessionTimeout + .seconds(5)
    /// A leader stopped with SIGTERM deletes its nodes at once, so its successor must not wait for expiry.
    static let gracefulTakeover: Duration = .seconds(2)
    /// After a graceful takeover, time for publisher and subscriber to follow the new leader.
    static let gracefulResume: Duration = .seconds(4)

    // MARK: Failover

    @Test("Killing leaders one by one keeps messages flowing until one broker is left", arguments: modes)
    func failoverUntilOneBrokerIsLeft(mode: String) async throws {
        try await withCluster(mode: mode) { cluster in
            var brokers: [String: HeraldProcess] = [:]
            for id in ["b1", "b2", "b3"] { brokers[id] = try await cluster.broker(id) }
            try await cluster.waitForStatus("a leader and three candidates", timeout: Self.startup) {
                $0.leader != nil && $0.candidates.count == 3
            }
            let subscriber = try await cluster.subscriber(["weather"])
            let publisher = try await cluster.publisher("weather", rate: 50)
            let first = try await subscriber.waitForMessage(timeout: Self.startup, "a first message")
            try await subscriber.waitForMessage(timeout: .seconds(5), "steady flow") { $0.seq >= first.seq + 25 }

            for signal in [SIGKILL, SIGTERM] {
                var lastSeenAtKill: UInt64?
                var countAtKill = 0
                let stopped = try await cluster.stopLeader(
                    with: signal, brokers: &brokers, startup: Self.startup,
                    takeoverLimit: signal == SIGKILL ? Self.crashTakeover : Self.gracefulTakeover
                ) {
                    lastSeenAtKill = subscriber.messages.last?.seq
                    countAtKill = subscriber.messages.count
                }
                let lastSeen = try #require(lastSeenAtKill)
                let (leader, victim, successor) = (stopped.leader, stopped.victim, stopped.successor)
                let (killedAt, killedAtWallClock, takeover) = (
                    stopped.signalledAt, stopped.signalledAtWallClock, stopped.takeover
                )
                let receivedDuringTakeover = subscriber.messages.count - countAtKill
                #expect(successor != leader)
                if mode == "direct" && signal == SIGKILL {
                    // Data goes from publisher to subscriber directly, so it flows on while no broker leads
                    // (50 messages a second; allow for a loaded machine).
                    #expect(receivedDuringTakeover >= 20, "only \(receivedDuringTakeover) messages in \(takeover)")
                }

                // The subscriber receives messages published after the kill, numbered after what it had.
                let resumeLimit = signal == SIGKILL ? Self.crashTakeover : Self.gracefulResume
                let resumed = try await subscriber.waitForMessage(
                    timeout: resumeLimit - (ContinuousClock.now - killedAt), "a message published after the kill"
                ) { $0.seq > lastSeen && $0.sentAt > killedAtWallClock }
                let resume = ContinuousClock.now - killedAt
                print(
                    "[\(mode)] signal \(signal) to leader \(leader): \(successor) leads after \(takeover) "
                        + "(\(receivedDuringTakeover) messages meanwhile); seq \(resumed.seq), sent after the kill, "
                        + "received after \(resume)")

                if signal == SIGTERM {
                    #expect(
                        try await victim.waitForExit(timeout: .seconds(10)) == 0, "a SIGTERM'd broker exits cleanly")
                }
                let status = try await cluster.waitForStatus(
                    "status naming \(successor) as leader", timeout: Self.startup
                ) {
                    $0.leader?.broker == successor
                }
                #expect(!status.candidates.contains(leader))
            }

            // One broker is left, and it still does the job.
            let last = try #require(brokers.first?.key)
            #expect(brokers.count == 1)
            let status = try await cluster.waitForStatus("one candidate left", timeout: Self.startup) {
                $0.candidates == [last]
            }
            #expect(status.leader?.broker == last)
            let lastSeen = try #require(subscriber.messages.last).seq
            try await subscriber.waitForMessage(timeout: .seconds(5), "more messages from the last broker") {
                $0.seq > lastSeen + 25
            }
            #expect(publisher.isRunning && subscriber.isRunning)

            let sequence = subscriber.messages.map(\.seq)
            let gaps = zip(sequence, sequence.dropFirst()).filter { $1 != $0 + 1 }
            print("[\(mode)] received seq \(sequence.first ?? 0)...\(sequence.last ?? 0), jumps (from, to): \(gaps)")
            if mode == "direct" {
                // Publishers and subscribers are connected to each other, not through the leader: losing
                // leaders must not lose a single message.
                #expect(gaps.isEmpty, "seq jumps (from, to) while leaders died: \(gaps)")
            }
        }
    }

    // MARK: Mode

    @Test("A broker started with the other mode is refused with exit code 2", arguments: modes)
    func brokerOfTheOtherModeIsRefused(mode: String) async throws {
        try await withCluster(mode: mode) { cluster in
            let first = try await cluster.broker("b1")
            _ = try await cluster.waitForLeader(timeout: Self.startup)
            let other = mode == "broker" ? "direct" : "broker"

            let intruder = try await cluster.broker("b2", mode: other)
            let code = try await intruder.waitForExit(timeout: Self.startup)

            #expect(code == 2)
            let error = intruder.stderrLines.first { $0.hasPrefix("herald: error:") }
            #expect(
                error?.contains("cluster '\(cluster.name)' runs in \(mode) mode") == true, "got: \(error ?? "nothing")")
            #expect(error?.contains("--mode \(other)") == true, "got: \(error ?? "nothing")")
            #expect(first.isRunning)
            let status = try #require(try await cluster.status())
            #expect(status.leader?.broker == "b1")
            #expect(status.candidates == ["b1"])
        }
    }

    // MARK: Starting order and outages

    @Test("Clients started before any broker wait, then connect when one appears", arguments: modes)
    func clientsWaitForTheFirstBroker(mode: String) async throws {
        try await withCluster(mode: mode) { cluster in
            let subscriber = try await cluster.subscriber(["weather"])
            let publisher = try await cluster.publisher("weather", rate: 50)
            try await Task.sleep(for: .seconds(1))
            #expect(subscriber.isRunning && publisher.isRunning)
            #expect(subscriber.messages.isEmpty)

            _ = try await cluster.broker("b1")

            try await subscriber.waitForMessage(timeout: Self.startup, "a message once the broker is up")
        }
    }

    @Test("Clients started while ZooKeeper is down keep retrying, then work once it is back", arguments: modes)
    func clientsSurviveZooKeeperBeingDown(mode: String) async throws {
        try await withCluster(mode: mode) { cluster in
            await cluster.server.halt()
            let startedAt = ContinuousClock.now
            let subscriber = try await cluster.subscriber(["weather"])
            let publisher = try await cluster.publisher("weather", rate: 50)

            for client in [subscriber, publisher] {
                try await client.waitForLine(containing: "retrying", timeout: Self.startup)
            }
            let elapsed = ContinuousClock.now - startedAt
            if elapsed < .seconds(3) { try await Task.sleep(for: .seconds(3) - elapsed) }
            for client in [subscriber, publisher] {
                #expect(client.isRunning, "\(client.diagnostics())")
                let crash = client.stderrLines.first { line in
                    ["Fatal error", "Stack dump", "stack trace", "Segmentation fault"].contains { line.contains($0) }
                }
                #expect(crash == nil, "\(client.name) crashed: \(crash ?? "")")
            }

            try await cluster.server.restart()
            _ = try await cluster.broker("b1")

            // Back-off between retries is at most 5 s; a session then takes a moment.
            try await subscriber.waitForMessage(timeout: .seconds(20), "a message after ZooKeeper came back")
            #expect(publisher.isRunning)
        }
    }

    // MARK: Direct-mode discovery

    @Test("Direct mode: publishers are discovered after a failover and dropped when they die")
    func directDiscoveryFollowsPublishers() async throws {
        try await withCluster(mode: "direct") { cluster in
            var brokers = ["b1": try await cluster.broker("b1"), "b2": try await cluster.broker("b2")]
            try await cluster.waitForStatus("a leader and two candidates", timeout: Self.startup) {
                $0.leader != nil && $0.candidates.count == 2
            }
            let subscriber = try await cluster.subscriber(["weather"])
            _ = try await cluster.publisher("weather", rate: 50, name: "publisher 1")
            let first = try await subscriber.waitForMessage(timeout: Self.startup, "a message from publisher 1")

            // Fail the leader over, then start a second publisher: it registers with the new leader.
            let current = try await cluster.waitForStatus("a leader", timeout: Self.startup) { $0.leader != nil }
            let leader = try #require(current.leader?.broker)
            let removed = brokers.removeValue(forKey: leader)
            let victim = try #require(removed)
            let (survivorID, survivor) = try #require(brokers.first)
            let mark = survivor.stderrLines.count
            victim.kill(SIGKILL)
            try await survivor.waitForLine(from: mark, containing: "elected leader", timeout: Self.crashTakeover)

            let late = try await cluster.publisher("weather", rate: 50, name: "publisher 2")
            let second = try await subscriber.waitForMessage(timeout: Self.startup, "a message from publisher 2") {
                $0.publisher != first.publisher
            }
            try await cluster.waitForStatus("\(survivorID) lists both publishers", timeout: Self.startup) { status in
                status.leader?.broker == survivorID
                    && [first.publisher, second.publisher].allSatisfy { id in
                        status.leaderStatus?.publishers.contains { $0.hasPrefix(id) } ?? false
                    }
            }

            // A publisher that crashes sends no goodbye; its registration expires (TTL 3 s) instead.
            late.kill(SIGKILL)
            try await cluster.waitForStatus("publisher 2 dropped from discovery", timeout: .seconds(7)) { status in
                guard let publishers = status.leaderStatus?.publishers else { return false }
                return !publishers.contains { $0.hasPrefix(second.publisher) }
                    && publishers.contains { $0.hasPrefix(first.publisher) }
            }
            let count = subscriber.messages.count
            try await subscriber.waitForMessage(after: count, timeout: .seconds(5), "publisher 1 still delivering") {
                $0.publisher == first.publisher
            }
        }
    }

    // MARK: Topics

    @Test("A subscriber receives its exact topic only, not topics that start with it")
    func topicsMatchExactly() async throws {
        try await withCluster(mode: "broker") { cluster in
            _ = try await cluster.broker("b1")
            _ = try await cluster.waitForLeader(timeout: Self.startup)
            let subscriber = try await cluster.subscriber(["weather"])
            _ = try await cluster.publisher("weather", rate: 50, name: "publisher weather")
            _ = try await cluster.publisher("weatherX", rate: 50, name: "publisher weatherX")
            try await subscriber.waitForMessage(timeout: Self.startup, "a weather message")

            // Let both topics flow through the broker while the subscriber is attached.
            let forwardedX =
                try await cluster.waitForStatus("weatherX forwarded", timeout: Self.startup) {
                    ($0.leaderStatus?.topics["weatherX"] ?? 0) > 0
                }.leaderStatus?.topics["weatherX"] ?? 0
            try await cluster.waitForStatus("50 more weatherX messages forwarded", timeout: .seconds(10)) {
                ($0.leaderStatus?.topics["weatherX"] ?? 0) >= forwardedX + 50
            }

            let topics = Set(subscriber.messages.map(\.topic))
            #expect(topics == ["weather"])
            #expect(subscriber.messages.count >= 50)
        }
    }
}
