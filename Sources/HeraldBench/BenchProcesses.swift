import ChildProcesses
import Herald
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// Nanoseconds since the Unix epoch, the clock `herald publish` stamps `sent_at_ns` with.
func wallClockNanoseconds() -> UInt64 {
    var time = timespec()
    clock_gettime(CLOCK_REALTIME, &time)
    return UInt64(time.tv_sec) * 1_000_000_000 + UInt64(time.tv_nsec)
}

/// One message line of `herald subscribe --json`, the fields the benchmark needs, and when it was read.
struct BenchMessage: Sendable {
    var topic: String
    var publisher: String
    var sequence: UInt64
    var sentAt: UInt64
    var latencyMicroseconds: Int64
    /// When the benchmark read the line (wall clock, nanoseconds).
    var readAt: UInt64

    /// Parses a line with the codec the subscriber writes with.
    init?(line: ArraySlice<UInt8>, readAt: UInt64) {
        guard let parsed = MessageLine(line) else { return nil }
        topic = parsed.topic
        publisher = parsed.publisher
        sequence = parsed.sequence
        sentAt = parsed.sentAt
        latencyMicroseconds = parsed.latencyMicroseconds
        self.readAt = readAt
    }
}

/// What a child's standard output is used for.
enum BenchOutput: Sendable {
    /// Read and thrown away.
    case discard
    /// Lines counted, nothing kept: throughput runs.
    case count
    /// `herald subscribe --json` lines parsed and kept as they are read: failover runs, which time their arrival.
    case messages
    /// `herald subscribe --json` lines written by the child straight to a file, parsed when asked for: latency
    /// runs. The raw baselines record in-process; reading a pipe line by line as it arrives cost this process
    /// a fifth of a core at 10,000 msg/s, load on the machine that only Herald's measurements carried.
    case messagesInFile
}

/// A `herald` child process started by the benchmark, with what it printed: a line count, parsed messages,
/// the tail of its standard error.
final class BenchChild: Sendable {
    let process: ChildProcess
    private let recorder: Recorder

    /// What the readers record, shared with their closures.
    private final class Recorder: Sendable {
        let lineCount = Atomic<Int>(0)
        let kept = Mutex<[BenchMessage]>([])
        let errorText = Mutex<[UInt8]>([])
        /// `.messagesInFile`: the file the child writes, read up to where the last call stopped.
        let file: Mutex<OutputFile?>

        init(file: consuming OutputFile?) { self.file = Mutex(file) }

        func record(_ line: ArraySlice<UInt8>, parse: Bool) {
            lineCount.add(1, ordering: .relaxed)
            if parse, let message = BenchMessage(line: line, readAt: wallClockNanoseconds()) {
                kept.withLock { $0.append(message) }
            }
        }

        /// Reads and records what the child wrote to its file since the last call.
        func catchUp() {
            file.withLock { file in
                guard var open = file.take() else { return }
                open.readNewLines { record($0, parse: true) }
                file = consume open
            }
        }
    }

    /// Starts `herald ARGUMENTS` with `environment` added to this process's environment.
    init(name: String, arguments: [String], environment: [String: String], output: BenchOutput) async throws {
        let standardOutput: ChildProcess.Output
        let recorder: Recorder
        switch output {
        case .discard:
            recorder = Recorder(file: nil)
            standardOutput = .discard
        case .count, .messages:
            recorder = Recorder(file: nil)
            let parse: Bool
            if case .messages = output { parse = true } else { parse = false }
            standardOutput = .lines { line in recorder.record(line, parse: parse) }
        case .messagesInFile:
            let file = try OutputFile()
            standardOutput = .file(file.path)
            recorder = Recorder(file: file)
        }
        let standardError = ChildProcess.Output.lines { line in
            recorder.errorText.withLock {
                $0.append(contentsOf: line)
                $0.append(10)
                if $0.count > 1 << 20 { $0.removeFirst($0.count - (1 << 19)) }
            }
        }
        // The children are `herald` itself: the benchmark runs inside `herald bench`.
        process = try await ChildProcess.start(
            name: name, executable: ChildProcess.currentExecutable, arguments: arguments, environment: environment,
            standardOutput: standardOutput, standardError: standardError)
        self.recorder = recorder
    }

    /// Lines read from standard output so far.
    var lines: Int {
        recorder.catchUp()
        return recorder.lineCount.load(ordering: .relaxed)
    }
    /// Parsed messages so far (`.messages` and `.messagesInFile` output only).
    var messages: [BenchMessage] {
        recorder.catchUp()
        return recorder.kept.withLock { $0 }
    }
    /// Parsed messages so far, handed over: the next call returns only those read after this one.
    func takeMessages() -> [BenchMessage] {
        recorder.catchUp()
        return recorder.kept.withLock { kept in
            defer { kept = [] }
            return kept
        }
    }
    /// Everything the child wrote to standard error (its last 512 KiB at least).
    var standardError: String { recorder.errorText.withLock { String(decoding: $0, as: UTF8.self) } }
    /// Resident memory in kilobytes.
    var residentKilobytes: Int? { process.residentKilobytes }

    func signal(_ signal: Int32) { process.signal(signal) }

    /// Waits for the process to exit and its output to be read; SIGKILL after `timeout`.
    /// - Returns: whether it exited by itself within `timeout`.
    @discardableResult
    func waitForExit(timeout: Duration) async -> Bool {
        if await process.waitForExit(timeout: timeout) != nil { return true }
        process.signal(SIGKILL)
        await process.waitForExit(timeout: .seconds(5))
        return false
    }

    /// SIGTERM, then SIGKILL if the process is still there after `grace`.
    func stop(grace: Duration = .seconds(5)) async {
        await process.stop(grace: grace)
    }

    /// `herald subscribe`'s closing line, read with the codec the subscriber writes it with.
    var subscriberSummary: (received: Int, lost: Int, duplicates: Int, reordered: Int)? {
        guard let summary = standardError.split(separator: "\n").compactMap({ SubscriptionSummary(line: $0) }).last
        else { return nil }
        return (
            summary.received, Int(clamping: summary.lost), Int(clamping: summary.duplicates),
            Int(clamping: summary.reordered)
        )
    }
}

/// Every child of one benchmark run, so none outlives it.
final class BenchProcessSet: Sendable {
    private let children = Mutex<[BenchChild]>([])

    func start(_ name: String, _ arguments: [String], environment: [String: String], output: BenchOutput = .discard)
        async throws -> BenchChild
    {
        let child = try await BenchChild(name: name, arguments: arguments, environment: environment, output: output)
        children.withLock { $0.append(child) }
        return child
    }

    /// SIGTERM to every running child, then SIGKILL to those still running after a grace period.
    func stopAll() async {
        let all = children.withLock { list in
            defer { list.removeAll() }
            return list
        }
        await withTaskGroup(of: Void.self) { group in
            for child in all { group.addTask { await child.stop() } }
        }
    }
}

/// A file a child writes its standard output to, read from where the last read stopped; removed with the last
/// reference to it.
struct OutputFile: ~Copyable, Sendable {
    let path: String
    private let descriptor: Int32
    /// A line not yet ended when the file was last read.
    private var lines = LineBuffer()

    /// Creates an empty file in the temporary directory.
    init() throws(BenchError) {
        let directory = getenv("TMPDIR").map { String(cString: $0) } ?? "/tmp"
        var template = Array("\(directory)/herald-bench-output-XXXXXX".utf8CString)
        let descriptor = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        guard descriptor >= 0 else {
            throw BenchError("cannot create a file in \(directory) for a subscriber's output: \(String(cString: strerror(errno))); set TMPDIR to a writable directory")
        }
        self.descriptor = descriptor
        path = template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
    }

    deinit {
        close(descriptor)
        unlink(path)
    }

    /// Hands each whole line written since the last call to `body`, without its newline.
    mutating func readNewLines(_ body: (ArraySlice<UInt8>) -> Void) {
        var chunk = [UInt8](repeating: 0, count: 1 << 18)
        while true {
            let count = chunk.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
            if count < 0, errno == EINTR { continue }
            guard count > 0 else { break }
            chunk.withUnsafeBytes { lines.append(UnsafeRawBufferPointer(rebasing: $0[..<count]), lines: body) }
        }
    }
}
