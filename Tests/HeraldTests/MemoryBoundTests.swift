import Foundation
import TestSupport
import Testing

// Memory is bounded in bytes: a subscriber stopped with SIGSTOP under a full-speed publisher of 16 KiB
// messages once grew a broker to 2 GB. Checked on real processes with small configured bounds, so that growth
// past them would show within seconds. Serialized like the other process tests.
@Suite("Memory bounds", .serialized)
struct MemoryBoundTests {
    static let startup: Duration = .seconds(15)
    static let logBytes = 16 << 20
    static let topicLogBytes = 8 << 20
    static let retentionBytes = 8 << 20
    /// What a process may grow beyond its configured bounds: libzmq's queues within the credit windows,
    /// allocator slack, metrics. Far below what an unbounded queue reaches in the same time.
    static let slack = 40 << 20

    @Test("A stopped subscriber under a full-speed publisher keeps broker and publisher memory within their bounds")
    func stoppedSubscriberUnderFullSpeedPublisher() async throws {
        try await withCluster(mode: "broker") { cluster in
            let broker = try await cluster.start(
                "broker b1", ["broker", "--broker-id", "b1"],
                environment: ["HERALD_LOG_BYTES": "\(Self.logBytes)", "HERALD_TOPIC_LOG_BYTES": "\(Self.topicLogBytes)"])
            _ = try await cluster.waitForLeader(timeout: Self.startup)
            let subscriber = try await cluster.subscriber(["heavy"])
            try await subscriber.waitForLine(containing: "attached to leader", timeout: Self.startup)
            subscriber.kill(SIGSTOP)
            let publisher = try await cluster.start(
                "publisher", ["publish", "--topic", "heavy", "--rate", "0", "--size", "16384"],
                environment: ["HERALD_RETENTION_BYTES": "\(Self.retentionBytes)"])
            try await publisher.waitForLine(containing: "attached to leader", timeout: Self.startup)
            let brokerStart = try residentBytes(of: broker.pid)
            let publisherStart = try residentBytes(of: publisher.pid)

            var brokerPeak = brokerStart
            var publisherPeak = publisherStart
            for _ in 0..<16 {
                try await Task.sleep(for: .milliseconds(500))
                brokerPeak = max(brokerPeak, try residentBytes(of: broker.pid))
                publisherPeak = max(publisherPeak, try residentBytes(of: publisher.pid))
            }
            let status = try #require(try await cluster.status()?.leaderStatus)
            print(
                "[memory] broker \(brokerStart >> 20) -> \(brokerPeak >> 20) MB (log limit \(Self.logBytes >> 20) MB), "
                    + "publisher \(publisherStart >> 20) -> \(publisherPeak >> 20) MB (retention \(Self.retentionBytes >> 20) MB), "
                    + "forwarded \(status.topics["heavy"] ?? 0)")
            #expect(brokerPeak - brokerStart <= Self.topicLogBytes + Self.slack, "broker grew past its log bound")
            #expect(publisherPeak - publisherStart <= Self.retentionBytes + Self.slack, "publisher grew past its retention")
            #expect((status.topics["heavy"] ?? 0) > 1000, "the publisher was not held back for good by the stopped subscriber")

            subscriber.kill(SIGCONT)
            #expect(broker.isRunning && publisher.isRunning && subscriber.isRunning)
        }
    }
}

/// A process's resident set size, from /proc.
func residentBytes(of pid: Int32) throws -> Int {
    let status = try String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)
    guard let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
        let kilobytes = line.split(separator: " ").compactMap({ Int($0) }).first
    else { throw POSIXError(.ENOENT) }
    return kilobytes * 1024
}
