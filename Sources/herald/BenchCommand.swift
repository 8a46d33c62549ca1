import ArgumentParser
import FoundationEssentials
import HeraldBench
import Logging
import ServiceLifecycle

#if canImport(Glibc)
    import Glibc
#endif

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

    @Option(
        help: """
            Latency runs: times every point is measured, each time back to back with raw REQ/REP and the raw proxy \
            chain at the same rate and size; the table shows the median of the rounds.
            """)
    var latencyRounds: Int = 3

    @Option(help: "Throughput runs: payload sizes in bytes, comma-separated.")
    var throughputSizes: String = "64,1024,16384"

    @Option(help: "Throughput runs: seconds counted per point, after a warm-up.")
    var window: Double = 3

    @Option(help: "Throughput runs: publishers and subscribers of the multi-client shape.")
    var clients: Int = 2

    @Option(help: "Failover: rounds; each kills the leader with SIGKILL once and stops it with SIGTERM once.")
    var rounds: Int = 20

    @Option(help: "Failover: messages per second from the publisher.")
    var failoverRate: Double = 1000

    @Option(help: "ZooKeeper session timeout of every herald process, in seconds.")
    var sessionTimeout: Double = 2

    @Option(
        help: """
            Scenarios to skip, comma-separated: baseline (PUSH/PULL and the proxy chain's loss-free rate), latency \
            (with its raw baselines), throughput, groups, failover, overload.
            """)
    var skip: String = ""

    func validate() throws {
        guard (0...1000).contains(rounds), (1...64).contains(clients), (0.1...3600).contains(duration),
            (0.1...3600).contains(window), (1...1_000_000).contains(failoverRate)
        else {
            throw ValidationError(
                "--rounds must be in 0...1000, --clients in 1...64, --duration and --window in 0.1...3600 s, --failover-rate in 1...1000000")
        }
        guard (1...10).contains(sessionTimeout) else { throw ValidationError("--session-timeout must be in 1...10 s") }
        guard (1...20).contains(latencyRounds) else { throw ValidationError("--latency-rounds must be in 1...20") }
        _ = try Self.numbers(rates)
        _ = try Self.numbers(sizes)
        _ = try Self.numbers(throughputSizes)
    }

    func run() async throws {
        var logger = Logger(label: "herald.bench")
        logger.logLevel = .warning
        var settings = BenchSettings()
        settings.zookeeper = zookeeper
        settings.output = output
        settings.rates = try Self.numbers(rates)
        settings.sizes = try Self.numbers(sizes).map { Int($0) }
        settings.duration = duration
        settings.latencyRounds = latencyRounds
        settings.throughputSizes = try Self.numbers(throughputSizes).map { Int($0) }
        settings.window = window
        settings.clients = clients
        settings.rounds = rounds
        settings.failoverRate = failoverRate
        settings.sessionTimeout = sessionTimeout
        settings.skip = Set(skip.split(separator: ",").map { $0.trimmingWhitespace().lowercased() })
        let plan = BenchPlan(settings: settings, logger: logger)
        let group = ServiceGroup(
            configuration: .init(
                services: [.init(service: plan, successTerminationBehavior: .gracefullyShutdownGroup)],
                gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
        if plan.failed { throw ExitCode(1) }
    }

    static func numbers(_ text: String) throws -> [Double] {
        try text.split(separator: ",").map {
            guard let value = Double($0.trimmingWhitespace()), value > 0, value <= 10_000_000 else {
                throw ValidationError("'\(text)' is not a comma-separated list of positive numbers up to 10,000,000")
            }
            return value
        }
    }
}

