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

    @Test("A history request naming a topic twice is answered, and the leader keeps serving")
    func historyRequestWithDuplicateTopics() async throws {
        try await withHonestTraffic { cluster, leader in
            let client = try HostileClient(endpoint: leader.requestEndpoint)
            defer { client.close() }
            let request = HistoryRequest(topics: ["steady", "steady", "other", "other"], limit: 5, after: [:])
            try client.send([[RequestKind.history.rawValue], Array(try JSONEncoder.herald.encode(request))])
            let end = try #require(client.receiveHistoryEnd(timeout: .seconds(5)), "a history end arrives")
            #expect(Set(end.offered.keys) == ["steady", "other"])
        }
    }

    @Test("A message sent from far in the future is delivered without stopping the subscriber")
    func messageFromTheFarFuture() async throws {
        try await withHonestTraffic { cluster, leader in
            let client = try HostileClient(endpoint: leader.requestEndpoint)
            defer { client.close() }
            let forged = PublisherID()
            for (sequence, sentAt) in [(1, UInt64.max), (2, UInt64(Int64.max) + 1), (3, 0)] as [(UInt64, UInt64)] {
                let header = MessageHeader(publisher: forged, sequence: sequence, sentAt: sentAt)
                try client.send([[RequestKind.publish.rawValue]] + DataFrames(topic: "steady", header: header, payload: []).frames)
            }
            try await cluster.subscriber.waitForMessage(timeout: .seconds(5), "the last forged message") {
                $0.publisher == forged.description && $0.seq == 3
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
            let first = try cluster.broker("b1")
            _ = try await cluster.waitForLeader(timeout: Self.startup)
            let second = try cluster.broker("b2")
            let subscriber = try cluster.subscriber(["steady"])
            let publisher = try cluster.publisher("steady", rate: 200)
            try await subscriber.waitForMessage(timeout: Self.startup, "a first honest message")
            let status = try await cluster.waitForStatus("the leader's status", timeout: Self.startup) {
                $0.leaderStatus != nil
            }
            let leader = try #require(status.leader)

            try await body(HonestCluster(subscriber: subscriber), leader)

            let after = wallClockNanoseconds()
            try await subscriber.waitForMessage(timeout: .seconds(5), "an honest message sent afterwards") {
                $0.sentAt > after && $0.topic == "steady"
            }
            #expect(first.isRunning, "\(first.diagnostics())")
            #expect(second.isRunning, "\(second.diagnostics())")
            #expect(try await cluster.status()?.leader?.broker == "b1", "no failover: the first broker still leads")
            publisher.kill(SIGINT)
            #expect(try await publisher.waitForExit(timeout: .seconds(10)) == 0, "\(publisher.diagnostics())")
            try await Task.sleep(for: .seconds(1))
            subscriber.kill(SIGINT)
            #expect(try await subscriber.waitForExit(timeout: .seconds(10)) == 0, "\(subscriber.diagnostics())")
            let summary = try await subscriber.waitFor("the summary line", timeout: .seconds(5)) {
                subscriber.stdoutEnded ? subscriber.summary : nil
            }
            // The first message arrived before any hostile request: its publisher is the honest one.
            let printed = subscriber.messages
            let honest = printed.filter { $0.publisher == printed.first?.publisher }
            #expect(sequenceProblems(in: honest).isEmpty, "\(sequenceProblems(in: honest))")
            #expect(summary.lost == 0, "summary: \(summary)")
        }
    }

    struct HonestCluster {
        var subscriber: HeraldProcess
    }
}

/// A client that speaks the wire format through a raw DEALER socket, with blocking calls and timeouts.
final class HostileClient {
    let context: ZMQContext
    let socket: ZMQSocket

    init(endpoint: String) throws {
        context = try ZMQContext()
        socket = try ZMQSocket(context: context, type: .dealer)
        try socket.set(.linger(.milliseconds(500)))
        try socket.connect(endpoint)
    }

    func send(_ frames: [[UInt8]]) throws {
        try socket.send(ZMQMessage(frames: frames))
    }

    /// Reads replies until a history end arrives or `timeout` passes.
    func receiveHistoryEnd(timeout: Duration) -> HistoryEnd? {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            guard let reply = try? socket.receive(dontWait: true) else {
                Thread.sleep(forTimeInterval: 0.01)
                continue
            }
            if reply.frames.first == [RequestKind.historyEnd.rawValue], reply.frames.count == 2 {
                return try? JSONDecoder().decode(HistoryEnd.self, from: Data(reply.frames[1]))
            }
        }
        return nil
    }

    func close() {
        socket.close()
        context.terminate()
    }
}
