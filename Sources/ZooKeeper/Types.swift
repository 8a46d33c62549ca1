internal import CZooKeeper

/// The state of a ``ZooKeeperSession``'s connection and session.
public enum SessionState: Sendable, Equatable, CustomStringConvertible {
    /// Not connected; the client is trying the servers in turn. The session, its ephemeral znodes and its
    /// watches survive as long as a server is reached again within the session timeout.
    case connecting
    /// Connected to a server; the session is valid.
    case connected
    /// Connected to a read-only server (a minority partition); writes fail.
    case connectedReadOnly
    /// The server expired the session: its ephemeral znodes and watches are gone. Terminal.
    case expired
    /// Authentication failed. Terminal.
    case authenticationFailed
    /// ``ZooKeeperSession/close()`` was called. Terminal.
    case closed

    /// Whether the session can never become usable again, so a new ``ZooKeeperSession`` is needed.
    public var isTerminal: Bool {
        switch self {
        case .expired, .authenticationFailed, .closed: true
        case .connecting, .connected, .connectedReadOnly: false
        }
    }

    /// Whether the session is connected to a server (possibly a read-only one).
    public var isConnected: Bool { self == .connected || self == .connectedReadOnly }

    /// The state's name.
    public var description: String {
        switch self {
        case .connecting: "connecting"
        case .connected: "connected"
        case .connectedReadOnly: "connectedReadOnly"
        case .expired: "expired"
        case .authenticationFailed: "authenticationFailed"
        case .closed: "closed"
        }
    }
}

/// How ``ZooKeeperSession/create(_:data:mode:acl:)`` creates a znode.
public enum CreateMode: Sendable, Equatable {
    /// Lives until deleted.
    case persistent
    /// Deleted by the server when the creating session ends (closed or expired).
    case ephemeral
    /// Persistent; the server appends a monotonically increasing 10-digit counter to the name.
    case persistentSequential
    /// Ephemeral; the server appends a monotonically increasing 10-digit counter to the name.
    case ephemeralSequential

    var flags: Int32 {
        switch self {
        case .persistent: ZOO_PERSISTENT
        case .ephemeral: ZOO_EPHEMERAL
        case .persistentSequential: ZOO_PERSISTENT_SEQUENTIAL
        case .ephemeralSequential: ZOO_EPHEMERAL_SEQUENTIAL
        }
    }
}

/// One access-control entry of a znode: who (`scheme` and `id`) may do what (`permissions`).
public struct ACL: Sendable, Hashable {
    /// What an ACL entry allows.
    public struct Permissions: OptionSet, Sendable, Hashable {
        /// The raw ZooKeeper permission bits.
        public let rawValue: Int32
        /// Creates permissions from ZooKeeper's permission bits.
        ///
        /// - Parameter rawValue: The bits, as in `ZOO_PERM_*`.
        public init(rawValue: Int32) { self.rawValue = rawValue }

        /// Read the data and list the children.
        public static let read = Permissions(rawValue: 1 << 0)
        /// Set the data.
        public static let write = Permissions(rawValue: 1 << 1)
        /// Create children.
        public static let create = Permissions(rawValue: 1 << 2)
        /// Delete children.
        public static let delete = Permissions(rawValue: 1 << 3)
        /// Set the ACL.
        public static let admin = Permissions(rawValue: 1 << 4)
        /// Everything.
        public static let all: Permissions = [.read, .write, .create, .delete, .admin]
    }

    /// What the entry allows.
    public var permissions: Permissions
    /// The authentication scheme, such as `world`, `auth` or `digest`.
    public var scheme: String
    /// The identity within the scheme, such as `anyone`.
    public var id: String

    /// Creates an ACL entry.
    ///
    /// - Parameters:
    ///   - permissions: What the entry allows.
    ///   - scheme: The authentication scheme.
    ///   - id: The identity within the scheme.
    public init(permissions: Permissions, scheme: String, id: String) {
        self.permissions = permissions
        self.scheme = scheme
        self.id = id
    }

    /// Anyone may do anything (`ZOO_OPEN_ACL_UNSAFE`).
    public static let openUnsafe = [ACL(permissions: .all, scheme: "world", id: "anyone")]
    /// Anyone may read (`ZOO_READ_ACL_UNSAFE`).
    public static let readUnsafe = [ACL(permissions: .read, scheme: "world", id: "anyone")]
    /// The identities the creator authenticated with may do anything (`ZOO_CREATOR_ALL_ACL`).
    public static let creatorAll = [ACL(permissions: .all, scheme: "auth", id: "")]
}

/// The metadata of a znode.
public struct Stat: Sendable, Equatable {
    /// The zxid of the change that created the znode.
    public var czxid: Int64
    /// The zxid of the change that last modified the znode's data.
    public var mzxid: Int64
    /// The zxid of the change that last modified the znode's children.
    public var pzxid: Int64
    /// Creation time, in milliseconds since the Unix epoch.
    public var ctime: Int64
    /// Last modification time, in milliseconds since the Unix epoch.
    public var mtime: Int64
    /// The number of changes to the data; pass it to `set`/`delete` for optimistic concurrency.
    public var version: Int32
    /// The number of changes to the children.
    public var childrenVersion: Int32
    /// The number of changes to the ACL.
    public var aclVersion: Int32
    /// The session id of the owner if the znode is ephemeral, otherwise 0.
    public var ephemeralOwner: Int64
    /// The length of the data in bytes.
    public var dataLength: Int32
    /// The number of children.
    public var numChildren: Int32
}

// MARK: - Conversions from C

extension Stat {
    init(_ stat: CZooKeeper.Stat) {
        czxid = stat.czxid
        mzxid = stat.mzxid
        pzxid = stat.pzxid
        ctime = stat.ctime
        mtime = stat.mtime
        version = stat.version
        childrenVersion = stat.cversion
        aclVersion = stat.aversion
        ephemeralOwner = stat.ephemeralOwner
        dataLength = stat.dataLength
        numChildren = stat.numChildren
    }
}

extension SessionState {
    /// Maps a C client state; `nil` for states this wrapper does not report (none known today).
    init(cState: Int32) {
        switch cState {
        case ZOO_CONNECTED_STATE: self = .connected
        case ZOO_READONLY_STATE: self = .connectedReadOnly
        case ZOO_EXPIRED_SESSION_STATE: self = .expired
        case ZOO_AUTH_FAILED_STATE: self = .authenticationFailed
        case 0: self = .closed
        // CONNECTING, ASSOCIATING, SSL_CONNECTING and NOTCONNECTED all mean "not usable yet, retrying".
        default: self = .connecting
        }
    }
}
