import ArgumentParser
import ChildProcesses
import Herald
import HeraldDemo
import Logging
import ServiceLifecycle

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
        guard (0.001...1_000_000).contains(rate) else { throw ValidationError("--rate must be in 0.001...1000000") }
        guard (1...60).contains(sessionTimeout) else { throw ValidationError("--session-timeout must be in 1...60 s") }
    }

    func run() async throws {
        var logger = Logger(label: "herald.demo")
        logger.logLevel = .warning
        let settings = DemoScenario.Settings(
            mode: DisseminationMode(rawValue: mode)!, brokers: brokers, rate: rate, sessionTimeout: sessionTimeout,
            logLevel: logLevel)
        let scenario = DemoScenario(settings: settings, executable: ChildProcess.currentExecutable, logger: logger)
        let group = ServiceGroup(
            configuration: .init(
                services: [.init(service: scenario, successTerminationBehavior: .gracefullyShutdownGroup)],
                gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        do {
            try await group.run()
        } catch {
            throw ExitCode(1)
        }
    }
}
