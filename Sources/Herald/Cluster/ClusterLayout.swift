import ZooKeeper

/// Where one Herald cluster keeps its state in ZooKeeper: everything lives under `/herald/<cluster>`, so
/// several clusters (production, staging, a test run) can share one ZooKeeper ensemble without seeing
/// each other.
public struct ClusterLayout: Sendable, Hashable {
    /// The cluster name used when none is given.
    ///
    /// Most deployments run a single cluster per ensemble; a fixed name lets brokers, publishers and
    /// subscribers find each other with no configuration beyond the ZooKeeper connection string.
    public static let defaultCluster = "default"

    /// The znode under which every cluster lives, kept apart from other applications sharing the ensemble.
    public static let heraldRoot = "/herald"

    /// The longest accepted cluster name; long enough for descriptive names, short enough to keep paths
    /// readable in logs and in `herald status`.
    public static let maximumClusterNameLength = 64

    /// The cluster name, validated by ``init(cluster:)``.
    public let cluster: String

    /// The cluster's root znode, `/herald/<cluster>`.
    public var root: String { "\(Self.heraldRoot)/\(cluster)" }

    /// The znode holding the cluster's operating mode.
    public var modePath: String { root + "/mode" }

    /// The parent of the leader-election candidate znodes.
    public var electionPath: String { root + "/election" }

    /// The znode that names the current leader.
    public var leaderPath: String { root + "/leader" }

    /// The parent of the brokers' registration znodes.
    public var brokersPath: String { root + "/brokers" }

    /// Creates the layout of a cluster.
    ///
    /// - Parameter cluster: The cluster name: 1 to 64 characters among `A`–`Z`, `a`–`z`, `0`–`9`, `.`,
    ///   `_` and `-`, and neither `.` nor `..`.
    /// - Throws: ``HeraldConfigurationError`` naming what is wrong with `cluster`.
    public init(cluster: String) throws(HeraldConfigurationError) {
        try Self.validate(cluster: cluster)
        self.cluster = cluster
    }
}

extension ZooKeeperSession {
    /// Creates `path` and each of its missing ancestors as empty persistent znodes.
    ///
    /// Safe when several clients (brokers starting together) call it at once: a znode that another
    /// client created first is simply accepted.
    ///
    /// - Parameters:
    ///   - path: An absolute path; `/` does nothing.
    ///   - acl: The ACL of the znodes created; the session's ``ZooKeeperSession/defaultACL`` when `nil`.
    /// - Throws: ``ZooKeeperError``, for example ``ZooKeeperError/Code/connectionLoss`` (call again:
    ///   the method is idempotent) or ``ZooKeeperError/Code/badArguments`` for a malformed path.
    public func ensurePath(_ path: String, acl: [ACL]? = nil) async throws(ZooKeeperError) {
        guard path.hasPrefix("/") else {
            throw ZooKeeperError(
                code: .badArguments, path: path, libraryMessage: "ensurePath needs an absolute path")
        }
        // The common case, every broker start after the first one: a single round trip.
        if try await exists(path) != nil { return }
        var prefix = ""
        for component in path.split(separator: "/", omittingEmptySubsequences: false).dropFirst() {
            prefix += "/" + component
            do {
                try await create(prefix, acl: acl)
            } catch where error.code == .nodeExists {
                continue
            }
        }
    }
}

// MARK: - Validation

extension ClusterLayout {
    private static func validate(cluster: String) throws(HeraldConfigurationError) {
        let hint = "choose 1 to \(maximumClusterNameLength) characters among letters, digits, '.', '_' and '-'"
        guard !cluster.isEmpty else {
            throw HeraldConfigurationError("the cluster name is empty; \(hint), such as '\(defaultCluster)'")
        }
        guard cluster.unicodeScalars.count <= maximumClusterNameLength else {
            throw HeraldConfigurationError(
                "the cluster name '\(cluster)' has \(cluster.unicodeScalars.count) characters, more than "
                    + "\(maximumClusterNameLength); \(hint)")
        }
        if let bad = cluster.unicodeScalars.first(where: { !isAllowed($0) }) {
            throw HeraldConfigurationError(
                "the cluster name '\(cluster)' contains the character '\(bad.escaped(asASCII: true))', "
                    + "which is not allowed; \(hint)")
        }
        // ZooKeeper rejects these as path components, and they would be confusing even if it did not.
        guard cluster != ".", cluster != ".." else {
            throw HeraldConfigurationError("the cluster name cannot be '\(cluster)'; \(hint)")
        }
    }

    private static func isAllowed(_ scalar: Unicode.Scalar) -> Bool {
        switch scalar {
        case "A"..."Z", "a"..."z", "0"..."9", ".", "_", "-": true
        default: false
        }
    }
}
