import Foundation
import Herald
import Synchronization

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
    /// Thrown away (`/dev/null`).
    case discard
    /// Lines counted, nothing kept: throughput runs.
    case count
    /// `herald subscribe --json` lines parsed and kept: latency and failover runs.
    case messages
}

/// A `herald` child process started by the benchmark: the same executable, with its own environment.
///
/// Standard output and standard error are read on dedicated threads with large reads, so a subscriber
/// printing hundreds of thousands of lines a second is never slowed by its pipe.
final class BenchChild: Sendable {
    let name: String
    let arguments: [String]
    private let process: Process
    private let lineCount = Atomic<Int>(0)
    private let firstLineAt = Atomic<UInt64>(0)
    private let kept = Mutex<[BenchMessage]>([])
    private let errorText = Mutex<[UInt8]>([])
    private let readersLeft = Atomic<Int>(0)

    /// Starts `herald ARGUMENTS` with `environment` added to this process's environment.
    init(name: String, arguments: [String], environment: [String: String], output: BenchOutput) throws {
        self.name = name
        self.arguments = arguments
        process = Process()
        process.executableURL = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        // The children are `herald` itself: the benchmark runs inside `herald bench`.
        process.arguments = arguments
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { _, new in new }
        process.standardInput = FileHandle.nullDevice
        let errorPipe = Pipe()
        process.standardError = errorPipe
        var outputPipe: Pipe?
        if case .discard = output {
            process.standardOutput = FileHandle.nullDevice
        } else {
            outputPipe = Pipe()
            process.standardOutput = outputPipe
        }
        try process.run()
        readersLeft.store(outputPipe == nil ? 1 : 2, ordering: .sequentiallyConsistent)
        let errorDescriptor = errorPipe.fileHandleForReading.fileDescriptor
        Thread.detachNewThread { [self] in
            readLines(errorDescriptor) { line, _ in
                errorText.withLock {
                    $0.append(contentsOf: line)
                    $0.append(10)
                    if $0.count > 1 << 20 { $0.removeFirst($0.count - (1 << 19)) }
                }
            }
        }
        if let outputPipe {
            let descriptor = outputPipe.fileHandleForReading.fileDescriptor
            let parse: Bool
            if case .messages = output { parse = true } else { parse = false }
            Thread.detachNewThread { [self] in
                readLines(descriptor) { line, readAt in
                    if lineCount.load(ordering: .relaxed) == 0 { firstLineAt.store(readAt, ordering: .relaxed) }
                    lineCount.add(1, ordering: .relaxed)
                    if parse, let message = BenchMessage(line: line, readAt: readAt) {
                        kept.withLock { $0.append(message) }
                    }
                }
            }
        }
        // Keep the pipes alive as long as the readers use their descriptors.
        withExtendedLifetime(errorPipe) {}
    }

    var processID: Int32 { process.processIdentifier }

    /// Running and not a zombie. Foundation reaps children on its own thread and was seen to leave one unreaped
    /// for a minute on a loaded machine, with `isRunning` still true: `/proc/PID/stat` settles it.
    var isRunning: Bool {
        guard process.isRunning else { return false }
        guard let stat = try? String(contentsOfFile: "/proc/\(processID)/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")")
        else { return false }
        let state = stat[stat.index(after: close)...].trimmingCharacters(in: .whitespaces).first
        return state != "Z" && state != "X"
    }
    /// Lines read from standard output so far.
    var lines: Int { lineCount.load(ordering: .relaxed) }
    /// Wall-clock time of the first line, 0 before it.
    var firstLineTime: UInt64 { firstLineAt.load(ordering: .relaxed) }
    /// Parsed messages so far (`.messages` output only).
    var messages: [BenchMessage] { kept.withLock { $0 } }
    /// Everything the child wrote to standard error.
    var standardError: String { errorText.withLock { String(decoding: $0, as: UTF8.self) } }

    func signal(_ signal: Int32) {
        if isRunning { kill(process.processIdentifier, signal) }
    }

    /// Resident memory from `/proc/PID/status` (`VmRSS`), in kilobytes.
    var residentKilobytes: Int? {
        guard let text = try? String(contentsOfFile: "/proc/\(processID)/status", encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("VmRSS:") {
            return Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "")
        }
        return nil
    }

    /// Waits for the process to exit and its pipes to drain; SIGKILL after `timeout`.
    @discardableResult
    func waitForExit(timeout: Duration) async -> Bool {
        let deadline = ContinuousClock.now + timeout
        while isRunning, ContinuousClock.now < deadline { try? await Task.sleep(for: .milliseconds(10)) }
        let exited = !isRunning
        if !exited {
            kill(process.processIdentifier, SIGKILL)
            let killDeadline = ContinuousClock.now + .seconds(5)
            while isRunning, ContinuousClock.now < killDeadline { try? await Task.sleep(for: .milliseconds(10)) }
        }
        let drainDeadline = ContinuousClock.now + .seconds(2)
        while readersLeft.load(ordering: .sequentiallyConsistent) > 0, ContinuousClock.now < drainDeadline {
            try? await Task.sleep(for: .milliseconds(5))
        }
        return exited
    }

    /// SIGTERM, then SIGKILL if the process is still there after `grace`.
    func stop(grace: Duration = .seconds(5)) async {
        signal(SIGTERM)
        await waitForExit(timeout: grace)
    }

    /// `herald subscribe`'s closing line: received, lost, duplicates, reordered.
    var subscriberSummary: (received: Int, lost: Int, duplicates: Int, reordered: Int)? {
        guard let line = standardError.split(separator: "\n").last(where: { $0.contains("herald subscribe: received") })
        else { return nil }
        let numbers = line.split(whereSeparator: { !$0.isNumber }).compactMap { Int($0) }
        guard numbers.count >= 4 else { return nil }
        return (numbers[0], numbers[1], numbers[2], numbers[3])
    }

    /// The index of the next newline from `start`, found with memchr: lines of 16 KiB payloads arrive at
    /// hundreds of megabytes a second, and the reader must not be what slows the run.
    private static func newline(in bytes: [UInt8], from start: Int) -> Int? {
        bytes.withUnsafeBytes { buffer in
            guard start < buffer.count, let base = buffer.baseAddress,
                let found = memchr(base + start, 10, buffer.count - start)
            else { return nil }
            return base.distance(to: UnsafeRawPointer(found))
        }
    }

    /// Reads `descriptor` to its end in 256 KiB chunks and hands each complete line to `body`.
    private func readLines(_ descriptor: Int32, _ body: (ArraySlice<UInt8>, UInt64) -> Void) {
        defer { readersLeft.subtract(1, ordering: .sequentiallyConsistent) }
        var chunk = [UInt8](repeating: 0, count: 1 << 18)
        var pending: [UInt8] = []
        while true {
            let count = chunk.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
            if count < 0, errno == EINTR { continue }
            guard count > 0 else { break }
            let readAt = wallClockNanoseconds()
            pending.append(contentsOf: chunk[0..<count])
            var start = 0
            while let newline = Self.newline(in: pending, from: start) {
                body(pending[start..<newline], readAt)
                start = newline + 1
            }
            if start > 0 { pending.removeFirst(start) }
        }
        if !pending.isEmpty { body(pending[...], wallClockNanoseconds()) }
    }
}

/// Every child of one benchmark run, so none outlives it.
final class BenchProcessSet: Sendable {
    private let children = Mutex<[BenchChild]>([])

    func start(_ name: String, _ arguments: [String], environment: [String: String], output: BenchOutput = .discard)
        throws -> BenchChild
    {
        let child = try BenchChild(name: name, arguments: arguments, environment: environment, output: output)
        children.withLock { $0.append(child) }
        return child
    }

    /// SIGTERM to every running child, then SIGKILL to those still running after a grace period.
    func stopAll() async {
        let all = children.withLock { list in
            defer { list.removeAll() }
            return list
        }
        for child in all { child.signal(SIGTERM) }
        for child in all { await child.waitForExit(timeout: .seconds(5)) }
    }
}
