import CoreMetrics
import Logging
import ZooKeeper

/// Follows a cluster through ZooKeeper for a publisher or subscriber: its groups, their leaders and the topic
/// assignments (``ClusterView``).
///
/// It keeps a ZooKeeper session open, opening a new one with back-off whenever ZooKeeper is unreachable or the
/// session expires, and reports every change of the view, a leader's disappearance included. It never throws on
/// a network fault: it logs, waits and tries again until its task is cancelled.
struct ClusterWatcher: Sendable {
    let zookeeper: ZooKeeperConfiguration
    let layout: ClusterLayout
    let logger: Logger

    /// How long to wait for a session before retrying; ZooKeeper answers within a second when it is up.
    static let connectTimeout: Duration = .seconds(5)
    /// Pause before retrying an operation that failed with connection loss on a session that is still alive.
    static let retryPause: Duration = .milliseconds(200)

    /// Runs until cancelled, calling `onChange` with each new view.
    /// - Throws: only ``ZooKeeperError`` with `.badArguments` (an unusable connection string), since retrying
    ///   cannot fix that.
    func run(onChange: @escaping @Sendable (ClusterView) async -> Void) async throws(ZooKeeperError) {
        var backoff = Backoff()
        let deduplicator = ChangeFilter(onChange)
        while !Task.isCancelled {
            let session = try ZooKeeperSession(configuration: zookeeper, logger: logger)
            do throws(ZooKeeperError) {
                try await session.waitUntilConnected(timeout: Self.connectTimeout)
                logger.info("connected to ZooKeeper", metadata: ["zookeeper": "\(zookeeper.connectionString)"])
                Instruments.recordZooKeeper(connected: true)
                backoff.reset()
                try await followView(session, report: deduplicator)
            } catch where error.code == .cancelled || Task.isCancelled {
                await session.close()
                return
            } catch {
                Instruments.recordZooKeeper(connected: false)
                let delay = backoff.nextDelay()
                logger.warning(
                    "ZooKeeper unavailable; retrying",
                    metadata: [
                        "zookeeper": "\(zookeeper.connectionString)", "error": "\(error)",
                        "retry_in_s": "\(delay.seconds.decimal(1))",
                    ])
                await session.close()
                try? await Task.sleep(for: delay)
            }
        }
    }

    /// Reads the view, and again whenever a watch fires, until the session is lost.
    private func followView(_ session: ZooKeeperSession, report: ChangeFilter) async throws(ZooKeeperError) {
        var reader = ViewReader(session: session, layout: layout, logger: logger)
        while !Task.isCancelled {
            do throws(ZooKeeperError) {
                await report.report(try await reader.read())
            } catch where error.isRetryable && !session.state.isTerminal {
                try? await Task.sleep(for: Self.retryPause)
                continue
            }
            guard let event = await reader.nextEvent() else { return }
            if event.isSessionLoss { throw ZooKeeperError(code: .sessionExpired, path: event.path) }
        }
    }
}

extension ClusterView {
    /// Reads a cluster's view once.
    /// - Parameters:
    ///   - zookeeper: the ZooKeeper ensemble.
    ///   - layout: the cluster.
    ///   - timeout: how long to wait for ZooKeeper.
    ///   - logger: for the ZooKeeper client.
    public static func fetch(
        zookeeper: ZooKeeperConfiguration, layout: ClusterLayout, timeout: Duration = .seconds(5), logger: Logger
    ) async throws -> ClusterView {
        let session = try ZooKeeperSession(configuration: zookeeper, logger: logger)
        do {
            try await session.waitUntilConnected(timeout: timeout)
            var reader = ViewReader(session: session, layout: layout, logger: logger)
            let view = try await reader.read()
            await session.close()
            return view
        } catch {
            await session.close()
            throw error
        }
    }
}

extension TopicAssignments {
    /// Changes the table in ZooKeeper: reads it, applies `change`, and writes it back unless another writer
    /// changed it meanwhile, in which case it starts over.
    /// - Parameters:
    ///   - zookeeper: the ZooKeeper ensemble, with the cluster's credentials when it has them.
    ///   - layout: the cluster.
    ///   - logger: for the ZooKeeper client.
    ///   - change: the change.
    /// - Returns: the table written.
    @discardableResult
    public static func update(
        zookeeper: ZooKeeperConfiguration, layout: ClusterLayout, logger: Logger,
        _ change: @Sendable (inout [String: String]) -> Void
    ) async throws -> TopicAssignments {
        let session = try ZooKeeperSession(configuration: zookeeper, logger: logger)
        do {
            try await session.waitUntilConnected(timeout: .seconds(5))
            try await session.ensurePath(layout.root)
            while true {
                let (current, version) = try await read(layout.assignmentsPath, session)
                var table = current
                change(&table.topics)
                let bytes = table.encoded()
                guard bytes.count <= maximumEncodedSize else {
                    throw HeraldConfigurationError(
                        "the assignments would take \(bytes.count) bytes, more than ZooKeeper keeps in one znode; assign fewer topics, and let the others be hashed over the groups"
                    )
                }
                if try await write(bytes, to: layout.assignmentsPath, over: version, session) {
                    await session.close()
                    return table
                }
            }
        } catch {
            await session.close()
            throw error
        }
    }

    /// Writes the table over the version read. - Returns: `false` when another writer came first.
    private static func write(
        _ bytes: [UInt8], to path: String, over version: Int32?, _ session: ZooKeeperSession
    ) async throws(ZooKeeperError) -> Bool {
        do {
            if let version {
                _ = try await session.set(path, data: bytes, version: version)
            } else {
                try await session.create(path, data: bytes)
            }
            return true
        } catch where error.code == .badVersion || error.code == .nodeExists {
            return false
        }
    }

    /// The table and its znode's version; an empty table and `nil` when there is none.
    private static func read(
        _ path: String, _ session: ZooKeeperSession
    ) async throws(ZooKeeperError) -> (TopicAssignments, Int32?) {
        do {
            let (data, stat) = try await session.get(path)
            return (TopicAssignments(decoding: data) ?? TopicAssignments(), stat.version)
        } catch where error.code == .noNode {
            return (TopicAssignments(), nil)
        }
    }
}

/// Reads a cluster's view, leaving one watch per znode read: a znode whose watch has not fired yet is read
/// without a new one, so watches do not pile up in the client however often the view changes.
struct ViewReader {
    let session: ZooKeeperSession
    let layout: ClusterLayout
    let logger: Logger
    /// The armed watches, by kind and path.
    private var armed: [String: Watch] = [:]

    init(session: ZooKeeperSession, layout: ClusterLayout, logger: Logger) {
        self.session = session
        self.layout = layout
        self.logger = logger
    }

    mutating func read() async throws(ZooKeeperError) -> ClusterView {
        var view = ClusterView()
        let layouts = [layout.defaultGroupLayout] + layout.namedGroups(try await children(layout.groupsPath) ?? [])
        for group in layouts {
            let candidates = try await children(group.electionPath) ?? []
            let record = try await data(group.leaderPath).flatMap { bytes in
                let record = LeaderRecord(decoding: bytes)
                if record == nil {
                    logger.error("unreadable leader record in ZooKeeper", metadata: ["path": "\(group.leaderPath)"])
                }
                return record
            }
            guard !candidates.isEmpty || record != nil else { continue }
            view.leaders[group.groupName] = .some(record)
        }
        if let bytes = try await data(layout.assignmentsPath) {
            if let table = TopicAssignments(decoding: bytes) {
                view.assignments = table.topics
            } else {
                logger.error("unreadable topic assignments in ZooKeeper", metadata: ["path": "\(layout.assignmentsPath)"])
            }
        }
        // Watches on groups no longer there are forgotten: each fires once, when its znode changes.
        let paths = Set(layouts.flatMap { [$0.electionPath, $0.leaderPath] } + [layout.groupsPath, layout.assignmentsPath])
        armed = armed.filter { paths.contains(String($0.key.dropFirst(2))) }
        return view
    }

    /// The first event of the armed watches; `nil` when cancelled.
    mutating func nextEvent() async -> WatchEvent? {
        let watches = Array(armed.values)
        let event = await withTaskGroup(of: WatchEvent?.self) { group in
            for watch in watches { group.addTask { try? await watch.event() } }
            let first = await group.next() ?? nil
            group.cancelAll()
            return first
        }
        armed = armed.filter { $0.value.firedEvent == nil }
        return event
    }

    /// A znode's data, `nil` when it does not exist, leaving a watch for its creation, change or deletion.
    private mutating func data(_ path: String) async throws(ZooKeeperError) -> [UInt8]? {
        let key = "d:" + path
        if armed[key]?.firedEvent != nil { armed[key] = nil }
        if armed[key] == nil {
            let (stat, watch) = try await session.existsWatching(path)
            armed[key] = watch
            if stat == nil { return nil }
        }
        do {
            return try await session.get(path).data
        } catch where error.code == .noNode {
            return nil
        }
    }

    /// A znode's children, `nil` when it does not exist, leaving a watch for a change of them or its creation.
    private mutating func children(_ path: String) async throws(ZooKeeperError) -> [String]? {
        let key = "c:" + path
        if armed[key]?.firedEvent != nil { armed[key] = nil }
        if armed[key] == nil {
            // Not there yet: watch for its creation instead; made meanwhile: watch its children after all.
            for _ in 0..<3 {
                do {
                    let (names, watch) = try await session.childrenWatching(path)
                    armed[key] = watch
                    return names
                } catch where error.code == .noNode {
                    let (stat, watch) = try await session.existsWatching(path)
                    if stat == nil {
                        armed[key] = watch
                        return nil
                    }
                }
            }
            throw ZooKeeperError(code: .connectionLoss, path: path)
        }
        do {
            return try await session.children(path)
        } catch where error.code == .noNode {
            return nil
        }
    }
}

/// Passes on only views that differ from the last one passed on, across sessions: a new session that finds
/// the same leaders is no change.
private final class ChangeFilter {
    private var last: ClusterView?
    private let onChange: @Sendable (ClusterView) async -> Void

    init(_ onChange: @escaping @Sendable (ClusterView) async -> Void) { self.onChange = onChange }

    func report(_ view: ClusterView) async {
        guard last != view else { return }
        last = view
        await onChange(view)
    }
}
