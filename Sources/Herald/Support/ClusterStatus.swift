import FoundationEssentials
import Logging
import ZeroMQ
import ZooKeeper

#if canImport(Glibc)
    import Glibc
#endif

/// A snapshot of a cluster for `herald status`: who leads, who waits, and what the leader knows, for the
/// default group at the top and for each named group in ``groups``.
public struct ClusterStatus: Sendable, Codable {
    /// The cluster's name.
    public var cluster: String
    /// The dissemination mode recorded in ZooKeeper, if any broker ever started.
    public var mode: DisseminationMode?
    /// The named groups, by name; `nil` when there are none.
    public var groups: [String: GroupStatus]?
    /// The topics assigned to groups; `nil` when none are.
    public var assignments: [String: String]?
    /// The default group's leader record, if there is a leader.
    public var leader: LeaderRecord?
    /// When the leader's record was written, in milliseconds since 1970 by ZooKeeper's clock: when it was elected
    /// (or wrote its record again after someone deleted it).
    public var leaderSinceMilliseconds: Int64?
    /// Whether the leader answered the status request; `nil` when it was not asked. A leader that crashed keeps
    /// its record until its session expires, and answers nothing meanwhile.
    public var leaderAnswering: Bool?
    /// Every live broker candidate, leader first.
    public var candidates: [String]
    /// What the leader reported, if it answered.
    public var leaderStatus: BrokerStatus?

    /// For people: whether the default group's leader answers, and if not, the longest it can keep its place.
    public var leaderAnswerSummary: String? { defaultGroup.leaderAnswerSummary }

    private enum CodingKeys: String, CodingKey {
        case cluster, mode, leader, candidates, leaderStatus, leaderAnswering, groups, assignments
        case leaderSinceMilliseconds = "leaderSinceMs"
    }

    /// The default group's part, shaped like a named group's.
    public var defaultGroup: GroupStatus {
        GroupStatus(
            leader: leader, leaderSinceMilliseconds: leaderSinceMilliseconds, leaderAnswering: leaderAnswering,
            candidates: candidates, leaderStatus: leaderStatus)
    }

    /// Reads the cluster's state from ZooKeeper and asks the leader for its own.
    /// - Parameters:
    ///   - zookeeper: the ZooKeeper ensemble.
    ///   - layout: the cluster.
    ///   - timeout: how long to wait for ZooKeeper.
    ///   - leaderTimeout: how long to wait for the leader's answer, or `nil` not to ask it. Short by default: a
    ///     live leader answers in milliseconds, and a crashed one never does.
    ///   - security: CurveZMQ keys for asking a leader that requires them; without them such a leader is not
    ///     asked.
    ///   - logger: for the ZooKeeper client.
    public static func fetch(
        zookeeper: ZooKeeperConfiguration, layout: ClusterLayout, timeout: Duration = .seconds(5),
        leaderTimeout: Duration? = .seconds(1), security: CurveSecurity? = nil, logger: Logger
    ) async throws -> ClusterStatus {
        let session = try ZooKeeperSession(configuration: zookeeper, logger: logger)
        do {
            try await session.waitUntilConnected(timeout: timeout)
            var status = ClusterStatus(cluster: layout.cluster, mode: nil, leader: nil, candidates: [], leaderStatus: nil)
            if let (data, _) = try? await session.get(layout.modePath) {
                status.mode = DisseminationMode(rawValue: String(decoding: data, as: UTF8.self))
            }
            var main = await GroupStatus.read(layout.defaultGroupLayout, session: session)
            var groups: [String: GroupStatus] = [:]
            for group in layout.namedGroups((try? await session.children(layout.groupsPath)) ?? []) {
                groups[group.groupName] = await GroupStatus.read(group, session: session)
            }
            if let (data, _) = try? await session.get(layout.assignmentsPath), let table = TopicAssignments(decoding: data),
                !table.topics.isEmpty
            {
                status.assignments = table.topics
            }
            await session.close()
            if let leaderTimeout {
                await main.ask(security: security, timeout: leaderTimeout)
                for name in groups.keys { await groups[name]?.ask(security: security, timeout: leaderTimeout) }
            }
            (status.leader, status.leaderSinceMilliseconds, status.leaderAnswering, status.candidates, status.leaderStatus) =
                (main.leader, main.leaderSinceMilliseconds, main.leaderAnswering, main.candidates, main.leaderStatus)
            status.groups = groups.isEmpty ? nil : groups
            return status
        } catch {
            await session.close()
            throw error
        }
    }

}

/// One broker group's part of a ``ClusterStatus``.
public struct GroupStatus: Sendable, Codable {
    /// The leader's record, if there is a leader.
    public var leader: LeaderRecord?
    /// When the leader's record was written, in milliseconds since 1970 by ZooKeeper's clock.
    public var leaderSinceMilliseconds: Int64?
    /// Whether the leader answered the status request; `nil` when it was not asked.
    public var leaderAnswering: Bool?
    /// Every live broker candidate, leader first.
    public var candidates: [String]
    /// What the leader reported, if it answered.
    public var leaderStatus: BrokerStatus?

    private enum CodingKeys: String, CodingKey {
        case leader, candidates, leaderStatus, leaderAnswering
        case leaderSinceMilliseconds = "leaderSinceMs"
    }

    /// For people: whether the leader answers, and if not, the longest it can keep its place.
    public var leaderAnswerSummary: String? {
        guard let leader, leaderAnswering == false else { return nil }
        let expiry = leader.sessionTimeoutMilliseconds.map {
            "its session expires within \(Double($0) / 1000) s of its last contact, and a standby then takes over"
        } ?? "its session expires within the session timeout, and a standby then takes over"
        return "leader \(leader.broker) not answering; \(expiry)"
    }

    static func read(_ layout: ClusterLayout, session: ZooKeeperSession) async -> GroupStatus {
        var status = GroupStatus(candidates: [])
        if let (data, stat) = try? await session.get(layout.leaderPath) {
            status.leader = LeaderRecord(decoding: data)
            status.leaderSinceMilliseconds = status.leader == nil ? nil : stat.ctime
        }
        if (try? await session.exists(layout.electionPath)) != nil {
            status.candidates = (try? await LeaderElection.currentCandidates(session: session, layout: layout))?
                .map { String(decoding: $0.data, as: UTF8.self) } ?? []
        }
        return status
    }

    /// Asks the leader for its own report.
    mutating func ask(security: CurveSecurity?, timeout: Duration) async {
        guard let leader, CurveSecurity.mistrust(of: leader, by: security) == nil else { return }
        switch try? await Self.askStatus(leader, security: security, timeout: timeout) {
        case .report(let report):
            leaderStatus = report
            leaderAnswering = true
        case .refused:
            // It answers, but not with a report now (it answers a bounded number per second).
            leaderAnswering = true
        case nil:
            leaderAnswering = false
        }
    }

    private enum LeaderAnswer {
        case report(BrokerStatus)
        case refused
    }

    private static func askStatus(
        _ leader: LeaderRecord, security: CurveSecurity?, timeout: Duration
    ) async throws -> LeaderAnswer? {
        let context = try ZMQContext()
        defer { context.terminate() }
        let dealer = try AsyncZMQSocket(context: context, type: .dealer, name: "herald-status") {
            try $0.set(.linger(.zero))
            try $0.set(.maximumMessageSize(WireFormat.maximumControlBody + 2))
            if let security, let key = leader.curveKey { try security.configureClient($0, serverKey: key) }
            try $0.connect(leader.requestEndpoint)
        }
        try await dealer.send(ZMQMessage(frames: [ControlFrame.empty(.status)]))
        let reply = await firstResult(within: timeout) {
            var iterator = dealer.messages.makeAsyncIterator()
            return await iterator.next()
        }
        await dealer.close()
        guard let reply, reply.frames.count == 1 else { return nil }
        return reply.frames[0].withUnsafeBytes { bytes -> LeaderAnswer? in
            switch WireFormat.kind(of: bytes) {
            case .success(.status):
                guard case .success(let status) = ControlFrame.decode(BrokerStatus.self, from: bytes) else { return nil }
                return .report(status)
            case .success(.refused):
                return .refused
            default:
                return nil
            }
        }
    }
}
