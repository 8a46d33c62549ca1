// Helpers shared by the test targets (they cannot import one another): a quiet logger, private ZooKeeper
// servers and sessions that are always cleaned up, and deadlines that turn a hang into a failure.
import Foundation
import LocalZooKeeper
import Logging
import ZooKeeper

/// Quiet by default; `HERALD_TEST_LOG_LEVEL=debug` shows session and server messages (tests never bootstrap).
public func testLogger(_ label: String = "HeraldTests") -> Logger {
    var logger = Logger(label: label)
    let level = ProcessInfo.processInfo.environment["HERALD_TEST_LOG_LEVEL"].flatMap(Logger.Level.init(rawValue:))
    logger.logLevel = level ?? .notice
    return logger
}

/// Runs `body` with a fresh private ZooKeeper server, stopped afterwards whatever happens.
public func withServer<T>(
    tickTime: Duration = LocalZooKeeperServer.defaultTickTime,
    _ body: (LocalZooKeeperServer) async throws -> T
) async throws -> T {
    try await withLocalZooKeeper(logger: testLogger("LocalZooKeeper"), tickTime: tickTime, body)
}

/// Runs `body` with a connected session to `server`, closed afterwards whatever happens.
public func withSession<T>(
    _ server: LocalZooKeeperServer,
    sessionTimeout: Duration = .seconds(4),
    authentication: ZooKeeperAuthentication? = nil,
    _ body: (ZooKeeperSession) async throws -> T
) async throws -> T {
    let session = try ZooKeeperSession(
        configuration: ZooKeeperConfiguration(
            connectionString: server.connectionString, sessionTimeout: sessionTimeout, authentication: authentication),
        logger: testLogger()
    )
    do {
        try await session.waitUntilConnected(timeout: .seconds(10))
        let result = try await body(session)
        await session.close()
        return result
    } catch {
        await session.close()
        throw error
    }
}

/// What a test waited for in vain.
public struct DeadlineExceeded: Error, CustomStringConvertible {
    /// What did not happen.
    public let what: String
    /// How long the test waited.
    public let limit: Duration

    /// Creates the error.
    /// - Parameters:
    ///   - what: what did not happen.
    ///   - limit: how long the test waited.
    public init(what: String, limit: Duration) {
        self.what = what
        self.limit = limit
    }

    /// A sentence for the test report.
    public var description: String { "\(what) did not happen within \(limit)" }
}

/// Runs `operation`, failing with `DeadlineExceeded` if it takes longer than `limit`.
public func within<T: Sendable>(
    _ limit: Duration,
    _ what: String,
    _ operation: @escaping @Sendable () async throws -> T
) async throws -> T {
    try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await operation() }
        group.addTask {
            try await Task.sleep(for: limit)
            return nil
        }
        defer { group.cancelAll() }
        guard let first = try await group.next(), let value = first else {
            throw DeadlineExceeded(what: what, limit: limit)
        }
        return value
    }
}

/// Polls `condition` every 50 ms until it holds, failing after `limit`.
public func eventually(
    _ limit: Duration,
    _ what: String,
    _ condition: @escaping @Sendable () async throws -> Bool
) async throws {
    try await within(limit, what) {
        while try await !condition() {
            try await Task.sleep(for: .milliseconds(50))
        }
    }
}
