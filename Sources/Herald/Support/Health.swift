/// What a Herald process tells its readiness probe.
public protocol HealthReporting: Sendable {
    /// Whether the process does its job now: a broker with a live ZooKeeper session that leads or stands by,
    /// a publisher or subscriber attached to a leader.
    var isReady: Bool { get }
    /// A short human-readable reason, shown by `/readyz`.
    var readinessDetail: String { get }
}

extension Broker: HealthReporting {
    /// Ready when the ZooKeeper session is live and the broker leads or stands by.
    public var isReady: Bool {
        sessionState.isConnected && (role == .leader || role == .standby)
    }

    /// The role and session state.
    public var readinessDetail: String { "role=\(role.rawValue) zookeeper=\(sessionState)" }
}

extension Publisher: HealthReporting {
    /// Ready when attached to a leader.
    public var isReady: Bool { attachedLeader != nil }

    /// The leader attached to, if any.
    public var readinessDetail: String { attachedLeader.map { "attached to \($0)" } ?? "no leader" }
}

extension Subscriber: HealthReporting {
    /// Ready when attached to a leader.
    public var isReady: Bool { attachedLeader != nil }

    /// The leader attached to, if any.
    public var readinessDetail: String { attachedLeader.map { "attached to \($0)" } ?? "no leader" }
}
