import ZooKeeper

/// Invalid input from the user (a command-line option, a configuration value), with a message that says
/// what is wrong and how to fix it.
public struct HeraldConfigurationError: Error, Sendable, Equatable, CustomStringConvertible {
    /// What is wrong and what to do about it, ready to show to the user.
    public let message: String

    /// The message.
    public var description: String { message }

    /// Creates an error.
    ///
    /// - Parameter message: What is wrong and what to do about it, as one or two sentences for the user.
    public init(_ message: String) {
        self.message = message
    }
}

extension HeraldConfigurationError {
    /// ZooKeeper refused this process's identity (`noAuth`, `authFailed`) on a cluster's znodes.
    static func zooKeeperRefused(
        _ error: ZooKeeperError, layout: ClusterLayout, identity: ZooKeeperAuthentication?
    ) -> HeraldConfigurationError {
        let path = error.path ?? layout.root
        guard let identity else {
            return HeraldConfigurationError(
                "ZooKeeper refused to let this broker change \(path): cluster '\(layout.cluster)' is protected by credentials; pass them with --zookeeper-auth user:password (or HERALD_ZOOKEEPER_AUTH)")
        }
        if error.code == .authFailed {
            return HeraldConfigurationError(
                "ZooKeeper rejected the identity \(identity) from --zookeeper-auth; check the user name and password")
        }
        return HeraldConfigurationError(
            "ZooKeeper refused \(identity) on \(path): cluster '\(layout.cluster)' belongs to another identity; pass that cluster's --zookeeper-auth, or choose another --cluster")
    }
}
