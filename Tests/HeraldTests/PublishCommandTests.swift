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
