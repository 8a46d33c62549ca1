import ArgumentParser
import Foundation
import Herald

struct StatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Show who leads, who waits, and the leader's topics, publishers and subscribers.")

    @OptionGroup var cluster: ClusterOptions
    @OptionGroup var security: SecurityOptions

    @Flag(help: "Print the status as one JSON object.")
    var json = false

    @Option(help: "Seconds to wait for the leader's own report; 0 asks only ZooKeeper. A crashed leader keeps its record until its session expires and answers nothing. (env: HERALD_LEADER_TIMEOUT; default: 1)")
    var leaderTimeout: Double?

    func run() async throws {
        let logger = try cluster.makeLogger("herald.status")
        let leaderTimeout = try Setting.double(leaderTimeout, "HERALD_LEADER_TIMEOUT", default: 1)
        guard leaderTimeout.isFinite, (0...3600).contains(leaderTimeout) else {
            throw ValidationError("--leader-timeout must be between 0 and 3600 seconds")
        }
        let curve = try security.curveSecurity(server: false, ownKeyIsBrokerKey: true)
        let status: ClusterStatus
        do {
            status = try await ClusterStatus.fetch(
                zookeeper: try cluster.zookeeperConfiguration(), layout: try cluster.layout(),
                leaderTimeout: leaderTimeout > 0 ? .milliseconds(Int(leaderTimeout * 1000)) : nil,
                security: curve, logger: logger)
        } catch {
            FileHandle.standardError.write(Data("herald status: cannot read the cluster: \(error)\n".utf8))
            throw ExitCode(1)
        }
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
            print(String(decoding: try encoder.encode(status), as: UTF8.self))
            return
        }
        print("cluster:    \(status.cluster)")
        print("mode:       \(status.mode?.description ?? "not set (no broker has started)")")
        if let leader = status.leader {
            print("leader:     \(leader.broker)")
            print("  requests:    \(leader.requestEndpoint)")
            print("  subscribers: \(leader.subscriberEndpoint)")
            if let since = status.leaderSinceMilliseconds {
                let ago = max(0, Date().timeIntervalSince1970 - Double(since) / 1000)
                print(String(format: "  elected:     %.1f s ago (by ZooKeeper's clock)", ago))
            }
            if let summary = status.leaderAnswerSummary { print("  \(summary)") }
        } else {
            print("leader:     none")
        }
        let standbys = status.candidates.filter { $0 != status.leader?.broker }
        print("standbys:   \(standbys.isEmpty ? "none" : standbys.joined(separator: ", "))")
        if let report = status.leaderStatus {
            print(String(format: "leading for: %.1f s", report.leaderForSeconds))
            let topics = Set(report.topics.keys).union(report.subscribedTopics).sorted()
            print("topics:     \(topics.isEmpty ? "none" : "")")
            for topic in topics {
                let subscribed = report.subscribedTopics.contains(topic) ? "subscribed" : "no subscribers"
                let owner = report.owners?[topic].map { ", owned by \($0.short)" } ?? ""
                print("  \(topic): \(report.topics[topic] ?? 0) forwarded, \(subscribed)\(owner)")
            }
            if let omitted = report.omittedTopics { print("  … and \(omitted) more topics") }
            print("publishers: \(report.publishers.isEmpty ? "none" : "")")
            for publisher in report.publishers { print("  \(publisher)") }
            if let omitted = report.omittedPublishers { print("  … and \(omitted) more publishers") }
            if report.malformedMessages > 0 { print("malformed messages dropped: \(report.malformedMessages)") }
        }
    }
}
