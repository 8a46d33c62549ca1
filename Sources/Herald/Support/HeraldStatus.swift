import Foundation
import Logging
import ZeroMQ
import ZooKeeper

/// A snapshot of a cluster for `herald status`: who leads, who waits, and what the leader knows.
public struct ClusterStatus: Sendable, Codable {
    /// The cluster's name.
    public var cluster: String
    /// The dissemination mode recorded in ZooKeeper, if any broker ever started.
    public var mode: DisseminationMode?
    /// The leader's record, if there is a leader.
    public var leader: LeaderRecord?
    /// Every live broker candidate, leader first.
    public var candidates: [String]
    /// What the leader reported, if it answered.
    public var leaderStatus: BrokerStatus?

    /// Reads the cluster's state from ZooKeeper and asks the leader for its own.
    /// - Parameters:
    ///   - zookeeper: the ZooKeeper ensemble.
    ///   - layout: the cluster.
    ///   - timeout: how long to wait for ZooKeeper and for the leader.
    ///   - logger: for the ZooKeeper client.
    public static func fetch(
        zookeeper: ZooKeeperConfiguration, layout: ClusterLayout, timeout: Duration = .seconds(5), logger: Logger
    ) async throws -> ClusterStatus {
        let session = try ZooKeeperSession(configuration: zookeeper, logger: logger)
        do {
            try await session.waitUntilConnected(timeout: timeout)
            var status = ClusterStatus(cluster: layout.cluster, mode: nil, leader: nil, candidates: [], leaderStatus: nil)
            if let (data, _) = try? await session.get(layout.modePath) {
                status.mode = DisseminationMode(rawValue: String(decoding: data, as: UTF8.self))
            }
            if let (data, _) = try? await session.get(layout.leaderPath) {
                status.leader = LeaderRecord(decoding: data)
            }
            if (try? await session.exists(layout.electionPath)) != nil {
                status.candidates = (try? await LeaderElection.currentCandidates(session: session, layout: layout))?
                    .map { String(decoding: $0.data, as: UTF8.self) } ?? []
            }
            await session.close()
            if let leader = status.leader {
                status.leaderStatus = try? await askStatus(leader.requestEndpoint, timeout: timeout)
            }
            return status
        } catch {
            await session.close()
            throw error
        }
    }

    private static func askStatus(_ endpoint: String, timeout: Duration) async throws -> BrokerStatus? {
        let context = try ZMQContext()
        let dealer = try AsyncZMQSocket(context: context, type: .dealer, name: "herald-status") {
            try $0.set(.linger(.zero))
            try $0.connect(endpoint)
        }
        try await dealer.send(ZMQMessage(frames: [[RequestKind.status.rawValue]]))
        let reply = await firstResult(within: timeout) {
            var iterator = dealer.messages.makeAsyncIterator()
            return await iterator.next()
        }
        await dealer.close()
        guard let reply, reply.frames.count == 2 else { return nil }
        return try? JSONDecoder().decode(BrokerStatus.self, from: Data(reply.frames[1]))
    }
}
