import FoundationEssentials

#if canImport(Glibc)
    import Glibc
#endif

/// The table of topics assigned to broker groups, kept in ZooKeeper as JSON at
/// ``ClusterLayout/assignmentsPath`` and changed with `herald topics assign|unassign`.
public struct TopicAssignments: Codable, Sendable, Equatable {
    /// The group of each assigned topic.
    public var topics: [String: String]

    /// Creates a table.
    /// - Parameter topics: the group of each assigned topic.
    public init(topics: [String: String] = [:]) { self.topics = topics }

    /// The largest table accepted from ZooKeeper: ZooKeeper's own default limit on a znode.
    static let maximumEncodedSize = 1 << 20

    /// Reads a table from ZooKeeper's bytes; entries whose topic or group is not a valid name are left out.
    /// - Returns: `nil` for bytes that are no table.
    public init?(decoding bytes: [UInt8]) {
        guard bytes.count <= Self.maximumEncodedSize,
            let table = try? JSONDecoder().decode(TopicAssignments.self, from: Data(bytes))
        else { return nil }
        topics = table.topics.filter { topic, group in
            (try? Topic(topic)) != nil && (group == ClusterLayout.defaultGroup || ClusterLayout.isValidGroupName(group))
        }
    }

    /// The table as ZooKeeper keeps it.
    public func encoded() -> [UInt8] { Array((try? JSONEncoder.herald.encode(self)) ?? Data()) }
}

/// Which group serves each topic: the group it is assigned to, when that group has brokers; otherwise the
/// group that rendezvous hashing picks among the groups with brokers, so that every client computes the same
/// answer, and a new or departed group moves only the topics it wins or held.
public struct TopicRouting: Sendable, Equatable {
    /// The assignments.
    public var assignments: [String: String]
    /// The groups with brokers, by name.
    public var groups: [String]

    /// Creates a routing.
    /// - Parameters:
    ///   - assignments: the group of each assigned topic.
    ///   - groups: the groups with brokers.
    public init(assignments: [String: String], groups: [String]) {
        self.assignments = assignments
        self.groups = groups.sorted()
    }

    /// The group that serves `topic`; `nil` when no group has brokers.
    public func group(for topic: String) -> String? {
        if let assigned = assignments[topic], groups.contains(assigned) { return assigned }
        return groups.max { Self.weight(topic, $0) < Self.weight(topic, $1) }
    }

    /// The rendezvous weight of a topic in a group: FNV-1a over both names, mixed by SplitMix64's finalizer.
    /// Fixed, unlike Swift's seeded `Hasher`, so that every process agrees.
    static func weight(_ topic: String, _ group: String) -> UInt64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in group.utf8 {
            hash = (hash ^ UInt64(byte)) &* 0x100_0000_01b3
        }
        hash = (hash ^ 0) &* 0x100_0000_01b3
        for byte in topic.utf8 {
            hash = (hash ^ UInt64(byte)) &* 0x100_0000_01b3
        }
        hash = (hash ^ (hash >> 30)) &* 0xbf58_476d_1ce4_e5b9
        hash = (hash ^ (hash >> 27)) &* 0x94d0_49bb_1331_11eb
        return hash ^ (hash >> 31)
    }
}

/// What a client knows of a cluster: each group with brokers, its leader, and the topic assignments.
public struct ClusterView: Sendable, Equatable {
    /// The leader of each group with brokers standing; `nil` while the group elects one.
    public var leaders: [String: LeaderRecord?]
    /// The topic assignments.
    public var assignments: [String: String]

    /// Creates a view.
    /// - Parameters:
    ///   - leaders: the leader of each group with brokers.
    ///   - assignments: the group of each assigned topic.
    public init(leaders: [String: LeaderRecord?] = [:], assignments: [String: String] = [:]) {
        self.leaders = leaders
        self.assignments = assignments
    }

    /// Which group serves which topic.
    public var routing: TopicRouting { TopicRouting(assignments: assignments, groups: Array(leaders.keys)) }

    /// The leader of the group that serves `topic`, if it has one now.
    public func leader(for topic: String) -> LeaderRecord? {
        routing.group(for: topic).flatMap { leaders[$0] ?? nil }
    }
}
