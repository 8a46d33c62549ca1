import Dispatch

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// A minimal HTTP/1.1 client for probing a Herald process's `/healthz` or `/readyz`, as `herald health` does.
///
/// Container images carry no `curl`, and Herald's package graph has no HTTP client, so this speaks just enough
/// HTTP over a plain TCP socket: one `GET`, `Connection: close`, read the status line and a short body.
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
        let deadline = ContinuousClock.now + timeout
        // The socket calls block (name lookup cannot be made non-blocking), so they run off the cooperative pool.
        return await withCheckedContinuation { continuation in
            DispatchQueue.global().async {
                continuation.resume(returning: blockingProbe(host: host, port: port, path: path, deadline: deadline))
            }
        }
    }

    // MARK: - Private

    /// The most of a reply read: health answers are a line; this bounds memory if the port is something else.
    private static let maximumReplySize = 64 * 1024

    /// Resolves `host` and tries each address in turn until one answers or the deadline passes.
    private static func blockingProbe(
        host: String, port: Int, path: String, deadline: ContinuousClock.Instant
    ) -> Outcome {
        let target = "http://\(HealthServer.authority(host, port))\(path)"
        guard (1...65535).contains(port) else { return .unreachable(reason: "\(target): port must be in 1...65535") }
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = socketStream
        var list: UnsafeMutablePointer<addrinfo>?
        let status = getaddrinfo(host, String(port), &hints, &list)
        guard status == 0, let list else {
            return .unreachable(reason: "\(target): cannot resolve \(host): \(String(cString: gai_strerror(status)))")
        }
        defer { freeaddrinfo(list) }
        let request =
            "GET \(path) HTTP/1.1\r\nHost: \(HealthServer.authority(host, port))\r\n"
            + "User-Agent: herald-health\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        var failure = "no address"
        var cursor: UnsafeMutablePointer<addrinfo>? = list
        while let info = cursor {
            switch exchange(info.pointee, request: Array(request.utf8), deadline: deadline) {
            case .success(let reply): return parse(reply, target: target)
            case .failure(let problem): failure = problem.reason
            }
            cursor = info.pointee.ai_next
        }
        return .unreachable(reason: "\(target): \(failure)")
    }

    /// Why one address gave no reply.
    private struct Failure: Error {
        /// What went wrong, for the user.
        var reason: String
        init(_ reason: String) { self.reason = reason }
    }

    /// Connects to one address, sends the request and reads the reply until the server closes, the reply is
    /// complete, or the deadline passes.
    private static func exchange(
        _ address: addrinfo, request: [UInt8], deadline: ContinuousClock.Instant
    ) -> Result<[UInt8], Failure> {
        let descriptor = socket(address.ai_family, address.ai_socktype, address.ai_protocol)
        guard descriptor >= 0 else { return .failure(Failure("socket: \(errorText(errno))")) }
        defer { close(descriptor) }
        // Non-blocking, so every wait goes through poll with the remaining time and the deadline holds.
        _ = fcntl(descriptor, F_SETFL, fcntl(descriptor, F_GETFL, 0) | O_NONBLOCK)

        if connect(descriptor, address.ai_addr, address.ai_addrlen) != 0 {
            guard errno == EINPROGRESS else { return .failure(Failure(errorText(errno))) }
            guard wait(descriptor, for: Int16(POLLOUT), until: deadline) else {
                return .failure(Failure("timed out connecting"))
            }
            var code: Int32 = 0
            var length = socklen_t(MemoryLayout<Int32>.size)
            getsockopt(descriptor, SOL_SOCKET, SO_ERROR, &code, &length)
            guard code == 0 else { return .failure(Failure(errorText(code))) }
        }

        var sent = 0
        while sent < request.count {
            let count = request[sent...].withUnsafeBytes { send(descriptor, $0.baseAddress, $0.count, noSignal) }
            if count > 0 {
                sent += count
            } else if count < 0, errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR {
                guard wait(descriptor, for: Int16(POLLOUT), until: deadline) else {
                    return .failure(Failure("timed out sending the request"))
                }
            } else {
                return .failure(Failure("sending the request: \(errorText(errno))"))
            }
        }

        var reply: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while reply.count < maximumReplySize, !isComplete(reply) {
            let count = chunk.withUnsafeMutableBytes { recv(descriptor, $0.baseAddress, $0.count, 0) }
            if count > 0 {
                reply += chunk[..<count]
            } else if count == 0 {
                break
            } else if errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR {
                guard wait(descriptor, for: Int16(POLLIN), until: deadline) else {
                    return reply.isEmpty ? .failure(Failure("timed out waiting for an answer")) : .success(reply)
                }
            } else {
                return reply.isEmpty ? .failure(Failure("reading the answer: \(errorText(errno))")) : .success(reply)
            }
        }
        return .success(reply)
    }

    /// Waits until the descriptor is ready for `events` or the deadline passes; `false` on timeout or error.
    private static func wait(_ descriptor: Int32, for events: Int16, until deadline: ContinuousClock.Instant) -> Bool {
        while true {
            let remaining = ContinuousClock.now.duration(to: deadline)
            guard remaining > .zero else { return false }
            let (seconds, attoseconds) = remaining.components
            let milliseconds = Int32(clamping: seconds * 1000 + attoseconds / 1_000_000_000_000_000 + 1)
            var entry = pollfd(fd: descriptor, events: events, revents: 0)
            let ready = poll(&entry, 1, milliseconds)
            if ready > 0 { return true }
            if ready < 0, errno != EINTR { return false }
        }
    }

    /// Whether the reply holds its whole head and, when it declares a `Content-Length`, its whole body; the
    /// server should close after `Connection: close`, but this stops early if it does not.
    private static func isComplete(_ reply: [UInt8]) -> Bool {
        guard let (head, bodyStart) = splitHead(reply) else { return false }
        guard let length = contentLength(head) else { return false }
        return reply.count - bodyStart >= length
    }

    /// The head as text and the index where the body starts, once the blank line has arrived.
    private static func splitHead(_ reply: [UInt8]) -> (String, Int)? {
        let separator: [UInt8] = [13, 10, 13, 10]
        guard reply.count >= 4 else { return nil }
        for index in 0...(reply.count - 4) where reply[index..<(index + 4)].elementsEqual(separator) {
            return (String(decoding: reply[..<index], as: UTF8.self), index + 4)
        }
        return nil
    }

    /// The `Content-Length` header's value, if any.
    private static func contentLength(_ head: String) -> Int? {
        for line in head.split(separator: "\r\n").dropFirst() {
            let parts = line.split(separator: ":", maxSplits: 1)
            if parts.count == 2, parts[0].lowercased() == "content-length" {
                return Int(parts[1].trimmingWhiteSpace())
            }
        }
        return nil
    }

    /// Turns a raw reply into an outcome, reading the status line `HTTP/1.x NNN reason`.
    private static func parse(_ reply: [UInt8], target: String) -> Outcome {
        guard let (head, bodyStart) = splitHead(reply) else {
            return .unreachable(reason: "\(target): no HTTP answer")
        }
        let statusLine = head.split(separator: "\r\n", maxSplits: 1).first ?? ""
        let fields = statusLine.split(separator: " ", maxSplits: 2)
        guard fields.count >= 2, fields[0].hasPrefix("HTTP/1."), let status = Int(fields[1]) else {
            return .unreachable(reason: "\(target): not an HTTP answer: \(statusLine.prefix(60))")
        }
        var body = reply[bodyStart...]
        if let length = contentLength(head) { body = body.prefix(length) }
        return .answered(status: status, body: String(decoding: body.prefix(512), as: UTF8.self).trimmingWhiteSpace())
    }

    /// The C library's text for an error number.
    private static func errorText(_ code: Int32) -> String {
        "\(String(cString: strerror(code))) (errno \(code))"
    }

    /// `SOCK_STREAM` as `addrinfo` wants it: an enum case in Glibc, a plain integer elsewhere.
    private static var socketStream: Int32 {
        #if canImport(Glibc)
            Int32(SOCK_STREAM.rawValue)
        #else
            SOCK_STREAM
        #endif
    }

    /// `send` flags: a server that closes early must yield an error, not kill the process with SIGPIPE.
    private static var noSignal: Int32 {
        #if canImport(Darwin)
            0
        #else
            Int32(MSG_NOSIGNAL)
        #endif
    }
}

extension StringProtocol {
    /// The text without leading and trailing spaces, tabs and line breaks (Foundation-free).
    fileprivate func trimmingWhiteSpace() -> String {
        let isSpace: (Character) -> Bool = { $0 == " " || $0 == "\t" || $0 == "\r" || $0 == "\n" }
        guard let first = firstIndex(where: { !isSpace($0) }), let last = lastIndex(where: { !isSpace($0) }) else {
            return ""
        }
        return String(self[first...last])
    }
}
