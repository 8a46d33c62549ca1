import FoundationEssentials
import Logging
import Synchronization
import ZeroMQ

#if canImport(Glibc)
    import Glibc
#endif

/// CurveZMQ for one Herald process: its own key pair, the broker key it trusts (clients) and the client keys
/// it admits (servers: brokers, and direct-mode publishers).
///
/// All brokers of a cluster share one server key pair, published in the leader record; every client has its
/// own pair, and a server admits only the public keys in its ``AuthorizedKeys``.
public struct CurveSecurity: Sendable {
    /// The ZAP domain of Herald's server sockets.
    static let domain = "herald"

    /// This process's key pair.
    public var keyPair: ZMQCurveKeyPair
    /// Clients: the brokers' public key they trust.
    public var brokerKey: String?
    /// Servers: the client keys admitted; `nil` admits any client that completes a CURVE handshake
    /// (encrypted, but not authorized).
    public var authorizedKeys: AuthorizedKeys?

    /// Creates a configuration.
    /// - Parameters:
    ///   - keyPair: this process's key pair.
    ///   - brokerKey: clients: the brokers' public key.
    ///   - authorizedKeys: servers: the client keys admitted.
    public init(keyPair: ZMQCurveKeyPair, brokerKey: String? = nil, authorizedKeys: AuthorizedKeys? = nil) {
        self.keyPair = keyPair
        self.brokerKey = brokerKey
        self.authorizedKeys = authorizedKeys
    }

    /// Reads a secret key file as `herald keygen` writes it: the Z85 secret key on its first line.
    /// - Throws: ``HeraldConfigurationError`` naming the file and what is wrong with it.
    public static func keyPair(fromFile path: String) throws(HeraldConfigurationError) -> ZMQCurveKeyPair {
        guard let text = CredentialFile.firstLine(of: path, limit: 4096) else {
            throw HeraldConfigurationError(
                .keyMaterial,
                "cannot read the key file \(path); create one with `herald keygen --output DIR/NAME`")
        }
        guard let pair = try? ZMQCurveKeyPair(secretKey: text) else {
            throw HeraldConfigurationError(
                .keyMaterial,
                "\(path) does not hold a CURVE secret key (40 Z85 characters on its first line); use the .key file `herald keygen` writes"
            )
        }
        return pair
    }

    /// A public key given as Z85 text, or as `@path` to a file holding it.
    /// - Throws: ``HeraldConfigurationError`` when it is not a CURVE public key.
    public static func publicKey(_ text: String, option: String) throws(HeraldConfigurationError) -> String {
        var key = text
        if text.hasPrefix("@") {
            guard let line = CredentialFile.firstLine(of: String(text.dropFirst()), limit: 4096) else {
                throw HeraldConfigurationError(.keyMaterial, "\(option): cannot read \(text.dropFirst())")
            }
            key = line
        }
        guard ZMQCurveKeyPair.isValidKey(key) else {
            throw HeraldConfigurationError(.keyMaterial, "\(option): '\(key)' is not a CURVE public key (40 Z85 characters)")
        }
        return key
    }

    /// Makes `socket` a CURVE server with this process's key, authenticated in Herald's ZAP domain.
    func configureServer(_ socket: ZMQSocket) throws(ZMQError) {
        try socket.set(.curveServer(true))
        try socket.set(.curveSecretKey(keyPair.secretKey))
        try socket.set(.zapDomain(Self.domain))
    }

    /// Makes `socket` a CURVE client of the server whose public key is `serverKey`, for its next connects.
    func configureClient(_ socket: ZMQSocket, serverKey: String) throws(ZMQError) {
        try socket.set(.curvePublicKey(keyPair.publicKey))
        try socket.set(.curveSecretKey(keyPair.secretKey))
        try socket.set(.curveServerKey(serverKey))
    }

    /// Answers ZAP requests on `context` from the allow-list, until stopped. Refusals are logged, once a
    /// minute per key at most: a refused client retries its handshake every few hundred milliseconds.
    /// - Throws: ``HeraldConfigurationError`` when the context has an authenticator already.
    func startAuthenticator(
        context: ZMQContext, logger: Logger
    ) async throws(HeraldConfigurationError) -> ZMQAuthenticator {
        let allowed = authorizedKeys
        // The brokers' own key is always admitted: `herald status` run with a broker's settings uses it.
        let own = keyPair.publicKey
        let lastLogged = Mutex<[String: ContinuousClock.Instant]>([:])
        do {
            return try await ZMQAuthenticator.start(context: context) { request in
            guard request.mechanism == "CURVE", let key = request.clientKey else {
                return .deny(reason: "CURVE required")
            }
            guard let allowed, key != own else { return .allow(userID: key) }
            if allowed.admits(key) { return .allow(userID: key) }
            let now = ContinuousClock.now
            let log = lastLogged.withLock { logged in
                if let last = logged[key], now - last < .seconds(60) { return false }
                if logged.count >= 1024 { logged.removeAll() }
                logged[key] = now
                return true
            }
            if log {
                logger.warning(
                    "refused a client whose CURVE key is not in the authorized keys",
                    metadata: ["key": "\(key)", "address": "\(request.address)"])
            }
            return .deny(reason: "key not authorized")
            }
        } catch {
            throw HeraldConfigurationError(.keyMaterial, "cannot start the CurveZMQ authenticator: \(error)", underlying: error)
        }
    }

    /// Why a leader record cannot be trusted by a client with `security`, or `nil` when it can.
    static func mistrust(of record: LeaderRecord, by security: CurveSecurity?) -> String? {
        switch (record.curveKey, security?.brokerKey) {
        case (nil, nil): return nil
        case (nil, .some):
            return
                "leader \(record.broker) does not use CurveZMQ, and this process has a trusted broker key: it will not talk in clear; start the brokers with --key-file and --authorized-keys"
        case (.some, nil):
            return
                "cluster requires CurveZMQ: start this process with --key-file (its own key) and --broker-public-key (the brokers' public key)"
        case (.some(let offered), .some(let trusted)):
            return offered == trusted
                ? nil
                : "leader \(record.broker) presents the CURVE key \(offered), not the trusted --broker-public-key \(trusted); not connecting"
        }
    }
}

/// Files that hold one secret or key on their first line: key files, `@file` values of options.
public enum CredentialFile {
    /// The first line of a file, trimmed, reading at most `limit` bytes (a path to the wrong file, a log or a
    /// device, is not read whole); `nil` when it cannot be read.
    public static func firstLine(of path: String, limit: Int = 64 * 1024) -> String? {
        guard let bytes = prefix(of: path, limit: limit) else { return nil }
        let line = String(decoding: bytes, as: UTF8.self).split(whereSeparator: \.isNewline).first
        return line.map { $0.trimmingWhitespace() }
    }

    /// At most the first `limit` bytes of a file; `nil` when it cannot be opened.
    static func prefix(of path: String, limit: Int) -> [UInt8]? {
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { return nil }
        defer { close(descriptor) }
        var bytes = [UInt8](repeating: 0, count: limit)
        var count = 0
        while count < limit {
            let read = bytes.withUnsafeMutableBytes { Glibc.read(descriptor, $0.baseAddress! + count, limit - count) }
            if read < 0, errno == EINTR { continue }
            guard read > 0 else { break }
            count += read
        }
        return Array(bytes[..<count])
    }
}

/// Topics a key may publish or subscribe to: every topic, or named ones and prefixes.
public struct TopicGrant: Sendable, Equatable {
    /// Every topic.
    public var everything: Bool
    /// Topic names granted.
    public var names: Set<String>
    /// Prefixes granted (`sensors/*` grants every topic that starts with `sensors/`).
    public var prefixes: [String]

    /// Every topic.
    public static let all = TopicGrant(everything: true, names: [], prefixes: [])
    /// No topic.
    public static let none = TopicGrant(everything: false, names: [], prefixes: [])

    /// Whether `topic` is granted.
    public func allows(_ topic: String) -> Bool {
        everything || names.contains(topic) || prefixes.contains { topic.hasPrefix($0) }
    }

    /// Whether `topic`, as bytes from the network, is granted.
    func allows(bytes topic: some Collection<UInt8>) -> Bool {
        everything || allows(String(decoding: topic, as: UTF8.self))
    }

    mutating func add(_ patterns: [Substring]) {
        guard !patterns.isEmpty else {
            everything = true
            return
        }
        for pattern in patterns {
            if pattern == "*" {
                everything = true
            } else if pattern.hasSuffix("*") {
                prefixes.append(String(pattern.dropLast()))
            } else {
                names.insert(String(pattern))
            }
        }
    }
}

/// What a key may do: the topics it may publish on and subscribe to.
public struct KeyPermissions: Sendable, Equatable {
    /// Topics it may publish on.
    public var publish: TopicGrant
    /// Topics it may subscribe to (and, in direct mode, look up).
    public var subscribe: TopicGrant

    /// Everything.
    public static let all = KeyPermissions(publish: .all, subscribe: .all)
}

/// The client public keys a server admits, and what each may do: a file with one key per line, or a directory
/// of such files (for example the `.pub` files of `herald keygen`). Changes are picked up within a second, for
/// new connections; connections already admitted stay.
///
/// A line is a Z85 key, optionally followed by a role and topics: `KEY` may do everything; `KEY publish
/// sensors/* alerts` may publish on `alerts` and on topics starting with `sensors/`, and nothing else;
/// `subscribe` grants subscriptions (and direct-mode lookups) the same way, and `all` both. Lines of one key add
/// up. A word starting with `#` after the key starts a comment, as does a line whose first word is no key; a line
/// whose second word is no role grants everything (the rest is a label).
public final class AuthorizedKeys: Sendable {
    /// The file or directory.
    public let path: String
    /// Files read from a directory at most, and bytes read from each: the list is local configuration, but a
    /// wrong path must not make a broker read a disk.
    static let maximumFiles = 10_000
    static let maximumFileBytes = 1 << 20
    /// How often the path is checked for changes, at most.
    static let recheckInterval: Duration = .seconds(1)

    private struct Snapshot {
        var signature: [String: [Int]]
        var keys: [String: KeyPermissions]
        var checkedAt: ContinuousClock.Instant
    }

    private let snapshot: Mutex<Snapshot>

    /// Reads the keys at `path`.
    /// - Throws: ``HeraldConfigurationError`` when the path cannot be read.
    public init(path: String) throws(HeraldConfigurationError) {
        self.path = path
        guard let signature = Self.signature(of: path) else {
            throw HeraldConfigurationError(
                .keyMaterial,
                "cannot read the authorized keys at \(path): give a file of Z85 public keys, one per line, or a directory of .pub files"
            )
        }
        snapshot = Mutex(Snapshot(signature: signature, keys: Self.keys(in: signature), checkedAt: .now))
    }

    /// The keys admitted now.
    public var keys: Set<String> { snapshot.withLock { Set($0.keys.keys) } }

    /// Whether `key` is admitted, reading the list again if it changed.
    public func admits(_ key: String) -> Bool { permissions(for: key) != nil }

    /// What `key` may do, or `nil` if it is not admitted; the list is read again if it changed.
    public func permissions(for key: String) -> KeyPermissions? {
        snapshot.withLock { snapshot in
            let now = ContinuousClock.now
            if now - snapshot.checkedAt >= Self.recheckInterval {
                snapshot.checkedAt = now
                // An unreadable list (being rewritten) keeps the last one read.
                if let signature = Self.signature(of: path), signature != snapshot.signature {
                    snapshot.signature = signature
                    snapshot.keys = Self.keys(in: signature)
                }
            }
            return snapshot.keys[key]
        }
    }

    /// The files to read: the path itself, or the regular files of the directory.
    private static func files(at path: String) -> [String]? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        guard info.st_mode & S_IFMT == S_IFDIR else { return [path] }
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: path) else { return nil }
        return names.filter { !$0.hasPrefix(".") && !$0.hasSuffix(".key") }.sorted().prefix(maximumFiles)
            .map { path + "/" + $0 }
    }

    /// Modification time and size of each file: what changes when the list does.
    private static func signature(of path: String) -> [String: [Int]]? {
        guard let files = files(at: path) else { return nil }
        var signature: [String: [Int]] = [:]
        for file in files {
            var info = stat()
            // Regular files only: opening a FIFO or a device would block the authenticator's thread.
            guard stat(file, &info) == 0, info.st_mode & S_IFMT == S_IFREG else { continue }
            signature[file] = [Int(info.st_mtim.tv_sec), Int(info.st_mtim.tv_nsec), Int(info.st_size)]
        }
        return signature
    }

    /// The keys granted in the files of a signature; a file that cannot be read grants nothing.
    private static func keys(in signature: [String: [Int]]) -> [String: KeyPermissions] {
        var keys: [String: KeyPermissions] = [:]
        for file in signature.keys {
            guard let bytes = CredentialFile.prefix(of: file, limit: maximumFileBytes) else { continue }
            for line in String(decoding: bytes, as: UTF8.self).split(whereSeparator: \.isNewline) {
                parse(line, into: &keys)
            }
        }
        return keys
    }

    /// Adds what one line grants.
    static func parse(_ line: Substring, into keys: inout [String: KeyPermissions]) {
        // Z85 keys may contain `#`: a comment is a word that starts with one, after the key (or a line whose
        // first word is no key).
        let all = line.split(whereSeparator: \.isWhitespace)
        guard let first = all.first else { return }
        let key = String(first)
        guard ZMQCurveKeyPair.isValidKey(key) else { return }
        let words = [first] + all.dropFirst().prefix { !$0.hasPrefix("#") }
        var permissions = keys[key] ?? KeyPermissions(publish: .none, subscribe: .none)
        let role = words.dropFirst().first
        let patterns = Array(words.dropFirst(2))
        switch role {
        case "publish": permissions.publish.add(patterns)
        case "subscribe": permissions.subscribe.add(patterns)
        case "all":
            permissions.publish.add(patterns)
            permissions.subscribe.add(patterns)
        default: permissions = .all
        }
        keys[key] = permissions
    }
}

/// The key files of `herald keygen`: `NAME.key` holds the secret key and is readable by its owner only,
/// `NAME.pub` holds the public key; each is one line of Z85 text.
public enum CurveKeyFiles {
    /// Generates a key pair and writes it.
    /// - Parameters:
    ///   - output: `DIR/NAME`.
    ///   - replacing: whether existing files may be replaced.
    /// - Returns: the paths written and the public key.
    /// - Throws: ``HeraldConfigurationError`` saying what could not be written.
    public static func write(
        to output: String, replacing: Bool
    ) throws(HeraldConfigurationError) -> (secretKeyPath: String, publicKeyPath: String, publicKey: String) {
        let pair: ZMQCurveKeyPair
        do {
            pair = try ZMQCurveKeyPair.generate()
        } catch {
            throw HeraldConfigurationError(.keyMaterial, "cannot generate a CURVE key pair: \(error); this libzmq lacks CURVE", underlying: error)
        }
        let secretPath = output + ".key"
        let publicPath = output + ".pub"
        let directory = output.lastIndex(of: "/").map { String(output[..<$0]) } ?? ""
        if !directory.isEmpty, !FileManager.default.fileExists(atPath: directory) {
            do {
                try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            } catch {
                throw HeraldConfigurationError(.keyMaterial, "cannot create \(directory): \(error)")
            }
        }
        for path in [secretPath, publicPath] where !replacing && FileManager.default.fileExists(atPath: path) {
            throw HeraldConfigurationError(.keyMaterial, "\(path) exists; pass --force to replace it")
        }
        try write(pair.secretKey + "\n", to: secretPath, mode: 0o600, replacing: replacing)
        try write(pair.publicKey + "\n", to: publicPath, mode: 0o644, replacing: replacing)
        return (secretPath, publicPath, pair.publicKey)
    }

    private static func write(
        _ text: String, to path: String, mode: mode_t, replacing: Bool
    ) throws(HeraldConfigurationError) {
        // Created with its final mode, so the secret is never readable by others, not even for a moment.
        let flags = O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC | (replacing ? O_TRUNC : O_EXCL)
        let descriptor = open(path, flags, mode)
        guard descriptor >= 0 else {
            throw HeraldConfigurationError(.keyMaterial, "cannot write \(path): \(String(cString: strerror(errno)))")
        }
        defer { close(descriptor) }
        guard fchmod(descriptor, mode) == 0 else {
            throw HeraldConfigurationError(.keyMaterial, "cannot set the mode of \(path): \(String(cString: strerror(errno)))")
        }
        let bytes = Array(text.utf8)
        let written = bytes.withUnsafeBytes { Glibc.write(descriptor, $0.baseAddress, $0.count) }
        guard written == bytes.count else {
            throw HeraldConfigurationError(.keyMaterial, "cannot write \(path): \(String(cString: strerror(errno)))")
        }
    }
}
