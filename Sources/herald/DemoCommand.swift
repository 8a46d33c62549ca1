import ArgumentParser
import Foundation
import Herald
import LocalZooKeeper
import Logging
import ServiceLifecycle
import Synchronization
import ZooKeeper

struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Run a local cluster and show a failover live.",
        discussion: """
            Starts a private ZooKeeper server (Debian's zookeeper package, on a free port), three brokers, a \
            publisher and a subscriber, all as real processes on this machine. It then kills the leader with \
            SIGKILL and, once a standby has taken over, stops the next leader with SIGTERM, reporting how long \
            each failover took. Ctrl-C stops everything.
            """)

    @Option(help: "Dissemination mode of the demo cluster: broker or direct.")
    var mode: String = "broker"

    @Option(help: "Number of brokers.")
    var brokers: Int = 3

    @Option(help: "Messages per second from the publisher.")
    var rate: Double = 5

    @Option(help: "ZooKeeper session timeout in seconds: how long a killed leader keeps its place.")
    var sessionTimeout: Double = 2

    @Option(help: "Log level of the demo's own processes.")
    var logLevel: String = "info"

    func validate() throws {
        guard DisseminationMode(rawValue: mode) != nil else { throw ValidationError("unknown mode '\(mode)'; use broker or direct") }
        guard (2...9).contains(brokers) else { throw ValidationError("--brokers must be between 2 and 9") }
        guard rate > 0 else { throw ValidationError("--rate must be positive") }
    }

    func run() async throws {
        var logger = Logger(label: "herald.demo")
        logger.logLevel = .warning
        let scenario = DemoScenario(
            mode: mode, brokers: brokers, rate: rate, sessionTimeout: sessionTimeout, logLevel: logLevel, logger: logger)
        let group = ServiceGroup(
            configuration: .init(
                services: [.init(service: scenario, successTerminationBehavior: .gracefullyShutdownGroup)],
                gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
    }
}

/// The demo's script: a cluster of real processes and two failovers, narrated on standard output.
struct DemoScenario: Service {
    let mode: String
    let brokers: Int
    let rate: Double
    let sessionTimeout: Double
    let logLevel: String
    let logger: Logger

    func run() async throws {
        say("starting a private ZooKeeper server (Debian's zookeeper package)")
        let zookeeper: LocalZooKeeperServer
        do {
            zookeeper = try await LocalZooKeeperServer.start(logger: logger)
        } catch {
            say("cannot start ZooKeeper: \(error)")
            throw ExitCode(1)
        }
        say("ZooKeeper is up at \(zookeeper.connectionString)")
        let processes = ProcessSet()
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
        await processes.terminateAll()
        await zookeeper.stop()
        say("done")
    }

    private func script(zookeeper: LocalZooKeeperServer, processes: ProcessSet) async throws {
        let environment = [
            "HERALD_ZOOKEEPER": zookeeper.connectionString, "HERALD_CLUSTER": "demo",
            "HERALD_BIND_HOST": "127.0.0.1", "HERALD_REQUEST_PORT": "0", "HERALD_SUBSCRIBER_PORT": "0",
            "HERALD_PUBLISHER_PORT": "0", "HERALD_HTTP_PORT": "0",
            "HERALD_SESSION_TIMEOUT": "\(sessionTimeout)", "HERALD_LOG_LEVEL": logLevel,
        ]
        for index in 1...brokers {
            try processes.start(
                name: "broker-\(index)", arguments: ["broker", "--mode", mode, "--broker-id", "broker-\(index)"],
                environment: environment)
        }
        try processes.start(name: "subscriber", arguments: ["subscribe", "--topic", "weather"], environment: environment)
        try processes.start(
            name: "publisher", arguments: ["publish", "--topic", "weather", "--rate", "\(rate)"], environment: environment)

        let status = StatusReader(zookeeper: zookeeper.connectionString, logger: logger)
        var leader = try await status.waitForLeader(other: nil, timeout: .seconds(30))
        say("\(leader) leads; \(brokers - 1) standbys wait")
        try await processes.waitForOutput(from: "subscriber", after: .now, timeout: .seconds(30))
        say("the subscriber is receiving; letting it run for a few seconds")
        try await Task.sleep(for: .seconds(5))

        var failovers: [String] = []
        for (signal, name) in [(SIGKILL, "SIGKILL"), (SIGTERM, "SIGTERM")] where processes.running.count > 3 {
            let killedAt = ContinuousClock.now
            say("sending \(name) to the leader, \(leader)")
            processes.signal(leader, signal)
            let next = try await status.waitForLeader(other: leader, timeout: .seconds(sessionTimeout * 3 + 10))
            let elected = ContinuousClock.now - killedAt
            try await processes.waitForOutput(from: "subscriber", after: ContinuousClock.now, timeout: .seconds(30))
            let receiving = ContinuousClock.now - killedAt
            let line = String(
                format: "after %@: %@ took over in %.2f s; the subscriber received again after %.2f s",
                name, next, elected.seconds, receiving.seconds)
            say(line)
            failovers.append(line)
            leader = next
            try await Task.sleep(for: .seconds(4))
        }
        say("summary:")
        for line in failovers { say("  " + line) }
        say("a SIGKILLed leader is replaced once its ZooKeeper session times out (\(sessionTimeout) s here);")
        say("a leader stopped with SIGTERM closes its session, so a standby takes over at once.")
    }

    private func say(_ text: String) {
        FileHandle.standardOutput.write(Data("[demo] \(text)\n".utf8))
    }
}

/// Reads the leader from ZooKeeper for the demo's narration.
struct StatusReader {
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

struct DemoError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// The demo's child processes, their output prefixed with their names on this process's standard output.
final class ProcessSet: Sendable {
    private let processes = Mutex<[String: Process]>([:])
    private let lastOutput = Mutex<[String: ContinuousClock.Instant]>([:])

    var running: [String] { processes.withLock { $0.filter { $0.value.isRunning }.map(\.key) } }

    func start(name: String, arguments: [String], environment: [String: String]) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        process.arguments = arguments
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { _, new in new }
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        let prefix = "[\(name)] ".padding(toLength: 13, withPad: " ", startingAt: 0)
        let buffer = Mutex<[UInt8]>([])
        output.fileHandleForReading.readabilityHandler = { [self] handle in
            let data = handle.availableData
            guard !data.isEmpty else {
                handle.readabilityHandler = nil
                return
            }
            let lines = buffer.withLock { pending -> [String] in
                pending.append(contentsOf: data)
                var lines: [String] = []
                while let newline = pending.firstIndex(of: UInt8(ascii: "\n")) {
                    lines.append(String(decoding: pending[..<newline], as: UTF8.self))
                    pending.removeSubrange(...newline)
                }
                return lines
            }
            guard !lines.isEmpty else { return }
            if name == "subscriber", lines.contains(where: { $0.contains(" seq=") }) {
                lastOutput.withLock { $0[name] = .now }
            }
            FileHandle.standardOutput.write(Data(lines.map { prefix + $0 + "\n" }.joined().utf8))
        }
        try process.run()
        processes.withLock { $0[name] = process }
    }

    func signal(_ name: String, _ signal: Int32) {
        guard let process = processes.withLock({ $0[name] }), process.isRunning else { return }
        kill(process.processIdentifier, signal)
    }

    /// Waits until the named process prints a message line after `instant`.
    func waitForOutput(from name: String, after instant: ContinuousClock.Instant, timeout: Duration) async throws {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let last = lastOutput.withLock({ $0[name] }), last > instant { return }
            try await Task.sleep(for: .milliseconds(20))
        }
        throw DemoError("\(name) printed nothing within \(timeout)")
    }

    /// SIGTERM to every child, then SIGKILL to those still running after a grace period.
    func terminateAll() async {
        let all = processes.withLock { Array($0.values) }
        for process in all where process.isRunning { kill(process.processIdentifier, SIGTERM) }
        let deadline = ContinuousClock.now + .seconds(5)
        while all.contains(where: \.isRunning), ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(50))
        }
        for process in all where process.isRunning { kill(process.processIdentifier, SIGKILL) }
    }
}

