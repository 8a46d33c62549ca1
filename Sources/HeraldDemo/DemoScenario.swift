import ChildProcesses
import Herald
import LocalZooKeeper
import Logging
import ServiceLifecycle
import Synchronization
import ZooKeeper

#if canImport(Glibc)
    import Glibc
#endif

/// The demo's script: a private ZooKeeper server, a cluster of real `herald` processes and two failovers,
/// narrated on standard output. `herald demo` runs it as a service, so Ctrl-C stops everything it started.
public struct DemoScenario: Service {
    /// What the demo runs.
    public struct Settings: Sendable {
        /// The dissemination mode: `broker` or `direct`.
        public var mode: DisseminationMode
        /// How many brokers; the demo needs at least three processes left to show a second failover.
        public var brokers: Int
        /// Messages per second from the publisher.
        public var rate: Double
        /// ZooKeeper session timeout in seconds: how long a killed leader keeps its place.
        public var sessionTimeout: Double
        /// The log level of the demo's processes.
        public var logLevel: String

        /// - Parameters: see the properties.
        public init(mode: DisseminationMode, brokers: Int, rate: Double, sessionTimeout: Double, logLevel: String) {
            self.mode = mode
            self.brokers = brokers
            self.rate = rate
            self.sessionTimeout = sessionTimeout
            self.logLevel = logLevel
        }
    }

    private let settings: Settings
    private let executable: String
    private let logger: Logger

    /// - Parameters:
    ///   - settings: what to run.
    ///   - executable: the `herald` executable the processes run.
    ///   - logger: for the demo's own faults.
    public init(settings: Settings, executable: String, logger: Logger) {
        self.settings = settings
        self.executable = executable
        self.logger = logger
    }

    /// Runs the script; stops every process it started when it ends, fails or is shut down.
    public func run() async throws {
        say("starting a private ZooKeeper server (Debian's zookeeper package)")
        let zookeeper: LocalZooKeeperServer
        do {
            zookeeper = try await LocalZooKeeperServer.start(logger: logger)
        } catch {
            say("cannot start ZooKeeper: \(error)")
            throw error
        }
        say("ZooKeeper is up at \(zookeeper.connectionString)")
        let processes = DemoProcesses(executable: executable)
        do {
            try await cancelWhenGracefulShutdown {
                try await script(zookeeper: zookeeper, processes: processes)
            }
        } catch is CancellationError {
            say("interrupted")
        } catch {
            say("demo failed: \(error)")
        }
        say("stopping every process")
        await processes.stopAll()
        await zookeeper.stop()
        say("done")
    }

    private func script(zookeeper: LocalZooKeeperServer, processes: DemoProcesses) async throws {
        let environment = [
            "HERALD_ZOOKEEPER": zookeeper.connectionString, "HERALD_CLUSTER": "demo",
            "HERALD_BIND_HOST": "127.0.0.1", "HERALD_REQUEST_PORT": "0", "HERALD_SUBSCRIBER_PORT": "0",
            "HERALD_PUBLISHER_PORT": "0", "HERALD_HTTP_PORT": "0",
            "HERALD_SESSION_TIMEOUT": "\(settings.sessionTimeout)", "HERALD_LOG_LEVEL": settings.logLevel,
        ]
        for index in 1...settings.brokers {
            try await processes.start(
                "broker-\(index)",
                ["broker", "--mode", settings.mode.rawValue, "--broker-id", "broker-\(index)"], environment)
        }
        try await processes.start("subscriber", ["subscribe", "--topic", "weather"], environment)
        try await processes.start(
            "publisher", ["publish", "--topic", "weather", "--rate", "\(settings.rate)"], environment)

        let status = LeaderReader(zookeeper: zookeeper.connectionString, logger: logger)
        var leader = try await status.waitForLeader(other: nil, timeout: .seconds(30))
        say("\(leader) leads; \(settings.brokers - 1) standbys wait")
        try await processes.waitForMessage(after: .now, timeout: .seconds(30))
        say("the subscriber is receiving; letting it run for a few seconds")
        try await Task.sleep(for: .seconds(5))

        var failovers: [String] = []
        for (signal, name) in [(SIGKILL, "SIGKILL"), (SIGTERM, "SIGTERM")] where processes.running.count > 3 {
            let killedAt = ContinuousClock.now
            say("sending \(name) to the leader, \(leader)")
            processes.signal(leader, signal)
            let next = try await status.waitForLeader(
                other: leader, timeout: .seconds(settings.sessionTimeout * 3 + 10))
            let elected = ContinuousClock.now - killedAt
            try await processes.waitForMessage(after: ContinuousClock.now, timeout: .seconds(30))
            let receiving = ContinuousClock.now - killedAt
            let line =
                "after \(name): \(next) took over in \(elected.seconds.decimal(2)) s; "
                + "the subscriber received again after \(receiving.seconds.decimal(2)) s"
            say(line)
            failovers.append(line)
            leader = next
            try await Task.sleep(for: .seconds(4))
        }
        say("summary:")
        for line in failovers { say("  " + line) }
        say("a SIGKILLed leader is replaced once its ZooKeeper session times out (\(settings.sessionTimeout) s here);")
        say("a leader stopped with SIGTERM closes its session, so a standby takes over at once.")
    }

    private func say(_ text: String) {
        DemoProcesses.write("[demo] \(text)\n")
    }
}

/// Reads the leader from ZooKeeper for the demo's narration.
struct LeaderReader {
    let zookeeper: String
    let logger: Logger

    func waitForLeader(other previous: String?, timeout: Duration) async throws -> String {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let status = try? await ClusterStatus.fetch(
                zookeeper: ZooKeeperConfiguration(connectionString: zookeeper), layout: ClusterLayout(cluster: "demo"),
                timeout: .seconds(2), leaderTimeout: nil, logger: logger),
                let leader = status.leader?.broker, leader != previous
            {
                return leader
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        throw DemoError("no new leader within \(timeout)")
    }
}

/// The demo gave up waiting for something it shows.
public struct DemoError: Error, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}

/// The demo's child processes, each line they print shown with their name.
final class DemoProcesses: Sendable {
    private let executable: String
    private let children = Mutex<[String: ChildProcess]>([:])
    private let lastMessage = Mutex<ContinuousClock.Instant?>(nil)

    init(executable: String) { self.executable = executable }

    var running: [String] { children.withLock { $0.filter { $0.value.isRunning }.map(\.key) } }

    func start(_ name: String, _ arguments: [String], _ environment: [String: String]) async throws {
        let prefix = "[\(name)] " + String(repeating: " ", count: max(0, 10 - name.count))
        let isSubscriber = name == "subscriber"
        let show: @Sendable (ArraySlice<UInt8>) -> Void = { [self] line in
            let text = String(decoding: line, as: UTF8.self)
            if isSubscriber, text.contains(" seq=") { lastMessage.withLock { $0 = .now } }
            Self.write(prefix + text + "\n")
        }
        let child = try await ChildProcess.start(
            name: name, executable: executable, arguments: arguments, environment: environment,
            standardOutput: .lines(show), standardError: .lines(show))
        children.withLock { $0[name] = child }
    }

    func signal(_ name: String, _ signal: Int32) {
        children.withLock { $0[name] }?.signal(signal)
    }

    /// Waits until the subscriber prints a message line after `instant`.
    func waitForMessage(after instant: ContinuousClock.Instant, timeout: Duration) async throws {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let last = lastMessage.withLock({ $0 }), last > instant { return }
            try await Task.sleep(for: .milliseconds(20))
        }
        throw DemoError("the subscriber printed nothing within \(timeout)")
    }

    /// SIGTERM to every child, then SIGKILL to those still running after a grace period.
    func stopAll() async {
        let all = children.withLock { Array($0.values) }
        await withTaskGroup(of: Void.self) { group in
            for child in all { group.addTask { await child.stop() } }
        }
    }

    /// One `write` per line, so lines from several children never interleave.
    static func write(_ text: String) {
        DescriptorWriter(descriptor: STDOUT_FILENO).write(Array(text.utf8))
    }
}
