import ZooKeeper

/// Where one Herald cluster keeps its state in ZooKeeper: everything lives under `/herald/<cluster>`, so
/// several clusters (production, staging, a test run) can share one ZooKeeper ensemble without seeing
/// each other.
///
/// A cluster's brokers form groups, each electing its own leader for the topics routed to it. The default
/// group keeps its znodes at the cluster's root (`election`, `leader`, `brokers`), where a cluster of one group
/// always had them; a named group keeps them under `groups/<name>`.
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

    /// The name of the group of brokers started without `--group`.
    public static let defaultGroup = "default"

    /// The cluster name, validated by ``init(cluster:group:)``.
    public let cluster: String

    /// The broker group whose election and leader the paths below name; `nil` for the default group.
    public let group: String?

    /// The cluster's root znode, `/herald/<cluster>`.
    public var root: String { "\(Self.heraldRoot)/\(cluster)" }

    /// The znode holding the cluster's operating mode, shared by every group.
    public var modePath: String { root + "/mode" }

    /// The parent of the named groups' znodes.
    public var groupsPath: String { root + "/groups" }

    /// The znode holding the table of topics assigned to groups (``TopicAssignments``).
    public var assignmentsPath: String { root + "/assignments" }

    /// The group's root: the cluster's root for the default group, `groups/<name>` under it for another.
    public var groupRoot: String { group.map { "\(groupsPath)/\($0)" } ?? root }

    /// The parent of the group's leader-election candidate znodes.
    public var electionPath: String { groupRoot + "/election" }

    /// The znode that names the group's current leader.
    public var leaderPath: String { groupRoot + "/leader" }

    /// The parent of the group's brokers' registration znodes.
    public var brokersPath: String { groupRoot + "/brokers" }

    /// The group's name, the default group's included.
    public var groupName: String { group ?? Self.defaultGroup }

    /// Creates the layout of a cluster, or of one of its groups.
    ///
    /// - Parameters:
    ///   - cluster: The cluster name: 1 to 64 characters among `A`–`Z`, `a`–`z`, `0`–`9`, `.`, `_` and `-`,
    ///     and neither `.` nor `..`.
    ///   - group: The broker group, named like a cluster; `nil` or ``defaultGroup`` for the default group.
    /// - Throws: ``HeraldConfigurationError`` naming what is wrong with either name.
    public init(cluster: String, group: String? = nil) throws(HeraldConfigurationError) {
        try Self.validate(cluster, as: "cluster name")
        if let group, group != Self.defaultGroup { try Self.validate(group, as: "group name") }
        self.cluster = cluster
        self.group = group == Self.defaultGroup ? nil : group
    }

    private init(validated cluster: String, group: String?) {
        self.cluster = cluster
        self.group = group
    }

    /// The layout of the same cluster's group `name`.
    public func inGroup(_ name: String) throws(HeraldConfigurationError) -> ClusterLayout {
        try ClusterLayout(cluster: cluster, group: name)
    }

    /// Named groups followed at most: each costs a few reads per change, and the names come from ZooKeeper.
    public static let maximumGroups = 256

    /// The layout of the same cluster's default group.
    public var defaultGroupLayout: ClusterLayout { ClusterLayout(validated: cluster, group: nil) }

    /// The named groups among the children of ``groupsPath``: valid names other than the default group's, by
    /// name, at most ``maximumGroups`` of them.
    public func namedGroups(_ children: [String]) -> [ClusterLayout] {
        children.filter { $0 != Self.defaultGroup && Self.isValidGroupName($0) }.sorted().prefix(Self.maximumGroups)
            .map { ClusterLayout(validated: cluster, group: $0) }
    }

    /// Whether `name` may name a group.
    public static func isValidGroupName(_ name: String) -> Bool {
        (try? validate(name, as: "group name")) != nil
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
    private static func validate(_ name: String, as what: String) throws(HeraldConfigurationError) {
        let hint = "choose 1 to \(maximumClusterNameLength) characters among letters, digits, '.', '_' and '-'"
        guard !name.isEmpty else {
            throw HeraldConfigurationError(.invalidName, "the \(what) is empty; \(hint), such as '\(defaultCluster)'")
        }
        guard name.unicodeScalars.count <= maximumClusterNameLength else {
            throw HeraldConfigurationError(
                .invalidName,
                "the \(what) '\(name)' has \(name.unicodeScalars.count) characters, more than "
                    + "\(maximumClusterNameLength); \(hint)")
        }
        if let bad = name.unicodeScalars.first(where: { !isAllowed($0) }) {
            throw HeraldConfigurationError(
                .invalidName,
                "the \(what) '\(name)' contains the character '\(bad.escaped(asASCII: true))', "
                    + "which is not allowed; \(hint)")
        }
        // ZooKeeper rejects these as path components, and they would be confusing even if it did not.
        guard name != ".", name != ".." else {
            throw HeraldConfigurationError(.invalidName, "the \(what) cannot be '\(name)'; \(hint)")
        }
    }

    private static func isAllowed(_ scalar: Unicode.Scalar) -> Bool {
        switch scalar {
        case "A"..."Z", "a"..."z", "0"..."9", ".", "_", "-": true
        default: false
        }
    }
}
