import Foundation
import Testing

// `herald publish` as its users see it: what a paced publisher puts in each message, end to end through real
// processes.
@Suite("herald publish", .serialized)
struct PublishCommandTests {
    static let startup: Duration = .seconds(15)

    @Test("A paced publisher's payloads are its readings padded with dots to --size, and all arrive in order")
    func pacedPayloadsAreReadingsPaddedToTheirSize() async throws {
        let count = 400
        let size = 40
        try await withCluster(mode: "broker") { cluster in
            _ = try await cluster.broker("b1")
            _ = try await cluster.waitForLeader(timeout: Self.startup)
            let subscriber = try await cluster.start(
                "subscriber", ["subscribe", "--topic", "readings", "--count", "\(count)", "--json"])
            try await subscriber.waitForLine(containing: "attached to leader", timeout: Self.startup)
            let publisher = try await cluster.start(
                "publisher",
                ["publish", "--topic", "readings", "--rate", "2000", "--count", "\(count)", "--size", "\(size)"])
            #expect(try await publisher.waitForExit(timeout: Self.startup) == 0, "\(publisher.diagnostics())")
            #expect(try await subscriber.waitForExit(timeout: Self.startup) == 0, "\(subscriber.diagnostics())")

            let printed = subscriber.stdoutLines.compactMap(PrintedReading.init(line:))
            #expect(printed.map(\.seq) == (1...count).map { UInt64($0) })
            // Readings differ in length ("-20", "7"): a shorter one after a longer one must leave no digit behind.
            let pattern = try Regex(#"readings #(\d+) reading=-?\d{1,2}\.+"#)
            for reading in printed {
                #expect(reading.payload.utf8.count == size, "\(reading.payload)")
                let match = try pattern.wholeMatch(in: reading.payload)
                #expect(match?.output[1].substring.map(String.init) == "\(reading.seq)", "\(reading.payload)")
            }
            #expect(Set(printed.map { $0.payload.split(separator: "=")[1].prefix { $0 != "." } }).count > 10)
        }
    }

    @Test("A publisher with a --count waits for the messages flow control holds back before it exits")
    func aCountedPublisherExitsOnlyOnceFlowControlLetItsMessagesOut() async throws {
        let count = 12_000
        try await withCluster(mode: "broker") { cluster in
            // A subscriber is left behind only after 30 s without taking anything: until then it holds the
            // publisher back, however long it is stopped.
            _ = try await cluster.broker(
                "b1", environment: ["HERALD_TOPIC_LOG_BYTES": "\(8 << 20)", "HERALD_STALL_TIMEOUT": "30"])
            _ = try await cluster.waitForLeader(timeout: Self.startup)
            let subscriber = try await cluster.start(
                "subscriber", ["subscribe", "--topic", "held", "--count", "\(count)", "--json"])
            try await subscriber.waitForLine(containing: "attached to leader", timeout: Self.startup)
            // Stopped only once its subscription reached the leader, which otherwise holds nobody back for it.
            try await cluster.waitForStatus("the leader knows the subscription", timeout: Self.startup) {
                ($0.leaderStatus?.subscribers ?? 0) == 1
            }
            subscriber.kill(SIGSTOP)
            let publisher = try await cluster.start(
                "publisher", ["publish", "--topic", "held", "--rate", "0", "--count", "\(count)", "--size", "1024"])
            // 12 MB into a stopped subscriber (less than the publisher may hold unsent, 16 MiB): the leader holds
            // the publisher back at about 7 MB, past its loop's end and its half-second pause for the last messages
            // to leave. Resumed before the leader forgets a subscriber that sends no report (5 s).
            try await publisher.waitForLine(
                containing: "waiting for messages to leave for the leader", timeout: .seconds(4))
            #expect(publisher.isRunning)
            subscriber.kill(SIGCONT)
            #expect(try await publisher.waitForExit(timeout: Self.startup) == 0, "\(publisher.diagnostics())")
            #expect(try await subscriber.waitForExit(timeout: Self.startup) == 0, "\(subscriber.diagnostics())")
            #expect(!publisher.stderrLines.contains { $0.contains("never reached a leader") }, "\(publisher.diagnostics())")
            let printed = subscriber.stdoutLines.compactMap(PrintedReading.init(line:))
            #expect(printed.map(\.seq) == (1...count).map { UInt64($0) })
        }
    }
}

/// A message line of `herald subscribe --json`, with its payload as text.
private struct PrintedReading {
    var seq: UInt64
    var payload: String

    init?(line: String) {
        guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
            let seq = object["seq"] as? Int, let payload = object["payload"] as? String
        else { return nil }
        self.seq = UInt64(seq)
        self.payload = payload
    }
}
