import ArgumentParser
import FoundationEssentials
import Herald
import Logging
import ZooKeeper

#if canImport(Glibc)
    import Glibc
#endif

/// Options every subcommand that talks to a cluster shares.
struct ClusterOptions: ParsableArguments {
    @Option(help: Settings.zookeeper.help)
    var zookeeper: String?

    @Option(help: Settings.cluster.help)
    var cluster: String?

    @Option(help: Settings.sessionTimeout.help)
    var sessionTimeout: Double?

    @Option(help: Settings.zookeeperAuth.help)
    var zookeeperAuth: String?

    @Option(help: Settings.logLevel.help)
    var logLevel: String?

    func zookeeperConfiguration() throws -> ZooKeeperConfiguration {
        ZooKeeperConfiguration(
            connectionString: try Settings.zookeeper.value(zookeeper),
            sessionTimeout: try Settings.sessionTimeout.value(seconds: sessionTimeout),
            authentication: try zookeeperAuthentication())
    }

    private func zookeeperAuthentication() throws -> ZooKeeperAuthentication? {
        guard let text = try textOrFile(Settings.zookeeperAuth, zookeeperAuth) else { return nil }
        do {
            return try ZooKeeperAuthentication.digest(text)
        } catch {
            throw ValidationError("--zookeeper-auth: \(error.libraryMessage)")
        }
    }

    /// The cluster's layout, or that of its group `group`.
    func layout(group: String? = nil) throws -> ClusterLayout {
        do {
            return try ClusterLayout(cluster: try Settings.cluster.value(cluster), group: group)
        } catch {
            throw ValidationError("\(error)")
        }
    }

    /// Bootstraps logging to standard error; only the executable does this, never the libraries.
    func makeLogger(_ label: String) throws -> Logger {
        let level = try Settings.logLevel.value(parsing: logLevel)
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
    @Option(help: Settings.bindHost.help)
    var bindHost: String?

    @Option(help: Settings.advertiseHost.help)
    var advertiseHost: String?

    func resolvedBindHost() throws -> String { try Settings.bindHost.value(bindHost) }
    func resolvedAdvertiseHost() throws -> String? { try Settings.advertiseHost.optionalValue(advertiseHost) }
}

/// A secret or key given inline or, as `@path`, in a file whose first line holds it.
func textOrFile(_ setting: Setting<String>, _ flagValue: String?) throws -> String? {
    guard let raw = try setting.optionalValue(flagValue) else { return nil }
    guard raw.hasPrefix("@") else { return raw }
    let path = String(raw.dropFirst())
    guard let line = CredentialFile.firstLine(of: path) else {
        throw ValidationError("\(setting.variable): cannot read \(path)")
    }
    guard !line.isEmpty else { throw ValidationError("\(setting.variable): \(path) is empty") }
    return line
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
        DescriptorWriter(descriptor: STDERR_FILENO).write(Array("herald: error: \(error.description)\n".utf8))
        throw ExitCode(2)
    }
}

/// CurveZMQ: this process's key, the broker key clients trust, the client keys servers admit.
struct SecurityOptions: ParsableArguments {
    @Option(help: Settings.keyFile.help)
    var keyFile: String?

    @Option(help: Settings.authorizedKeys.help)
    var authorizedKeys: String?

    @Option(help: Settings.brokerPublicKey.help)
    var brokerPublicKey: String?

    /// The security configuration, or `nil` to run in clear.
    /// - Parameters:
    ///   - server: whether this process listens (a broker): it then needs the authorized keys.
    ///   - ownKeyIsBrokerKey: without a broker key, trust this process's own public key as the brokers' (for
    ///     `herald status` run with a broker's settings, which brokers admit).
    func curveSecurity(server: Bool, ownKeyIsBrokerKey: Bool = false) throws -> CurveSecurity? {
        let keyFile = try Settings.keyFile.optionalValue(self.keyFile)
        let authorized = try Settings.authorizedKeys.optionalValue(authorizedKeys)
        let brokerKey = try Settings.brokerPublicKey.optionalValue(brokerPublicKey)
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
