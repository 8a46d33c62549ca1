import ChildProcesses
import Foundation
import Herald
import LocalZooKeeper
import Synchronization
import TestSupport
import Testing

/// A running `herald` child process whose standard output and error are captured line by line as they arrive.
///
/// A ``ChildProcess`` reads both streams into buffers guarded by a `Mutex`, so a test can wait for a line while
/// the process keeps writing. Start processes through a ``HeraldCluster`` (``withCluster(mode:_:)``), which kills
/// whatever is still running when the test ends, even when it fails.
final class HeraldProcess: Sendable {
    /// A short name for messages: `broker b1`, `subscriber`, ...
    var name: String { child.name }
    /// The arguments after `herald`.
    var arguments: [String] { child.arguments }
    /// The process ID.
    var pid: Int32 { child.processID }

    private let child: ChildProcess
    private let output: CapturedOutput

    /// The lines of both streams so far.
    private final class CapturedOutput: Sendable {
        let lines = Mutex((stdout: [String](), stderr: [String]()))

        func handler(_ stream: Stream) -> ChildProcess.Output {
            .lines { bytes in
                let line = String(decoding: bytes, as: UTF8.self)
                self.lines.withLock {
                    switch stream {
                    case .stdout: $0.stdout.append(line)
                    case .stderr: $0.stderr.append(line)
                    }
                }
            }
        }
    }

    /// Which of the two captured streams.
    enum Stream: Sendable { case stdout, stderr }

    /// Starts `herald` with `arguments`, the test process's environment plus `environment`.
    /// - Parameters:
    ///   - name: a short name for messages.
    ///   - arguments: the subcommand and its options.
    ///   - environment: variables added to (or replacing) the inherited ones.
    /// - Throws: ``HeraldBinaryMissing`` when the executable was not built; ``ChildProcessError``.
    init(name: String, arguments: [String], environment: [String: String]) async throws {
        let output = CapturedOutput()
        child = try await ChildProcess.start(
            name: name, executable: try heraldExecutable().path, arguments: arguments, environment: environment,
            standardOutput: output.handler(.stdout), standardError: output.handler(.stderr))
        self.output = output
    }

    // MARK: Output

    /// The standard output lines so far.
    var stdoutLines: [String] { output.lines.withLock { $0.stdout } }

    /// The standard error lines so far.
    var stderrLines: [String] { output.lines.withLock { $0.stderr } }

    /// Whether the output reached its end: every line the process printed is in ``stdoutLines``.
    var stdoutEnded: Bool { child.outputEnded }

    /// The lines of `stream` so far.
    func lines(_ stream: Stream) -> [String] { stream == .stdout ? stdoutLines : stderrLines }

    /// Waits for a line of `stream`, from index `start` on, that satisfies `matches`.
    /// - Parameters:
    ///   - stream: which stream.
    ///   - start: the index of the first line to look at, to skip lines printed before some event.
    ///   - timeout: how long to wait.
    ///   - matches: the condition.
    /// - Returns: the first matching line.
    /// - Throws: ``DeadlineExceeded`` naming this process and showing its last stderr lines.
    @discardableResult
    func waitForLine(
        in stream: Stream = .stderr, from start: Int = 0, timeout: Duration,
        matching matches: @escaping @Sendable (String) -> Bool
    ) async throws -> String {
        try await waitFor("a matching \(stream) line", timeout: timeout) {
            self.lines(stream).dropFirst(start).first(where: matches)
        }
    }

    /// Waits for a line of `stream` containing `text`.
    @discardableResult
    func waitForLine(
        in stream: Stream = .stderr, from start: Int = 0, containing text: String, timeout: Duration
    ) async throws -> String {
        try await waitFor("a \(stream) line containing '\(text)'", timeout: timeout) {
            self.lines(stream).dropFirst(start).first { $0.contains(text) }
        }
    }

    /// Polls `probe` every 20 ms until it returns a value.
    func waitFor<T: Sendable>(
        _ what: String, timeout: Duration, _ probe: @escaping @Sendable () async throws -> T?
    ) async throws -> T {
        do {
            return try await within(timeout, "\(name): \(what)") {
                while true {
                    if let value = try await probe() { return value }
                    try await Task.sleep(for: .milliseconds(20))
                }
            }
        } catch let error as DeadlineExceeded {
            throw DeadlineExceeded(what: "\(error.what)\n\(diagnostics())", limit: error.limit)
        }
    }

    // MARK: Life

    /// Whether the process is still running.
    var isRunning: Bool { child.isRunning }

    /// The exit code once it ended: its status, or 128 + the signal that killed it.
    var exitCode: Int32? { child.exitCode }

    /// Sends `signal` (SIGKILL, SIGTERM, ...) if the process still runs.
    func kill(_ signal: Int32) {
        child.signal(signal)
    }

    /// Waits until the process ends.
    /// - Returns: its exit code, or 128 + the signal that killed it.
    @discardableResult
    func waitForExit(timeout: Duration) async throws -> Int32 {
        try await waitFor("exit", timeout: timeout) { self.exitCode }
    }

    /// The command line, exit state and last lines of stderr, for failure messages.
    func diagnostics(lines count: Int = 15) -> String {
        let state = exitCode.map { "exited with \($0)" } ?? "running"
        let tail = stderrLines.suffix(count).map { "    \($0)" }.joined(separator: "\n")
        return
            "[\(name)] herald \(arguments.joined(separator: " ")) (pid \(pid), \(state)); last stderr lines:\n\(tail)"
    }
}

// MARK: - Subscriber output

/// One line of `herald subscribe --json`, reduced to what the tests check, read by the project's one reader of
/// those lines (``MessageLine``).
struct SubscribedMessage: Sendable, Equatable {
    var topic: String
    var publisher: String
    var seq: UInt64
    /// When the publisher sent it, in nanoseconds since the Unix epoch (same host, same clock).
    var sentAt: UInt64
    /// When the subscriber received it: the send time and the latency it printed.
    var receivedAt: UInt64

    /// Parses one line; `nil` for anything that is not a message line.
    init?(line: String) {
        guard let message = MessageLine(line) else { return nil }
        (topic, publisher, seq, sentAt) = (message.topic, message.publisher, message.sequence, message.sentAt)
        receivedAt = UInt64(clamping: Int64(clamping: sentAt) &+ message.latencyMicroseconds &* 1000)
    }
}

extension HeraldProcess {
    /// The messages a `herald subscribe --json` process printed so far.
    var messages: [SubscribedMessage] { stdoutLines.compactMap(SubscribedMessage.init(line:)) }

    /// Waits for a message, among those printed after the first `start`, that satisfies `matches`.
    @discardableResult
    func waitForMessage(
        after start: Int = 0, timeout: Duration, _ what: String = "a message",
        where matches: @escaping @Sendable (SubscribedMessage) -> Bool = { _ in true }
    ) async throws -> SubscribedMessage {
        try await waitFor(what, timeout: timeout) {
            let ended = self.stdoutEnded
            if let message = self.messages.dropFirst(start).first(where: matches) { return message }
            // Checked before reading the lines: once output ended and still no match, none can come.
            if ended { throw HeraldProcessExited(waitingFor: what, diagnostics: self.diagnostics()) }
            return nil
        }
    }
}

/// A process ended while a test waited for its output.
struct HeraldProcessExited: Error, CustomStringConvertible {
    let waitingFor: String
    let diagnostics: String
    var description: String { "exited while the test waited for \(waitingFor)\n\(diagnostics)" }
}

/// The wall clock, in nanoseconds since the Unix epoch, to compare with ``SubscribedMessage/sentAt``.
func wallClockNanoseconds() -> UInt64 {
    var time = timespec()
    clock_gettime(CLOCK_REALTIME, &time)
    return UInt64(time.tv_sec) * 1_000_000_000 + UInt64(time.tv_nsec)
}

// MARK: - herald status

/// What `herald status --json` prints, reduced to what the tests check.
struct StatusReport: Decodable, Sendable {
    struct Leader: Decodable, Sendable {
        var broker: String
        var mode: String
        var requestEndpoint: String
        var subscriberEndpoint: String
        var epoch: UInt64?
        var sessionTimeoutMs: Int?
    }

    struct LeaderStatus: Decodable, Sendable {
        var broker: String
        var topics: [String: UInt64]
        var publishers: [String]
        /// Messages the leader dropped because they were malformed (optional: older brokers did not report it).
        var malformedMessages: UInt64?
        /// Requests the leader refused, by reason.
        var refused: [String: UInt64]?
        var subscribers: Int?
        var epoch: UInt64?
    }

    var cluster: String
    var mode: String?
    var leader: Leader?
    var leaderSinceMs: Int64?
    var leaderAnswering: Bool?
    var candidates: [String]
    var leaderStatus: LeaderStatus?
}

// MARK: - Clusters

/// A Herald cluster under test: one ZooKeeper server, a unique cluster name, and every `herald` process
/// started for it, all configured for one host with free ports.
final class HeraldCluster: Sendable {
    /// Session timeout the processes use, in seconds: short, so a killed broker is replaced quickly.
    static let sessionTimeoutSeconds = 2
    /// The session timeout as a duration.
    static let sessionTimeout: Duration = .seconds(sessionTimeoutSeconds)

    /// The ZooKeeper server.
    let server: LocalZooKeeperServer
    /// The cluster's name, unique per test.
    let name: String
    /// The dissemination mode brokers are started with unless told otherwise.
    let mode: String
    private let processes = Mutex<[HeraldProcess]>([])

    init(server: LocalZooKeeperServer, mode: String) {
        self.server = server
        self.mode = mode
        self.name = "it-\(mode)-\(UUID().uuidString.prefix(8).lowercased())"
    }

    /// What every process gets: this cluster, loopback, free ports, the short session timeout.
    var environment: [String: String] {
        [
            "HERALD_ZOOKEEPER": server.connectionString,
            "HERALD_CLUSTER": name,
            "HERALD_BIND_HOST": "127.0.0.1",
            "HERALD_ADVERTISE_HOST": "127.0.0.1",
            "HERALD_REQUEST_PORT": "0",
            "HERALD_SUBSCRIBER_PORT": "0",
            "HERALD_PUBLISHER_PORT": "0",
            // Every process serves /healthz and /metrics; several on one host need free ports too.
            "HERALD_HTTP_HOST": "127.0.0.1",
            "HERALD_HTTP_PORT": "0",
            "HERALD_SESSION_TIMEOUT": "\(Self.sessionTimeoutSeconds)",
            "HERALD_LOG_LEVEL": "info",
        ]
    }

    /// Starts `herald` with `arguments`; it is killed when the cluster's scope ends.
    func start(_ name: String, _ arguments: [String], environment extra: [String: String] = [:]) async throws
        -> HeraldProcess
    {
        let process = try await HeraldProcess(
            name: name, arguments: arguments, environment: environment.merging(extra) { _, new in new })
        processes.withLock { $0.append(process) }
        return process
    }

    /// Starts a broker with `--broker-id id` in `mode` (the cluster's mode by default), with `environment` added
    /// to the cluster's.
    func broker(_ id: String, mode: String? = nil, environment: [String: String] = [:]) async throws -> HeraldProcess {
        try await start("broker \(id)", ["broker", "--broker-id", id, "--mode", mode ?? self.mode], environment: environment)
    }

    /// Starts a publisher on `topic` at `rate` messages per second, with `environment` added to the cluster's.
    func publisher(
        _ topic: String, rate: Int = 50, name: String = "publisher", environment: [String: String] = [:]
    ) async throws -> HeraldProcess {
        try await start(name, ["publish", "--topic", topic, "--rate", "\(rate)", "--size", "32"], environment: environment)
    }

    /// Starts `herald subscribe --json` for `topics`, with `environment` added to the cluster's.
    func subscriber(
        _ topics: [String], name: String = "subscriber", environment: [String: String] = [:]
    ) async throws -> HeraldProcess {
        try await start(name, ["subscribe", "--json"] + topics.flatMap { ["--topic", $0] }, environment: environment)
    }

    /// Runs a short `herald` command, such as `topics`, to its end.
    /// - Returns: what it printed on standard output.
    /// - Throws: when it fails, with its diagnostics.
    func run(_ arguments: [String]) async throws -> [String] {
        let process = try await HeraldProcess(name: arguments.first ?? "herald", arguments: arguments, environment: environment)
        let code = try await process.waitForExit(timeout: .seconds(15))
        guard code == 0 else {
            throw HeraldProcessExited(waitingFor: "herald \(arguments.joined(separator: " "))", diagnostics: process.diagnostics())
        }
        // The reader threads may still be draining after the exit.
        for _ in 0..<50 where !process.stdoutEnded { try await Task.sleep(for: .milliseconds(20)) }
        return process.stdoutLines
    }

    /// Runs `herald status --json` once, with `extraArguments`.
    /// - Returns: the status, or `nil` when the command failed or printed something else.
    func status(_ extraArguments: [String] = []) async throws -> StatusReport? {
        let process = try await HeraldProcess(
            name: "status", arguments: ["status", "--json"] + extraArguments, environment: environment)
        let code = try await process.waitForExit(timeout: .seconds(15))
        guard code == 0 else { return nil }
        // The reader threads may still be draining after the exit.
        try? await Task.sleep(for: .milliseconds(10))
        for _ in 0..<50 {
            let text = process.stdoutLines.joined(separator: "\n")
            if let status = try? JSONDecoder().decode(StatusReport.self, from: Data(text.utf8)) { return status }
            try await Task.sleep(for: .milliseconds(20))
        }
        return nil
    }

    /// Polls `herald status --json` until `condition` holds for it.
    /// - Returns: the status that satisfied it.
    @discardableResult
    func waitForStatus(
        _ what: String, timeout: Duration, arguments: [String] = [],
        where condition: @escaping @Sendable (StatusReport) -> Bool
    ) async throws -> StatusReport {
        do {
            return try await within(timeout, what) {
                while true {
                    if let status = try await self.status(arguments), condition(status) { return status }
                    try await Task.sleep(for: .milliseconds(100))
                }
            }
        } catch let error as DeadlineExceeded {
            throw DeadlineExceeded(what: "\(error.what)\n\(diagnostics())", limit: error.limit)
        }
    }

    /// Waits for a leader, optionally one other than `previous`.
    /// - Returns: the leader's broker ID.
    func waitForLeader(otherThan previous: String? = nil, timeout: Duration) async throws -> String {
        let status = try await waitForStatus(
            "a leader other than \(previous ?? "none")", timeout: timeout,
            where: { status in status.leader.map { $0.broker != previous } ?? false })
        return status.leader!.broker
    }

    /// The outcome of ``stopLeader(with:brokers:startup:takeoverLimit:beforeSignal:)``.
    struct Takeover {
        /// The broker that led and was signalled.
        var leader: String
        /// Its process, removed from the caller's brokers.
        var victim: HeraldProcess
        /// The survivor that announced it was elected.
        var successor: String
        /// When the signal was sent, on the monotonic and on the wall clock (for comparing with `sent_at_ns`).
        var signalledAt: ContinuousClock.Instant
        var signalledAtWallClock: UInt64
        /// From the signal until the successor announced itself.
        var takeover: Duration
    }

    /// Sends `signal` to the current leader (read from `herald status` right before, since on a loaded machine a
    /// short session can expire by itself and move leadership), then waits until one of the remaining brokers
    /// logs that it was elected.
    /// - Parameters:
    ///   - brokers: the cluster's brokers by ID; the leader is removed from it.
    ///   - beforeSignal: runs right before the signal, to record what the test compares against afterwards.
    func stopLeader(
        with signal: Int32, brokers: inout [String: HeraldProcess], startup: Duration, takeoverLimit: Duration,
        beforeSignal: () -> Void = {}
    ) async throws -> Takeover {
        let current = try await waitForStatus("a leader", timeout: startup) { $0.leader != nil }
        let leader = try #require(current.leader?.broker)
        let removed = brokers.removeValue(forKey: leader)
        let victim = try #require(removed, "leader \(leader) is not one of ours")
        let survivors = brokers
        let marks = survivors.mapValues { $0.stderrLines.count }
        beforeSignal()
        let signalledAt = ContinuousClock.now
        let signalledAtWallClock = wallClockNanoseconds()
        victim.kill(signal)

        // The successor announces itself; it is one of the survivors, never the victim.
        let successor = try await victim.waitFor("a successor to \(leader)", timeout: takeoverLimit) {
            survivors.first { id, broker in
                broker.stderrLines.dropFirst(marks[id]!).contains { $0.contains("elected leader") }
            }?.key
        }
        return Takeover(
            leader: leader, victim: victim, successor: successor, signalledAt: signalledAt,
            signalledAtWallClock: signalledAtWallClock, takeover: ContinuousClock.now - signalledAt)
    }

    /// Every process's state and last stderr lines.
    func diagnostics() -> String {
        processes.withLock { $0 }.map { $0.diagnostics() }.joined(separator: "\n")
    }

    /// Writes every process's whole output to files in a new temporary directory.
    /// - Returns: the directory.
    func saveLogs() -> String {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("herald-\(name)").path
        try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        for (index, process) in processes.withLock({ $0 }).enumerated() {
            let base = "\(directory)/\(index)-\(process.name.replacingOccurrences(of: " ", with: "-"))"
            let header = "herald \(process.arguments.joined(separator: " ")) (pid \(process.pid))\n"
            try? (header + process.stderrLines.joined(separator: "\n")).write(
                toFile: base + ".stderr", atomically: false, encoding: .utf8)
            try? process.stdoutLines.joined(separator: "\n").write(
                toFile: base + ".stdout", atomically: false, encoding: .utf8)
        }
        return directory
    }

    /// SIGKILLs every process still running and waits briefly for them to go.
    func killAll() async {
        let all = processes.withLock { $0 }
        for process in all { process.kill(SIGKILL) }
        for process in all { _ = try? await process.waitForExit(timeout: .seconds(5)) }
    }
}

/// Runs `body` with a fresh ZooKeeper server and a new cluster; afterwards every process started through the
/// cluster is killed and the server stopped, whether `body` succeeded, failed or threw.
/// When `body` throws, the processes' last stderr lines are printed to help find out why.
func withCluster<T>(
    mode: String, _ body: (HeraldCluster) async throws -> T
) async throws -> T {
    try await withServer { server in
        let cluster = HeraldCluster(server: server, mode: mode)
        do {
            let result = try await body(cluster)
            await cluster.killAll()
            return result
        } catch {
            await cluster.killAll()
            FileHandle.standardError.write(
                Data("cluster \(cluster.name) failed: \(error)\nwhole output in \(cluster.saveLogs())\n".utf8))
            throw error
        }
    }
}

// MARK: - Locating the executable

/// The `herald` executable was not built next to the tests.
struct HeraldBinaryMissing: Error, CustomStringConvertible {
    let path: String
    var description: String {
        "\(path) does not exist; build it together with the tests: run swift build --build-tests first"
    }
}

/// The `herald` executable next to the running test bundle (both live in the build directory).
func heraldExecutable() throws -> URL {
    let directory = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent()
    let url = directory.appendingPathComponent("herald")
    guard FileManager.default.isExecutableFile(atPath: url.path) else { throw HeraldBinaryMissing(path: url.path) }
    return url
}

// MARK: - Subscriber summary and stream checks

/// Stops `publishers` cleanly (SIGINT), waits `settle` for what is still on its way, stops `subscriber` cleanly
/// and returns its summary line. Each process must exit with 0.
func stopCleanly(
    publishers: [HeraldProcess], subscriber: HeraldProcess, settle: Duration = .seconds(1),
    sourceLocation: SourceLocation = #_sourceLocation
) async throws -> SubscriptionSummary {
    for publisher in publishers {
        publisher.kill(SIGINT)
        let code = try await publisher.waitForExit(timeout: .seconds(10))
        #expect(code == 0, "\(publisher.diagnostics())", sourceLocation: sourceLocation)
    }
    try await Task.sleep(for: settle)
    subscriber.kill(SIGINT)
    let code = try await subscriber.waitForExit(timeout: .seconds(10))
    #expect(code == 0, "the subscriber stops cleanly on SIGINT\n\(subscriber.diagnostics())", sourceLocation: sourceLocation)
    return try await subscriber.waitFor("the summary line", timeout: .seconds(5)) {
        subscriber.stdoutEnded ? subscriber.summary : nil
    }
}

extension HeraldProcess {
    /// The summary a `herald subscribe` process printed when it stopped, if it did.
    var summary: SubscriptionSummary? { stderrLines.lazy.compactMap(SubscriptionSummary.init(line:)).last }

    /// The `http://host:port` of the process's health server, from its "HTTP health server listening" log line.
    var httpAddress: String? {
        guard let line = stderrLines.first(where: { $0.contains("HTTP health server listening") }),
            let start = line.range(of: "http.address=")
        else { return nil }
        let address = line[start.upperBound...].prefix { !$0.isWhitespace && $0 != "," }
        return address.isEmpty ? nil : String(address)
    }

    /// Waits for the "HTTP health server listening" log line and returns the address it names.
    func waitForHTTPAddress(timeout: Duration) async throws -> String {
        try await waitFor("the HTTP health server's address", timeout: timeout) { self.httpAddress }
    }
}

/// One publisher's stream on one topic, as a subscriber printed it.
struct PrintedStream: Hashable, Sendable, CustomStringConvertible {
    var publisher: String
    var topic: String
    var description: String { "\(publisher.prefix(8))/\(topic)" }
}

/// Checks that each (publisher, topic) stream of `messages` is contiguous: every seq from the first one
/// printed to the last, each exactly once and in order.
/// - Returns: one line per problem (a repeat, a step back, a gap), at most `limit` of them; empty when all is well.
func sequenceProblems(in messages: [SubscribedMessage], limit: Int = 20) -> [String] {
    var last: [PrintedStream: UInt64] = [:]
    var problems: [String] = []
    for (index, message) in messages.enumerated() {
        let stream = PrintedStream(publisher: message.publisher, topic: message.topic)
        if let previous = last[stream], message.seq != previous + 1 {
            let kind =
                message.seq == previous
                ? "repeat" : message.seq < previous ? "step back" : "gap of \(message.seq - previous - 1)"
            problems.append("\(stream): line \(index): seq \(previous) then \(message.seq) (\(kind))")
            if problems.count >= limit { break }
        }
        last[stream] = message.seq
    }
    return problems
}

/// The first and last seq printed for each (publisher, topic) stream, and how many lines it had.
func streamRanges(of messages: [SubscribedMessage]) -> [PrintedStream: (first: UInt64, last: UInt64, count: Int)] {
    var ranges: [PrintedStream: (first: UInt64, last: UInt64, count: Int)] = [:]
    for message in messages {
        let stream = PrintedStream(publisher: message.publisher, topic: message.topic)
        if let range = ranges[stream] {
            ranges[stream] = (range.first, message.seq, range.count + 1)
        } else {
            ranges[stream] = (message.seq, message.seq, 1)
        }
    }
    return ranges
}
