internal import CZooKeeper

/// A failed ZooKeeper operation: the ZooKeeper return code, the znode it concerns and what to do next.
public struct ZooKeeperError: Error, Sendable, Equatable, CustomStringConvertible {
    /// What went wrong: a ZooKeeper return code, or a condition detected by this wrapper.
    public enum Code: Sendable, Hashable {
        /// `ZNONODE`: the znode does not exist.
        case noNode
        /// `ZNODEEXISTS`: the znode already exists.
        case nodeExists
        /// `ZBADVERSION`: the expected version does not match the znode's version.
        case badVersion
        /// `ZNOTEMPTY`: the znode has children.
        case notEmpty
        /// `ZCONNECTIONLOSS`: the connection to the server was lost; the operation may or may not have been applied.
        case connectionLoss
        /// `ZSESSIONEXPIRED`: the server expired the session.
        case sessionExpired
        /// `ZOPERATIONTIMEOUT`: the server did not answer in time.
        case operationTimeout
        /// `ZINVALIDSTATE`: the handle can no longer be used (session expired or authentication failed).
        case invalidState
        /// `ZBADARGUMENTS`: invalid arguments, usually a malformed path or connection string.
        case badArguments
        /// `ZNOAUTH`: the znode's ACL does not allow the operation.
        case noAuth
        /// `ZAUTHFAILED`: client authentication failed.
        case authFailed
        /// `ZNOCHILDRENFOREPHEMERALS`: ephemeral znodes cannot have children.
        case noChildrenForEphemerals
        /// `ZMARSHALLINGERROR`: the request could not be encoded.
        case marshallingError
        /// `ZSYSTEMERROR`: an operating-system error inside the C client.
        case systemError
        /// `ZCLOSING`: the handle is closing and abandoned the operation.
        case closing
        /// `ZSESSIONMOVED`: the session moved to another server.
        case sessionMoved
        /// `ZUNIMPLEMENTED`: the server does not implement the operation.
        case unimplemented
        /// `ZINVALIDACL`: the ACL is invalid.
        case invalidACL
        /// `ZNOTREADONLY`: a write was sent to a read-only server.
        case notReadOnly
        /// Any other ZooKeeper return code.
        case other(Int32)
        /// This wrapper gave up waiting (for example in ``ZooKeeperSession/waitUntilConnected(timeout:)``).
        case timedOut
        /// The session was closed with ``ZooKeeperSession/close()``; create a new ``ZooKeeperSession``.
        case sessionClosed
        /// The waiting task was cancelled.
        case cancelled

        /// The C client's return code, or `nil` for conditions detected by this wrapper.
        public var returnCode: Int32? {
            switch self {
            case .noNode: ZNONODE.rawValue
            case .nodeExists: ZNODEEXISTS.rawValue
            case .badVersion: ZBADVERSION.rawValue
            case .notEmpty: ZNOTEMPTY.rawValue
            case .connectionLoss: ZCONNECTIONLOSS.rawValue
            case .sessionExpired: ZSESSIONEXPIRED.rawValue
            case .operationTimeout: ZOPERATIONTIMEOUT.rawValue
            case .invalidState: ZINVALIDSTATE.rawValue
            case .badArguments: ZBADARGUMENTS.rawValue
            case .noAuth: ZNOAUTH.rawValue
            case .authFailed: ZAUTHFAILED.rawValue
            case .noChildrenForEphemerals: ZNOCHILDRENFOREPHEMERALS.rawValue
            case .marshallingError: ZMARSHALLINGERROR.rawValue
            case .systemError: ZSYSTEMERROR.rawValue
            case .closing: ZCLOSING.rawValue
            case .sessionMoved: ZSESSIONMOVED.rawValue
            case .unimplemented: ZUNIMPLEMENTED.rawValue
            case .invalidACL: ZINVALIDACL.rawValue
            case .notReadOnly: ZNOTREADONLY.rawValue
            case .other(let code): code
            case .timedOut, .sessionClosed, .cancelled: nil
            }
        }
    }

    /// What went wrong.
    public let code: Code
    /// The znode path the operation concerned, if any.
    public let path: String?
    /// The connection string of the session, to say which ensemble was unreachable.
    public let connectionString: String?
    /// The C client's own text for the return code (from `zerror`), or the wrapper's explanation.
    public let libraryMessage: String

    /// Whether retrying the same operation later can succeed without creating a new session.
    public var isRetryable: Bool {
        switch code {
        case .connectionLoss, .operationTimeout, .sessionMoved, .timedOut: true
        default: false
        }
    }

    /// A one-line explanation that says what to do next.
    public var description: String {
        var text = "ZooKeeper error \(code)"
        if let returnCode = code.returnCode { text += " (\(returnCode))" }
        if let path { text += " for \(path)" }
        return text + ": \(libraryMessage); \(advice)"
    }

    /// Creates an error.
    ///
    /// - Parameters:
    ///   - code: What went wrong.
    ///   - path: The znode concerned, if any.
    ///   - connectionString: The session's connection string, if known.
    ///   - libraryMessage: The C client's text, or `nil` to use `zerror` for ZooKeeper return codes.
    public init(code: Code, path: String? = nil, connectionString: String? = nil, libraryMessage: String? = nil) {
        self.code = code
        self.path = path
        self.connectionString = connectionString
        self.libraryMessage = libraryMessage ?? Self.defaultMessage(for: code)
    }
}

// MARK: - Mapping from C return codes

extension ZooKeeperError.Code {
    /// Maps a C client return code.
    init(returnCode: Int32) {
        switch returnCode {
        case ZNONODE.rawValue: self = .noNode
        case ZNODEEXISTS.rawValue: self = .nodeExists
        case ZBADVERSION.rawValue: self = .badVersion
        case ZNOTEMPTY.rawValue: self = .notEmpty
        case ZCONNECTIONLOSS.rawValue: self = .connectionLoss
        case ZSESSIONEXPIRED.rawValue: self = .sessionExpired
        case ZOPERATIONTIMEOUT.rawValue: self = .operationTimeout
        case ZINVALIDSTATE.rawValue: self = .invalidState
        case ZBADARGUMENTS.rawValue: self = .badArguments
        case ZNOAUTH.rawValue: self = .noAuth
        case ZAUTHFAILED.rawValue: self = .authFailed
        case ZNOCHILDRENFOREPHEMERALS.rawValue: self = .noChildrenForEphemerals
        case ZMARSHALLINGERROR.rawValue: self = .marshallingError
        case ZSYSTEMERROR.rawValue: self = .systemError
        case ZCLOSING.rawValue: self = .closing
        case ZSESSIONMOVED.rawValue: self = .sessionMoved
        case ZUNIMPLEMENTED.rawValue: self = .unimplemented
        case ZINVALIDACL.rawValue: self = .invalidACL
        case ZNOTREADONLY.rawValue: self = .notReadOnly
        default: self = .other(returnCode)
        }
    }
}

extension ZooKeeperError {
    static func defaultMessage(for code: Code) -> String {
        switch code {
        case .timedOut: return "timed out"
        case .sessionClosed: return "the session is closed"
        case .cancelled: return "cancelled"
        default:
            guard let returnCode = code.returnCode, let text = zerror(returnCode) else { return "unknown error" }
            return String(cString: text)
        }
    }

    private var server: String { connectionString.map { "ZooKeeper at \($0)" } ?? "ZooKeeper" }

    private var advice: String {
        switch code {
        case .noNode: "the znode does not exist; create it (and its parents) first, or treat it as absent"
        case .nodeExists: "the znode already exists; read it, or create it under another name"
        case .badVersion: "the znode changed since it was read; read it again and retry with the new version"
        case .notEmpty: "the znode has children; delete them first"
        case .connectionLoss:
            "\(server) is unreachable; the client keeps retrying, retry the operation "
                + "(a write may or may not have been applied)"
        case .sessionExpired:
            "the session expired, so its ephemeral znodes and watches are gone; "
                + "close this session and create a new ZooKeeperSession"
        case .operationTimeout: "\(server) did not answer in time; retry the operation"
        case .invalidState:
            "the session can no longer be used (expired or authentication failed); create a new ZooKeeperSession"
        case .badArguments:
            "check the path (absolute, no trailing '/', no empty, '.' or '..' components) or the connection string"
        case .noAuth: "the znode's ACL forbids this; authenticate or change the ACL"
        case .authFailed: "authentication failed; fix the credentials and create a new ZooKeeperSession"
        case .noChildrenForEphemerals: "ephemeral znodes cannot have children; make the parent persistent"
        case .marshallingError: "the request could not be encoded (out of memory?); retry"
        case .systemError: "an operating-system error occurred in the ZooKeeper client; see the client log"
        case .closing: "the session was closing and abandoned the operation; use a new ZooKeeperSession"
        case .sessionMoved: "the session moved to another server; retry the operation"
        case .unimplemented: "the server does not support this operation; check the server version"
        case .invalidACL: "the ACL is invalid; check its scheme, id and permissions"
        case .notReadOnly: "the server is read-only; retry once connected to a read-write server"
        case .other: "unexpected ZooKeeper return code; see the client log"
        case .timedOut: "check that \(server) is running and reachable"
        case .sessionClosed: "this session was closed; create a new ZooKeeperSession"
        case .cancelled: "the waiting task was cancelled"
        }
    }
}
