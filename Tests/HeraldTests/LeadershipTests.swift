import Foundation
import LocalZooKeeper
import TestSupport
import Testing
import ZooKeeper

@testable import Herald

// The holes a leader change could open, closed and checked on real processes: terms that look new to clients
// even at the same endpoints, a leader record that is never deleted for another session and is restored when
// deleted, a paused leader that does not serve again, a publisher born during a failover, and publishers that
// count what they could not hand to any leader. Serialized like the other process tests.
@Suite("Leadership", .serialized)
struct LeadershipTests {
    static let startup: Duration = .seconds(15)

    /// A ZooKeeper session that is no broker's, with the cluster's root in place: what anyone who reaches
    /// ZooKeeper can write with.
    static func outsideSession(on cluster: HeraldCluster) async throws -> (ClusterLayout, ZooKeeperSession) {
        let layout = try ClusterLayout(cluster: cluster.name)
        let session = try ZooKeeperSession(
            configuration: ZooKeeperConfiguration(connectionString: cluster.server.connectionString), logger: testLogger("zk"))
        try await session.waitUntilConnected(timeout: .seconds(5))
        try await session.ensurePath(layout.root)
        return (layout, session)
    }

    @Test("A leader whose ZooKeeper restarts serves a new epoch at the same endpoints; clients re-attach and lose nothing")
    func aReconnectedLeaderServesANewTerm() async throws {
        try await withCluster(mode: "broker") { cluster in
            let ports = try freePorts(2)
            _ = try await cluster.start(
                "broker b1", ["broker", "--broker-id", "b1", "--mode", "broker"],
                environment: ["HERALD_REQUEST_PORT": "\(ports[0])", "HERALD_SUBSCRIBER_PORT": "\(ports[1])"])
            let first = try await cluster.waitForStatus("a leader", timeout: Self.startup) { $0.leader != nil }
            let subscriber = try await cluster.subscriber(["term"])
            let publisher = try await cluster.publisher("term", rate: 200)
            try await subscriber.waitForMessage(timeout: Self.startup, "a first message")

            await cluster.server.halt()
            try await Task.sleep(for: .milliseconds(300))
            try await cluster.server.restart()

            let second = try await cluster.waitForStatus("a new epoch", timeout: Self.startup) {
                $0.leader?.broker == "b1" && ($0.leader?.epoch ?? 0) > (first.leader?.epoch ?? 0)
            }
            #expect(second.leader?.requestEndpoint == first.leader?.requestEndpoint, "same endpoints")
            #expect(second.leader?.subscriberEndpoint == first.leader?.subscriberEndpoint)
            let epoch = try #require(second.leader?.epoch)
            try await publisher.waitForLine(containing: "epoch=\(epoch)", timeout: .seconds(10))
            try await subscriber.waitForLine(containing: "epoch=\(epoch)", timeout: .seconds(10))
            try await stopAndCheckComplete(publisher: publisher, subscriber: subscriber)
        }
    }

    @Test("A deleted leader record is written again by the live leader")
    func aDeletedLeaderRecordIsRestored() async throws {
        try await withCluster(mode: "broker") { cluster in
            _ = try await cluster.broker("b1")
            let before = try await cluster.waitForStatus("a leader", timeout: Self.startup) { $0.leader != nil }
            let session = try ZooKeeperSession(
                configuration: ZooKeeperConfiguration(connectionString: cluster.server.connectionString), logger: testLogger("zk"))
            try await session.waitUntilConnected(timeout: .seconds(5))
            let layout = try ClusterLayout(cluster: cluster.name)
            try await session.delete(layout.leaderPath)
            let after = try await cluster.waitForStatus("the record back", timeout: .seconds(10)) { $0.leader != nil }
            #expect(after.leader?.broker == before.leader?.broker)
            #expect(after.leader?.epoch == before.leader?.epoch, "the same term, announced again")
            await session.close()
        }
    }

    @Test("A broker never deletes a leader record another session owns; it leads once that session ends")
    func anotherSessionsRecordIsNeverDeleted() async throws {
        try await withCluster(mode: "broker") { cluster in
            let (layout, squatter) = try await Self.outsideSession(on: cluster)
            let foreign = LeaderRecord(
                broker: "someone-else", mode: .broker, requestEndpoint: "tcp://127.0.0.1:1", subscriberEndpoint: "tcp://127.0.0.1:1",
                epoch: 1)
            try await squatter.create(layout.leaderPath, data: foreign.encoded(), mode: .ephemeral)

            let broker = try await cluster.broker("b1")
            try await broker.waitForLine(containing: "waiting for the previous leader's record", timeout: Self.startup)
            try await Task.sleep(for: .seconds(1))
            let (data, _) = try await squatter.get(layout.leaderPath)
            #expect(LeaderRecord(decoding: data)?.broker == "someone-else", "left in place while its session lives")

            await squatter.close()
            let status = try await cluster.waitForStatus("b1 leads", timeout: .seconds(10)) { $0.leader?.broker == "b1" }
            #expect(status.leader != nil)
        }
    }

    @Test("A publisher whose leader record flips to direct mode and back keeps running, and publishes to the next real leader")
    func aLeaderRecordThatFlipsModeDoesNotStopPublishers() async throws {
        try await withCluster(mode: "broker") { cluster in
            let (layout, writer) = try await Self.outsideSession(on: cluster)
            // Records nobody serves: anyone who can write to ZooKeeper can write these.
            func record(_ mode: DisseminationMode, epoch: UInt64) -> [UInt8] {
                LeaderRecord(
                    broker: "forged", mode: mode, requestEndpoint: "tcp://127.0.0.1:1", subscriberEndpoint: "tcp://127.0.0.1:1",
                    epoch: epoch
                ).encoded()
            }
            try await writer.create(layout.leaderPath, data: record(.broker, epoch: 1), mode: .ephemeral)
            let publisher = try await cluster.publisher("flip", rate: 200)
            try await publisher.waitForLine(containing: "attached to leader", timeout: Self.startup)
            let mark = publisher.stderrLines.count
            _ = try await writer.set(layout.leaderPath, data: record(.direct, epoch: 2))
            try await publisher.waitForLine(from: mark, containing: "registered with leader", timeout: .seconds(10))
            try await Task.sleep(for: .milliseconds(300))
            _ = try await writer.set(layout.leaderPath, data: record(.broker, epoch: 3))
            try await publisher.waitForLine(from: mark, containing: "attached to leader", timeout: .seconds(10))
            // Publishing at 200 msg/s into a broker-mode buffer sized for direct mode would trap at once.
            try await Task.sleep(for: .seconds(1))
            // (A crashing process may still run while its backtrace prints: look for the crash itself.)
            #expect(!publisher.stderrLines.contains { $0.contains("Precondition failed") || $0.contains("Fatal error") || $0.contains("crashed") })
            #expect(publisher.isRunning, "\(publisher.diagnostics(lines: 20))")

            await writer.close()
            _ = try await cluster.broker("b1")
            let subscriber = try await cluster.subscriber(["flip"])
            let message = try await subscriber.waitForMessage(timeout: Self.startup, "a message from the publisher")
            #expect(message.seq > 0)
            #expect(publisher.isRunning)
        }
    }

    @Test("A leader paused past its session timeout does not serve again; nothing is lost or duplicated")
    func aPausedLeaderDoesNotServeAgain() async throws {
        try await withCluster(mode: "broker") { cluster in
            let first = try await cluster.broker("b1")
            _ = try await cluster.waitForLeader(timeout: Self.startup)
            let second = try await cluster.broker("b2")
            let subscriber = try await cluster.subscriber(["pause"])
            let publisher = try await cluster.publisher("pause", rate: 200)
            try await subscriber.waitForMessage(timeout: Self.startup, "a first message")
            let marks = (first.stderrLines.count, subscriber.stderrLines.count, publisher.stderrLines.count)

            first.kill(SIGSTOP)
            try await second.waitForLine(containing: "elected leader; serving", timeout: HeraldCluster.sessionTimeout + .seconds(10))
            try await Task.sleep(for: .seconds(1))
            first.kill(SIGCONT)
            try await first.waitForLine(from: marks.0, containing: "standing by as a candidate", timeout: .seconds(15))
            try await Task.sleep(for: .seconds(2))

            #expect(!first.stderrLines.dropFirst(marks.0).contains { $0.contains("elected leader; serving") }, "b1 never serves again")
            #expect(try await cluster.status()?.leader?.broker == "b2")
            // As clients see it, one leader after the other: after the pause they attach to b2 only.
            for (client, mark) in [(subscriber, marks.1), (publisher, marks.2)] {
                let leaders = attachedLeaders(in: client.stderrLines, from: mark)
                #expect(leaders == ["b2"], "after the pause, attached to \(leaders)\n\(client.diagnostics(lines: 30))")
            }
            try await stopAndCheckComplete(publisher: publisher, subscriber: subscriber)
        }
    }

    @Test("A publisher started during a failover is delivered from its first message")
    func aPublisherBornDuringAFailoverIsDeliveredFromItsFirstMessage() async throws {
        try await withCluster(mode: "broker") { cluster in
            var brokers = ["b1": try await cluster.broker("b1")]
            _ = try await cluster.waitForLeader(timeout: Self.startup)
            brokers["b2"] = try await cluster.broker("b2")
            let subscriber = try await cluster.subscriber(["born"])
            let steady = try await cluster.publisher("born", rate: 200, name: "steady")
            try await subscriber.waitForMessage(timeout: Self.startup, "a first message")

            let leader = try #require(try await cluster.status()?.leader?.broker)
            let removed = brokers.removeValue(forKey: leader)
            let victim = try #require(removed)
            victim.kill(SIGKILL)
            // Born while there is no leader: its first messages wait in its buffer for the next one.
            let born = try await cluster.publisher("born", rate: 200, name: "newcomer")
            let survivor = try #require(brokers.values.first)
            try await survivor.waitForLine(
                containing: "elected leader; serving", timeout: HeraldCluster.sessionTimeout + .seconds(10))
            try await Task.sleep(for: .seconds(3))
            let summary = try await stopCleanly(publishers: [steady, born], subscriber: subscriber)
            let ranges = streamRanges(of: subscriber.messages)
            #expect(ranges.count == 2)
            let firstPublisher = subscriber.messages.first?.publisher
            let newcomerRange = try #require(ranges.first { $0.key.publisher != firstPublisher }?.value)
            #expect(newcomerRange.first == 1, "the newcomer's stream starts at its first message")
            #expect(sequenceProblems(in: subscriber.messages).isEmpty, "\(sequenceProblems(in: subscriber.messages))")
            #expect(summary.lost == 0, "summary: \(summary)")
        }
    }

    @Test("A publisher that stops while no leader is up logs and counts what it could not hand on")
    func aPublisherWithoutALeaderCountsWhatItDrops() async throws {
        try await withCluster(mode: "broker") { cluster in
            let broker = try await cluster.broker("b1")
            _ = try await cluster.waitForLeader(timeout: Self.startup)
            let publisher = try await cluster.publisher("alone", rate: 200)
            try await publisher.waitForLine(containing: "attached to leader", timeout: Self.startup)
            // The only broker leaves: what the publisher sends from now on waits for a leader that never comes.
            broker.kill(SIGTERM)
            _ = try await broker.waitForExit(timeout: .seconds(10))
            try await publisher.waitForLine(containing: "leader lost", timeout: .seconds(10))
            try await Task.sleep(for: .seconds(1))
            publisher.kill(SIGINT)
            _ = try await publisher.waitForExit(timeout: .seconds(10))
            let warning = try #require(publisher.stderrLines.first { $0.contains("never reached a leader") })
            let unsent = warning.split(separator: " ").first { $0.hasPrefix("unsent_at_stop=") }
                .flatMap { Int($0.dropFirst("unsent_at_stop=".count)) }
            #expect((50...1000).contains(unsent ?? 0), "\(warning)")
        }
    }

    // MARK: Helpers

    /// The leaders a client logged attaching to, from line `start` on.
    private func attachedLeaders(in lines: [String], from start: Int) -> [String] {
        var leaders: [String] = []
        for line in lines.dropFirst(start) where line.range(of: "attached to leader") != nil {
            let leader = line.split(separator: " ").first { $0.hasPrefix("leader=") }?.dropFirst("leader=".count)
            leaders.append(leader.map(String.init) ?? "?")
        }
        return leaders
    }

    private func stopAndCheckComplete(publisher: HeraldProcess, subscriber: HeraldProcess) async throws {
        let summary = try await stopCleanly(publishers: [publisher], subscriber: subscriber)
        let messages = subscriber.messages
        #expect(sequenceProblems(in: messages).isEmpty, "\(sequenceProblems(in: messages))")
        #expect(summary.lost == 0, "summary: \(summary)")
        print("[leadership] \(summary)")
    }
}

/// `count` distinct free TCP ports on loopback (free when asked; a test binds them right after).
func freePorts(_ count: Int) throws -> [Int] {
    var sockets: [Int32] = []
    defer { for socket in sockets { close(socket) } }
    var ports: [Int] = []
    for _ in 0..<count {
        let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        sockets.append(descriptor)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(descriptor, $0, length) == 0 && getsockname(descriptor, $0, &length) == 0
            }
        }
        guard bound else { throw POSIXError(.EADDRINUSE) }
        ports.append(Int(UInt16(bigEndian: address.sin_port)))
    }
    return ports
}
