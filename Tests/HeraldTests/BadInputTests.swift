import Foundation
import TestSupport
import Testing
import ZeroMQ

@testable import Herald

// Bad input from the network and from the command line: random bytes on every listening port, well-formed
// ZeroMQ connections that send malformed frames, and invalid options. Nothing may crash, stall the traffic of
// well-behaved clients, or lose their messages. Serialized for the same reason as the other process tests.
@Suite("BadInput", .serialized)
struct BadInputTests {
    static let startup: Duration = .seconds(15)
    /// Connections per port, and random bytes written on each.
    static let garbageConnections = 20
    static let garbageBytes = 64 * 1024

    // MARK: Random bytes

    @Test(
        "Random bytes on every port of a broker and a publisher disturb neither them nor the traffic",
        arguments: ["broker", "direct"])
    func randomBytesOnEveryPort(mode: String) async throws {
        try await withCluster(mode: mode) { cluster in
            let broker = try await cluster.broker("b1")
            _ = try await cluster.waitForLeader(timeout: Self.startup)
            let subscriber = try await Self.attachedSubscriber(in: cluster, mode: mode)
            let publisher = try await cluster.publisher("steady", rate: 200)
            try await subscriber.waitForMessage(timeout: Self.startup, "a first message")

            let status = try await cluster.waitForStatus("the publisher known to the leader", timeout: Self.startup) {
                $0.leaderStatus?.publishers.isEmpty == false
            }
            let leader = try #require(status.leader)
            let brokerHTTP = try await broker.waitForHTTPAddress(timeout: .seconds(5))
            let publisherHTTP = try await publisher.waitForHTTPAddress(timeout: .seconds(5))
            var targets: [(label: String, endpoint: String)] = [
                ("broker request port", leader.requestEndpoint),
                ("broker subscriber port", leader.subscriberEndpoint),
                ("broker HTTP port", brokerHTTP),
                ("publisher HTTP port", publisherHTTP),
            ]
            if mode == "direct" {
                let registration = try #require(status.leaderStatus?.publishers.first)
                let endpoint = try #require(registration.split(separator: " ").first { $0.hasPrefix("tcp://") })
                targets.append(("publisher's subscriber port", String(endpoint)))
            }

            for (label, endpoint) in targets {
                let number = try #require(port(of: endpoint), "no port in \(endpoint)")
                let startedAt = ContinuousClock.now
                let written = await sprayRandomBytes(
                    port: number, connections: Self.garbageConnections, bytes: Self.garbageBytes)
                print(
                    "[bad input \(mode)] \(label) \(number): \(written) random bytes in \(ContinuousClock.now - startedAt)"
                )
                #expect(broker.isRunning, "the broker survives garbage on its \(label)\n\(broker.diagnostics())")
                #expect(
                    publisher.isRunning, "the publisher survives garbage on the \(label)\n\(publisher.diagnostics())")
                #expect(subscriber.isRunning, "the subscriber survives garbage on the \(label)")
            }

            // Still serving: health over HTTP, and fresh messages.
            let httpPort = try #require(port(of: brokerHTTP))
            let health = await httpGet(port: httpPort, path: "/healthz")
            #expect(health.hasPrefix("HTTP/1.1 200") || health.hasPrefix("HTTP/1.0 200"), "GET /healthz: \(health)")
            let after = wallClockNanoseconds()
            try await subscriber.waitForMessage(timeout: .seconds(5), "a message sent after the garbage") {
                $0.sentAt > after
            }
            try await stopAndCheck(publisher: publisher, subscriber: subscriber, mode: mode)
        }
    }

    // MARK: Malformed ZeroMQ messages

    @Test("Malformed messages on the broker's request port are counted and dropped; other clients go on")
    func malformedFramesAreCountedAndDropped() async throws {
        try await withCluster(mode: "broker") { cluster in
            let broker = try await cluster.broker("b1")
            _ = try await cluster.waitForLeader(timeout: Self.startup)
            let subscriber = try await Self.attachedSubscriber(in: cluster, mode: "broker")
            let publisher = try await cluster.publisher("steady", rate: 200)
            try await subscriber.waitForMessage(timeout: Self.startup, "a first message")
            let before = try await cluster.waitForStatus("the leader's status", timeout: Self.startup) {
                $0.leaderStatus != nil
            }
            let baseline = try #require(before.leaderStatus?.malformedMessages, "status reports malformedMessages")
            let endpoint = try #require(before.leader?.requestEndpoint)

            let malformed = Self.malformedRequests()
            let context = try ZMQContext()
            let dealer = try ZMQSocket(context: context, type: .dealer)
            try dealer.set(.linger(.seconds(1)))
            try dealer.connect(endpoint)
            // Registered under the identity the data frames carry, so that they are decoded rather than refused
            // for want of a registration.
            let registration = ControlFrame.encode(
                .register, PublisherRegistration(publisher: PublisherID(high: .max / 255 * 0xAB, low: .max / 255 * 0xAB), endpoint: "", topics: ["steady"]))
            try dealer.send(ZMQMessage(frames: [registration]))
            for request in malformed { try dealer.send(ZMQMessage(frames: request.frames)) }

            let expected = baseline + UInt64(malformed.count)
            let counted = try await cluster.waitForStatus(
                "malformedMessages to reach \(expected)", timeout: .seconds(10)
            ) { ($0.leaderStatus?.malformedMessages ?? 0) >= expected }
            dealer.close()
            context.terminate()

            #expect(broker.isRunning, "\(broker.diagnostics())")
            #expect(counted.leader?.broker == "b1", "no failover: the same broker still leads")
            #expect(counted.leaderStatus?.topics["steady"] ?? 0 > 0)
            let after = wallClockNanoseconds()
            try await subscriber.waitForMessage(timeout: .seconds(5), "a message sent after the malformed ones") {
                $0.sentAt > after
            }
            print(
                "[bad input] \(malformed.count) malformed requests (\(malformed.map(\.label).joined(separator: ", "))); "
                    + "malformedMessages \(baseline) -> \(counted.leaderStatus?.malformedMessages ?? 0)")
            try await stopAndCheck(publisher: publisher, subscriber: subscriber)
        }
    }

    /// A labelled malformed request.
    struct Request: Sendable {
        var label: String
        var frames: [[UInt8]]
    }

    /// Requests the broker must refuse, one for each way its parser can say no.
    static func malformedRequests() -> [Request] {
        let header: [UInt8] = Array(repeating: 0xAB, count: 16) + [0, 0, 0, 0, 0, 0, 0, 1] + Array(repeating: 0, count: 8)
        let data: [UInt8] = [2, 1] + Array("steady".utf8) + [0] + header
        func control(_ kind: UInt8, _ text: String) -> [UInt8] { [2, kind] + Array(text.utf8) }
        return [
            Request(label: "unknown kind", frames: [[2, 0xFF]]),
            Request(label: "empty frame", frames: [[]]),
            Request(label: "version 1 request", frames: [[1]]),
            Request(label: "future version", frames: [[3, 1] + Array("steady".utf8) + [0] + header]),
            Request(label: "data with an extra frame", frames: [data, []]),
            Request(label: "data with a short header", frames: [[2, 1] + Array("steady".utf8) + [0, 1, 0, 9]]),
            Request(label: "data with an unterminated topic", frames: [[2, 1] + Array("steady".utf8)]),
            Request(label: "data with an empty topic", frames: [[2, 1, 0] + header]),
            Request(label: "data with a control character in the topic", frames: [[2, 1, 0x61, 0x09, 0] + header]),
            Request(label: "data with sequence number 0", frames: [[2, 1, 0x61, 0] + header.prefix(16) + Array(repeating: 0, count: 16)]),
            Request(label: "register with JSON garbage", frames: [control(2, "{not json")]),
            Request(label: "register with the wrong shape", frames: [control(2, #"{"publisher": 5}"#)]),
            Request(label: "unregister with no body", frames: [[2, 3]]),
            Request(label: "lookup with JSON garbage", frames: [control(4, "[[[")]),
            Request(label: "lookup in two frames", frames: [control(4, #"{"topics":[]}"#), control(4, #"{"topics":[]}"#)]),
            Request(label: "status with a body", frames: [[2, 5, 1]]),
            Request(label: "a subscription on the request port", frames: [control(6, #"{"topics":["steady"],"window":65536}"#)]),
            Request(label: "credit from a client", frames: [[2, 8, 0, 0, 0, 0, 0, 0, 0, 1]]),
            Request(label: "random bytes after an unknown kind", frames: [[2, 0x7F] + randomBytes(512)]),
            Request(label: "random bytes", frames: [[0] + randomBytes(512)]),
        ]
    }

    // MARK: Command line

    /// An invalid command line and what its error message must say.
    struct Refusal: Sendable, CustomTestStringConvertible {
        var label: String
        var arguments: [String]
        var environment: [String: String] = [:]
        var message: String
        var testDescription: String { label }
    }

    static let refusals = [
        Refusal(label: "empty topic", arguments: ["publish", "--topic", ""], message: "must not be empty"),
        Refusal(
            label: "300-byte topic", arguments: ["publish", "--topic", String(repeating: "t", count: 300)],
            message: "is 300 bytes long; the limit is 255"),
        Refusal(
            label: "topic with a tab", arguments: ["publish", "--topic", "a\tb"], message: "control character U+9"),
        Refusal(
            label: "payload above the maximum",
            arguments: ["publish", "--topic", "ok", "--size", "2000", "--max-payload", "1000"],
            message: "size 2000 exceeds the maximum payload of 1000 bytes"),
        Refusal(
            label: "subscriber topic with a control character", arguments: ["subscribe", "--topic", "a\u{1}b"],
            message: "control character U+1"),
        // Settings from the environment are checked like flags: a typo stops the process instead of running
        // with the default.
        Refusal(
            label: "a size with a unit in the environment", arguments: ["broker"],
            environment: ["HERALD_LOG_BYTES": "64M"],
            message: "HERALD_LOG_BYTES must be a whole number in 0...1099511627776, got '64M'"),
        Refusal(
            label: "a port out of range as a flag", arguments: ["broker", "--request-port", "70000"],
            message: "--request-port must be a whole number in 0...65535, got 70000"),
        Refusal(
            label: "an unknown mode in the environment", arguments: ["broker"], environment: ["HERALD_MODE": "fast"],
            message: "HERALD_MODE must be one of broker or direct, got 'fast'"),
        Refusal(
            label: "a switch that is neither on nor off", arguments: ["subscribe", "--topic", "t"],
            environment: ["HERALD_JSON": "maybe"], message: "HERALD_JSON must be 1, true, yes, 0, false or no"),
        Refusal(
            label: "a session timeout out of range", arguments: ["subscribe", "--topic", "t", "--session-timeout", "0.5"],
            message: "--session-timeout must be a number of seconds in 1...60"),
        // Seconds that no Int of milliseconds can hold: a message, not a trap.
        Refusal(
            label: "a session timeout beyond any clock", arguments: ["subscribe", "--topic", "t", "--session-timeout", "1e300"],
            message: "--session-timeout must be a number of seconds in 1...60"),
        Refusal(
            label: "a rate too small for any clock", arguments: ["publish", "--topic", "t", "--rate", "1e-300"],
            message: "--rate must be 0 (as fast as possible) or a rate in 0.001...1000000000"),
        Refusal(
            label: "a busy-poll longer than a subscriber may spin", arguments: ["subscribe", "--topic", "t", "--busy-poll-us", "20000"],
            message: "--busy-poll-us must be a whole number in 0...10000, got 20000"),
        Refusal(
            label: "a stall timeout that is not a number", arguments: ["broker"], environment: ["HERALD_STALL_TIMEOUT": "nan"],
            message: "HERALD_STALL_TIMEOUT must be a number of seconds in 0.001...3600, got 'nan'"),
    ]

    @Test("Invalid options are refused with exit code 64 and a clear message, without a crash", arguments: refusals)
    func invalidOptionsAreRefused(refusal: Refusal) async throws {
        // Nothing listens on port 1: should the options get past validation, the process would wait, and fail
        // the test on the deadline instead of finding some real ZooKeeper.
        let process = try await HeraldProcess(
            name: refusal.label, arguments: refusal.arguments,
            environment: ["HERALD_ZOOKEEPER": "127.0.0.1:1", "HERALD_HTTP_PORT": "off"].merging(refusal.environment) {
                _, new in new
            })
        defer { process.kill(SIGKILL) }
        let code = try await process.waitForExit(timeout: .seconds(10))
        _ = try await process.waitFor("the end of the output", timeout: .seconds(5)) {
            process.stdoutEnded ? true : nil
        }
        try await Task.sleep(for: .milliseconds(50))
        let stderr = process.stderrLines.joined(separator: "\n")

        #expect(code == 64, "exit code \(code)\n\(stderr)")
        #expect(stderr.contains(refusal.message), "stderr:\n\(stderr)")
        let crash = ["Fatal error", "Stack dump", "stack trace", "Backtrace", "Segmentation fault", "Program crashed"]
            .filter { stderr.contains($0) }
        #expect(crash.isEmpty, "crash signs \(crash) in stderr:\n\(stderr)")
        #expect(process.stdoutLines.allSatisfy { $0.isEmpty }, "nothing on stdout: \(process.stdoutLines)")
    }

    // MARK: Helpers

    /// A subscriber of `steady` that has subscribed (broker mode) or found the leader for discovery (direct
    /// mode), so that it is owed a publisher started next from its first message.
    private static func attachedSubscriber(in cluster: HeraldCluster, mode: String) async throws -> HeraldProcess {
        let subscriber = try await cluster.subscriber(["steady"])
        try await subscriber.waitForLine(
            containing: mode == "direct" ? "using leader for discovery" : "attached to leader", timeout: startup)
        return subscriber
    }

    /// Stops the publisher cleanly, lets the subscriber catch up, stops it and checks that nothing was lost and
    /// that what it printed is each message once, in order. In direct mode the publisher keeps no replay, so
    /// what it sent before the subscriber found it is lost, and counted: only that loss is allowed.
    private func stopAndCheck(publisher: HeraldProcess, subscriber: HeraldProcess, mode: String = "broker") async throws {
        let summary = try await stopCleanly(publishers: [publisher], subscriber: subscriber)
        let messages = subscriber.messages
        let problems = sequenceProblems(in: messages)
        #expect(problems.isEmpty, "\(problems.joined(separator: "\n"))")
        // The subscriber attached before the publisher started, so it is owed the stream from its first message.
        let first = messages.first?.seq ?? 1
        if mode == "broker" { #expect(first == 1, "first seq printed \(first)") }
        #expect(summary.lost == first - 1, "summary: \(summary), first seq printed \(first)")
        #expect(summary.received == messages.count, "summary: \(summary), \(messages.count) lines printed")
        #expect(summary.publishers == 1, "summary: \(summary)")
        print("[bad input] subscriber: \(summary), seq \(messages.first?.seq ?? 0)...\(messages.last?.seq ?? 0)")
    }
}

// MARK: - Raw sockets

/// The port of `tcp://host:port` or `http://host:port`.
private func port(of endpoint: String) -> Int? {
    guard let colon = endpoint.lastIndex(of: ":") else { return nil }
    return Int(endpoint[endpoint.index(after: colon)...].prefix { $0.isNumber })
}

private func randomBytes(_ count: Int) -> [UInt8] {
    var generator = SystemRandomNumberGenerator()
    return (0..<count).map { _ in UInt8.random(in: .min ... .max, using: &generator) }
}

/// Runs blocking socket work on its own thread, off the cooperative pool the test's waits run on.
private func onThread<T: Sendable>(_ work: @escaping @Sendable () -> T) async -> T {
    await withCheckedContinuation { continuation in
        Thread { continuation.resume(returning: work()) }.start()
    }
}

/// A TCP connection to 127.0.0.1:`port` with 2 s send and receive timeouts, or `nil` when refused.
private func connectLoopback(port: Int) -> Int32? {
    let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard descriptor >= 0 else { return nil }
    var timeout = timeval(tv_sec: 2, tv_usec: 0)
    setsockopt(descriptor, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = in_port_t(UInt16(port).bigEndian)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    let connected = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
        }
    }
    guard connected == 0 else {
        close(descriptor)
        return nil
    }
    return descriptor
}

/// Opens `connections` TCP connections to 127.0.0.1:`port` one after the other, writes `bytes` random bytes
/// on each (stopping early when the peer closes or stops reading for 2 s) and closes it.
/// - Returns: how many bytes were written in all.
private func sprayRandomBytes(port: Int, connections: Int, bytes: Int) async -> Int {
    await onThread {
        var total = 0
        for _ in 0..<connections {
            guard let descriptor = connectLoopback(port: port) else { continue }
            let garbage = randomBytes(bytes)
            var offset = 0
            while offset < garbage.count {
                // MSG_NOSIGNAL: a peer that hangs up must not kill the test runner with SIGPIPE.
                let sent = garbage[offset...].withUnsafeBytes {
                    send(descriptor, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL))
                }
                if sent <= 0 { break }
                offset += sent
            }
            total += offset
            close(descriptor)
        }
        return total
    }
}

/// `GET path` over HTTP/1.0 to 127.0.0.1:`port`; the raw response, or what went wrong.
private func httpGet(port: Int, path: String) async -> String {
    await onThread {
        guard let descriptor = connectLoopback(port: port) else { return "connection refused" }
        defer { close(descriptor) }
        let request = Array("GET \(path) HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".utf8)
        guard request.withUnsafeBytes({ send(descriptor, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }) > 0 else {
            return "send failed: errno \(errno)"
        }
        var response: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = chunk.withUnsafeMutableBytes { recv(descriptor, $0.baseAddress, $0.count, 0) }
            if count <= 0 { break }
            response += chunk[..<count]
        }
        return String(decoding: response, as: UTF8.self)
    }
}
