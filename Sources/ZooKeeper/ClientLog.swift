internal import CZooKeeper
import FoundationEssentials
import OSThreads
import Logging
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

extension ZooKeeperSession {
    /// Routes the ZooKeeper C client's own log messages to `logger`, for the whole process.
    ///
    /// The C client's log callback carries no context pointer, so its messages cannot be attributed to a
    /// session: they go to one process-wide logger. Without this call the logger of the first
    /// ``ZooKeeperSession`` created in the process is used. Nothing ever goes to standard error raw.
    /// C levels map to swift-log levels as a library should log: ERROR and WARN → `info`,
    /// INFO → `debug`, DEBUG → `trace`; the C level is kept in the `zookeeper.level` metadata.
    ///
    /// - Parameter logger: The logger that receives the C client's messages from now on.
    public static func routeClientLibraryLog(to logger: Logger) {
        ClientLog.install(logger, replacing: true)
    }
}

// MARK: - Process-wide sink

enum ClientLog {
    private static let sink = Mutex<Logger?>(nil)

    /// Makes `logger` the sink if none is set yet (or always, if `replacing`).
    static func install(_ logger: Logger, replacing: Bool = false) {
        _ = globalLogStreamInstalled
        let installed = sink.withLock { sink -> Bool in
            guard replacing || sink == nil else { return false }
            sink = logger
            return true
        }
        guard installed else { return }
        // Formatting messages nobody reads is wasted work on the client's threads.
        switch logger.logLevel {
        case .trace: zoo_set_debug_level(ZOO_LOG_LEVEL_DEBUG)
        case .debug: zoo_set_debug_level(ZOO_LOG_LEVEL_INFO)
        default: zoo_set_debug_level(ZOO_LOG_LEVEL_WARN)
        }
    }

    /// Forwards one formatted C message, `"<time>:<pid>(0x<tid>):ZOO_INFO@<function>@<line>: <text>"`.
    static func forward(_ line: String) {
        guard let logger = sink.withLock({ $0 }) else { return }
        let levels: [(String, Logger.Level)] = [
            ("ZOO_ERROR@", .info), ("ZOO_WARN@", .info), ("ZOO_INFO@", .debug), ("ZOO_DEBUG@", .trace),
        ]
        var level = Logger.Level.info
        var cLevel = "UNKNOWN"
        var text = Substring(line)
        for (marker, mapped) in levels {
            guard let range = line.firstRange(of: marker) else { continue }
            level = mapped
            cLevel = String(marker.dropFirst(4).dropLast())
            if let textStart = line[range.upperBound...].firstRange(of: ": ") {
                text = line[textStart.upperBound...]
            }
            break
        }
        while text.last == "\n" { text.removeLast() }
        logger.log(level: level, "\(text)", metadata: ["zookeeper.level": "\(cLevel)"], source: "CZooKeeper")
    }

    /// Replaces the C client's default log stream (stderr) by a pipe read into the sink, so that messages
    /// logged without a handle, and so without the per-handle callback, do not reach stderr raw either.
    /// The reader thread lives as long as the process.
    private static let globalLogStreamInstalled: Bool = {
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { return false }
        // Not inherited by child processes (such as a ZooKeeper server started by tests).
        _ = fcntl(fds[0], F_SETFD, FD_CLOEXEC)
        _ = fcntl(fds[1], F_SETFD, FD_CLOEXEC)
        guard let stream = fdopen(fds[1], "w") else {
            close(fds[0])
            close(fds[1])
            return false
        }
        let readEnd = fds[0]
        do {
            try OSThread.start(name: "zk-client-log") { drain(readEnd) }
        } catch {
            // Without a reader the pipe would fill and block the C client: it keeps writing to stderr.
            fclose(stream)
            close(readEnd)
            return false
        }
        setvbuf(stream, nil, _IOLBF, 0)
        zoo_set_log_stream(stream)
        return true
    }()

    private static func drain(_ fd: Int32) {
        var pending: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { return }
            pending.append(contentsOf: buffer[..<count])
            while let newline = pending.firstIndex(of: UInt8(ascii: "\n")) {
                forward(String(decoding: pending[..<newline], as: UTF8.self))
                pending.removeSubrange(...newline)
            }
        }
    }
}

/// The per-handle log callback given to `zookeeper_init2`; called on the client's threads.
let clientLogCallback: log_callback_fn = { message in
    guard let message else { return }
    ClientLog.forward(String(cString: message))
}
