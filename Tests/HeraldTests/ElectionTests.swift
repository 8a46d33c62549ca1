import Herald
import LocalZooKeeper
import Synchronization
import TestSupport
import Testing
import ZooKeeper

// Integration tests start their own ZooKeeper; serialized so that JVM start-ups of parallel tests do not
// eat into the deadlines that tell "promptly" from "after the session timeout".
@Suite("Election", .serialized)
struct ElectionTests {
    // MARK: Deciding the next step

    @Test func lowestSequenceLeads() {
        let candidates = ["candidate-0000000007", "candidate-0000000003", "candidate-0000000005"]
        #expect(LeaderElection.nextStep(candidates: candidates, me: "candidate-0000000003") == .lead)
    }

    @Test func othersWatchExactlyTheirPredecessor() {
        let candidates = ["candidate-0000000007", "candidate-0000000003", "candidate-0000000005"]
        #expect(
            LeaderElection.nextStep(candidates: candidates, me: "candidate-0000000005")
                == .watch(predecessor: "candidate-0000000003"))
        #expect(
            LeaderElection.nextStep(candidates: candidates, me: "candidate-0000000007")
                == .watch(predecessor: "candidate-0000000005"))
    }

    @Test func gapsInTheSequenceAreSkipped() {
        let candidates = ["candidate-0000000001", "candidate-0000000042", "candidate-0000000100"]
        #expect(
            LeaderElection.nextStep(candidates: candidates, me: "candidate-0000000100")
                == .watch(predecessor: "candidate-0000000042"))
        #expect(LeaderElection.nextStep(candidates: ["candidate-0000000100"], me: "candidate-0000000100") == .lead)
    }

    @Test func orderIsBySequenceNumberNotByName() {
        // By name "a-…2" would come first; by creation order "b-…1" does.
        let candidates = ["a-0000000002", "b-0000000001"]
        #expect(LeaderElection.nextStep(candidates: candidates, me: "b-0000000001") == .lead)
        #expect(
            LeaderElection.nextStep(candidates: candidates, me: "a-0000000002") == .watch(predecessor: "b-0000000001"))
        #expect(
            LeaderElection.nextStep(candidates: ["x-0000000010", "x-0000000009"], me: "x-0000000010")
                == .watch(predecessor: "x-0000000009"))
    }

    @Test func childrenWithoutASequenceNumberAreIgnored() {
        let candidates = ["lock", "candidate-12", "candidate-00000000x1", "candidate-0000000004"]
        #expect(LeaderElection.nextStep(candidates: candidates, me: "candidate-0000000004") == .lead)
        #expect(LeaderElection.sequenceNumber(of: "candidate-0000000004") == 4)
        #expect(LeaderElection.sequenceNumber(of: "candidate-12") == nil)
        #expect(LeaderElection.sequenceNumber(of: "candidate-00000000x1") == nil)
    }

    @Test func missingSelfMeansRejoin() {
        let candidates = ["candidate-0000000001", "candidate-0000000003"]
        #expect(LeaderElection.nextStep(candidates: candidates, me: "candidate-0000000002") == .rejoin)
        #expect(LeaderElection.nextStep(candidates: [], me: "candidate-0000000002") == .rejoin)
    }

    // MARK: Cluster layout

    @Test func layoutBuildsThePathsUnderTheClusterRoot() throws {
        let layout = try ClusterLayout(cluster: "prod-eu.1_a")
        #expect(layout.cluster == "prod-eu.1_a")
        #expect(layout.root == "/herald/prod-eu.1_a")
        #expect(layout.modePath == "/herald/prod-eu.1_a/mode")
        #expect(layout.electionPath == "/herald/prod-eu.1_a/election")
        #expect(layout.leaderPath == "/herald/prod-eu.1_a/leader")
        #expect(layout.brokersPath == "/herald/prod-eu.1_a/brokers")
        #expect(try ClusterLayout(cluster: ClusterLayout.defaultCluster).root == "/herald/default")
        #expect(try ClusterLayout(cluster: String(repeating: "x", count: 64)).cluster.count == 64)
    }

    @Test(arguments: [
        ("", "empty"),
        (String(repeating: "x", count: 65), "65 characters"),
        ("a/b", "'/'"),
        ("space here", "' '"),
        ("café", "'\\u{00E9}'"),
        (".", "cannot be '.'"),
        ("..", "cannot be '..'"),
    ])
    func layoutRejectsBadClusterNamesClearly(name: String, reason: String) {
        let error = #expect(throws: HeraldConfigurationError.self) { try ClusterLayout(cluster: name) }
        #expect(error?.message.contains(reason) == true, "\(error?.message ?? "no error")")
        #expect(error?.message.contains("letters, digits") == true)
        #expect(error?.description == error?.message)
    }

    @Test func ensurePathIsIdempotentAndSafeUnderConcurrentCallers() async throws {
        try await withServer { server in
            try await withSessions(server, count: 2) { sessions in
                let paths = (0..<10).map { "/herald/race/\($0 % 3)/deep/\($0)" }
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for session in sessions {
                        group.addTask {
                            for path in paths { try await session.ensurePath(path) }
                        }
                    }
                    try await group.waitForAll()
                }
                for path in paths { #expect(try await sessions[0].exists(path) != nil) }
                try await sessions[1].ensurePath("/herald/race/0/deep/0")
                try await sessions[1].ensurePath("/")
                #expect(try await sessions[0].children("/herald/race").sorted() == ["0", "1", "2"])
                #expect(try await sessions[0].exists("/herald/race/0/deep/0")?.ephemeralOwner == 0)
            }
        }
    }

    // MARK: Electing

    @Test func firstCandidateLeadsAndTheOthersWaitInLine() async throws {
        try await withServer { server in
            try await withSessions(server, count: 3) { sessions in
                let layout = try ClusterLayout(cluster: "line")
                let line = try await Candidate.line(on: sessions, layout: layout)
                #expect(!line[1].isElected)
                #expect(!line[2].isElected)

                let listed = try await LeaderElection.currentCandidates(session: sessions[0], layout: layout)
                #expect(listed.map(\.name) == line.map(\.name))
                #expect(listed.map(\.data) == (0..<3).map { Array("broker-\($0)".utf8) })
            }
        }
    }

    @Test func middleCandidateLeavingDoesNotElectTheThird() async throws {
        try await withServer { server in
            try await withSessions(server, count: 3) { sessions in
                let line = try await Candidate.line(on: sessions, layout: try ClusterLayout(cluster: "middle"))

                await sessions[1].close()
                let error = try await line[1].failure(within: .seconds(5))
                #expect((error as? ZooKeeperError)?.code == .sessionClosed)

                // Seeing the new predecessor proves the third evaluated the departure, and chose to wait.
                try await eventually(.seconds(5), "third watches the first") {
                    line[2].election.watchedPredecessor == line[0].name
                }
                #expect(!line[2].isElected)

                await sessions[0].close()
                try await line[2].elected(within: .seconds(3))
                #expect(line[2].election.watchedPredecessor == nil)
            }
        }
    }

    @Test func successorTakesOverPromptlyWhenTheLeaderSessionCloses() async throws {
        try await withServer { server in
            // The longest timeout a 500 ms tick allows: a takeover within 3 s cannot be an expiry.
            try await withSessions(server, count: 2, sessionTimeout: .seconds(10)) { sessions in
                let line = try await Candidate.line(on: sessions, layout: try ClusterLayout(cluster: "takeover"))
                await sessions[0].close()
                try await line[1].elected(within: .seconds(3))
            }
        }
    }

    @Test func withdrawingLeaderHandsOverAtOnce() async throws {
        try await withServer { server in
            try await withSessions(server, count: 2, sessionTimeout: .seconds(10)) { sessions in
                let line = try await Candidate.line(on: sessions, layout: try ClusterLayout(cluster: "withdraw"))
                let leaderPath = try #require(line[0].election.candidatePath)
                await line[0].election.withdraw()
                #expect(line[0].election.candidatePath == nil)
                #expect(try await sessions[1].exists(leaderPath) == nil)
                try await line[1].elected(within: .seconds(3))
            }
        }
    }

    @Test func waitingCandidateGetsAnErrorWhenItsSessionCloses() async throws {
        try await withServer { server in
            try await withSessions(server, count: 2) { sessions in
                let line = try await Candidate.line(on: sessions, layout: try ClusterLayout(cluster: "closed"))
                await sessions[1].close()
                let error = try await line[1].failure(within: .seconds(5))
                #expect((error as? ZooKeeperError)?.code == .sessionClosed)
            }
        }
    }

    @Test func waitingCandidateGetsAnErrorWhenItsSessionExpires() async throws {
        try await withServer { server in
            // The shortest timeout a 500 ms tick allows, so the expiry comes quickly.
            // The leader's session outlasts the pauses (10 s, the most this server grants): were it to expire too,
            // the waiting candidate could lead in a round where its own session came back, and never fail.
            try await withSessions(server, sessionTimeouts: [.seconds(10), .seconds(1)]) { sessions in
                let line = try await Candidate.line(on: sessions, layout: try ClusterLayout(cluster: "expired"))
                let waiting = sessions[1]
                // As in the ZooKeeper tests: after SIGCONT the server's expirer races the client's reconnection,
                // which may revalidate the session; pause again until it expires, as a real hang would.
                for _ in 0..<4 where waiting.state != .expired {
                    try server.pause()
                    do {
                        try await eventually(.seconds(10), "disconnection") { waiting.state == .connecting }
                        try await Task.sleep(for: .seconds(1.5))  // Past the session timeout, not an assertion.
                        try server.resume()
                    } catch {
                        try? server.resume()
                        throw error
                    }
                    try await eventually(.seconds(15), "expiry or reconnection") {
                        waiting.state == .expired || waiting.state == .connected
                    }
                }
                try #require(waiting.state == .expired)
                let error = try await line[1].failure(within: .seconds(5))
                #expect((error as? ZooKeeperError)?.code == .sessionExpired)
            }
        }
    }

    @Test func candidateJoinsOnceTheServerIsBackAfterConnectionLoss() async throws {
        try await withServer { server in
            try await withSessions(server, count: 1, sessionTimeout: .seconds(10)) { sessions in
                let session = sessions[0]
                let layout = try ClusterLayout(cluster: "outage")
                await server.halt()
                try await eventually(.seconds(10), "disconnection") { session.state == .connecting }
                let candidate = Candidate(
                    LeaderElection(session: session, layout: layout, candidateData: [1], logger: testLogger()))
                try await server.restart()
                try await candidate.elected(within: .seconds(15))

                let listed = try await LeaderElection.currentCandidates(session: session, layout: layout)
                #expect(listed.map(\.name) == [candidate.name])
                let path = try #require(candidate.election.candidatePath)
                #expect(try await session.exists(path)?.ephemeralOwner == session.sessionID)
            }
        }
    }

    @Test func candidateCreatedInSpiteOfAConnectionLossIsAdoptedNotDuplicated() async throws {
        try await withServer { server in
            try await withSessions(server, count: 1) { sessions in
                let session = sessions[0]
                let layout = try ClusterLayout(cluster: "in-doubt")
                try await session.ensurePath(layout.electionPath)
                // What a create whose reply was lost leaves behind: a candidate this session owns.
                let orphan = try await session.create(
                    layout.electionPath + "/" + LeaderElection.candidatePrefix, data: [7], mode: .ephemeralSequential)
                let election = LeaderElection(
                    session: session, layout: layout, candidateData: [7], logger: testLogger())
                election.markCreateInDoubt()
                let candidate = Candidate(election)
                try await candidate.elected(within: .seconds(10))
                #expect(election.candidatePath == orphan)
                #expect(try await session.children(layout.electionPath).count == 1)
            }
        }
    }

    @Test func withdrawAfterAnInDoubtCreateRemovesTheOrphan() async throws {
        try await withServer { server in
            try await withSessions(server, count: 2) { sessions in
                let layout = try ClusterLayout(cluster: "orphan")
                try await sessions[0].ensurePath(layout.electionPath)
                let orphan = try await sessions[0].create(
                    layout.electionPath + "/" + LeaderElection.candidatePrefix, mode: .ephemeralSequential)
                let other = try await sessions[1].create(
                    layout.electionPath + "/" + LeaderElection.candidatePrefix, mode: .ephemeralSequential)
                let election = LeaderElection(
                    session: sessions[0], layout: layout, candidateData: [], logger: testLogger())
                election.markCreateInDoubt()
                await election.withdraw()
                #expect(
                    try await sessions[1].children(layout.electionPath) == [String(other.split(separator: "/").last!)])
                #expect(try await sessions[1].exists(orphan) == nil)
            }
        }
    }

    @Test func candidateOnAClosedSessionFailsInsteadOfHanging() async throws {
        try await withServer { server in
            try await withSessions(server, count: 1) { sessions in
                await sessions[0].close()
                let election = LeaderElection(
                    session: sessions[0], layout: try ClusterLayout(cluster: "dead"), candidateData: [],
                    logger: testLogger())
                let error = await #expect(throws: ZooKeeperError.self) {
                    try await within(.seconds(5), "failure") { try await election.awaitLeadership() }
                }
                #expect(error?.code == .sessionClosed)
            }
        }
    }

    @Test func candidateWhoseNodeWasDeletedRejoins() async throws {
        try await withServer { server in
            try await withSessions(server, count: 3) { sessions in
                let layout = try ClusterLayout(cluster: "rejoin")
                let line = try await Candidate.line(on: sessions.prefix(2), layout: layout)
                let original = try #require(line[1].election.candidatePath)

                // An operator removes the waiting candidate; it notices when its predecessor goes.
                try await sessions[2].delete(original)
                await sessions[0].close()
                try await line[1].elected(within: .seconds(5))
                let rejoined = try #require(line[1].election.candidatePath)
                #expect(rejoined != original)
                let listed = try await LeaderElection.currentCandidates(session: sessions[2], layout: layout)
                #expect(
                    listed.map(\.name) == [line[1].election.candidatePath?.split(separator: "/").last.map(String.init)])
            }
        }
    }

    @Test func cancellingAWaitingCandidateKeepsItsPlaceUntilItWithdraws() async throws {
        try await withServer { server in
            try await withSessions(server, count: 2) { sessions in
                let layout = try ClusterLayout(cluster: "cancel")
                let line = try await Candidate.line(on: sessions, layout: layout)
                line[1].task.cancel()
                let error = try await line[1].failure(within: .seconds(5))
                #expect(error is CancellationError)
                let path = try #require(line[1].election.candidatePath)
                #expect(try await sessions[0].exists(path) != nil)

                await line[1].election.withdraw()
                #expect(try await sessions[0].exists(path) == nil)
                #expect(try await LeaderElection.currentCandidates(session: sessions[0], layout: layout).count == 1)
            }
        }
    }
}

// MARK: - Support

/// Runs `body` with `count` connected sessions, all closed afterwards whatever happens.
private func withSessions<T>(
    _ server: LocalZooKeeperServer,
    count: Int,
    sessionTimeout: Duration = .seconds(4),
    _ body: ([ZooKeeperSession]) async throws -> T
) async throws -> T {
    try await withSessions(server, sessionTimeouts: Array(repeating: sessionTimeout, count: count), body)
}

/// Runs `body` with one connected session per timeout, closing them all afterwards.
private func withSessions<T>(
    _ server: LocalZooKeeperServer,
    sessionTimeouts: [Duration],
    _ body: ([ZooKeeperSession]) async throws -> T
) async throws -> T {
    var sessions: [ZooKeeperSession] = []
    do {
        for sessionTimeout in sessionTimeouts {
            let session = try ZooKeeperSession(
                configuration: ZooKeeperConfiguration(
                    connectionString: server.connectionString, sessionTimeout: sessionTimeout),
                logger: testLogger())
            sessions.append(session)
            try await session.waitUntilConnected(timeout: .seconds(10))
        }
        let result = try await body(sessions)
        for session in sessions { await session.close() }
        return result
    } catch {
        for session in sessions { await session.close() }
        throw error
    }
}

/// A candidate whose `awaitLeadership()` runs in a task of its own.
private struct Candidate: Sendable {
    let election: LeaderElection
    let task: Task<Void, any Error>
    private let electedFlag: ElectedFlag

    /// Set by the task when `awaitLeadership()` returns, so tests can assert that it has not.
    private final class ElectedFlag: Sendable {
        let value = Atomic(false)
    }

    init(_ election: LeaderElection) {
        let flag = ElectedFlag()
        self.election = election
        self.electedFlag = flag
        self.task = Task {
            try await election.awaitLeadership()
            flag.value.store(true, ordering: .sequentiallyConsistent)
        }
    }

    var isElected: Bool { electedFlag.value.load(ordering: .sequentiallyConsistent) }

    /// The candidate znode's name, once joined.
    var name: String? { election.candidatePath?.split(separator: "/").last.map(String.init) }

    func elected(within limit: Duration) async throws {
        let task = self.task
        try await within(limit, "election of \(name ?? "candidate")") { try await task.value }
        #expect(isElected)
    }

    func failure(within limit: Duration) async throws -> any Error {
        let task = self.task
        return try await within(limit, "failure of \(name ?? "candidate")") {
            do {
                try await task.value
            } catch {
                return error
            }
            Issue.record("awaitLeadership() returned instead of failing")
            return CancellationError()
        }
    }

    /// Starts one candidate per session, in order, and waits until the first leads and each other one
    /// watches the candidate before it.
    static func line(
        on sessions: some Collection<ZooKeeperSession>,
        layout: ClusterLayout
    ) async throws -> [Candidate] {
        var line: [Candidate] = []
        for (index, session) in sessions.enumerated() {
            let candidate = Candidate(
                LeaderElection(
                    session: session, layout: layout, candidateData: Array("broker-\(index)".utf8),
                    logger: testLogger()))
            if let predecessor = line.last?.name {
                try await eventually(.seconds(10), "candidate \(index) watches \(predecessor)") {
                    candidate.election.watchedPredecessor == predecessor
                }
            } else {
                try await candidate.elected(within: .seconds(10))
            }
            line.append(candidate)
        }
        return line
    }
}
