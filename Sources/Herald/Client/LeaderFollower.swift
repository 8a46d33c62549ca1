import CoreMetrics
import Logging
import Synchronization
import ZooKeeper

/// Runs a client's per-leader work: one `attach` task for each leader record, cancelled and awaited when the
/// leader changes, so a client is attached to at most one leader at a time.
struct LeaderFollower: Sendable {
    let watcher: ClusterWatcher
    let logger: Logger
    /// The leader to follow in a view of the cluster: the one serving the client's topics.
    let select: @Sendable (ClusterView) -> LeaderRecord?

    /// Runs until cancelled.
    /// - Parameter attach: the work for one leader (`nil`: none right now); it runs until cancelled.
    func run(attach: @escaping @Sendable (LeaderRecord?) async -> Void) async throws {
        let (changes, continuation) = AsyncStream<LeaderRecord?>.makeStream(bufferingPolicy: .bufferingNewest(1))
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                defer { continuation.finish() }
                let hadLeader = Mutex(false)
                let last = Mutex<LeaderRecord??>(.none)
                try await watcher.run { view in
                    let record = select(view)
                    guard last.withLock({ last in
                        defer { last = .some(record) }
                        return last != .some(record)
                    }) else { return }
                    if let record {
                        logger.info("leader found", metadata: ["leader": "\(record)"])
                        Counter(label: Instruments.leaderChanges).increment()
                    } else if hadLeader.withLock({ $0 }) {
                        logger.info("leader lost; waiting for the next one")
                    } else {
                        logger.info("no leader yet; waiting for a broker")
                    }
                    hadLeader.withLock { $0 = record != nil }
                    continuation.yield(record)
                }
            }
            group.addTask {
                var current: Task<Void, Never>?
                for await record in changes {
                    current?.cancel()
                    await current?.value
                    current = Task { await attach(record) }
                }
                current?.cancel()
                await current?.value
            }
            try await group.next()
            if !Task.isCancelled { logger.error("leader following ended unexpectedly; stopping") }
            group.cancelAll()
            try await group.waitForAll()
        }
    }
}

extension Task where Success == Never, Failure == Never {
    /// Suspends until the task is cancelled.
    static func sleepUntilCancelled() async {
        while !Task.isCancelled {
            try? await Task.sleep(for: .seconds(3600))
        }
    }
}
