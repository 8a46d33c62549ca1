import Logging
import Synchronization
import ZooKeeper

/// What a candidate does next, decided from the election znode's children by
/// ``LeaderElection/nextStep(candidates:me:)``.
public enum ElectionStep: Equatable, Sendable {
    /// This candidate has the lowest sequence number: it is the leader.
    case lead
    /// Another candidate comes just before this one: watch it, named `predecessor`, and decide again when
    /// it changes.
    case watch(predecessor: String)
    /// This candidate's znode is gone (deleted by an operator, for example): create a new one.
    case rejoin
}

/// Leader election among brokers with the standard ZooKeeper recipe.
///
/// Each candidate creates an ephemeral sequential znode `candidate-<10-digit sequence>` under
/// ``ClusterLayout/electionPath``. The candidate with the lowest sequence number leads; every other one
/// watches only the candidate just before it, so that a departure wakes one candidate rather than all of
/// them (no herd effect). When the watched predecessor goes, the candidate decides again rather than
/// assuming leadership: if a candidate in the middle of the line left, the leader is still alive and the
/// next step is to watch a new predecessor.
///
/// A `LeaderElection` belongs to one ``ZooKeeperSession``. When that session expires or is closed, its
/// candidate znode is gone and ``awaitLeadership()`` throws; open a new session and create a new
/// `LeaderElection` on it to stand again.
public final class LeaderElection: Sendable {
    /// The name prefix of candidate znodes; ZooKeeper appends a 10-digit sequence number.
    public static let candidatePrefix = "candidate-"

    /// The number of digits ZooKeeper appends to sequential znode names.
    public static let sequenceDigits = 10

    /// The first pause before retrying an operation that failed with a connection loss: short, because
    /// the C client usually reconnects to another server within a few hundred milliseconds.
    static let initialRetryDelay: Duration = .milliseconds(100)

    /// The longest pause between retries: keeps an election waiting out a long outage responsive once a
    /// server is back, without spinning.
    static let maximumRetryDelay: Duration = .seconds(2)

    /// Where the election takes place.
    public let layout: ClusterLayout

    /// The data of this candidate's znode, shown to operators (for example by `herald status`).
    public let candidateData: [UInt8]

    private let session: ZooKeeperSession
    private let logger: Logger
    private let state = Mutex(State())

    /// Creates an election for one candidate; nothing happens in ZooKeeper until ``awaitLeadership()``.
    ///
    /// - Parameters:
    ///   - session: The session that owns the candidate znode; leadership lasts as long as this session.
    ///   - layout: The cluster whose leader is elected.
    ///   - candidateData: The candidate znode's data, typically the broker's identity and addresses.
    ///   - logger: Receives the election's progress.
    public init(session: ZooKeeperSession, layout: ClusterLayout, candidateData: [UInt8], logger: Logger) {
        self.session = session
        self.layout = layout
        self.candidateData = candidateData
        var logger = logger
        logger[metadataKey: "herald.cluster"] = "\(layout.cluster)"
        self.logger = logger
    }

    /// The path of this candidate's znode, once created, until ``withdraw()``.
    public var candidatePath: String? { state.withLock { $0.candidatePath } }

    /// The name of the candidate whose znode ``awaitLeadership()`` is currently watching, if it is waiting.
    ///
    /// Changes only after a decision, so observing a new value proves that the election has seen and
    /// evaluated the departure of the previous predecessor.
    public var watchedPredecessor: String? { state.withLock { $0.watchedPredecessor } }

    /// Joins the election, if not done yet, and returns once this candidate is the leader.
    ///
    /// The candidate znode is created once and kept across calls: after a cancellation, calling again
    /// resumes the wait at the same place in line. Call from one task at a time.
    ///
    /// Leadership is not monitored after this method returns: it lasts as long as the candidate znode,
    /// that is until the session ends or ``withdraw()`` is called.
    ///
    /// A connection loss while the session is still alive is waited out: operations are retried with a
    /// backoff, and the watch on the predecessor survives reconnection.
    ///
    /// - Throws: ``ZooKeeperError`` when the session expired or was closed
    ///   (``ZooKeeperError/Code/sessionExpired``, ``ZooKeeperError/Code/sessionClosed``) or another
    ///   non-retryable error occurred; `CancellationError` when the task is cancelled or ``withdraw()`` was
    ///   called meanwhile.
    public func awaitLeadership() async throws {
        let generation = state.withLock { state in
            precondition(!state.isRunning, "LeaderElection.awaitLeadership() must not be called concurrently")
            state.isRunning = true
            return state.generation
        }
        defer {
            state.withLock { state in
                state.isRunning = false
                state.watchedPredecessor = nil
            }
        }
        let electionPath = layout.electionPath
        try await retrying("create \(electionPath)") { () async throws(ZooKeeperError) in
            try await session.ensurePath(electionPath)
        }
        var me: String
        if let existing = candidatePath {
            me = Self.name(of: existing)
        } else {
            me = try await join(generation)
        }
        while true {
            try checkActive(generation)
            let children = try await retrying("list candidates") { () async throws(ZooKeeperError) in
                try await session.children(electionPath)
            }
            try checkActive(generation)
            switch Self.nextStep(candidates: children, me: me) {
            case .lead:
                logger.info("elected leader", metadata: ["candidate": "\(me)"])
                return
            case .rejoin:
                logger.info("candidate \(me) vanished; joining again", metadata: ["candidate": "\(me)"])
                state.withLock { state in
                    if state.candidatePath.map(Self.name(of:)) == me { state.candidatePath = nil }
                }
                me = try await join(generation)
            case .watch(let predecessor):
                let path = "\(electionPath)/\(predecessor)"
                let (stat, watch) = try await retrying("watch \(path)") { () async throws(ZooKeeperError) in
                    try await session.existsWatching(path)
                }
                // The watch left on a missing znode only fires if it is created again, which a sequential
                // name never is; it is simply dropped.
                guard stat != nil else {
                    logger.debug("predecessor \(predecessor) gone; re-checking", metadata: ["candidate": "\(me)"])
                    continue
                }
                state.withLock { $0.watchedPredecessor = predecessor }
                logger.info("watching predecessor \(predecessor)", metadata: ["candidate": "\(me)"])
                let event = try await watch.event()
                if event.isSessionLoss { throw sessionLossError(event.kind) }
                if event.kind == .deleted {
                    logger.info("predecessor \(predecessor) gone; re-checking", metadata: ["candidate": "\(me)"])
                } else {
                    logger.debug(
                        "predecessor \(predecessor) watch fired (\(event.kind)); re-checking",
                        metadata: ["candidate": "\(me)"])
                }
            }
        }
    }

    /// Leaves the election by deleting this candidate's znode, so that the next candidate takes over at
    /// once instead of after the session timeout.
    ///
    /// Best effort and never throws: if the znode cannot be deleted it still disappears when the session
    /// ends. A concurrent ``awaitLeadership()`` ends with `CancellationError` at its next decision at the
    /// latest (cancel its task to end it at once); a later call joins the election anew, at the back of the
    /// line.
    public func withdraw() async {
        let (path, inDoubt) = state.withLock { state in
            state.generation &+= 1
            defer {
                state.candidatePath = nil
                state.createInDoubt = false
            }
            return (state.candidatePath, state.createInDoubt)
        }
        var paths = path.map { [$0] } ?? []
        if inDoubt {
            // A create lost to a connection loss may have succeeded anyway; its znode would keep blocking
            // the candidates behind it for as long as this session lives.
            // One attempt only: withdrawing must not hang through an outage, and the session's end removes
            // the znode anyway.
            let owned = (try? await ownCandidates(retryingConnectionLoss: false)) ?? []
            paths += owned.map { "\(layout.electionPath)/\($0)" }.filter { $0 != path }
        }
        for path in paths {
            await deleteQuietly(path)
        }
    }

    /// Decides what a candidate does next, given the election znode's children.
    ///
    /// Candidates are ordered by their sequence number (the numeric suffix), not by name, so that names
    /// with different prefixes still sort in creation order; children without a sequence suffix are
    /// ignored.
    ///
    /// - Parameters:
    ///   - candidates: The names (not paths) of the election znode's children, in any order.
    ///   - me: The name of this candidate's znode.
    /// - Returns: ``ElectionStep/lead`` if `me` comes first, ``ElectionStep/watch(predecessor:)`` with the
    ///   candidate just before `me` otherwise, and ``ElectionStep/rejoin`` if `me` is not among `candidates`.
    public static func nextStep(candidates: [String], me: String) -> ElectionStep {
        guard let mySequence = sequenceNumber(of: me), candidates.contains(me) else { return .rejoin }
        var predecessor: (sequence: Int, name: String)?
        for name in candidates {
            guard let sequence = sequenceNumber(of: name), (sequence, name) < (mySequence, me) else { continue }
            if let current = predecessor, (sequence, name) <= current { continue }
            predecessor = (sequence, name)
        }
        guard let predecessor else { return .lead }
        return .watch(predecessor: predecessor.name)
    }

    /// The sequence number ZooKeeper appended to a sequential znode's name.
    ///
    /// - Parameter candidate: A znode name such as `candidate-0000000042`.
    /// - Returns: The number (42 in the example), or `nil` if the name does not end with 10 digits.
    public static func sequenceNumber(of candidate: String) -> Int? {
        let digits = candidate.utf8.suffix(sequenceDigits)
        guard digits.count == sequenceDigits, digits.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") })
        else { return nil }
        return digits.reduce(0) { $0 * 10 + Int($1 - UInt8(ascii: "0")) }
    }

    /// Lists the candidates of a cluster's election in line order, the leader first.
    ///
    /// - Parameters:
    ///   - session: A connected session.
    ///   - layout: The cluster.
    /// - Returns: Each candidate's znode name and data; empty if nobody ever stood.
    /// - Throws: ``ZooKeeperError`` if ZooKeeper cannot be read.
    public static func currentCandidates(
        session: ZooKeeperSession,
        layout: ClusterLayout
    ) async throws(ZooKeeperError) -> [(name: String, data: [UInt8])] {
        let names: [String]
        do {
            names = try await session.children(layout.electionPath)
        } catch where error.code == .noNode {
            return []
        }
        var candidates: [(name: String, data: [UInt8])] = []
        for name in inLineOrder(names) {
            do {
                candidates.append((name, try await session.get("\(layout.electionPath)/\(name)").data))
            } catch where error.code == .noNode {
                continue  // Left between listing and reading.
            }
        }
        return candidates
    }
}

// MARK: - Joining

extension LeaderElection {
    private struct State {
        var candidatePath: String?
        var watchedPredecessor: String?
        var isRunning = false
        /// Bumped by `withdraw()`, so that a running `awaitLeadership()` notices it must stop.
        var generation: UInt64 = 0
        /// A create failed with a connection loss, so it may have succeeded on the server anyway.
        var createInDoubt = false
        /// Remembered because `sessionID` is `nil` while disconnected, exactly when it is needed.
        var sessionID: Int64?
    }

    /// Creates this candidate's znode and returns its name, adopting one that an earlier create made in
    /// spite of reporting a connection loss.
    private func join(_ generation: UInt64) async throws -> String {
        let prefix = "\(layout.electionPath)/\(Self.candidatePrefix)"
        var backoff = Backoff()
        while true {
            try checkActive(generation)
            if state.withLock({ $0.createInDoubt }) {
                let owned = try await ownCandidates(retryingConnectionLoss: true)
                if let adopted = owned.first {
                    // Several in-doubt creates may all have succeeded; one candidate per session is enough.
                    for extra in owned.dropFirst() { await deleteQuietly("\(layout.electionPath)/\(extra)") }
                    let path = "\(layout.electionPath)/\(adopted)"
                    try await record(path, generation)
                    logger.info("candidate \(adopted) joined (adopted after a connection loss)")
                    return adopted
                }
                state.withLock { $0.createInDoubt = false }
            }
            let path: String
            do throws(ZooKeeperError) {
                rememberSessionID()
                path = try await session.create(prefix, data: candidateData, mode: .ephemeralSequential)
            } catch where error.isRetryable && !session.state.isTerminal {
                state.withLock { $0.createInDoubt = true }
                logger.info("connection lost while joining the election; retrying", metadata: ["error": "\(error)"])
                try await backoff.wait()
                continue
            } catch {
                throw sessionLossError(ifTerminal: error)
            }
            try await record(path, generation)
            logger.info("candidate \(Self.name(of: path)) joined", metadata: ["path": "\(path)"])
            return Self.name(of: path)
        }
    }

    /// Records a created candidate, unless ``withdraw()`` was called while it was being created.
    private func record(_ path: String, _ generation: UInt64) async throws(CancellationError) {
        let accepted = state.withLock { state in
            guard state.generation == generation else { return false }
            state.candidatePath = path
            state.createInDoubt = false
            return true
        }
        if !accepted {
            await deleteQuietly(path)
            throw CancellationError()
        }
    }

    /// The names of the candidates this session owns, in line order.
    private func ownCandidates(retryingConnectionLoss: Bool) async throws -> [String] {
        let electionPath = layout.electionPath
        func attempt<T>(_ what: String, _ operation: () async throws(ZooKeeperError) -> T) async throws -> T {
            guard retryingConnectionLoss else { return try await operation() }
            return try await retrying(what, operation)
        }
        let children = try await attempt("list candidates") { () async throws(ZooKeeperError) in
            try await session.children(electionPath)
        }
        rememberSessionID()
        guard let owner = state.withLock({ $0.sessionID }) else { return [] }
        var owned: [String] = []
        for name in Self.inLineOrder(children) {
            let stat = try await attempt("read \(name)") { () async throws(ZooKeeperError) in
                try await session.exists("\(electionPath)/\(name)")
            }
            if stat?.ephemeralOwner == owner { owned.append(name) }
        }
        return owned
    }

    /// Makes the next join behave as after a create that failed with a connection loss, so that tests can
    /// check adoption of a candidate znode that was created on the server in spite of the failure.
    package func markCreateInDoubt() {
        state.withLock { $0.createInDoubt = true }
    }

    private func rememberSessionID() {
        guard let id = session.sessionID else { return }
        state.withLock { $0.sessionID = id }
    }

    private func deleteQuietly(_ path: String) async {
        var backoff = Backoff()
        for attempt in 1...3 {
            do throws(ZooKeeperError) {
                try await session.delete(path)
                logger.info("deleted candidate \(Self.name(of: path))")
                return
            } catch where error.code == .noNode {
                return
            } catch where error.isRetryable && !session.state.isTerminal && attempt < 3 {
                try? await backoff.wait()
            } catch {
                logger.debug(
                    "could not delete \(path); it disappears when the session ends", metadata: ["error": "\(error)"])
                return
            }
        }
    }
}

// MARK: - Retrying and errors

extension LeaderElection {
    /// Doubles the pause between retries up to ``maximumRetryDelay``.
    private struct Backoff {
        var delay = LeaderElection.initialRetryDelay

        mutating func wait() async throws(CancellationError) {
            do {
                try await Task.sleep(for: delay)
            } catch {
                throw CancellationError()
            }
            delay = min(delay * 2, LeaderElection.maximumRetryDelay)
        }
    }

    /// Runs `operation`, retrying after a connection loss for as long as the session is alive.
    ///
    /// Only for operations that are safe to repeat: reads, and writes whose repetition is harmless.
    private func retrying<T>(
        _ what: String,
        _ operation: () async throws(ZooKeeperError) -> T
    ) async throws -> T {
        var backoff = Backoff()
        while true {
            do throws(ZooKeeperError) {
                return try await operation()
            } catch where error.isRetryable && !session.state.isTerminal {
                logger.debug("\(what) failed; retrying", metadata: ["error": "\(error)"])
                try await backoff.wait()
            } catch {
                throw sessionLossError(ifTerminal: error)
            }
        }
    }

    /// Throws `CancellationError` if the task was cancelled or the candidate withdrew.
    private func checkActive(_ generation: UInt64) throws(CancellationError) {
        if Task.isCancelled || state.withLock({ $0.generation }) != generation {
            throw CancellationError()
        }
    }

    /// Reports a failure that coincided with the end of the session as the end of the session, which
    /// tells the caller to open a new one, rather than as a misleading connection loss.
    private func sessionLossError(ifTerminal error: ZooKeeperError) -> ZooKeeperError {
        guard error.isRetryable else { return error }
        switch session.state {
        case .expired: return sessionLossError(.sessionExpired)
        case .authenticationFailed: return sessionLossError(.authenticationFailed)
        case .closed: return sessionLossError(.sessionClosed)
        case .connecting, .connected, .connectedReadOnly: return error
        }
    }

    private func sessionLossError(_ kind: WatchEvent.Kind) -> ZooKeeperError {
        let code: ZooKeeperError.Code =
            switch kind {
            case .sessionExpired: .sessionExpired
            case .authenticationFailed: .authFailed
            default: .sessionClosed
            }
        return ZooKeeperError(
            code: code, path: layout.electionPath, connectionString: session.configuration.connectionString)
    }

    private static func name(of path: String) -> String {
        path.split(separator: "/").last.map(String.init) ?? path
    }

    /// The names that carry a sequence number, in line order.
    private static func inLineOrder(_ names: [String]) -> [String] {
        names.compactMap { name in sequenceNumber(of: name).map { (sequence: $0, name: name) } }
            .sorted { ($0.sequence, $0.name) < ($1.sequence, $1.name) }
            .map(\.name)
    }
}
