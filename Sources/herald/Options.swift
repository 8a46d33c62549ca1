import ArgumentParser
import Foundation
import Herald
import Logging
import ZooKeeper

/// Reads an option's value: the flag wins, then its environment variable, then the default.
enum Setting {
    static func value(_ flag: String?, _ variable: String) -> String? {
        if let flag { return flag }
        guard let value = ProcessInfo.processInfo.environment[variable], !value.isEmpty else { return nil }
        return value
    }

    static func string(_ flag: String?, _ variable: String, default fallback: String) -> String {
        value(flag, variable) ?? fallback
    }

    static func integer(_ flag: Int?, _ variable: String, default fallback: Int?, range: ClosedRange<Int>) throws -> Int? {
        let raw: Int?
        if let flag {
            raw = flag
        } else if let text = value(nil, variable) {
            guard let parsed = Int(text) else {
                throw ValidationError("\(variable)='\(text)' is not a whole number")
            }
            raw = parsed
        } else {
            raw = fallback
        }
        if let raw, !range.contains(raw) {
            throw ValidationError("\(variable.replacingOccurrences(of: "HERALD_", with: "").lowercased()) must be in \(range.lowerBound)...\(range.upperBound), got \(raw)")
        }
        return raw
    }

    static func double(_ flag: Double?, _ variable: String, default fallback: Double) throws -> Double {
        if let flag { return flag }
        guard let text = value(nil, variable) else { return fallback }
        guard let parsed = Double(text) else { throw ValidationError("\(variable)='\(text)' is not a number") }
        return parsed
    }

    /// A secret or key given inline or, as `@path`, in a file whose first line holds it.
    static func textOrFile(_ flag: String?, _ variable: String) throws -> String? {
        guard let raw = value(flag, variable) else { return nil }
        guard raw.hasPrefix("@") else { return raw }
        let path = String(raw.dropFirst())
        guard let line = CredentialFile.firstLine(of: path) else {
            throw ValidationError("\(variable): cannot read \(path)")
        }
        guard !line.isEmpty else { throw ValidationError("\(variable): \(path) is empty") }
        return line
    }

    static func port(_ flag: Int?, _ variable: String, default fallback: Int) throws -> Int {
        try integer(flag, variable, default: fallback, range: 0...65535) ?? fallback
    }
}

/// Options every subcommand that talks to a cluster shares.
struct ClusterOptions: ParsableArguments {
    @Option(help: "ZooKeeper connection string, host:port[,host:port...][/chroot]. (env: HERALD_ZOOKEEPER; default: 127.0.0.1:2181)")
    var zookeeper: String?

    @Option(help: "Cluster name; all of its state lives under /herald/<cluster> in ZooKeeper. (env: HERALD_CLUSTER; default: default)")
    var cluster: String?

    @Option(help: "ZooKeeper session timeout in seconds: how long a killed process keeps its place. (env: HERALD_SESSION_TIMEOUT; default: 4)")
    var sessionTimeout: Double?

    @Option(help: "ZooKeeper digest credentials, user:password or @file: brokers create the cluster's znodes so that only this identity can change them. (env: HERALD_ZOOKEEPER_AUTH; default: none)")
    var zookeeperAuth: String?

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical. (env: HERALD_LOG_LEVEL; default: info)")
    var logLevel: String?

    func zookeeperConfiguration() throws -> ZooKeeperConfiguration {
        let timeout = try Setting.double(sessionTimeout, "HERALD_SESSION_TIMEOUT", default: 4)
        guard timeout >= 1, timeout <= 60 else {
            throw ValidationError("session timeout must be between 1 and 60 seconds, got \(timeout)")
        }
        return ZooKeeperConfiguration(
            connectionString: Setting.string(zookeeper, "HERALD_ZOOKEEPER", default: "127.0.0.1:2181"),
            sessionTimeout: .milliseconds(Int(timeout * 1000)), authentication: try zookeeperAuthentication())
    }

    private func zookeeperAuthentication() throws -> ZooKeeperAuthentication? {
        guard let text = try Setting.textOrFile(zookeeperAuth, "HERALD_ZOOKEEPER_AUTH") else { return nil }
        do {
            return try ZooKeeperAuthentication.digest(text)
        } catch {
            throw ValidationError("--zookeeper-auth: \(error.libraryMessage)")
        }
    }

    /// The cluster's layout, or that of its group `group`.
    func layout(group: String? = nil) throws -> ClusterLayout {
        do {
            return try ClusterLayout(
                cluster: Setting.string(cluster, "HERALD_CLUSTER", default: ClusterLayout.defaultCluster), group: group)
        } catch {
            throw ValidationError("\(error)")
        }
    }

    /// Bootstraps logging to standard error; only the executable does this, never the libraries.
    func makeLogger(_ label: String) throws -> Logger {
        let text = Setting.string(logLevel, "HERALD_LOG_LEVEL", default: "info")
        guard let level = Logger.Level(rawValue: text.lowercased()) else {
            throw ValidationError("unknown log level '\(text)'; use trace, debug, info, notice, warning, error or critical")
        }
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        var logger = Logger(label: label)
        logger.logLevel = level
        return logger
    }
}

/// Where a process listens and what it tells others, for brokers and direct-mode publishers.
struct NetworkOptions: ParsableArguments {
    @Option(help: "Local address to listen on. (env: HERALD_BIND_HOST; default: 0.0.0.0)")
    var bindHost: String?

    @Option(help: "Host name or address others use to reach this process, for NAT and containers. (env: HERALD_ADVERTISE_HOST; default: the bind address, or this host's first non-loopback IPv4 address)")
    var advertiseHost: String?

    var resolvedBindHost: String { Setting.string(bindHost, "HERALD_BIND_HOST", default: "0.0.0.0") }
    var resolvedAdvertiseHost: String? { Setting.value(advertiseHost, "HERALD_ADVERTISE_HOST") }
}

/// Parses topic names, turning invalid ones into a usage error.
func parseTopics(_ names: [String]) throws -> [Topic] {
    try names.map { name in
        do {
            return try Topic(name)
        } catch {
            throw ValidationError("\(error)")
        }
    }
}

/// Subscription filters from `--topic` values: names, or patterns with `+` and `#` levels.
func parseFilters(_ texts: [String]) throws -> [TopicFilter] {
    try texts.map { text in
        do {
            return try TopicFilter(text)
        } catch {
            throw ValidationError("\(error)")
        }
    }
}

/// Runs an async body, turning Herald's bad-input errors into a clear message and exit code 2.
func reportingConfigurationErrors(_ body: () async throws -> Void) async throws {
    do {
        try await body()
    } catch let error as HeraldConfigurationError {
        FileHandle.standardError.write(Data("herald: error: \(error.description)\n".utf8))
        throw ExitCode(2)
    }
}

/// CurveZMQ: this process's key, the broker key clients trust, the client keys servers admit.
struct SecurityOptions: ParsableArguments {
    @Option(help: "This process's CURVE secret key file, as `herald keygen` writes it; turns CurveZMQ on. (env: HERALD_KEY_FILE; default: none, in clear)")
    var keyFile: String?

    @Option(help: "Brokers, and direct-mode publishers: a file of client public keys, one per line, or a directory of .pub files; only these may connect. Re-read when it changes. (env: HERALD_AUTHORIZED_KEYS)")
    var authorizedKeys: String?

    @Option(help: "Clients: the brokers' CURVE public key, as Z85 text or @file. (env: HERALD_BROKER_PUBLIC_KEY)")
    var brokerPublicKey: String?

    /// The security configuration, or `nil` to run in clear.
    /// - Parameters:
    ///   - server: whether this process listens (a broker): it then needs the authorized keys.
    ///   - ownKeyIsBrokerKey: without a broker key, trust this process's own public key as the brokers' (for
    ///     `herald status` run with a broker's settings, which brokers admit).
    func curveSecurity(server: Bool, ownKeyIsBrokerKey: Bool = false) throws -> CurveSecurity? {
        let keyFile = Setting.value(self.keyFile, "HERALD_KEY_FILE")
        let authorized = Setting.value(authorizedKeys, "HERALD_AUTHORIZED_KEYS")
        let brokerKey = Setting.value(brokerPublicKey, "HERALD_BROKER_PUBLIC_KEY")
        guard let keyFile else {
            if authorized != nil || brokerKey != nil {
                throw ValidationError("--authorized-keys and --broker-public-key need --key-file, this process's own key")
            }
            return nil
        }
        do {
            var security = CurveSecurity(keyPair: try CurveSecurity.keyPair(fromFile: keyFile))
            if let authorized { security.authorizedKeys = try AuthorizedKeys(path: authorized) }
            if server {
                guard security.authorizedKeys != nil else {
                    throw ValidationError("a broker with --key-file needs --authorized-keys: the client public keys it admits")
                }
            } else if brokerKey == nil, ownKeyIsBrokerKey {
                security.brokerKey = security.keyPair.publicKey
            } else {
                guard let brokerKey else {
                    throw ValidationError("a client with --key-file needs --broker-public-key: the brokers' public key it trusts")
                }
                security.brokerKey = try CurveSecurity.publicKey(brokerKey, option: "--broker-public-key")
            }
            return security
        } catch let error as HeraldConfigurationError {
            throw ValidationError(error.message)
        }
    }
}
