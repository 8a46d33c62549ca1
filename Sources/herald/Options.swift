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

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical. (env: HERALD_LOG_LEVEL; default: info)")
    var logLevel: String?

    func zookeeperConfiguration() throws -> ZooKeeperConfiguration {
        let timeout = try Setting.double(sessionTimeout, "HERALD_SESSION_TIMEOUT", default: 4)
        guard timeout >= 1, timeout <= 60 else {
            throw ValidationError("session timeout must be between 1 and 60 seconds, got \(timeout)")
        }
        return ZooKeeperConfiguration(
            connectionString: Setting.string(zookeeper, "HERALD_ZOOKEEPER", default: "127.0.0.1:2181"),
            sessionTimeout: .milliseconds(Int(timeout * 1000)))
    }

    func layout() throws -> ClusterLayout {
        do {
            return try ClusterLayout(cluster: Setting.string(cluster, "HERALD_CLUSTER", default: ClusterLayout.defaultCluster))
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

/// Runs an async body, turning Herald's bad-input errors into a clear message and exit code 2.
func reportingConfigurationErrors(_ body: () async throws -> Void) async throws {
    do {
        try await body()
    } catch let error as HeraldConfigurationError {
        FileHandle.standardError.write(Data("herald: error: \(error.description)\n".utf8))
        throw ExitCode(2)
    }
}
