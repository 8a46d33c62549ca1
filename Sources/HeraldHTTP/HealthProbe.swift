import Herald
import NIOCore
import NIOHTTP1
import NIOPosix

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// A small HTTP/1.1 client for probing a Herald process's `/healthz` or `/readyz`, as `herald health` does.
///
/// Container images carry no `curl`; this is one `GET` on SwiftNIO, which the HTTP server already links, with
/// `Connection: close`, reading the status and a short body.
public enum HealthProbe {
    /// How long a probe waits in total before giving up: long enough for a busy process on the same host,
    /// short enough for a container health check that runs every few seconds.
    public static let defaultTimeout: Duration = .seconds(2)

    /// What a probe found.
    public enum Outcome: Sendable, Equatable, CustomStringConvertible {
        /// The server answered with this status code and body (trimmed of surrounding white space).
        case answered(status: Int, body: String)
        /// No HTTP answer: the reason, such as a refused connection, a timeout or an unparsable reply.
        case unreachable(reason: String)

        /// Whether the server answered `200 OK`.
        public var isHealthy: Bool {
            if case .answered(status: 200, _) = self { return true }
            return false
        }

        /// One short line for a terminal: the status and the body, or why there was no answer.
        public var description: String {
            switch self {
            case .answered(let status, let body): body.isEmpty ? "HTTP \(status)" : "HTTP \(status): \(body)"
            case .unreachable(let reason): reason
            }
        }
    }

    /// Probes `http://host:port/path` and tells whether it answered `200`.
    /// - Parameters:
    ///   - host: A host name or address, IPv4 or IPv6.
    ///   - port: The TCP port.
    ///   - path: The request path, such as `/readyz`.
    ///   - timeout: The longest the whole probe may take.
    /// - Returns: `true` for a `200` answer; `false` for any other status, a refused connection or a timeout.
    public static func check(host: String, port: Int, path: String, timeout: Duration = defaultTimeout) async -> Bool {
        await probe(host: host, port: port, path: path, timeout: timeout).isHealthy
    }

    /// Probes `http://host:port/path` and reports what it found.
    /// - Parameters:
    ///   - host: A host name or address, IPv4 or IPv6.
    ///   - port: The TCP port.
    ///   - path: The request path, such as `/readyz`.
    ///   - timeout: The longest the whole probe may take.
    /// - Returns: The answer, or why there was none.
    public static func probe(
        host: String, port: Int, path: String, timeout: Duration = defaultTimeout
    ) async -> Outcome {
        let target = "http://\(HealthServer.authority(host, port))\(path)"
        guard (1...65535).contains(port) else { return .unreachable(reason: "\(target): port must be in 1...65535") }
        do {
            return try await withThrowingTaskGroup(of: Outcome.self) { group in
                group.addTask { try await exchange(host: host, port: port, path: path, timeout: timeout) }
                group.addTask {
                    try await Task.sleep(for: timeout)
                    return .unreachable(reason: "\(target): timed out")
                }
                defer { group.cancelAll() }
                return try await group.next() ?? .unreachable(reason: "\(target): no answer")
            }
        } catch {
            return .unreachable(reason: "\(target): \(describe(error))")
        }
    }

    // MARK: - Private

    /// The most of a body kept: health answers are a line; this bounds memory if the port is something else.
    private static let maximumBodySize = 64 * 1024

    /// Connects, sends the request and reads the answer's head and body.
    private static func exchange(host: String, port: Int, path: String, timeout: Duration) async throws -> Outcome {
        let (seconds, attoseconds) = timeout.components
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connectTimeout(.milliseconds(seconds * 1000 + attoseconds / 1_000_000_000_000_000))
            .connect(host: host, port: port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    return try NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>(
                        wrappingChannelSynchronously: channel)
                }
            }
        return try await channel.executeThenClose { inbound, outbound in
            var head = HTTPRequestHead(version: .http1_1, method: .GET, uri: path)
            head.headers.add(name: "Host", value: HealthServer.authority(host, port))
            head.headers.add(name: "User-Agent", value: "herald-health")
            head.headers.add(name: "Connection", value: "close")
            try await outbound.write(.head(head))
            try await outbound.write(.end(nil))
            var status: Int?
            var body = ByteBuffer()
            for try await part in inbound {
                switch part {
                case .head(let answer):
                    status = Int(answer.status.code)
                case .body(var chunk):
                    body.writeBuffer(&chunk)
                    guard body.readableBytes <= maximumBodySize else { return .unreachable(reason: "answer too long") }
                case .end:
                    guard let status else { break }
                    let text = String(decoding: body.readableBytesView.prefix(512), as: UTF8.self)
                    return .answered(status: status, body: text.trimmingWhitespace())
                }
            }
            return .unreachable(reason: "the connection closed before a whole HTTP answer")
        }
    }

    /// A short reason for a failed exchange: the system's text for a refused or reset connection, NIO's
    /// description otherwise.
    private static func describe(_ error: any Error) -> String {
        if let error = error as? NIOConnectionError {
            if let failure = error.connectionErrors.first?.error { return describe(failure) }
            if let failure = error.dnsAError ?? error.dnsAAAAError { return "cannot resolve \(error.host): \(failure)" }
        }
        if let error = error as? IOError { return "\(String(cString: strerror(error.errnoCode))) (errno \(error.errnoCode))" }
        if let error = error as? ChannelError, case .connectTimeout = error { return "timed out connecting" }
        if error is HTTPParserError { return "not an HTTP answer (\(error))" }
        return "\(error)"
    }
}
