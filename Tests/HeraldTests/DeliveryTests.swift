import Foundation
import Synchronization
import TestSupport
import Testing

// The delivery guarantees of the README, checked end to end on real `herald` processes: exactly once and in
// order across a kill -9 and a SIGTERM of the leader under steady load (broker mode), a restarted publisher as
// a new epoch (direct mode), and history for late joiners. Serialized: each test runs a 1,000 msg/s load and
// failovers whose deadlines a parallel cluster on the same two cores would eat into.
@Suite("Delivery", .serialized)
struct DeliveryTests {
    /// Time for processes started on a running ZooKeeper to find each other; generous for a busy 2-core box.
    static let startup: Duration = .seconds(15)
    /// A kill -9'd leader is replaced once its session expires; the rest is election, announcement, attachment.
    static let crashResume: Duration = HeraldCluster.sessionTimeout + .seconds(6)
    /// A SIGTERM'd leader hands over at once; time for the successor to lead and the clients to follow it.
    static let gracefulResume: Duration = .seconds(5)
    /// Total load of every failover test, in messages per second, shared evenly by its publishers.
    static let totalRate = 1000
    /// Seconds of traffic per failover test: the leader is killed at 3 s and the next one stopped at 8 s.
    static let trafficSeconds = 12
    static let crashAt: Duration = .seconds(3)
    static let terminateAt: Duration = .seconds(8)

    /// One publisher of a failover scenario.
    struct Feed: Sendable {
        var name: String
        var topic: String
        var rate: Int
        /// Messages it sends: its rate over the whole traffic window.
        var count: Int { rate * DeliveryTests.trafficSeconds }
    }

    // MARK: Broker mode: failovers under load

    @Test("Broker mode: one publisher's messages arrive once and in order across kill -9 and SIGTERM of leaders")
    func onePublisherAcrossFailovers() async throws {
        try await failoverScenario(
            feeds: [Feed(name: "publisher", topic: "orders", rate: Self.totalRate)], subscriberTopics: ["orders"])
    }

    @Test("Broker mode: two publishers on one topic each arrive once and in order across failovers")
    func twoPublishersOnOneTopicAcrossFailovers() async throws {
        try await failoverScenario(
            feeds: [
                Feed(name: "publisher 1", topic: "orders", rate: Self.totalRate / 2),
                Feed(name: "publisher 2", topic: "orders", rate: Self.totalRate / 2),
            ],
            subscriberTopics: ["orders"])
    }

    @Test("Broker mode: two topics arrive once and in order across failovers to one subscriber of both")
    func twoTopicsAcrossFailovers() async throws {
        try await failoverScenario(
            feeds: [
                Feed(name: "publisher a", topic: "a", rate: Self.totalRate / 2),
                Feed(name: "publisher b", topic: "b", rate: Self.totalRate / 2),
            ],
            subscriberTopics: ["a", "b"])
    }

    /// Three brokers; a subscriber attached before the publishers start, so it is owed every message from seq 1;
    /// `feeds` publish `--count` messages over ``trafficSeconds``; the leader is killed with SIGKILL at
    /// ``crashAt`` and its successor stopped with SIGTERM at ``terminateAt``. Then the subscriber must have
    /// printed every message of every publisher exactly once, in order, and counted nothing lost.
    private func failoverScenario(feeds: [Feed], subscriberTopics: [String]) async throws {
        let began = ContinuousClock.now
        try await withCluster(mode: "broker") { cluster in
            var brokers: [String: HeraldProcess] = [:]
            for id in ["b1", "b2", "b3"] { brokers[id] = try await cluster.broker(id) }
            try await cluster.waitForStatus("a leader and three candidates", timeout: Self.startup) {
                $0.leader != nil && $0.candidates.count == 3
            }
            let subscriber = try await cluster.subscriber(subscriberTopics)
            try await subscriber.waitForLine(containing: "attached to leader", timeout: Self.startup)

            var publishers: [HeraldProcess] = []
            for feed in feeds {
                publishers.append(
                    try await cluster.start(
                        feed.name,
                        [
                            "publish", "--topic", feed.topic, "--rate", "\(feed.rate)", "--count", "\(feed.count)",
                            "--size", "32",
                        ]))
            }
            let watcher = PrintedWatcher(subscriber)
            try await watcher.wait("a first message", timeout: Self.startup) { !$0.isEmpty }
            let trafficStarted = ContinuousClock.now

            var failovers: [String] = []
            for (signal, at) in [(SIGKILL, Self.crashAt), (SIGTERM, Self.terminateAt)] {
                try await Task.sleep(until: trafficStarted + at)
                failovers.append(
                    try await failOver(
                        with: signal, cluster: cluster, brokers: &brokers, subscriber: subscriber, watcher: watcher,
                        streams: feeds.count))
            }

            // Every publisher sends its count, waits to be attached, drains and exits 0.
            for (feed, publisher) in zip(feeds, publishers) {
                let code = try await publisher.waitForExit(
                    timeout: .seconds(Self.trafficSeconds) + Self.startup - (ContinuousClock.now - trafficStarted))
                #expect(code == 0, "\(feed.name) exited with \(code)\n\(publisher.diagnostics())")
            }
            let publishedAt = ContinuousClock.now - trafficStarted

            // The subscriber catches up with each publisher's last message, then stops cleanly.
            let expectedLast = Dictionary(grouping: feeds, by: \.topic).mapValues { $0.map(\.count) }
            try await watcher.wait("the last message of each publisher", timeout: .seconds(15)) { streams in
                streams.count == feeds.count
                    && expectedLast.allSatisfy { topic, counts in
                        let lasts = streams.filter { $0.key.topic == topic }.map { Int($0.value.last) }
                        return lasts.sorted() == counts.sorted()
                    }
            }
            let summary = try await stopCleanly(publishers: [], subscriber: subscriber, settle: .zero)

            // The printed stream: every seq of every publisher from 1 to its count, once each and in order.
            let messages = subscriber.messages
            let problems = sequenceProblems(in: messages)
            #expect(
                problems.isEmpty, "printed stream is not exactly-once in order:\n\(problems.joined(separator: "\n"))")
            let ranges = streamRanges(of: messages)
            #expect(ranges.count == feeds.count, "streams printed: \(ranges.keys.map(\.description))")
            for (topic, counts) in expectedLast {
                let printed = ranges.filter { $0.key.topic == topic }.map(\.value)
                #expect(printed.map(\.first).allSatisfy { $0 == 1 }, "\(topic): first seqs \(printed.map(\.first))")
                #expect(printed.map { Int($0.last) }.sorted() == counts.sorted(), "\(topic): last seqs")
                #expect(printed.map(\.count).sorted() == counts.sorted(), "\(topic): messages per publisher")
            }
            let total = feeds.map(\.count).reduce(0, +)
            #expect(summary.lost == 0, "summary: \(summary)")
            #expect(summary.received == total, "summary: \(summary)")
            #expect(summary.publishers == feeds.count, "summary: \(summary)")
            #expect(messages.count == total)
            print(
                "[delivery \(feeds.count) publishers, topics \(subscriberTopics)] \(failovers.joined(separator: "; ")); "
                    + "publishers done after \(publishedAt); subscriber: \(summary); test took \(ContinuousClock.now - began)"
            )
        }
    }

    /// Stops the current leader with `signal`, then waits for a survivor to lead and for the subscriber to print
    /// messages sent after the signal from every one of `streams` (publisher, topic) streams.
    /// - Returns: a line for the test log.
    private func failOver(
        with signal: Int32, cluster: HeraldCluster, brokers: inout [String: HeraldProcess], subscriber: HeraldProcess,
        watcher: PrintedWatcher, streams: Int
    ) async throws -> String {
        let limit = signal == SIGKILL ? Self.crashResume : Self.gracefulResume
        let stopped = try await cluster.stopLeader(
            with: signal, brokers: &brokers, startup: Self.startup, takeoverLimit: limit)
        let (leader, victim, successor) = (stopped.leader, stopped.victim, stopped.successor)
        let (killedAt, killedAtWallClock, takeover) = (stopped.signalledAt, stopped.signalledAtWallClock, stopped.takeover)
        try await watcher.wait(
            "messages sent after signal \(signal) from all \(streams) streams",
            timeout: limit - (ContinuousClock.now - killedAt) + .seconds(2)
        ) { printed in
            printed.values.filter { $0.lastSentAt > killedAtWallClock }.count >= streams
        }
        let resume = ContinuousClock.now - killedAt
        if signal == SIGTERM {
            #expect(try await victim.waitForExit(timeout: .seconds(10)) == 0, "a SIGTERM'd broker exits cleanly")
        }
        return
            "signal \(signal) to \(leader): \(successor) led after \(takeover), subscriber received again after \(resume)"
    }

    // MARK: Broker mode: slow and stalled subscribers

    /// A broker with 1 MiB for all logs and for each topic's, messages of 16 KiB at most and the smallest
    /// publisher window (64 KiB), so that slow subscribers reach the logs' bounds within a few megabytes; with
    /// `environment` added.
    private func smallLogBroker(on cluster: HeraldCluster, _ environment: [String: String] = [:]) async throws {
        let small = [
            "HERALD_LOG_BYTES": "\(1 << 20)", "HERALD_TOPIC_LOG_BYTES": "\(1 << 20)",
            "HERALD_MAX_MESSAGE_SIZE": "\(16 << 10)", "HERALD_PUBLISHER_WINDOW": "\(64 << 10)",
        ]
        _ = try await cluster.broker("b1", environment: small.merging(environment) { _, new in new })
        _ = try await cluster.waitForLeader(timeout: Self.startup)
    }

    @Test("Broker mode: a subscriber slower than three full-speed publishers loses nothing when their topics together outgrow the bound of all logs")
    func aSlowSubscriberOfSeveralBusyTopicsLosesNothing() async throws {
        try await withCluster(mode: "broker") { cluster in
            // Each topic may lag by half its 1 MiB log before its publisher waits; three such topics hold more than
            // the 1 MiB of all logs, so only holding publishers back for all logs together keeps what the
            // subscriber is owed. Once held, each publisher may still send what its credit allows: three windows of
            // 64 KiB, well within the half of all logs left.
            try await smallLogBroker(on: cluster)
            let topics = ["slow-a", "slow-b", "slow-c"]
            let subscriber = try await cluster.subscriber(topics)
            try await subscriber.waitForLine(containing: "attached to leader", timeout: Self.startup)
            // Stopped only once its subscription reached the leader: it is then owed every message from the first.
            try await cluster.waitForStatus("the leader knows the subscription", timeout: Self.startup) {
                ($0.leaderStatus?.subscribers ?? 0) == 1
            }
            let count = 3000
            var publishers: [HeraldProcess] = []
            for topic in topics {
                publishers.append(
                    try await cluster.start(
                        "publisher \(topic)",
                        ["publish", "--topic", topic, "--rate", "0", "--count", "\(count)", "--size", "1024"]))
            }
            // Slow: the subscriber runs a fifth of the time, in stretches shorter than the stall timeout.
            while publishers.contains(where: \.isRunning) {
                subscriber.kill(SIGSTOP)
                try await Task.sleep(for: .milliseconds(400))
                subscriber.kill(SIGCONT)
                try await Task.sleep(for: .milliseconds(100))
            }
            for publisher in publishers {
                #expect(try await publisher.waitForExit(timeout: .seconds(5)) == 0, "\(publisher.diagnostics())")
            }
            let watcher = PrintedWatcher(subscriber)
            try await watcher.wait("the last message of each publisher", timeout: .seconds(15)) { streams in
                streams.count == topics.count && streams.values.allSatisfy { $0.last == UInt64(count) }
            }
            let summary = try await stopCleanly(publishers: [], subscriber: subscriber, settle: .zero)
            let problems = sequenceProblems(in: subscriber.messages)
            #expect(problems.isEmpty, "printed stream is not exactly-once in order:\n\(problems.joined(separator: "\n"))")
            #expect(summary.lost == 0, "summary: \(summary)")
            #expect(summary.received == count * topics.count, "summary: \(summary)")
        }
    }

    @Test("Broker mode: a stalled subscriber counts the end of a stream that left the log while it was stopped")
    func aStalledSubscriberCountsTheEndOfAStreamThatLeftTheLog() async throws {
        try await withCluster(mode: "broker") { cluster in
            // A subscriber is left behind after half a second without taking anything.
            try await smallLogBroker(on: cluster, ["HERALD_STALL_TIMEOUT": "0.5"])
            let subscriber = try await cluster.subscriber(["tail"])
            try await subscriber.waitForLine(containing: "attached to leader", timeout: Self.startup)
            let count = 2000
            let tail = try await cluster.start(
                "publisher tail", ["publish", "--topic", "tail", "--rate", "2000", "--count", "\(count)", "--size", "1024"])
            let watcher = PrintedWatcher(subscriber)
            try await watcher.wait("a first message", timeout: Self.startup) { !$0.isEmpty }
            subscriber.kill(SIGSTOP)
            #expect(try await tail.waitForExit(timeout: Self.startup) == 0, "\(tail.diagnostics())")
            // Another topic's 3 MB push what is left of the stopped subscriber's stream out of the 1 MiB of all
            // logs: no later message of that stream remains to show the subscriber a gap.
            let other = try await cluster.start(
                "publisher other", ["publish", "--topic", "other", "--rate", "0", "--count", "3000", "--size", "1024"])
            #expect(try await other.waitForExit(timeout: Self.startup) == 0, "\(other.diagnostics())")
            // Resumed within the 5 s after which the leader would forget it; the numbers the leader gave up are
            // counted once the 3 s gap timeout has passed, since a replay could still have brought them.
            subscriber.kill(SIGCONT)
            try await Task.sleep(for: .seconds(4))
            let summary = try await stopCleanly(publishers: [], subscriber: subscriber, settle: .zero)
            #expect(summary.lost > 0, "summary: \(summary)")
            #expect(summary.received + Int(summary.lost) == count, "summary: \(summary)")
            let printed = subscriber.messages.map(\.seq)
            #expect(zip(printed, printed.dropFirst()).allSatisfy { $0 < $1 }, "each message once, in order")
        }
    }

    @Test("Broker mode: a busy publisher paused past its registration resumes, and the leader takes nothing twice")
    func aPublisherPausedPastItsRegistrationResumesWithoutDuplicates() async throws {
        try await withCluster(mode: "broker") { cluster in
            _ = try await cluster.broker("b1")
            _ = try await cluster.waitForLeader(timeout: Self.startup)
            let subscriber = try await cluster.subscriber(["paused"])
            try await subscriber.waitForLine(containing: "attached to leader", timeout: Self.startup)
            let count = 200_000
            let publisher = try await cluster.start(
                "publisher", ["publish", "--topic", "paused", "--rate", "20000", "--count", "\(count)", "--size", "64"])
            // Paused once it has sent two credit windows (2 MiB each) on its connection, long before its end.
            let watcher = PrintedWatcher(subscriber)
            try await watcher.wait("40,000 messages", timeout: Self.startup) { ($0.values.first?.count ?? 0) >= 40_000 }
            // Longer than the leader keeps a silent publisher (3 s): on waking, the publisher meets a leader that
            // forgot its connection, and must neither wait for credit that counts from zero again (it did, for
            // ever) nor have its replay of what it kept (10 s of messages) taken twice.
            publisher.kill(SIGSTOP)
            try await Task.sleep(for: .seconds(4))
            publisher.kill(SIGCONT)
            #expect(try await publisher.waitForExit(timeout: .seconds(60)) == 0, "\(publisher.diagnostics())")
            let replay = try #require(
                publisher.stderrLines.last { $0.contains("attached to leader") && !$0.contains("replaying=0") },
                "the publisher attached again and replayed: \(publisher.diagnostics(lines: 30))")
            let replayed = try #require(
                replay.split(separator: " ").first { $0.hasPrefix("replaying=") }.flatMap { Int($0.dropFirst(10)) })
            try await watcher.wait("the last message", timeout: Self.startup) { $0.values.first?.last == UInt64(count) }
            let summary = try await stopCleanly(publishers: [], subscriber: subscriber, settle: .zero)
            #expect(summary.received == count && summary.lost == 0, "summary: \(summary)")
            // Of the tens of thousands replayed, the leader sends again only the batch (1,024 messages at most)
            // that straddles the last number it took; nothing after the pause reached it before the replay, so it
            // has no gap to fill.
            #expect(replayed > 10_000 && summary.duplicates <= 1024, "summary: \(summary), after: \(replay)")
        }
    }

    // MARK: Direct mode: a restarted publisher

    @Test("Direct mode: a publisher restarted after kill -9 is a new epoch, not duplicates; what it sent before discovery is counted")
    func restartedPublisherIsANewEpoch() async throws {
        try await withCluster(mode: "direct") { cluster in
            _ = try await cluster.broker("b1")
            _ = try await cluster.waitForLeader(timeout: Self.startup)
            let subscriber = try await cluster.subscriber(["epoch"])
            try await subscriber.waitForLine(containing: "using leader for discovery", timeout: Self.startup)
            let watcher = PrintedWatcher(subscriber)

            let first = try await cluster.publisher("epoch", rate: 200, name: "publisher 1")
            // Long enough that the restarted publisher's numbers overlap the first one's.
            try await watcher.wait("publisher 1 up to seq 600", timeout: Self.startup) { streams in
                streams.values.contains { $0.last >= 600 }
            }
            first.kill(SIGKILL)
            try await first.waitForExit(timeout: .seconds(5))
            let firstID = try #require(subscriber.messages.first?.publisher)

            let second = try await cluster.publisher("epoch", rate: 200, name: "publisher 2")
            try await watcher.wait("100 messages from publisher 2", timeout: Self.startup) { streams in
                streams.contains { $0.key.publisher != firstID && $0.value.count >= 100 }
            }
            let summary = try await stopCleanly(
                publishers: [second], subscriber: subscriber, settle: .milliseconds(500))

            let messages = subscriber.messages
            let problems = sequenceProblems(in: messages)
            #expect(problems.isEmpty, "\(problems.joined(separator: "\n"))")
            let ranges = streamRanges(of: messages)
            #expect(ranges.count == 2, "streams: \(ranges.keys.map(\.description))")
            let old = try #require(ranges.first { $0.key.publisher == firstID }?.value)
            let new = try #require(ranges.first { $0.key.publisher != firstID }?.value)
            // The new publisher's numbers start again below where the old one stopped: with one identity these
            // would be duplicates, and the jump back would be a reorder or a loss.
            #expect(
                new.first < old.last, "publisher 2 printed \(new.first)...\(new.last), publisher 1 up to \(old.last)")
            // Both publishers started after the subscriber: it is owed each stream from its first message. Direct
            // mode keeps no replay, so what a publisher sent before the subscriber found it is lost, and counted.
            #expect(summary.lost == (old.first - 1) + (new.first - 1), "summary: \(summary)")
            #expect(summary.duplicates == 0, "summary: \(summary)")
            #expect(summary.publishers == 2, "summary: \(summary)")
            print(
                "[delivery direct epoch] publisher 1 printed \(old.first)...\(old.last), publisher 2 \(new.first)...\(new.last); \(summary)"
            )
        }
    }

    // MARK: History for late joiners

    @Test("History: a late joiner gets the last N messages kept, and a clear notice when it asks for more")
    func historyForLateJoiners() async throws {
        try await withCluster(mode: "broker") { cluster in
            _ = try await cluster.broker("b1")
            _ = try await cluster.waitForLeader(timeout: Self.startup)
            let publisher = try await cluster.start(
                "publisher",
                ["publish", "--topic", "news", "--rate", "1000", "--count", "300", "--size", "32", "--history", "100"])
            #expect(try await publisher.waitForExit(timeout: Self.startup) == 0, "\(publisher.diagnostics())")

            let late = try await cluster.start(
                "late subscriber", ["subscribe", "--topic", "news", "--history", "50", "--count", "50", "--json"])
            #expect(try await late.waitForExit(timeout: Self.startup) == 0, "\(late.diagnostics())")
            let got = late.messages
            #expect(got.map(\.seq) == Array(251...300), "got seqs \(got.map(\.seq))")
            #expect(late.stderrLines.allSatisfy { !$0.contains("publishers offer") })

            let greedy = try await cluster.start(
                "greedy subscriber", ["subscribe", "--topic", "news", "--history", "500", "--json"])
            try await greedy.waitForLine(containing: "publishers offer", timeout: Self.startup)
            let printed = try await greedy.waitFor("the 100 messages offered", timeout: .seconds(10)) {
                let messages = greedy.messages
                return messages.count >= 100 ? messages : nil
            }
            try await Task.sleep(for: .milliseconds(300))
            greedy.kill(SIGINT)
            #expect(try await greedy.waitForExit(timeout: .seconds(10)) == 0)
            #expect(printed.map(\.seq) == Array(201...300), "got seqs \(printed.map(\.seq))")
            let notice = greedy.stderrLines.first { $0.hasPrefix("herald subscribe: asked for") }
            #expect(
                notice?.contains("asked for 500 messages of history, but publishers offer 'news' at most 100") == true,
                "notice: \(notice ?? "none")\n\(greedy.diagnostics())")
        }
    }
}

// MARK: - Watching a subscriber's output cheaply

/// Follows what a `herald subscribe --json` process prints, decoding each line once, so that waiting on
/// thousands of lines does not steal the CPU the processes under test need.
final class PrintedWatcher: Sendable {
    /// What has been printed of one (publisher, topic) stream.
    struct Progress: Sendable {
        var first: UInt64
        var last: UInt64
        var count: Int
        var lastSentAt: UInt64
    }

    private let process: HeraldProcess
    private let state = Mutex((cursor: 0, streams: [PrintedStream: Progress]()))

    init(_ process: HeraldProcess) { self.process = process }

    /// Decodes the lines printed since the last call and returns every stream's progress.
    func update() -> [PrintedStream: Progress] {
        let lines = process.stdoutLines
        return state.withLock { state in
            for line in lines.dropFirst(state.cursor) {
                guard let message = SubscribedMessage(line: line) else { continue }
                let stream = PrintedStream(publisher: message.publisher, topic: message.topic)
                if var progress = state.streams[stream] {
                    progress.last = message.seq
                    progress.count += 1
                    progress.lastSentAt = max(progress.lastSentAt, message.sentAt)
                    state.streams[stream] = progress
                } else {
                    state.streams[stream] = Progress(
                        first: message.seq, last: message.seq, count: 1, lastSentAt: message.sentAt)
                }
            }
            state.cursor = max(state.cursor, lines.count)
            return state.streams
        }
    }

    /// Waits, checking every 100 ms, until `condition` holds for the streams printed so far.
    func wait(
        _ what: String, timeout: Duration,
        until condition: @escaping @Sendable ([PrintedStream: Progress]) -> Bool
    ) async throws {
        _ = try await process.waitFor(what, timeout: timeout) { () async throws -> Bool? in
            let ended = self.process.stdoutEnded
            if condition(self.update()) { return true }
            if ended { throw HeraldProcessExited(waitingFor: what, diagnostics: self.process.diagnostics()) }
            try await Task.sleep(for: .milliseconds(80))
            return nil
        }
    }
}
