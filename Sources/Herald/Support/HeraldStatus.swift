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
        defer { context.terminate() }
        let dealer = try AsyncZMQSocket(context: context, type: .dealer, name: "herald-status") {
            try $0.set(.linger(.zero))
            try $0.set(.maximumMessageSize(WireFormat.maximumControlBody + 2))
            try $0.connect(endpoint)
        }
        try await dealer.send(ZMQMessage(frames: [ControlFrame.empty(.status)]))
        let reply = await firstResult(within: timeout) {
            var iterator = dealer.messages.makeAsyncIterator()
            return await iterator.next()
        }
        await dealer.close()
        guard let reply, reply.frames.count == 1 else { return nil }
        return reply.frames[0].withUnsafeBytes { bytes -> BrokerStatus? in
            guard case .success(.status) = WireFormat.kind(of: bytes),
                case .success(let status) = ControlFrame.decode(BrokerStatus.self, from: bytes)
            else { return nil }
            return status
        }
    }
}
