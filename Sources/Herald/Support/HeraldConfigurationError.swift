import ZooKeeper

/// Invalid input from the user (a command-line option, a configuration value) or a setting the environment
/// refuses, with a message that says what is wrong and how to fix it.
///
/// Match on ``reason`` to tell kinds apart; ``underlying`` keeps the error of the library that refused, with its
/// code (a ``ZooKeeperError``, a `ZMQError` with its errno).
public struct HeraldConfigurationError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The kinds of configuration error.
    public enum Reason: String, Sendable, Equatable, CaseIterable {
        /// A topic, pattern, cluster or group name that is not valid.
        case invalidName = "invalid_name"
        /// A value out of its range, or settings that do not fit together.
        case invalidSetting = "invalid_setting"
        /// The cluster runs in the other dissemination mode.
        case modeMismatch = "mode_mismatch"
        /// ZooKeeper refused this process's identity on the cluster's znodes.
        case zooKeeperRefused = "zookeeper_refused"
        /// A port or address the broker was told to listen on cannot be bound.
        case cannotListen = "cannot_listen"
        /// A key file, key list or credentials file cannot be read, written or used.
        case keyMaterial = "key_material"
    }

    /// The kind of error.
    public let reason: Reason
    /// What is wrong and what to do about it, ready to show to the user.
    public let message: String
    /// The error of the library that refused, when one did.
    public let underlying: (any Error & Sendable)?

    /// The message.
    public var description: String { message }

    /// Creates an error.
    ///
    /// - Parameters:
    ///   - reason: the kind of error.
    ///   - message: What is wrong and what to do about it, as one or two sentences for the user.
    ///   - underlying: the error of the library that refused, if one did.
    public init(_ reason: Reason, _ message: String, underlying: (any Error & Sendable)? = nil) {
        self.reason = reason
        self.message = message
        self.underlying = underlying
    }

    /// Creates an error of a setting that is out of range or does not fit the others.
    ///
    /// - Parameter message: What is wrong and what to do about it, as one or two sentences for the user.
    public init(_ message: String) {
        self.init(.invalidSetting, message)
    }

    /// Errors are equal when their reason and message are: the underlying error is detail.
    public static func == (lhs: HeraldConfigurationError, rhs: HeraldConfigurationError) -> Bool {
        lhs.reason == rhs.reason && lhs.message == rhs.message
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
                .zooKeeperRefused, "ZooKeeper refused to let this broker change \(path): cluster '\(layout.cluster)' is protected by credentials; pass them with --zookeeper-auth user:password (or HERALD_ZOOKEEPER_AUTH)",
                underlying: error)
        }
        if error.code == .authFailed {
            return HeraldConfigurationError(
                .zooKeeperRefused,
                "ZooKeeper rejected the identity \(identity) from --zookeeper-auth; check the user name and password",
                underlying: error)
        }
        return HeraldConfigurationError(
            .zooKeeperRefused, "ZooKeeper refused \(identity) on \(path): cluster '\(layout.cluster)' belongs to another identity; pass that cluster's --zookeeper-auth, or choose another --cluster",
            underlying: error)
    }
}
