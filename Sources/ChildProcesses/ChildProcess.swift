import Subprocess
import Synchronization

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// A child process whose standard output and standard error are read as they arrive, line by line, or go to files.
///
/// The one way Herald starts and watches processes: `herald demo`, `herald bench` and the integration tests all
/// use it. It runs on swift-subprocess, which launches with `posix_spawn`, reads the pipes on its own I/O thread
/// and learns of the exit through a pidfd, so neither another child's reaping nor a busy pipe can hide it.
public final class ChildProcess: Sendable {
    /// What is done with one output stream.
    public enum Output: Sendable {
        /// Read and thrown away, so the child never blocks on a full pipe.
        case discard
        /// Each line, without its newline, handed to the closure on the reading task as soon as it is complete.
        /// The closure must be quick: the child blocks once the pipe is full.
        case lines(@Sendable (ArraySlice<UInt8>) -> Void)
        /// Appended to the file at this path, created if need be: a server's log, or output read afterwards. The
        /// child writes to the file itself; nothing in this process wakes up for it.
        case file(String)
    }

    /// Where a stream's bytes go, once files are open.
    private enum Sink: Sendable {
        case discard
        case lines(@Sendable (ArraySlice<UInt8>) -> Void)
        case file(descriptor: Int32)
    }

    /// A short name for messages: `broker b1`, `subscriber`, ...
    public let name: String
    /// The arguments after the executable.
    public let arguments: [String]

    private let state = Mutex(State())

    private struct State {
        var processID: Int32 = 0
        var exitCode: Int32?
        var streamsEnded = 0
        var signal: (@Sendable (Int32) -> Void)?
    }

    /// Starts `executable` with `arguments`, this process's environment with `environment` laid over it, and
    /// standard input on `/dev/null`.
    /// - Parameters:
    ///   - name: a short name for messages.
    ///   - executable: the path of the program.
    ///   - arguments: its arguments.
    ///   - environment: variables added to, or replacing, the inherited ones.
    ///   - standardOutput: what to do with its standard output.
    ///   - standardError: what to do with its standard error.
    ///   - ownProcessGroup: whether the child leads a process group of its own, so that a Ctrl-C meant for this
    ///     process's terminal does not reach it before this process has stopped it in order.
    /// - Returns: once the child runs.
    /// - Throws: ``ChildProcessError`` when it cannot be started, for example because the executable is missing.
    public static func start(
        name: String, executable: String, arguments: [String], environment: [String: String] = [:],
        standardOutput: Output = .discard, standardError: Output = .discard, ownProcessGroup: Bool = false
    ) async throws(ChildProcessError) -> ChildProcess {
        let outputSink = try sink(for: standardOutput, executable: executable)
        let errorSink: Sink
        do {
            errorSink = try sink(for: standardError, executable: executable)
        } catch {
            if case .file(let descriptor) = outputSink { close(descriptor) }
            throw error
        }
        var options = PlatformOptions()
        if ownProcessGroup { options.processGroupID = 0 }
        let child = ChildProcess(name: name, arguments: arguments)
        let started = AsyncStream<Result<Void, ChildProcessError>>.makeStream()
        let overrides = Dictionary(
            uniqueKeysWithValues: environment.map { (Environment.Key(stringLiteral: $0.key), Optional($0.value)) })
        Task {
            do {
                let configuration = Configuration(
                    executable: .path(.init(executable)), arguments: Arguments(arguments),
                    environment: .inherit.updating(overrides), platformOptions: options)
                // A stream going to a file is handed to the child as its descriptor; the others are piped and
                // read. Subprocess names its streams by type, hence one call per combination.
                let code: Int32
                switch (outputSink, errorSink) {
                case (.file(let output), .file(let error)):
                    code = try await child.run(
                        configuration, output: .fileDescriptor(.init(rawValue: output), closeAfterSpawningProcess: false),
                        error: .fileDescriptor(.init(rawValue: error), closeAfterSpawningProcess: false),
                        started: started.continuation, readers: { _ in [] })
                case (.file(let output), _):
                    code = try await child.run(
                        configuration, output: .fileDescriptor(.init(rawValue: output), closeAfterSpawningProcess: false),
                        error: .sequence, started: started.continuation,
                        readers: { execution in [(execution.standardError, errorSink)] })
                case (_, .file(let error)):
                    code = try await child.run(
                        configuration, output: .sequence,
                        error: .fileDescriptor(.init(rawValue: error), closeAfterSpawningProcess: false),
                        started: started.continuation,
                        readers: { execution in [(execution.standardOutput, outputSink)] })
                default:
                    code = try await child.run(
                        configuration, output: .sequence, error: .sequence, started: started.continuation,
                        readers: { execution in
                            [(execution.standardOutput, outputSink), (execution.standardError, errorSink)]
                        })
                }
                child.ended(code)
            } catch {
                started.continuation.yield(.failure(ChildProcessError(executable: executable, reason: "\(error); check that it exists and is executable")))
                child.ended(127)
            }
            for sink in [outputSink, errorSink] {
                if case .file(let descriptor) = sink { close(descriptor) }
            }
            started.continuation.finish()
        }
        for await outcome in started.stream {
            try outcome.get()
            break
        }
        return child
    }

    /// Runs the configured child until it exits, reading the streams `readers` gives; those it does not give go
    /// to files and count as read.
    /// - Returns: its exit code.
    private func run<Output: OutputProtocol, Error: ErrorOutputProtocol>(
        _ configuration: Configuration, output: Output, error: Error,
        started: AsyncStream<Result<Void, ChildProcessError>>.Continuation,
        readers: (borrowing Execution<NoInput, Output, Error>) -> [(SubprocessOutputSequence, Sink)]
    ) async throws -> Int32 {
        let result = try await Subprocess.run(configuration, input: .none, output: output, error: error) { execution in
            began(execution.processIdentifier.value) { signal in
                try? execution.send(signal: Signal(rawValue: signal))
            }
            started.yield(.success(()))
            let streams = readers(execution)
            state.withLock { $0.streamsEnded += 2 - streams.count }
            await withTaskGroup(of: Void.self) { group in
                for (stream, sink) in streams { group.addTask { await self.read(stream, into: sink) } }
            }
            // Streams that go to files end with nothing to read, and a child may close its pipes and run on; it
            // must stay signallable (stoppable) until it has ended.
            await Self.waitUntilEnded(execution.processIdentifier)
            // The execution, and the pidfd it signals through, must not outlive this closure: once `run` closes
            // the descriptor, its number may name another child's.
            stopSignalling()
        }
        return result.terminationStatus.exitCode
    }

    /// Returns once the child has ended (Subprocess reaps it only after the closure that runs it returns), or
    /// when the task is cancelled.
    private static func waitUntilEnded(_ identifier: ProcessIdentifier) async {
        while true {
            if identifier.processDescriptor >= 0 {
                // A pidfd turns readable when its process ends; an error means there is nothing left to wait for.
                var entry = pollfd(fd: identifier.processDescriptor, events: Int16(POLLIN), revents: 0)
                let ready = poll(&entry, 1, 0)
                if ready > 0 || (ready < 0 && errno != EINTR) { return }
            } else if ProcFile.read("/proc/\(identifier.value)/stat").map({ Self.isZombie($0) }) ?? true {
                return
            }
            // A child whose output all goes to files (a ZooKeeper server) is looked at for as long as it runs:
            // often enough that stopping it is prompt, seldom enough not to wake a core for nothing while a
            // benchmark measures.
            do { try await Task.sleep(for: .milliseconds(50)) } catch { return }
        }
    }

    /// Whether a `/proc/PID/stat` line says the process has exited and waits to be reaped.
    private static func isZombie(_ stat: String) -> Bool {
        guard let close = stat.lastIndex(of: ")") else { return true }
        return stat[close...].dropFirst().drop(while: { $0 == " " }).first == "Z"
    }

    private init(name: String, arguments: [String]) {
        self.name = name
        self.arguments = arguments
    }

    /// The process ID.
    public var processID: Int32 { state.withLock { $0.processID } }

    /// Whether the process still runs (or its output is still being read).
    public var isRunning: Bool { state.withLock { $0.exitCode == nil } }

    /// The exit code once it ended: its status, or 128 + the signal that killed it.
    public var exitCode: Int32? { state.withLock { $0.exitCode } }

    /// Whether both output streams reached their end: every line the process wrote was handed over.
    public var outputEnded: Bool { state.withLock { $0.streamsEnded == 2 } }

    /// Sends `signal` (SIGTERM, SIGKILL, ...) if the process still runs.
    ///
    /// Once both output streams have ended the process is taken to be exiting, and nothing is sent.
    public func signal(_ signal: Int32) {
        // Sent under the lock, so that `stopSignalling()` cannot let the descriptor close in between.
        state.withLock { $0.signal?(signal) }
    }

    /// Waits until the process ended and its output was read.
    /// - Returns: its exit code, or `nil` when `timeout` passed first.
    @discardableResult
    public func waitForExit(timeout: Duration) async -> Int32? {
        // Polling keeps a timed-out wait from leaving a waiter behind; exits are rare and 10 ms is fine for them.
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let code = exitCode { return code }
            try? await Task.sleep(for: .milliseconds(10))
        }
        return exitCode
    }

    /// SIGTERM, then SIGKILL if the process is still there after `grace`.
    /// - Returns: its exit code, or `nil` if even SIGKILL did not end it within 5 s.
    @discardableResult
    public func stop(grace: Duration = .seconds(5)) async -> Int32? {
        signal(SIGTERM)
        if let code = await waitForExit(timeout: grace) { return code }
        signal(SIGKILL)
        return await waitForExit(timeout: .seconds(5))
    }

    /// Resident memory from `/proc/PID/status` (`VmRSS`), in kilobytes; `nil` once the process is gone.
    public var residentKilobytes: Int? {
        guard isRunning, let text = ProcFile.read("/proc/\(processID)/status") else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("VmRSS:") {
            return Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "")
        }
        return nil
    }

    /// The path of the running executable, for starting more of itself: `herald demo` and `herald bench` run
    /// `herald` children.
    public static var currentExecutable: String {
        var buffer = [UInt8](repeating: 0, count: Int(PATH_MAX) + 1)
        let count = buffer.withUnsafeMutableBufferPointer { bytes in
            bytes.withMemoryRebound(to: CChar.self) { readlink("/proc/self/exe", $0.baseAddress!, $0.count - 1) }
        }
        return count > 0 ? String(decoding: buffer[..<count], as: UTF8.self) : "/proc/self/exe"
    }

    // MARK: - Private

    private func began(_ processID: Int32, signal: @escaping @Sendable (Int32) -> Void) {
        state.withLock {
            $0.processID = processID
            $0.signal = signal
        }
    }

    private func stopSignalling() {
        state.withLock { $0.signal = nil }
    }

    private func ended(_ code: Int32) {
        state.withLock { state in
            guard state.exitCode == nil else { return }
            state.exitCode = code
            state.signal = nil
        }
    }

    /// Opens what an output needs.
    private static func sink(for output: Output, executable: String) throws(ChildProcessError) -> Sink {
        switch output {
        case .discard:
            return .discard
        case .lines(let handle):
            return .lines(handle)
        case .file(let path):
            let descriptor = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
            guard descriptor >= 0 else {
                throw ChildProcessError(
                    executable: executable, reason: "cannot open \(path): \(String(cString: strerror(errno)))")
            }
            return .file(descriptor: descriptor)
        }
    }

    /// Reads one stream to its end, splitting lines across reads.
    private func read(_ stream: SubprocessOutputSequence, into sink: Sink) async {
        defer { state.withLock { $0.streamsEnded += 1 } }
        var lines = LineBuffer()
        do {
            for try await buffer in stream {
                switch sink {
                case .discard, .file:
                    continue
                case .lines(let handle):
                    buffer.withUnsafeBytes { lines.append($0, lines: handle) }
                }
            }
        } catch {
            // The pipe failed: what was read is all there is.
        }
        if case .lines(let handle) = sink { lines.finish(handle) }
    }
}

/// Bytes that arrive in chunks, handed on as whole lines: a line cut across two chunks waits for its end.
public struct LineBuffer: Sendable {
    private var pending: [UInt8] = []

    public init() {}

    /// Appends `bytes` and hands each line it completes to `body`, without its newline.
    public mutating func append(_ bytes: UnsafeRawBufferPointer, lines body: (ArraySlice<UInt8>) -> Void) {
        pending.append(contentsOf: bytes)
        var start = 0
        while let newline = Self.newline(in: pending, from: start) {
            body(pending[start..<newline])
            start = newline + 1
        }
        if start > 0 { pending.removeFirst(start) }
    }

    /// Hands on a last line that has no newline, if there is one.
    public mutating func finish(_ body: (ArraySlice<UInt8>) -> Void) {
        if !pending.isEmpty { body(pending[...]) }
        pending = []
    }

    /// The index of the next newline from `start`, found with memchr: a subscriber prints hundreds of megabytes a
    /// second in the benchmark, and the reader must not be what slows it.
    private static func newline(in bytes: [UInt8], from start: Int) -> Int? {
        bytes.withUnsafeBytes { buffer in
            guard start < buffer.count, let base = buffer.baseAddress,
                let found = memchr(base + start, 10, buffer.count - start)
            else { return nil }
            return base.distance(to: UnsafeRawPointer(found))
        }
    }
}

/// A child process could not be started.
public struct ChildProcessError: Error, CustomStringConvertible {
    /// The program that was to run.
    public var executable: String
    /// Why not: what swift-subprocess reported, or the file that could not be opened.
    public var reason: String

    public var description: String {
        "cannot start \(executable): \(reason)"
    }
}

extension TerminationStatus {
    /// The shell's convention: the exit status, or 128 + the signal.
    fileprivate var exitCode: Int32 {
        switch self {
        case .exited(let code): code
        case .signaled(let signal): 128 + signal
        }
    }
}

/// Reads small files under `/proc` without Foundation.
enum ProcFile {
    static func read(_ path: String) -> String? {
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { return nil }
        defer { close(descriptor) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while bytes.count < 1 << 20 {
            let count = chunk.withUnsafeMutableBytes { Glibc.read(descriptor, $0.baseAddress, $0.count) }
            if count < 0, errno == EINTR { continue }
            guard count > 0 else { break }
            bytes += chunk[..<count]
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
