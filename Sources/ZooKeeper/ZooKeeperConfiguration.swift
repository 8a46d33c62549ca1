/// Where a ``ZooKeeperSession`` connects and how long its session may stay silent before it expires.
public struct ZooKeeperConfiguration: Sendable, Equatable {
    /// The session timeout used when none is given: 4 seconds.
    ///
    /// Short enough that the ephemeral znode of a killed leader disappears, and a new leader takes over,
    /// within a few seconds; long enough that a garbage-collection or scheduling pause of a second or two
    /// does not expire a healthy session. The server clamps the value to between 2 and 20 times its
    /// `tickTime` (1 to 40 seconds with the default 2-second tick of a production server).
    public static let defaultSessionTimeout: Duration = .seconds(4)

    /// Comma-separated `host:port` pairs, optionally followed by a chroot path, for example
    /// `"zk1:2181,zk2:2181,zk3:2181/herald"`. With a chroot every path is relative to it.
    public var connectionString: String

    /// How long the server keeps the session (and its ephemeral znodes) alive without hearing from this client.
    public var sessionTimeout: Duration

    /// The identity the session authenticates with, if any; it then creates znodes that only this identity
    /// may change (``ZooKeeperSession/defaultACL``).
    public var authentication: ZooKeeperAuthentication?

    /// Creates a configuration.
    ///
    /// - Parameters:
    ///   - connectionString: Comma-separated `host:port` pairs with an optional `/chroot` suffix.
    ///   - sessionTimeout: The requested session timeout; the server may clamp it.
    ///   - authentication: The identity to authenticate with, if any.
    public init(
        connectionString: String, sessionTimeout: Duration = Self.defaultSessionTimeout,
        authentication: ZooKeeperAuthentication? = nil
    ) {
        self.connectionString = connectionString
        self.sessionTimeout = sessionTimeout
        self.authentication = authentication
    }
}

/// An identity a session authenticates with (`zoo_add_auth`). Its description never shows the credentials.
public struct ZooKeeperAuthentication: Sendable, Equatable, CustomStringConvertible, CustomDebugStringConvertible,
    CustomReflectable
{
    /// The authentication scheme, such as `digest`.
    public var scheme: String
    /// The credentials, for `digest` `user:password`.
    public var credentials: [UInt8]

    /// Creates an identity.
    ///
    /// - Parameters:
    ///   - scheme: The authentication scheme.
    ///   - credentials: The credentials, as the scheme takes them.
    public init(scheme: String, credentials: [UInt8]) {
        self.scheme = scheme
        self.credentials = credentials
    }

    /// A `digest` identity from `user:password`.
    ///
    /// - Throws: ``ZooKeeperError/Code/badArguments`` when the text is not of that form.
    public static func digest(_ userAndPassword: String) throws(ZooKeeperError) -> ZooKeeperAuthentication {
        guard let colon = userAndPassword.firstIndex(of: ":"), colon != userAndPassword.startIndex,
            userAndPassword.index(after: colon) != userAndPassword.endIndex
        else {
            throw ZooKeeperError(
                code: .badArguments, libraryMessage: "ZooKeeper credentials must be of the form user:password")
        }
        return ZooKeeperAuthentication(scheme: "digest", credentials: Array(userAndPassword.utf8))
    }

    /// The scheme and, for `digest`, the user name.
    public var description: String {
        guard scheme == "digest", let colon = credentials.firstIndex(of: UInt8(ascii: ":")) else { return scheme }
        return "digest:\(String(decoding: credentials[..<colon], as: UTF8.self))"
    }

    /// As ``description``: a configuration printed whole, or dumped, shows no password either.
    public var debugDescription: String { description }

    /// The scheme only.
    public var customMirror: Mirror { Mirror(self, children: ["scheme": scheme]) }
}

// MARK: - Validation

extension ZooKeeperConfiguration {
    /// The session timeout in whole milliseconds, as the C client takes it.
    var sessionTimeoutMilliseconds: Int32 {
        let (seconds, attoseconds) = sessionTimeout.components
        let milliseconds = seconds * 1000 + attoseconds / 1_000_000_000_000_000
        return Int32(clamping: max(milliseconds, 1))
    }

    /// Rejects connection strings that the C client would reject late or misread silently.
    ///
    /// The C client only reports `EINVAL` with no detail, so checking here gives the user a message
    /// that names the offending part.
    func validate() throws(ZooKeeperError) {
        func invalid(_ reason: String) -> ZooKeeperError {
            ZooKeeperError(
                code: .badArguments,
                connectionString: connectionString,
                libraryMessage: "invalid connection string: \(reason)"
            )
        }
        guard sessionTimeout > .zero else {
            throw invalid("the session timeout must be positive")
        }
        var hosts = Substring(connectionString)
        if let slash = connectionString.firstIndex(of: "/") {
            hosts = connectionString[..<slash]
            let chroot = connectionString[slash...]
            if chroot.count > 1 && (chroot.hasSuffix("/") || chroot.contains("//")) {
                throw invalid("the chroot '\(chroot)' must not end with '/' or contain '//'")
            }
        }
        guard !hosts.isEmpty else {
            throw invalid(
                "expected comma-separated host:port pairs such as '127.0.0.1:2181', got '\(connectionString)'")
        }
        for entry in hosts.split(separator: ",", omittingEmptySubsequences: false) {
            let pair = entry.trimmingSpaces
            guard let colon = pair.lastIndex(of: ":"), colon != pair.startIndex else {
                throw invalid("'\(pair)' is not of the form host:port")
            }
            let port = pair[pair.index(after: colon)...]
            guard let number = UInt16(port), number != 0 else {
                throw invalid("'\(port)' in '\(pair)' is not a port number between 1 and 65535")
            }
        }
    }
}

extension Substring {
    fileprivate var trimmingSpaces: Substring {
        var result = self
        while result.first == " " { result.removeFirst() }
        while result.last == " " { result.removeLast() }
        return result
    }
}
