import CoreMetrics
import Foundation
import Logging
import ServiceLifecycle
import Synchronization
import ZeroMQ
import ZooKeeper

/// A Herald broker: joins the cluster's leader election, waits as a warm standby, and serves as the leader
/// when elected, for as long as it holds its ZooKeeper session.
///
/// It runs as a swift-service-lifecycle `Service`. On graceful shutdown (SIGTERM, SIGINT through a
/// `ServiceGroup`) it stops serving and closes its ZooKeeper session, which deletes its ephemeral nodes at
/// once, so a standby takes over without waiting for the session timeout.
public final class Broker: Service, Sendable {
    /// What the broker is doing now.
    public enum Role: String, Sendable, CaseIterable {
        /// Connecting to ZooKeeper or preparing the cluster.
        case starting
        /// A warm standby waiting in the election.
        case standby
        /// The leader, serving clients.
        case leader
        /// The leader lost contact with ZooKeeper and stopped serving until it knows whether it still leads.
        case suspended
    }

    /// The broker's configuration.
    public let configuration: BrokerConfiguration
    private let logger: Logger
    private let state = Mutex<(role: Role, leaderChanges: Int, sessionState: SessionState)>((.starting, 0, .connecting))
    let counters = BrokerCounters()

    /// Creates a broker; nothing happens until ``run()``.
    /// - Parameters:
    ///   - configuration: the broker's settings.
    ///   - logger: where the broker logs its steps.
    public init(configuration: BrokerConfiguration, logger: Logger) {
        self.configuration = configuration
        var logger = logger
        logger[metadataKey: "broker"] = "\(configuration.brokerID)"
        self.logger = logger
    }

    /// The broker's current role.
    public var role: Role { state.withLock { $0.role } }

    /// How many times this broker became leader.
    public var leadershipCount: Int { state.withLock { $0.leaderChanges } }

    /// The state of the broker's current ZooKeeper session.
    public var sessionState: SessionState { state.withLock { $0.sessionState } }

    /// Runs the broker until cancelled or shut down gracefully.
    /// - Throws: ``HeraldConfigurationError`` when the cluster has the other mode or a port cannot be bound;
    ///   ZooKeeper and network faults are retried, never thrown.
    public func run() async throws {
        let context = try ZMQContext()
        defer { context.terminate() }
        try await cancelWhenGracefulShutdown {
            var backoff = Backoff()
            while !Task.isCancelled {
                let session = try ZooKeeperSession(configuration: self.configuration.zookeeper, logger: self.logger)
                self.setRole(.starting, session: session.state)
                do {
                    try await session.waitUntilConnected(timeout: ClusterWatcher.connectTimeout)
                    self.logger.info(
                        "connected to ZooKeeper", metadata: ["zookeeper": "\(self.configuration.zookeeper.connectionString)"])
                    backoff.reset()
                    try await self.prepareCluster(session)
                    try await self.serveTerm(session, context: context)
                } catch let error as HeraldConfigurationError {
                    await session.close()
                    throw error
                } catch where Task.isCancelled {
                    await session.close()
                    break
                } catch {
                    let delay = backoff.nextDelay()
                    self.logger.warning(
                        "no ZooKeeper session (unreachable, lost or expired); retrying on a new one",
                        metadata: ["error": "\(error)", "retry_in_s": "\(String(format: "%.1f", delay.seconds))"])
                    await session.close()
                    try? await Task.sleep(for: delay)
                    continue
                }
                await session.close()
            }
        }
        logger.info("broker stopped")
    }

    // MARK: Terms

    /// Records the cluster's mode, or checks that it is this broker's.
    private func prepareCluster(_ session: ZooKeeperSession) async throws {
        let layout = configuration.layout
        try await session.ensurePath(layout.root)
        try await session.ensurePath(layout.brokersPath)
        let wanted = Array(configuration.mode.rawValue.utf8)
        let recorded: [UInt8]
        do {
            try await session.create(layout.modePath, data: wanted)
            logger.info("recorded the cluster's mode", metadata: ["mode": "\(configuration.mode)"])
            return
        } catch {
            guard error.code == .nodeExists else { throw error }
            recorded = try await session.get(layout.modePath).data
        }
        guard recorded == wanted else {
            let existing = String(decoding: recorded, as: UTF8.self)
            throw HeraldConfigurationError(
                "cluster '\(layout.cluster)' runs in \(existing) mode, but this broker was started with --mode \(configuration.mode); start it with --mode \(existing), or choose another --cluster"
            )
        }
    }

    /// One session's worth of work: stand by, lead when elected, and return when the session is lost.
    private func serveTerm(_ session: ZooKeeperSession, context: ZMQContext) async throws {
        // Readiness and the session gauge follow the session as it changes, not only when the role does.
        let sessionMonitor = Task {
            for await sessionState in session.states() {
                self.state.withLock { $0.sessionState = sessionState }
                Instruments.recordZooKeeper(connected: sessionState.isConnected)
            }
        }
        defer { sessionMonitor.cancel() }
        let layout = configuration.layout
        let presence = layout.brokersPath + "/" + configuration.brokerID
        try? await session.delete(presence)
        try await session.create(presence, data: Array(configuration.mode.rawValue.utf8), mode: .ephemeral)

        let election = LeaderElection(
            session: session, layout: layout, candidateData: Array(configuration.brokerID.utf8), logger: logger)
        setRole(.standby, session: session.state)
        logger.info("standing by as a candidate")
        do {
            try await election.awaitLeadership()
        } catch {
            await election.withdraw()
            throw error
        }

        state.withLock { $0.leaderChanges += 1 }
        Counter(label: Instruments.leaderChanges).increment()
        var engine = try await startServing(session, context: context)
        defer { logger.info("no longer serving") }
        do {
            while true {
                // Serve until ZooKeeper is out of reach. A disconnected leader cannot know whether its session
                // is still alive, so it stops serving at once: that happens before the session can expire and
                // before anyone else can be elected.
                let lost = await Self.firstState(of: session, where: { $0 != .connected && $0 != .connectedReadOnly })
                await engine.stop()
                setRole(.suspended, session: lost ?? .closed)
                guard let lost, !lost.isTerminal else { throw ZooKeeperError(code: .sessionExpired) }
                logger.warning("lost contact with ZooKeeper; stopped serving until it is back")
                let back = await Self.firstState(
                    of: session, where: { $0.isConnected || $0.isTerminal }, within: configuration.zookeeper.sessionTimeout)
                guard let back, back.isConnected else {
                    throw ZooKeeperError(code: .sessionExpired)
                }
                logger.info("ZooKeeper is back and the session survived; serving again")
                engine = try await startServing(session, context: context)
            }
        } catch {
            await engine.stop()
            if Task.isCancelled {
                // Graceful shutdown: deleting the nodes first lets clients follow the successor at once.
                try? await session.delete(layout.leaderPath)
                await election.withdraw()
            }
            throw error
        }
    }

    /// Binds the sockets and announces them in ZooKeeper.
    private func startServing(_ session: ZooKeeperSession, context: ZMQContext) async throws -> BrokerEngine {
        let engine: BrokerEngine
        do {
            engine = try await BrokerEngine.start(
                context: context, configuration: configuration, counters: counters, logger: logger)
        } catch let error as ZMQError {
            throw HeraldConfigurationError(
                "cannot listen on \(configuration.bindHost) ports \(configuration.requestPort) and \(configuration.subscriberPort): \(error). Choose other ports (0 picks free ones)"
            )
        }
        let record = LeaderRecord(
            broker: configuration.brokerID, mode: configuration.mode,
            requestEndpoint: engine.endpoints.request, subscriberEndpoint: engine.endpoints.subscriber)
        do {
            try await announce(record, session)
        } catch {
            await engine.stop()
            throw error
        }
        setRole(.leader, session: session.state)
        logger.info("elected leader; serving", metadata: ["requests": "\(record.requestEndpoint)", "subscribers": "\(record.subscriberEndpoint)"])
        return engine
    }

    /// Writes the leader record, replacing one this broker's session left from an earlier term.
    private func announce(_ record: LeaderRecord, _ session: ZooKeeperSession) async throws {
        let path = configuration.layout.leaderPath
        while true {
            do {
                try await session.create(path, data: record.encoded(), mode: .ephemeral)
                return
            } catch where error.code == .nodeExists {
                // Only the elected candidate writes here, so an existing record is either ours from before a
                // disconnection or a predecessor's whose session is on its way out: replace it.
                if let stat = try await session.exists(path) {
                    if stat.ephemeralOwner == session.sessionID {
                        _ = try await session.set(path, data: record.encoded(), version: stat.version)
                        return
                    }
                    try? await session.delete(path, version: stat.version)
                }
            }
        }
    }

    private func setRole(_ role: Role, session: SessionState) {
        state.withLock {
            $0.role = role
            $0.sessionState = session
        }
        for each in Role.allCases {
            Gauge(label: Instruments.brokerRole, dimensions: [("role", each.rawValue)]).record(each == role ? 1 : 0)
        }
        Instruments.recordZooKeeper(connected: session.isConnected)
    }

    /// The first session state that matches, or `nil` when `within` passes first or the task is cancelled.
    private static func firstState(
        of session: ZooKeeperSession, where matches: @escaping @Sendable (SessionState) -> Bool,
        within limit: Duration? = nil
    ) async -> SessionState? {
        await firstResult(within: limit) {
            for await state in session.states() where matches(state) { return state }
            return nil
        }
    }
}
