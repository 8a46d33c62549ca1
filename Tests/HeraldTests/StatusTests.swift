import Foundation
import Herald
import Testing

// `herald status` against real brokers: it must answer at once even while a crashed leader's record outlives
// it, and say so, because that is when people (and scripts/chaos) look.
@Suite("Status", .serialized)
struct StatusTests {
    static let startup: Duration = .seconds(15)
    /// Long enough that the crashed leader's record certainly still exists while status runs.
    static let sessionTimeoutSeconds = 8

    @Test("Status names a crashed leader that still holds its record as not answering, without waiting for it")
    func statusReportsACrashedLeaderAtOnce() async throws {
        try await withCluster(mode: "broker") { cluster in
            let environment = ["HERALD_SESSION_TIMEOUT": "\(Self.sessionTimeoutSeconds)"]
            var brokers: [String: HeraldProcess] = [:]
            for id in ["b1", "b2"] {
                brokers[id] = try await cluster.start("broker \(id)", ["broker", "--broker-id", id], environment: environment)
            }
            let before = try await cluster.waitForStatus("a leader and a standby", timeout: Self.startup) {
                $0.leader != nil && $0.candidates.count == 2 && $0.leaderAnswering == true
            }
            let leader = try #require(before.leader)
            #expect(leader.sessionTimeoutMs == Self.sessionTimeoutSeconds * 1000)
            let electedAt = try #require(before.leaderSinceMs)

            let killedAtMilliseconds = Int64(wallClockNanoseconds() / 1_000_000)
            try #require(brokers[leader.broker]).kill(SIGKILL)
            _ = try await brokers[leader.broker]?.waitForExit(timeout: .seconds(5))

            // Still the dead leader's record: status ran before its session expired, and says why nobody answers.
            let json = try #require(try await cluster.status())
            #expect(json.leader?.broker == leader.broker)
            #expect(json.leaderAnswering == false)
            #expect(json.leaderSinceMs == electedAt)
            #expect(json.leaderStatus == nil)

            let text = try await HeraldProcess(name: "status text", arguments: ["status"], environment: cluster.environment)
            #expect(try await text.waitForExit(timeout: .seconds(15)) == 0)
            try await Task.sleep(for: .milliseconds(50))
            let expected = "leader \(leader.broker) not answering; its session expires within \(Double(Self.sessionTimeoutSeconds)) s"
            #expect(text.stdoutLines.contains { $0.contains(expected) }, "got: \(text.stdoutLines)")

            // Asking only ZooKeeper does not contact the leader at all.
            let zookeeperOnly = try #require(try await cluster.status(["--leader-timeout", "0"]))
            #expect(zookeeperOnly.leader?.broker == leader.broker)
            #expect(zookeeperOnly.leaderAnswering == nil)

            // The successor's record is newer than the crash, by ZooKeeper's clock (the same host's here).
            let after = try await cluster.waitForStatus("the standby leads", timeout: .seconds(Self.sessionTimeoutSeconds + 10)) {
                $0.leader != nil && $0.leader?.broker != leader.broker && $0.leaderAnswering == true
            }
            let successorSince = try #require(after.leaderSinceMs)
            #expect(successorSince >= killedAtMilliseconds)
        }
    }

    @Test("Default broker ids differ for every broker started, even with the same host and process id")
    func defaultBrokerIDsAreUniquePerStart() throws {
        let first = BrokerConfiguration.defaultBrokerID()
        let second = BrokerConfiguration.defaultBrokerID()
        #expect(first != second)
        let prefix = "\(ProcessInfo.processInfo.hostName)-\(ProcessInfo.processInfo.processIdentifier)-"
        for id in [first, second] {
            #expect(id.hasPrefix(prefix))
            #expect(id.dropFirst(prefix.count).count == 6)
            #expect(id.dropFirst(prefix.count).allSatisfy { $0.isHexDigit })
        }
    }
}
