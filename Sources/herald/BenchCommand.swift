import ArgumentParser
import Foundation
import Herald
import Histogram
import LocalZooKeeper
import Logging
import ServiceLifecycle
import Synchronization
import ZeroMQ
import ZooKeeper

struct BenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Measure latency, throughput, failover and memory of real herald processes against raw ZeroMQ.",
        discussion: """
            Starts a private ZooKeeper server (or uses --zookeeper) and runs real `herald broker`, `publish` and \
            `subscribe` processes of this same executable, one cluster per scenario. Progress goes to standard \
            error, a summary table with PASS/MISS per target to standard output, and with --output the raw \
            figures as results.json and CSV files. Ctrl-C stops every process it started.
            """)

    @Option(help: "ZooKeeper connection string; default: start a private server (Debian's zookeeper package).")
    var zookeeper: String?

    @Option(help: "Directory for results.json and the CSV files.")
    var output: String?

    @Option(help: "Latency runs: publish rates in messages per second, comma-separated.")
    var rates: String = "1000,10000"

    @Option(help: "Latency runs: payload sizes in bytes, comma-separated.")
    var sizes: String = "64,1024,16384"

    @Option(help: "Latency runs: seconds of publishing per rate and size.")
    var duration: Double = 3

    @Option(help: "Throughput runs: payload sizes in bytes, comma-separated.")
    var throughputSizes: String = "64,256,1024,4096,16384,65536"

    @Option(help: "Throughput runs: seconds counted per point, after a warm-up.")
    var window: Double = 3

    @Option(help: "Throughput runs: publishers and subscribers of the multi-client shape.")
    var clients: Int = 2

    @Option(help: "Failover: rounds; each kills the leader with SIGKILL once and stops it with SIGTERM once.")
    var rounds: Int = 3

    @Option(help: "Failover: messages per second from the publisher.")
    var failoverRate: Double = 1000

    @Option(help: "ZooKeeper session timeout of every herald process, in seconds.")
    var sessionTimeout: Double = 2

    @Option(help: "Scenarios to skip, comma-separated: baseline, latency, throughput, failover.")
    var skip: String = ""

    func validate() throws {
        guard rounds >= 0, clients >= 1, duration > 0, window > 0, failoverRate > 0 else {
            throw ValidationError("--rounds, --clients, --duration, --window and --failover-rate must be positive")
        }
        guard (1...10).contains(sessionTimeout) else { throw ValidationError("--session-timeout must be in 1...10 s") }
        _ = try Self.numbers(rates)
        _ = try Self.numbers(sizes)
        _ = try Self.numbers(throughputSizes)
    }

    func run() async throws {
        var logger = Logger(label: "herald.bench")
        logger.logLevel = .warning
        let plan = BenchPlan(
            zookeeper: zookeeper, output: output, rates: try Self.numbers(rates),
            sizes: try Self.numbers(sizes).map { Int($0) }, duration: duration,
            throughputSizes: try Self.numbers(throughputSizes).map { Int($0) }, window: window, clients: clients,
            rounds: rounds, failoverRate: failoverRate, sessionTimeout: sessionTimeout,
            skip: Set(skip.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces).lowercased() }),
            logger: logger)
        let group = ServiceGroup(
            configuration: .init(
                services: [.init(service: plan, successTerminationBehavior: .gracefullyShutdownGroup)],
                gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
        if plan.outcome.failed.load(ordering: .relaxed) { throw ExitCode(1) }
    }

    static func numbers(_ text: String) throws -> [Double] {
        try text.split(separator: ",").map {
            guard let value = Double($0.trimmingCharacters(in: .whitespaces)), value > 0 else {
                throw ValidationError("'\(text)' is not a comma-separated list of positive numbers")
            }
            return value
        }
    }
}

/// One benchmark run: every scenario in turn, each in its own cluster, then the report.
struct BenchPlan: Service {
    let zookeeper: String?
    let output: String?
    let rates: [Double]
    let sizes: [Int]
    let duration: Double
    let throughputSizes: [Int]
    let window: Double
    let clients: Int
    let rounds: Int
    let failoverRate: Double
    let sessionTimeout: Double
    let skip: Set<String>
    let logger: Logger
    let outcome = BenchOutcome()

    /// Unrecorded start of each latency point: connections, JIT-free but cold caches and first allocations.
    static let latencyWarmup = 0.5
    /// Unrecorded start of each throughput point, after the first message arrives.
    static let throughputWarmup: Duration = .seconds(1)
    /// Time for a new subscriber to find the leader and subscribe before publishing starts.
    static let subscriberSettle: Duration = .milliseconds(1500)

    func run() async throws {
        let processes = BenchProcessSet()
        var server: LocalZooKeeperServer?
        do {
            let connection: String
            if let zookeeper {
                connection = zookeeper
            } else {
                progress("starting a private ZooKeeper server")
                let started = try await LocalZooKeeperServer.start(logger: logger)
                server = started
                connection = started.connectionString
            }
            try await cancelWhenGracefulShutdown {
                try await measure(zookeeper: connection, processes: processes)
            }
        } catch is CancellationError {
            progress("interrupted")
            outcome.failed.store(true, ordering: .relaxed)
        } catch {
            progress("failed: \(error)")
            outcome.failed.store(true, ordering: .relaxed)
        }
        await processes.stopAll()
        await server?.stop()
    }

    private func measure(zookeeper: String, processes: BenchProcessSet) async throws {
        let version = ZMQContext.version
        var results = BenchResults(
            startedAt: ISO8601DateFormatter().string(from: Date()),
            machine: .current(zeroMQ: "\(version.major).\(version.minor).\(version.patch)"),
            settings: [
                "rates": rates.map { f($0, 0) }.joined(separator: ","), "sizes": sizes.map(String.init).joined(separator: ","),
                "duration_s": f(duration), "throughput_sizes": throughputSizes.map(String.init).joined(separator: ","),
                "window_s": f(window), "clients": "\(clients)", "rounds": "\(rounds)", "failover_rate": f(failoverRate, 0),
                "session_timeout_s": f(sessionTimeout), "zookeeper": self.zookeeper ?? "private",
            ])
        let run = "b\(getpid())"
        var failoverMessages: [(round: FailoverRound, messages: [BenchMessage])] = []

        if !skip.contains("baseline") {
            for size in Set(sizes + [64]).sorted() {
                let point = try await RawZeroMQBaseline.requestReply(size: size)
                progress("raw ZeroMQ REQ/REP \(size) B: one-way p50 \(f(point.oneWay.p50)) us, p99 \(f(point.oneWay.p99)) us")
                results.baselineLatency.append(point)
            }
            for size in throughputSizes {
                let point = try await RawZeroMQBaseline.pushPull(size: size)
                progress("raw ZeroMQ PUSH/PULL \(size) B: \(f(point.messagesPerSecond, 0)) msg/s, \(f(point.megabytesPerSecond, 1)) MB/s")
                results.baselineThroughput.append(point)
            }
        }
        if !skip.contains("latency") {
            for mode in ["broker", "direct"] {
                results.latency += try await latency(mode: mode, cluster: "\(run)-lat-\(mode)", zookeeper: zookeeper, processes: processes)
            }
        }
        if !skip.contains("throughput") {
            results.throughput = try await throughput(cluster: "\(run)-tput", zookeeper: zookeeper, processes: processes)
        }
        if !skip.contains("failover") {
            let (memory, rounds) = try await failover(cluster: "\(run)-fo", zookeeper: zookeeper, processes: processes)
            results.memory = memory
            results.failover = rounds.map(\.round)
            failoverMessages = rounds
        }
        results.targets = targets(results)
        print(results.summary())
        if let output {
            try results.write(to: output, failoverMessages: failoverMessages)
            progress("wrote results.json and CSV files to \(output)")
        }
    }

    // MARK: - Scenarios

    private func environment(_ cluster: String, _ zookeeper: String, mode: String = "broker") -> [String: String] {
        [
            "HERALD_ZOOKEEPER": zookeeper, "HERALD_CLUSTER": cluster, "HERALD_MODE": mode,
            "HERALD_BIND_HOST": "127.0.0.1", "HERALD_REQUEST_PORT": "0", "HERALD_SUBSCRIBER_PORT": "0",
            "HERALD_PUBLISHER_PORT": "0", "HERALD_HTTP_PORT": "off", "HERALD_SESSION_TIMEOUT": f(sessionTimeout, 3),
            "HERALD_LOG_LEVEL": "warning", "HERALD_JSON": "",
        ]
    }

    /// End-to-end latency: one broker, one subscriber on every point's topic, one paced publisher per point.
    private func latency(mode: String, cluster: String, zookeeper: String, processes: BenchProcessSet) async throws
        -> [LatencyPoint]
    {
        let env = environment(cluster, zookeeper, mode: mode)
        let probe = try await LeaderProbe(zookeeper: zookeeper, cluster: cluster, logger: logger)
        defer { Task { await probe.close() } }
        let broker = try processes.start("broker", ["broker", "--broker-id", "\(mode)-b1"], environment: env)
        _ = try await probe.waitForLeader(other: nil, timeout: .seconds(30))
        let points = rates.flatMap { rate in sizes.map { (rate: rate, size: $0) } }
        let topics = points.indices.map { "lat\($0)" }
        let subscriber = try processes.start(
            "subscriber", ["subscribe", "--json"] + topics.flatMap { ["--topic", $0] }, environment: env, output: .messages)
        try await Task.sleep(for: Self.subscriberSettle)
        var results: [LatencyPoint] = []
        for (index, point) in points.enumerated() {
            let warmup = max(20, Int(point.rate * Self.latencyWarmup))
            // Direct mode loses the first messages while the subscriber discovers the publisher: one more second.
            let count = warmup + Int(point.rate * (duration + (mode == "direct" ? 1 : 0)))
            let publisher = try processes.start(
                "publisher",
                ["publish", "--topic", topics[index], "--rate", f(point.rate, 3), "--count", "\(count)", "--size", "\(point.size)"],
                environment: env)
            await publisher.waitForExit(timeout: .seconds(duration * 4 + 30))
            try await Task.sleep(for: .milliseconds(300))
            let received = subscriber.messages.filter { $0.topic == topics[index] }
            // Warm-up counts from the first message received: in direct mode the subscriber only connects to the
            // publisher once it has found it in ZooKeeper, so the first messages are never delivered.
            let first = received.map(\.sequence).min() ?? 1
            let measuredFrom = first + UInt64(warmup)
            var histogram = Histogram<UInt64>(highestTrackableValue: 3_600_000_000, numberOfSignificantValueDigits: .three)
            for message in received where message.sequence > measuredFrom {
                _ = histogram.record(UInt64(max(0, message.latencyMicroseconds)))
            }
            let expected = UInt64(count) >= first ? Int(UInt64(count) - first + 1) : 0
            let distinct = Set(received.map(\.sequence)).count
            let summary = LatencySummary(microseconds: histogram)
            results.append(
                LatencyPoint(
                    mode: mode, rate: point.rate, size: point.size, sent: count, measured: Int(summary.count),
                    missing: max(0, expected - distinct), latency: summary))
            progress(
                "latency \(mode) \(f(point.rate, 0))/s \(point.size) B [\(index + 1)/\(points.count)]: p50 \(f(summary.p50, 0)) us, p99 \(f(summary.p99, 0)) us, max \(f(summary.max, 0)) us, \(max(0, expected - distinct)) missing after the first")
        }
        await subscriber.stop()
        await broker.stop()
        return results
    }

    /// Maximum sustained throughput through one broker: publishers at full speed, counted at the subscribers.
    private func throughput(cluster: String, zookeeper: String, processes: BenchProcessSet) async throws -> [ThroughputPoint] {
        let shapes = clients > 1 ? [1, clients] : [1]
        var results: [ThroughputPoint] = []
        let total = shapes.count * throughputSizes.count
        for shape in shapes {
            for size in throughputSizes {
                let topic = "tput\(shape)x\(size)"
                // A fresh broker per point: a broker that fell behind keeps its backlog (hundreds of MB) otherwise.
                let pointCluster = "\(cluster)-\(shape)x\(size)"
                let env = environment(pointCluster, zookeeper)
                let probe = try await LeaderProbe(zookeeper: zookeeper, cluster: pointCluster, logger: logger)
                let broker = try processes.start("broker", ["broker", "--broker-id", "tput-\(shape)x\(size)"], environment: env)
                _ = try await probe.waitForLeader(other: nil, timeout: .seconds(30))
                await probe.close()
                let subscribers = try (0..<shape).map { index in
                    try processes.start("subscriber", ["subscribe", "--topic", topic], environment: env, output: .count)
                }
                try await Task.sleep(for: .seconds(1))
                let publishers = try (0..<shape).map { index in
                    try processes.start(
                        "publisher",
                        ["publish", "--topic", topic, "--rate", "0", "--size", "\(size)", "--retention-count", "0"],
                        environment: env)
                }
                let deadline = ContinuousClock.now + .seconds(20)
                while subscribers.contains(where: { $0.lines == 0 }), ContinuousClock.now < deadline {
                    try await Task.sleep(for: .milliseconds(20))
                }
                try await Task.sleep(for: Self.throughputWarmup)
                let startCount = subscribers.reduce(0) { $0 + $1.lines }
                let start = ContinuousClock.now
                try await Task.sleep(for: .seconds(window))
                let endCount = subscribers.reduce(0) { $0 + $1.lines }
                let seconds = (ContinuousClock.now - start).seconds
                for publisher in publishers { publisher.signal(SIGTERM) }
                for publisher in publishers { await publisher.waitForExit(timeout: .seconds(3)) }
                for subscriber in subscribers { await subscriber.stop(grace: .seconds(3)) }
                await broker.stop(grace: .seconds(3))
                let summaries = subscribers.compactMap(\.subscriberSummary)
                let delivered = Double(endCount - startCount) / seconds
                let point = ThroughputPoint(
                    publishers: shape, subscribers: shape, size: size, windowSeconds: seconds, deliveredPerSecond: delivered,
                    messagesPerSecond: delivered / Double(shape),
                    megabytesPerSecond: delivered / Double(shape) * Double(size) / 1e6,
                    received: summaries.reduce(0) { $0 + $1.received }, lost: summaries.reduce(0) { $0 + $1.lost })
                results.append(point)
                progress(
                    "throughput \(shape) pub x \(shape) sub, \(size) B [\(results.count)/\(total)]: \(f(point.messagesPerSecond, 0)) msg/s, \(f(point.megabytesPerSecond, 1)) MB/s, lost \(point.lost)")
            }
        }
        return results
    }

    /// Leader failovers with three brokers: SIGKILL and SIGTERM per round, a fresh publisher and subscriber each.
    private func failover(cluster: String, zookeeper: String, processes: BenchProcessSet) async throws
        -> (MemoryReading?, [(round: FailoverRound, messages: [BenchMessage])])
    {
        let env = environment(cluster, zookeeper)
        let probe = try await LeaderProbe(zookeeper: zookeeper, cluster: cluster, logger: logger)
        defer { Task { await probe.close() } }
        var brokers: [String: BenchChild] = [:]
        var nextBroker = 1
        func startBroker() throws {
            let id = "fo-b\(nextBroker)"
            nextBroker += 1
            brokers[id] = try processes.start(id, ["broker", "--broker-id", id], environment: env)
        }
        try startBroker()
        _ = try await probe.waitForLeader(other: nil, timeout: .seconds(30))
        try startBroker()
        try startBroker()
        // Idle: elected, standbys registered, no client yet.
        try await Task.sleep(for: .seconds(3))
        var memory: MemoryReading?
        if let leader = await probe.leader(), let leaderRSS = brokers[leader]?.residentKilobytes {
            let standbyRSS = brokers.filter { $0.key != leader }.compactMap(\.value.residentKilobytes).max() ?? 0
            memory = MemoryReading(idleLeaderKilobytes: leaderRSS, idleStandbyKilobytes: standbyRSS)
            progress("idle broker memory: leader VmRSS \(leaderRSS) kB, standby \(standbyRSS) kB")
        }
        var results: [(round: FailoverRound, messages: [BenchMessage])] = []
        let signals: [(Int32, String)] = [(SIGKILL, "SIGKILL"), (SIGTERM, "SIGTERM")]
        for round in 1...max(rounds, 1) where rounds > 0 {
            for (signal, signalName) in signals {
                let topic = "fo\(round)\(signalName.lowercased())"
                let subscriber = try processes.start(
                    "subscriber", ["subscribe", "--json", "--topic", topic], environment: env, output: .messages)
                try await Task.sleep(for: .seconds(1))
                let publisher = try processes.start(
                    "publisher", ["publish", "--topic", topic, "--rate", f(failoverRate, 3)], environment: env)
                let steady = ContinuousClock.now + .seconds(20)
                while subscriber.lines < Int(failoverRate * 1.5), ContinuousClock.now < steady {
                    try await Task.sleep(for: .milliseconds(20))
                }
                guard let leader = await probe.leader(), let leaderProcess = brokers[leader] else {
                    throw DemoError("failover round \(round): no leader known")
                }
                let killedAt = wallClockNanoseconds()
                let killedInstant = ContinuousClock.now
                leaderProcess.signal(signal)
                let newLeader = try await probe.waitForLeader(other: leader, timeout: .seconds(sessionTimeout * 3 + 15))
                let elected = ContinuousClock.now - killedInstant
                // Let traffic flow through the new leader, then stop the clients and read the subscriber's tally.
                try await Task.sleep(for: .milliseconds(1500))
                await publisher.stop()
                try await Task.sleep(for: .milliseconds(500))
                await subscriber.stop()
                await leaderProcess.waitForExit(timeout: .seconds(10))
                brokers[leader] = nil
                let messages = subscriber.messages.sorted { $0.readAt < $1.readAt }
                let electedAt = killedAt + UInt64(max(0, elected.components.seconds * 1_000_000_000 + elected.components.attoseconds / 1_000_000_000))
                let (again, gap) = Self.recovery(messages, killedAt: killedAt, electedAt: electedAt)
                let tally = subscriber.subscriberSummary
                let result = FailoverRound(
                    signal: signalName, round: round, killedLeader: leader, newLeader: newLeader, killedAtNanoseconds: killedAt,
                    newLeaderMilliseconds: elected.seconds * 1000, receivingAgainMilliseconds: again, gapMilliseconds: gap,
                    received: tally?.received ?? messages.count, lost: tally?.lost ?? -1, duplicates: tally?.duplicates ?? -1,
                    reordered: tally?.reordered ?? -1)
                results.append((result, messages))
                progress(
                    "failover round \(round) \(signalName): new leader \(newLeader) after \(f(result.newLeaderMilliseconds, 0)) ms, receiving again after \(f(again, 0)) ms, lost \(result.lost)")
                // Back to three brokers: the replacement joins as a standby.
                try startBroker()
                try await Task.sleep(for: .seconds(1))
            }
        }
        for broker in brokers.values { await broker.stop() }
        return (memory, results)
    }

    /// Milliseconds from the signal to the first message the subscriber read once the new leader was recorded,
    /// and the longest silence between the signal and that message.
    ///
    /// Anchoring on the election keeps a later hiccup of a loaded machine from being taken for the failover.
    static func recovery(_ messages: [BenchMessage], killedAt: UInt64, electedAt: UInt64) -> (again: Double, gap: Double) {
        guard let first = messages.first(where: { $0.readAt >= electedAt }) else { return (.nan, .nan) }
        var previous = messages.last { $0.readAt <= killedAt }?.readAt ?? killedAt
        var gap: UInt64 = 0
        for message in messages where message.readAt > killedAt && message.readAt <= first.readAt {
            gap = max(gap, message.readAt - previous)
            previous = message.readAt
        }
        return (Double(first.readAt - killedAt) / 1e6, Double(gap) / 1e6)
    }

    // MARK: - Targets

    private func targets(_ results: BenchResults) -> [TargetCheck] {
        var checks: [TargetCheck] = []
        func ratioCheck(_ name: String, mode: String, limit: Double, _ measure: (LatencySummary, LatencySummary) -> Double) {
            let ratios = results.latency.filter { $0.mode == mode }.compactMap { point -> (Double, LatencyPoint)? in
                guard let raw = results.baselineLatency(size: point.size)?.oneWay else { return nil }
                return (measure(point.latency, raw), point)
            }
            guard let worst = ratios.max(by: { $0.0 < $1.0 }) else { return }
            let all = ratios.map { "\(f($0.1.rate, 0))/s \($0.1.size) B: \(f($0.0))x" }.joined(separator: ", ")
            checks.append(
                TargetCheck(
                    name: name, target: "<= \(f(limit, 1))x at every rate and size", measured: "worst \(f(worst.0))x (\(all))",
                    pass: worst.0 <= limit))
        }
        ratioCheck("broker-mode p50 / raw ZeroMQ one-way p50", mode: "broker", limit: 2.5) { $0.p50 / $1.p50 }
        ratioCheck("broker-mode p99 / raw ZeroMQ one-way p99", mode: "broker", limit: 5) { $0.p99 / $1.p99 }
        ratioCheck("direct-mode p50 / raw ZeroMQ one-way p50", mode: "direct", limit: 1.5) { $0.p50 / $1.p50 }
        if let best = results.throughput.filter({ $0.size == 64 }).max(by: { $0.messagesPerSecond < $1.messagesPerSecond }) {
            checks.append(
                TargetCheck(
                    name: "64 B throughput through the broker", target: ">= 1,000,000 msg/s",
                    measured: "\(f(best.messagesPerSecond, 0)) msg/s (\(best.publishers) pub x \(best.subscribers) sub)",
                    pass: best.messagesPerSecond >= 1_000_000))
        }
        for (signal, limit) in [("SIGKILL", sessionTimeout * 1000 + 500), ("SIGTERM", 250.0)] {
            let times = results.failover.filter { $0.signal == signal }.map(\.receivingAgainMilliseconds).sorted()
            guard !times.isEmpty else { continue }
            let p99 = times[min(times.count - 1, Int((Double(times.count) * 0.99).rounded(.up)) - 1)]
            checks.append(
                TargetCheck(
                    name: "failover after \(signal), p99 of \(times.count) (signal to first message read after the new leader is recorded)",
                    target: signal == "SIGKILL" ? "<= session timeout + 0.5 s = \(f(limit, 0)) ms" : "< 250 ms",
                    measured: "\(f(p99, 0)) ms (all: \(times.map { f($0, 0) }.joined(separator: ", ")) ms)",
                    pass: signal == "SIGKILL" ? p99 <= limit : p99 < limit))
        }
        if let memory = results.memory {
            checks.append(
                TargetCheck(
                    name: "idle leader resident memory (VmRSS)", target: "< 30 MB (30720 kB)",
                    measured: "\(memory.idleLeaderKilobytes) kB", pass: memory.idleLeaderKilobytes < 30 * 1024))
        }
        return checks
    }

    private func progress(_ text: String) {
        FileHandle.standardError.write(Data("[bench] \(text)\n".utf8))
    }
}

/// Reads the leader record from ZooKeeper: what `herald status --json` reports as `leader`.
final class LeaderProbe: Sendable {
    private let session: ZooKeeperSession
    private let layout: ClusterLayout

    init(zookeeper: String, cluster: String, logger: Logger) async throws {
        session = try ZooKeeperSession(configuration: ZooKeeperConfiguration(connectionString: zookeeper), logger: logger)
        layout = try ClusterLayout(cluster: cluster)
        try await session.waitUntilConnected(timeout: .seconds(10))
    }

    /// The leading broker's ID, or `nil` while there is none.
    func leader() async -> String? {
        guard let (data, _) = try? await session.get(layout.leaderPath) else { return nil }
        return (try? JSONDecoder().decode(LeaderRecord.self, from: Data(data)))?.broker
    }

    /// Polls every 5 ms until a leader other than `previous` is recorded.
    func waitForLeader(other previous: String?, timeout: Duration) async throws -> String {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let leader = await leader(), leader != previous { return leader }
            try await Task.sleep(for: .milliseconds(5))
        }
        throw DemoError("no new leader within \(timeout)")
    }

    func close() async { await session.close() }
}

/// Whether a run failed, set from inside the service group and read after it.
final class BenchOutcome: Sendable {
    let failed = Atomic<Bool>(false)
}
