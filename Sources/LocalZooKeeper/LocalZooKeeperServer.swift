import ChildProcesses
import FoundationEssentials
import Logging
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// A private ZooKeeper server from Debian's `zookeeper` package, for tests and `herald demo`.
///
/// It listens on a free loopback port with a fresh temporary data directory. Its standard output and
/// error go to a log file in that directory, never to the caller's pipes, so a leftover server cannot
/// hold a CI job's output open. ``pause()``/``resume()`` (SIGSTOP/SIGCONT) simulate a hung server and
/// provoke session expiry; ``halt()`` and ``restart()`` simulate a crashed and restarted server.
/// Always ``stop()`` it (or use ``withLocalZooKeeper(logger:tickTime:isolation:_:)``).
public final class LocalZooKeeperServer: Sendable {
    /// Debian's launcher script; `start-foreground` execs `java`, so the spawned PID is the server itself.
    public static let scriptPath = "/usr/share/zookeeper/bin/zkServer.sh"

    /// The default tick: 500 ms, so sessions may be as short as 1 s (2 ticks) and at most 10 s (20 ticks),
    /// which keeps expiry tests fast.
    public static let defaultTickTime: Duration = .milliseconds(500)

    /// How long to wait for `ruok` to answer `imok`: a cold JVM on a busy 2-core machine can take
    /// several seconds.
    public static let startupTimeout: Duration = .seconds(30)

    /// How long ``stop()`` waits after SIGTERM before SIGKILL.
    public static let stopGracePeriod: Duration = .seconds(5)

    /// The loopback port the server listens on.
    public let port: UInt16
    /// The server's tick time.
    public let tickTime: Duration
    /// The temporary directory holding the configuration, the data and the log; removed by ``stop()``.
    public let directory: String
    /// The file receiving the server's standard output and error.
    public var logFilePath: String { directory + "/zookeeper.log" }
    /// The connection string for ``port``: `"127.0.0.1:PORT"`.
    public var connectionString: String { "127.0.0.1:\(port)" }
    /// The PID of the running server (the `java` process itself), or `nil` when halted or stopped.
    public var processID: Int32? { process.withLock { $0.child.map(\.processID) } }

    /// For a member of an ensemble: its id and every member's `server.N` line; `nil` for a standalone server.
    let membership: EnsembleMembership?
    private let logger: Logger
    private let process = Mutex(ProcessState())

    /// Starts a server and waits until it answers `ruok`.
    ///
    /// - Parameters:
    ///   - logger: Receives start/stop messages.
    ///   - tickTime: The server's tick; sessions may last 2 to 20 ticks.
    ///   - port: A fixed port, or `nil` to pick a free one (retrying on another port if it is taken meanwhile).
    /// - Returns: The running server.
    /// - Throws: ``LocalZooKeeperError`` if the package is missing or the server does not come up.
    public static func start(
        logger: Logger,
        tickTime: Duration = defaultTickTime,
        port: UInt16? = nil
    ) async throws -> LocalZooKeeperServer {
        guard FileManager.default.isExecutableFile(atPath: scriptPath) else {
            throw LocalZooKeeperError(
                "\(scriptPath) is missing; install Debian's zookeeper package: apt-get install zookeeper"
            )
        }
        let attempts = port == nil ? 3 : 1
        var lastError: (any Error)?
        for _ in 0..<attempts {
            let chosenPort = try port ?? freeLoopbackPort()
            let directory = try makeTemporaryDirectory()
            let server = LocalZooKeeperServer(
                port: chosenPort, tickTime: tickTime, directory: directory, logger: logger)
            do {
                try server.writeConfiguration()
                try await server.launch()
                return server
            } catch let error as LocalZooKeeperError where error.portInUse && port == nil {
                // Lost the race for the port between probing and the server binding it: try another.
                lastError = error
                await server.stop()
            } catch {
                await server.stop(keepDirectory: true)
                throw error
            }
        }
        throw lastError ?? LocalZooKeeperError("could not start ZooKeeper")
    }

    /// Stops the server process (SIGSTOP) so it neither answers nor expires sessions until ``resume()``.
    ///
    /// - Throws: ``LocalZooKeeperError`` if the server is not running.
    public func pause() throws {
        try signal(SIGSTOP)
    }

    /// Lets a paused server continue (SIGCONT); sessions whose timeout passed meanwhile then expire.
    ///
    /// - Throws: ``LocalZooKeeperError`` if the server is not running.
    public func resume() throws {
        try signal(SIGCONT)
    }

    /// Stops the server process but keeps its port and data directory, so ``restart()`` can bring the same
    /// server back: a crashed ZooKeeper server, as seen by clients.
    public func halt() async {
        await terminateProcess()
    }

    /// Stops the server (if running) and starts it again on the same port with the same data, so sessions
    /// that have not timed out meanwhile survive.
    ///
    /// - Throws: ``LocalZooKeeperError`` if the server does not come back.
    public func restart() async throws {
        guard !process.withLock({ $0.finished }) else { throw LocalZooKeeperError("the server was stopped for good") }
        await terminateProcess()
        try await launch()
    }

    /// Stops the server (SIGTERM, then SIGKILL after ``stopGracePeriod``), waits for it to exit and
    /// removes its temporary directory. Idempotent.
    public func stop() async {
        await stop(keepDirectory: false)
    }

    /// The last lines of the server's log, for error messages.
    ///
    /// - Parameter count: How many lines.
    /// - Returns: The lines, joined by newlines.
    public func logTail(lines count: Int = 20) -> String {
        guard let text = try? String(contentsOfFile: logFilePath, encoding: .utf8) else { return "(no log)" }
        return text.split(separator: "\n", omittingEmptySubsequences: false).suffix(count).joined(separator: "\n")
    }

    private init(
        port: UInt16, tickTime: Duration, directory: String, membership: EnsembleMembership? = nil, logger: Logger
    ) {
        self.port = port
        self.tickTime = tickTime
        self.directory = directory
        self.membership = membership
        var logger = logger
        logger[metadataKey: "zookeeper.port"] = "\(port)"
        self.logger = logger
    }
}

/// Starts a private ZooKeeper server, runs `body` with it and always stops it, even when `body` throws.
///
/// - Parameters:
///   - logger: Receives the server's start/stop messages.
///   - tickTime: The server's tick; sessions may last 2 to 20 ticks.
///   - isolation: The caller's isolation, inherited by `body`.
///   - body: Uses the server.
/// - Returns: What `body` returns.
/// - Throws: What `body` throws, or ``LocalZooKeeperError`` if the server cannot start.
public func withLocalZooKeeper<Result>(
    logger: Logger,
    tickTime: Duration = LocalZooKeeperServer.defaultTickTime,
    isolation: isolated (any Actor)? = #isolation,
    _ body: (LocalZooKeeperServer) async throws -> Result
) async throws -> Result {
    let server = try await LocalZooKeeperServer.start(logger: logger, tickTime: tickTime)
    do {
        let result = try await body(server)
        await server.stop()
        return result
    } catch {
        await server.stop()
        throw error
    }
}

/// Why a local ZooKeeper server could not be started or controlled.
public struct LocalZooKeeperError: Error, Sendable, CustomStringConvertible {
    /// What went wrong and where to look.
    public let description: String
    let portInUse: Bool

    init(_ description: String, portInUse: Bool = false) {
        self.description = description
        self.portInUse = portInUse
    }
}

// MARK: - Process management

extension LocalZooKeeperServer {
    private struct ProcessState {
        /// The running server, `nil` when halted or stopped.
        var child: ChildProcess?
        var finished = false
    }

    private var configurationPath: String { directory + "/zoo.cfg" }

    private func writeConfiguration() throws {
        let tickMilliseconds =
            tickTime.components.seconds * 1000
            + tickTime.components.attoseconds / 1_000_000_000_000_000
        let configuration = """
            tickTime=\(tickMilliseconds)
            dataDir=\(directory)/data
            clientPort=\(port)
            clientPortAddress=127.0.0.1
            admin.enableServer=false
            4lw.commands.whitelist=ruok,srvr,mntr
            preAllocSize=1024

            """ + (membership.map { "initLimit=10\nsyncLimit=5\n" + $0.serverLines.joined(separator: "\n") + "\n" } ?? "")
        do {
            try FileManager.default.createDirectory(atPath: directory + "/data", withIntermediateDirectories: true)
            try configuration.write(toFile: configurationPath, atomically: true, encoding: .utf8)
            if let membership {
                try "\(membership.id)\n".write(toFile: directory + "/data/myid", atomically: true, encoding: .utf8)
            }
        } catch {
            throw LocalZooKeeperError("cannot write the ZooKeeper configuration in \(directory): \(error)")
        }
    }

    /// Spawns the server and waits until it answers `ruok`.
    private func launch() async throws {
        let child = try await spawnServer()
        let pid = child.processID
        process.withLock { $0.child = child }
        logger.debug("ZooKeeper server starting", metadata: ["pid": "\(pid)", "directory": "\(directory)"])
        let clock = ContinuousClock()
        let deadline = clock.now + Self.startupTimeout
        while clock.now < deadline {
            if let status = child.exitCode {
                process.withLock { $0.child = nil }
                let tail = logTail()
                throw LocalZooKeeperError(
                    "ZooKeeper exited during startup (status \(status)); see \(logFilePath):\n\(tail)",
                    portInUse: tail.contains("Address already in use")
                )
            }
            // `ruok` answers as soon as the process runs; `srvr` reports a mode only once the database is
            // loaded and sessions are accepted, which spares clients a round of refused connections.
            if probe("ruok") == "imok", probe("srvr")?.contains("Mode:") == true {
                logger.debug("ZooKeeper server ready", metadata: ["pid": "\(pid)"])
                return
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        await terminateProcess()
        throw LocalZooKeeperError(
            "ZooKeeper did not answer 'ruok' on \(connectionString) within \(Self.startupTimeout); "
                + "see \(logFilePath):\n\(logTail())"
        )
    }

    private func spawnServer() async throws -> ChildProcess {
        // Debian's zkEnv.sh overrides ZOO_LOG_DIR, and JMX is of no use here; JVMFLAGS come last on the
        // java command line, so they win. A small heap and the C1 compiler keep many test servers cheap.
        let environment = [
            "ZOO_LOG_DIR": directory, "JMXDISABLE": "true",
            "JVMFLAGS": "-Dzookeeper.log.dir=\(directory) -Xmx128m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC",
        ]
        // Its output goes to the log file, never to the caller's pipes, and it leads its own process group: a
        // Ctrl-C meant for the runner's terminal group is not the server's business.
        do {
            return try await ChildProcess.start(
                name: "zookeeper", executable: Self.scriptPath, arguments: ["start-foreground", configurationPath],
                environment: environment, standardOutput: .file(logFilePath), standardError: .file(logFilePath),
                ownProcessGroup: true)
        } catch {
            throw LocalZooKeeperError("\(error)")
        }
    }

    private func signal(_ signal: Int32) throws {
        guard let child = process.withLock({ $0.child }), child.isRunning else {
            throw LocalZooKeeperError("the ZooKeeper server on port \(port) is not running")
        }
        child.signal(signal)
    }

    private func stop(keepDirectory: Bool) async {
        let first = process.withLock { state -> Bool in
            defer { state.finished = true }
            return !state.finished
        }
        await terminateProcess()
        if first && !keepDirectory {
            try? FileManager.default.removeItem(atPath: directory)
        }
    }

    /// SIGTERM (with SIGCONT, in case it is paused), SIGKILL after the grace period; waits for the exit.
    private func terminateProcess() async {
        guard
            let child = process.withLock({ state in
                defer { state.child = nil }
                return state.child
            })
        else { return }
        child.signal(SIGTERM)
        child.signal(SIGCONT)
        if await child.waitForExit(timeout: Self.stopGracePeriod) != nil {
            logger.debug("ZooKeeper server stopped", metadata: ["pid": "\(child.processID)"])
            return
        }
        logger.info("ZooKeeper server ignored SIGTERM; killing it", metadata: ["pid": "\(child.processID)"])
        child.signal(SIGKILL)
        await child.waitForExit(timeout: .seconds(30))
    }

    /// Sends a four-letter command and returns the answer, or `nil` if the server does not answer.
    func probe(_ command: String) -> String? {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var timeout = timeval(tv_sec: 1, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var address = loopbackAddress(port: port)
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard connected == 0 else { return nil }
        guard send(fd, command, command.utf8.count, Int32(MSG_NOSIGNAL)) == command.utf8.count else { return nil }
        var answer: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 256)
        while true {
            let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            guard count > 0 else { break }
            answer.append(contentsOf: buffer[..<count])
        }
        return String(decoding: answer, as: UTF8.self)
    }
}

// MARK: - Ports and directories

private func loopbackAddress(port: UInt16) -> sockaddr_in {
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = port.bigEndian
    address.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
    return address
}

/// Asks the kernel for a free loopback port. Another process may take it before the server binds it;
/// ``LocalZooKeeperServer/start(logger:tickTime:port:)`` retries on another port then.
private func freeLoopbackPort() throws -> UInt16 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw LocalZooKeeperError("socket(): \(String(cString: strerror(errno)))") }
    defer { close(fd) }
    var address = loopbackAddress(port: 0)
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer in
            bind(fd, pointer, length) == 0 && getsockname(fd, pointer, &length) == 0
        }
    }
    guard bound else { throw LocalZooKeeperError("cannot bind 127.0.0.1:0: \(String(cString: strerror(errno)))") }
    return UInt16(bigEndian: address.sin_port)
}

private func makeTemporaryDirectory() throws -> String {
    let base = ProcessInfo.processInfo.environment["TMPDIR"].flatMap { $0.isEmpty ? nil : $0 } ?? "/tmp"
    var template = Array("\(base)/herald-zookeeper-XXXXXX".utf8CString)
    guard let result = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
        throw LocalZooKeeperError("cannot create a temporary directory in \(base): \(String(cString: strerror(errno)))")
    }
    return String(cString: result)
}

/// A member's place in an ensemble.
struct EnsembleMembership: Sendable {
    var id: Int
    var serverLines: [String]
}

/// Several private ZooKeeper servers forming one ensemble on loopback, for tests of quorum behaviour: any one
/// member can be halted and restarted while the others keep serving.
public final class LocalZooKeeperEnsemble: Sendable {
    /// The members, in id order (id 1 first).
    public let members: [LocalZooKeeperServer]

    /// Every member's address, for clients: `127.0.0.1:P1,127.0.0.1:P2,...`.
    public var connectionString: String { members.map(\.connectionString).joined(separator: ",") }

    /// Starts `size` servers and waits until each serves (which needs a quorum).
    /// - Parameters:
    ///   - size: the number of members, 3 or more for a quorum that survives one loss.
    ///   - logger: receives start and stop messages.
    ///   - tickTime: the servers' tick.
    public static func start(
        size: Int = 3, logger: Logger, tickTime: Duration = LocalZooKeeperServer.defaultTickTime
    ) async throws -> LocalZooKeeperEnsemble {
        // Client, quorum and election ports must all differ, or ZooKeeper rejects the configuration; the
        // system may hand out a just-released port again, so draw until there are enough distinct ones.
        var distinct: [UInt16] = []
        while distinct.count < size * 3 {
            let port = try freeLoopbackPort()
            if !distinct.contains(port) { distinct.append(port) }
        }
        let ports: [(UInt16, UInt16, UInt16)] = (0..<size).map { index in
            let base = index * 3
            return (distinct[base], distinct[base + 1], distinct[base + 2])
        }
        let lines = ports.enumerated().map { index, port in
            "server.\(index + 1)=127.0.0.1:\(port.1):\(port.2)"
        }
        var members: [LocalZooKeeperServer] = []
        for (index, port) in ports.enumerated() {
            members.append(
                try LocalZooKeeperServer.member(
                    port: port.0, tickTime: tickTime,
                    membership: EnsembleMembership(id: index + 1, serverLines: lines), logger: logger))
        }
        let ensemble = LocalZooKeeperEnsemble(members: members)
        do {
            // A member reports a mode only once a quorum formed, so they must start together.
            try await withThrowingTaskGroup(of: Void.self) { group in
                for member in members { group.addTask { try await member.launchMember() } }
                try await group.waitForAll()
            }
        } catch {
            await ensemble.stop()
            throw error
        }
        return ensemble
    }

    private init(members: [LocalZooKeeperServer]) { self.members = members }

    /// Stops every member and removes their directories. Idempotent.
    public func stop() async {
        for member in members { await member.stop() }
    }
}

extension LocalZooKeeperServer {
    static func member(
        port: UInt16, tickTime: Duration, membership: EnsembleMembership, logger: Logger
    ) throws -> LocalZooKeeperServer {
        let server = LocalZooKeeperServer(
            port: port, tickTime: tickTime, directory: try makeTemporaryDirectory(), membership: membership,
            logger: logger)
        try server.writeConfiguration()
        return server
    }

    func launchMember() async throws {
        try await launch()
    }
}
