import CoreMetrics
import FoundationEssentials
import Logging
import ServiceLifecycle
import Synchronization
import ZeroMQ
import ZooKeeper

#if canImport(Glibc)
    import Glibc
#endif

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
        if let warning = configuration.flowControlWarning { logger.warning("\(warning)") }
        // The broker keeps received frames in its logs: each must own its bytes, not pin a shared read buffer.
        let context = try ZMQContext(zeroCopyReceive: false)
        defer { context.terminate() }
        // Before any socket listens: a CURVE handshake without an authenticator admits every key.
        let authenticator = try await configuration.security?.startAuthenticator(context: context, logger: logger)
        if let security = configuration.security {
            logger.info(
                "CurveZMQ on",
                metadata: [
                    "public_key": "\(security.keyPair.publicKey)",
                    "authorized_keys": "\(security.authorizedKeys.map { "\($0.keys.count) in \($0.path)" } ?? "any")",
                ])
        }
        // Stopped before the context is terminated, which waits for its socket.
        do {
            try await serveTerms(context: context)
        } catch {
            await authenticator?.stop()
            throw error
        }
        await authenticator?.stop()
        logger.info("broker stopped")
    }

    /// Takes part in elections, one ZooKeeper session after another, until cancelled or shut down gracefully.
    private func serveTerms(context: ZMQContext) async throws {
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
                } catch let error as ZooKeeperError where error.code == .noAuth || error.code == .authFailed {
                    await session.close()
                    throw HeraldConfigurationError.zooKeeperRefused(
                        error, layout: self.configuration.layout, identity: self.configuration.zookeeper.authentication)
                } catch where Task.isCancelled {
                    await session.close()
                    break
                } catch {
                    let delay = backoff.nextDelay()
                    self.logger.warning(
                        "no ZooKeeper session (unreachable, lost or expired); retrying on a new one",
                        metadata: ["error": "\(error)", "retry_in_s": "\(delay.seconds.decimal(1))"])
                    await session.close()
                    try? await Task.sleep(for: delay)
                    continue
                }
                await session.close()
            }
        }
    }

    // MARK: Terms

    /// Records the cluster's mode, or checks that it is this broker's.
    private func prepareCluster(_ session: ZooKeeperSession) async throws {
        let layout = configuration.layout
        // Clusters with other identities share `/herald`: anyone may add one under it. Everything below a
        // cluster's root belongs to the identity in --zookeeper-auth, if one is given.
        try await session.ensurePath(
            ClusterLayout.heraldRoot, acl: [ACL(permissions: [.read, .create], scheme: "world", id: "anyone")])
        try await session.ensurePath(layout.root)
        try await session.ensurePath(layout.brokersPath)
        try await session.ensurePath(layout.electionPath)
        if session.configuration.authentication != nil {
            // Znodes made before credentials were configured are open to anyone: close them. Only the owning
            // identity may change an ACL, so wrong credentials fail here, clearly, before anything else.
            let groupPaths = layout.group == nil ? [] : [layout.groupsPath, layout.groupRoot]
            for path in [layout.root] + groupPaths + [layout.brokersPath, layout.electionPath] {
                try await session.setACL(path, session.defaultACL)
            }
            if try await session.exists(layout.modePath) != nil {
                try await session.setACL(layout.modePath, session.defaultACL)
            }
        }
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
                .modeMismatch,
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
        guard let candidate = election.candidatePath, let sequence = LeaderElection.sequenceNumber(of: candidate) else {
            throw ZooKeeperError(code: .sessionExpired, path: layout.electionPath)
        }
        var term = Term(session: session, candidate: candidate, sequence: UInt64(sequence))
        var engine = try await startServing(&term, context: context)
        defer { logger.info("no longer serving") }
        do {
            while true {
                switch await leadUntilDisturbed(term) {
                case .leaderRecordGone:
                    // Deleted by an operator or a stray client: clients would lose the leader, so write it again.
                    logger.warning("the leader record disappeared while this broker leads; writing it again")
                    try await announce(term.record!, term)
                case .candidateGone:
                    // Without its candidate, this broker no longer holds its place: stop, and stand again.
                    logger.warning("this broker's election candidate disappeared; stepping down")
                    await engine.stop()
                    setRole(.suspended, session: session.state)
                    try? await deleteOwnRecord(term)
                    throw ZooKeeperError(code: .sessionExpired, path: candidate)
                case .disconnected(let lost):
                    // A disconnected leader cannot know whether its session is still alive, so it stops serving
                    // at once: that happens before the session can expire and before anyone else is elected.
                    await engine.stop()
                    setRole(.suspended, session: lost ?? .closed)
                    guard let lost, !lost.isTerminal else { throw ZooKeeperError(code: .sessionExpired) }
                    logger.warning("lost contact with ZooKeeper; stopped serving until it is back")
                    let back = await Self.firstState(
                        of: session, where: { $0.isConnected || $0.isTerminal },
                        within: configuration.zookeeper.sessionTimeout)
                    guard let back, back.isConnected else { throw ZooKeeperError(code: .sessionExpired) }
                    // The session survived, but the candidate must still be there and first in line.
                    let children = try await session.children(layout.electionPath)
                    guard LeaderElection.nextStep(candidates: children, me: candidateName(candidate)) == .lead else {
                        throw ZooKeeperError(code: .sessionExpired, path: candidate)
                    }
                    logger.info("ZooKeeper is back and the session survived; serving a new term")
                    engine = try await startServing(&term, context: context)
                }
            }
        } catch {
            await engine.stop()
            if Task.isCancelled {
                // Graceful shutdown: deleting the nodes first lets clients follow the successor at once.
                try? await deleteOwnRecord(term)
                await election.withdraw()
            }
            throw error
        }
    }

    /// One leadership: the session, the candidate that won, and the terms served under it.
    private struct Term {
        let session: ZooKeeperSession
        let candidate: String
        let sequence: UInt64
        var served: UInt64 = 0
        var record: LeaderRecord?

        /// A new epoch for each time this candidate starts serving: the candidate's sequence number in the
        /// high bits, so a later leader's epochs are larger, and a count of its terms in the low ones.
        mutating func nextEpoch() -> UInt64 {
            served += 1
            return sequence << 20 | (served & 0xFFFFF)
        }
    }

    private enum Disturbance {
        case disconnected(SessionState?)
        case leaderRecordGone
        case candidateGone
    }

    /// Waits until something needs the leader's attention: the session leaving the connected state, the leader
    /// record disappearing, or the candidate disappearing.
    private func leadUntilDisturbed(_ term: Term) async -> Disturbance {
        let session = term.session
        let leaderPath = configuration.layout.leaderPath
        return await withTaskGroup(of: Disturbance?.self) { group in
            group.addTask {
                .disconnected(await Self.firstState(of: session, where: { $0 != .connected && $0 != .connectedReadOnly }))
            }
            group.addTask { await Self.watchUntilGone(leaderPath, session) ? .leaderRecordGone : nil }
            group.addTask { await Self.watchUntilGone(term.candidate, session) ? .candidateGone : nil }
            var result: Disturbance = .disconnected(nil)
            for await disturbance in group {
                if let disturbance {
                    result = disturbance
                    break
                }
            }
            group.cancelAll()
            return result
        }
    }

    /// Watches a znode until it is deleted (`true`), or until the watch cannot continue (`false`: the session
    /// is lost, which the caller notices on its own, or the task is cancelled).
    private static func watchUntilGone(_ path: String, _ session: ZooKeeperSession) async -> Bool {
        while !Task.isCancelled {
            guard let (stat, watch) = try? await session.existsWatching(path) else { return false }
            if stat == nil { return true }
            guard let event = try? await watch.event(), !event.isSessionLoss else { return false }
            if event.kind == .deleted { return true }
        }
        return false
    }

    /// Binds the sockets and announces them in ZooKeeper with a new epoch.
    private func startServing(_ term: inout Term, context: ZMQContext) async throws -> BrokerEngine {
        let epoch = term.nextEpoch()
        let engine: BrokerEngine
        do {
            engine = try await BrokerEngine.start(
                context: context, configuration: configuration, epoch: epoch, logger: logger)
        } catch let error as ZMQError {
            throw HeraldConfigurationError(
                .cannotListen,
                "cannot listen on \(configuration.bindHost) ports \(configuration.requestPort) and \(configuration.subscriberPort): \(error). Choose other ports (0 picks free ones)",
                underlying: error)
        }
        let record = LeaderRecord(
            broker: configuration.brokerID, mode: configuration.mode,
            requestEndpoint: engine.endpoints.request, subscriberEndpoint: engine.endpoints.subscriber, epoch: epoch,
            sessionTimeout: configuration.zookeeper.sessionTimeout, curveKey: configuration.security?.keyPair.publicKey,
            batchBytes: configuration.mode == .broker ? configuration.maximumMessageSize : nil)
        term.record = record
        do {
            try await announce(record, term)
        } catch {
            await engine.stop()
            throw error
        }
        setRole(.leader, session: term.session.state)
        logger.info(
            "elected leader; serving",
            metadata: [
                "epoch": "\(epoch)", "group": "\(configuration.layout.groupName)", "requests": "\(record.requestEndpoint)",
                "subscribers": "\(record.subscriberEndpoint)",
            ])
        return engine
    }

    /// How long to wait for a predecessor's leader record to disappear with its session before giving up
    /// this term: the record outlives its session only until ZooKeeper has processed the session's end.
    private var predecessorRecordPatience: Duration { configuration.zookeeper.sessionTimeout * 2 }

    /// Writes the leader record. A record this session left from an earlier term is replaced; one that another
    /// session owns is never deleted (its owner may be alive): the broker waits for it to go with its session.
    private func announce(_ record: LeaderRecord, _ term: Term) async throws {
        let deadline = ContinuousClock.now + predecessorRecordPatience
        while try await !tryAnnounce(record, term, until: deadline) {}
    }

    /// One attempt at writing the leader record. - Returns: whether it was written; `false` to try again.
    private func tryAnnounce(_ record: LeaderRecord, _ term: Term, until deadline: ContinuousClock.Instant) async throws
        -> Bool
    {
        let path = configuration.layout.leaderPath
        let session = term.session
        let created: Bool
        do {
            try await session.create(path, data: record.encoded(), mode: .ephemeral)
            created = true
        } catch where error.code == .nodeExists {
            created = false
        }
        if created { return true }
        let existing = try await session.existsWatching(path)
        guard let stat = existing.stat else { return false }
        if stat.ephemeralOwner == session.sessionID {
            _ = try await session.set(path, data: record.encoded(), version: stat.version)
            return true
        }
        let remaining = deadline - ContinuousClock.now
        guard remaining > .zero else { throw ZooKeeperError(code: .nodeExists, path: path) }
        logger.info("waiting for the previous leader's record to go with its session")
        await Self.waitForEvent(existing.watch, within: remaining)
        return false
    }

    private static func waitForEvent(_ watch: Watch, within limit: Duration) async {
        _ = await firstResult(within: limit) { try? await watch.event() }
    }

    /// Deletes the leader record if this session owns it.
    private func deleteOwnRecord(_ term: Term) async throws {
        let path = configuration.layout.leaderPath
        guard let stat = try await term.session.exists(path), stat.ephemeralOwner == term.session.sessionID else { return }
        try await term.session.delete(path, version: stat.version)
    }

    private func candidateName(_ path: String) -> String {
        path.split(separator: "/").last.map(String.init) ?? path
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
