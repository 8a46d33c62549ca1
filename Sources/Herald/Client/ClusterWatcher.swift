import CoreMetrics
import Logging
import ZooKeeper

/// Follows a cluster's leader through ZooKeeper for a publisher or subscriber.
///
/// It keeps a ZooKeeper session open, opening a new one with back-off whenever ZooKeeper is unreachable or the
/// session expires, and reports every change of the leader record, including its disappearance. It never
/// throws on a network fault: it logs, waits and tries again until its task is cancelled.
struct ClusterWatcher: Sendable {
    let zookeeper: ZooKeeperConfiguration
    let layout: ClusterLayout
    let logger: Logger

    /// How long to wait for a session before retrying; ZooKeeper answers within a second when it is up.
    static let connectTimeout: Duration = .seconds(5)
    /// Pause before retrying an operation that failed with connection loss on a session that is still alive.
    static let retryPause: Duration = .milliseconds(200)

    /// Runs until cancelled, calling `onChange` with each new leader record (`nil`: no leader right now).
    /// - Throws: only ``ZooKeeperError`` with `.badArguments` (an unusable connection string), since retrying
    ///   cannot fix that.
    func run(onChange: @escaping @Sendable (LeaderRecord?) async -> Void) async throws(ZooKeeperError) {
        var backoff = Backoff()
        let deduplicator = ChangeFilter(onChange)
        while !Task.isCancelled {
            let session = try ZooKeeperSession(configuration: zookeeper, logger: logger)
            do throws(ZooKeeperError) {
                try await session.waitUntilConnected(timeout: Self.connectTimeout)
                logger.info("connected to ZooKeeper", metadata: ["zookeeper": "\(zookeeper.connectionString)"])
                Instruments.recordZooKeeper(connected: true)
                backoff.reset()
                try await followLeader(session, report: deduplicator)
            } catch where error.code == .cancelled || Task.isCancelled {
                await session.close()
                return
            } catch {
                Instruments.recordZooKeeper(connected: false)
                let delay = backoff.nextDelay()
                logger.warning(
                    "ZooKeeper unavailable; retrying",
                    metadata: [
                        "zookeeper": "\(zookeeper.connectionString)", "error": "\(error)",
                        "retry_in_s": "\(String(format: "%.1f", delay.seconds))",
                    ])
                await session.close()
                try? await Task.sleep(for: delay)
            }
        }
    }

    /// Reads and watches the leader record until the session is lost.
    private func followLeader(
        _ session: ZooKeeperSession, report: ChangeFilter
    ) async throws(ZooKeeperError) {
        while !Task.isCancelled {
            let watch: Watch
            do throws(ZooKeeperError) {
                let (stat, leaderWatch) = try await session.existsWatching(layout.leaderPath)
                watch = leaderWatch
                if stat == nil {
                    await report.report(nil)
                } else {
                    let (data, _) = try await session.get(layout.leaderPath)
                    if let record = LeaderRecord(decoding: data) {
                        await report.report(record)
                    } else {
                        logger.error("unreadable leader record in ZooKeeper", metadata: ["path": "\(layout.leaderPath)"])
                        await report.report(nil)
                    }
                }
            } catch where error.code == .noNode {
                continue
            } catch where error.isRetryable && !session.state.isTerminal {
                try? await Task.sleep(for: Self.retryPause)
                continue
            }
            let event: WatchEvent
            do {
                event = try await watch.event()
            } catch {
                return
            }
            if event.isSessionLoss {
                throw ZooKeeperError(code: .sessionExpired, path: layout.leaderPath)
            }
        }
    }
}

/// Passes on only records that differ from the last one passed on, across sessions: a new session that finds
/// the same leader is not a leader change.
private final class ChangeFilter {
    private var last: LeaderRecord?? = .none
    private let onChange: @Sendable (LeaderRecord?) async -> Void

    init(_ onChange: @escaping @Sendable (LeaderRecord?) async -> Void) { self.onChange = onChange }

    func report(_ record: LeaderRecord?) async {
        guard last != .some(record) else { return }
        last = .some(record)
        await onChange(record)
    }
}
