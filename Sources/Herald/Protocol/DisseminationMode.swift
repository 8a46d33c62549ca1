/// How messages travel from publishers to subscribers; chosen once per cluster by its first broker.
public enum DisseminationMode: String, Sendable, Codable, CaseIterable, CustomStringConvertible {
    /// Publishers send to the leader broker, which forwards to subscribers.
    case broker
    /// The leader broker is only the discovery service; subscribers connect straight to publishers.
    case direct

    /// The mode's name as written in ZooKeeper and on the command line.
    public var description: String { rawValue }
}
