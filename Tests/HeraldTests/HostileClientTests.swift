import Foundation
import TestSupport
import Testing
import ZeroMQ

@testable import Herald

// Well-formed but hostile requests from a client that speaks Herald's wire format, against real processes.
// Nothing may crash, the honest stream must arrive complete, and what was refused must be counted.
// Serialized for the same reason as the other process tests.
@Suite("HostileClient", .serialized)
struct HostileClientTests {
    static let startup: Duration = .seconds(15)

    @Test("Hostile requests are refused and counted; the leader keeps serving the honest stream")
    func hostileRequests() async throws {
        try await withHonestTraffic { cluster, leader in
            let client = try HostileClient(endpoint: leader.requestEndpoint)
            defer { client.close() }
            let honest = try #require(try await cluster.status()?.leaderStatus?.publishers.first)
            let honestID = try #require(PublisherID(String(honest.prefix(36))))

            // Data before registering, a version 1 request, and an unregistration of another connection's publisher.
            client.send(dataFrame(topic: "steady", header: MessageHeader(publisher: PublisherID(), sequence: 1, sentAt: 0), payload: []))
            client.send([RequestKindV1.status])
            client.send(
                ControlFrame.encode(.unregister, PublisherRegistration(publisher: honestID, endpoint: "", topics: ["steady"])))
            // 100,000 topics in one registration, and a registration asking for unlimited history.
            let many = (0..<100_000).map { "t\($0)" }
            client.send(ControlFrame.encode(.register, PublisherRegistration(publisher: PublisherID(), endpoint: "", topics: many)))
            let forged = PublisherID()
            client.send(
                ControlFrame.encode(
                    .register, PublisherRegistration(publisher: forged, endpoint: "", topics: ["steady"], history: .max)))
            _ = try #require(client.waitForCredit(timeout: .seconds(5)), "a registered connection gets credit")

            let status = try await cluster.waitForStatus("the refusals counted", timeout: .seconds(10)) { status in
                let refused = status.leaderStatus?.refused ?? [:]
                return ["not_registered", "not_owner", "too_many_topics"].allSatisfy { refused[$0, default: 0] > 0 }
                    && (status.leaderStatus?.malformedMessages ?? 0) > 0
            }
            print("[hostile] refused \(status.leaderStatus?.refused ?? [:]), malformed \(status.leaderStatus?.malformedMessages ?? 0)")
            #expect(status.leaderStatus?.publishers.contains { $0.hasPrefix(honestID.description) } == true, "the spoofed unregistration changed nothing")
        }
    }

    @Test("Subscriptions naming a topic twice, asking for unlimited history and windows, flooding: answered and bounded")
    func hostileSubscriptions() async throws {
        try await withHonestTraffic { _, leader in
            let subscriber = try HostileClient(endpoint: leader.subscriberEndpoint)
            defer { subscriber.close() }
            let request = SubscribeRequest(
                topics: ["steady", "steady", "other", "other"], window: .max, history: .max,
                resume: ["steady": [PublisherID().description: .max, "not a uuid": 0]], since: .max)
            subscriber.send(ControlFrame.encode(.subscribe, request))
            let reply = try #require(subscriber.waitForReply(.subscribed, timeout: .seconds(5)), "the subscription is answered")
            let answer = try reply.withUnsafeBytes { try ControlFrame.decode(SubscribeReply.self, from: $0).get() }
            #expect(Set(answer.offered.keys) == ["steady", "other"])
            #expect(answer.window <= BrokerConfiguration.defaultMaximumSubscriberWindow, "the window is capped")
            // A flood of subscriptions and acknowledgements beyond what was sent.
            for _ in 0..<5_000 { subscriber.send(ControlFrame.encode(.subscribe, request)) }
            for _ in 0..<5_000 { subscriber.send(ControlFrame.count(.consumed, .max)) }
            // A flood of status requests from a client that never reads the answers.
            let requests = try HostileClient(endpoint: leader.requestEndpoint)
            defer { requests.close() }
            for _ in 0..<10_000 { requests.send(ControlFrame.empty(.status)) }
        }
    }

    @Test("Forged send times and sequence numbers reach subscribers without stopping them")
    func forgedHeaders() async throws {
        try await withHonestTraffic { cluster, leader in
            let client = try HostileClient(endpoint: leader.requestEndpoint)
            defer { client.close() }
            let forged = PublisherID()
            client.send(ControlFrame.encode(.register, PublisherRegistration(publisher: forged, endpoint: "", topics: ["steady"])))
            _ = try #require(client.waitForCredit(timeout: .seconds(5)))
            let headers: [(UInt64, UInt64)] = [(1, .max), (2, UInt64(Int64.max) + 1), (3, 0), (.max, 0), (.max - 1, 0), (4, 1)]
            for (sequence, sentAt) in headers {
                client.send(dataFrame(topic: "steady", header: MessageHeader(publisher: forged, sequence: sequence, sentAt: sentAt), payload: []))
            }
            try await cluster.subscriber.waitForMessage(timeout: .seconds(5), "the forged message from the far future") {
                $0.publisher == forged.description && $0.seq == 1
            }
            try await cluster.subscriber.waitForMessage(timeout: .seconds(5), "the forged highest sequence number") {
                $0.publisher == forged.description && $0.seq == .max
            }
        }
    }

    @Test("Messages above the size limit cut their sender off, and nobody else")
    func oversizedMessages() async throws {
        try await withHonestTraffic { _, leader in
            for endpoint in [leader.requestEndpoint, leader.subscriberEndpoint] {
                let client = try HostileClient(endpoint: endpoint)
                client.send([UInt8](repeating: 2, count: BrokerConfiguration.defaultMaximumMessageSize + 1))
                try await Task.sleep(for: .milliseconds(200))
                client.close()
            }
        }
    }

    // MARK: Harness

    /// Starts two brokers, an honest publisher at 200 messages per second and a subscriber, runs `body` with the
    /// leader's record, then checks that both brokers and the subscriber are alive, that the first broker
    /// still leads, and that the honest stream arrived complete, once and in order.
    private func withHonestTraffic(
        _ body: (HonestCluster, StatusReport.Leader) async throws -> Void
    ) async throws {
        try await withCluster(mode: "broker") { cluster in
            let first = try await cluster.broker("b1")
            _ = try await cluster.waitForLeader(timeout: Self.startup)
            let second = try await cluster.broker("b2")
            let subscriber = try await cluster.subscriber(["steady"])
            let publisher = try await cluster.publisher("steady", rate: 200)
            try await subscriber.waitForMessage(timeout: Self.startup, "a first honest message")
            let status = try await cluster.waitForStatus("the leader's status", timeout: Self.startup) {
                $0.leaderStatus?.publishers.isEmpty == false
            }
            let leader = try #require(status.leader)

            try await body(HonestCluster(cluster: cluster, subscriber: subscriber), leader)

            let after = wallClockNanoseconds()
            try await subscriber.waitForMessage(timeout: .seconds(5), "an honest message sent afterwards") {
                $0.sentAt > after && $0.sentAt < after + 60_000_000_000 && $0.topic == "steady"
            }
            #expect(first.isRunning, "\(first.diagnostics())")
            #expect(second.isRunning, "\(second.diagnostics())")
            #expect(try await cluster.status()?.leader?.broker == "b1", "no failover: the first broker still leads")
            _ = try await stopCleanly(publishers: [publisher], subscriber: subscriber)
            // The first message arrived before any hostile request: its publisher is the honest one.
            let printed = subscriber.messages
            let honest = printed.filter { $0.publisher == printed.first?.publisher }
            #expect(sequenceProblems(in: honest).isEmpty, "\(sequenceProblems(in: honest))")
            let crash = ["Fatal error", "Program crashed"]
            for process in [first, second, subscriber, publisher] {
                #expect(!process.stderrLines.contains { line in crash.contains { line.contains($0) } }, "\(process.diagnostics())")
            }
        }
    }

    struct HonestCluster {
        var cluster: HeraldCluster
        var subscriber: HeraldProcess

        func status() async throws -> StatusReport? { try await cluster.status() }

        func waitForStatus(
            _ what: String, timeout: Duration, where condition: @escaping @Sendable (StatusReport) -> Bool
        ) async throws -> StatusReport {
            try await cluster.waitForStatus(what, timeout: timeout, where: condition)
        }
    }
}

/// Version 1's one-byte request frames.
enum RequestKindV1 {
    static let status: UInt8 = 5
}

/// A client that speaks the wire format through a raw DEALER socket, with blocking calls and timeouts.
final class HostileClient {
    let context: ZMQContext
    let socket: ZMQSocket

    /// Connects to `endpoint`, as a CURVE client with `keys` of the server whose public key is `serverKey` if
    /// both are given.
    init(endpoint: String, keys: ZMQCurveKeyPair? = nil, serverKey: String? = nil) throws {
        context = try ZMQContext()
        socket = try ZMQSocket(context: context, type: .dealer)
        try socket.set(.linger(.zero))
        try socket.set(.sendHighWaterMark(0))
        if let keys, let serverKey {
            try socket.set(.curvePublicKey(keys.publicKey))
            try socket.set(.curveSecretKey(keys.secretKey))
            try socket.set(.curveServerKey(serverKey))
        }
        try socket.connect(endpoint)
    }

    /// Sends one frame; a hostile client does not care whether it arrives.
    func send(_ frame: [UInt8]) {
        frame.withUnsafeBytes { _ = try? socket.send(bytes: $0) }
    }

    /// Reads replies until one of `kind` arrives or `timeout` passes.
    func waitForReply(_ kind: WireFormat.Kind, timeout: Duration) -> [UInt8]? {
        let deadline = ContinuousClock.now + timeout
        var frame = ZMQFrame()
        while ContinuousClock.now < deadline {
            guard (try? socket.receive(into: &frame, dontWait: true)) != nil else {
                Thread.sleep(forTimeInterval: 0.01)
                continue
            }
            let bytes = frame.bytes
            if bytes.count >= 2, bytes[0] == WireFormat.version, bytes[1] == kind.rawValue { return bytes }
        }
        return nil
    }

    /// Waits for a credit grant and returns it.
    func waitForCredit(timeout: Duration) -> UInt64? {
        waitForReply(.credit, timeout: timeout).flatMap { reply in
            reply.withUnsafeBytes { try? ControlFrame.decodeCount($0).get() }
        }
    }

    func close() {
        socket.close()
        context.terminate()
    }
}
