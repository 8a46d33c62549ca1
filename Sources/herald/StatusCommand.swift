import ArgumentParser
import FoundationEssentials
import Herald

#if canImport(Glibc)
    import Glibc
#endif

struct StatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Show who leads, who waits, and the leader's topics, publishers and subscribers.")

    @OptionGroup var cluster: ClusterOptions
    @OptionGroup var security: SecurityOptions

    @Flag(help: "Print the status as one JSON object.")
    var json = false

    @Option(help: Settings.leaderTimeout.help)
    var leaderTimeout: Double?

    func run() async throws {
        let logger = try cluster.makeLogger("herald.status")
        let leaderTimeout = try Settings.leaderTimeout.value(seconds: leaderTimeout)
        let curve = try security.curveSecurity(server: false, ownKeyIsBrokerKey: true)
        let status: ClusterStatus
        do {
            status = try await ClusterStatus.fetch(
                zookeeper: try cluster.zookeeperConfiguration(), layout: try cluster.layout(),
                leaderTimeout: leaderTimeout > .zero ? leaderTimeout : nil,
                security: curve, logger: logger)
        } catch {
            DescriptorWriter(descriptor: STDERR_FILENO).write(Array("herald status: cannot read the cluster: \(error)\n".utf8))
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
        let groups = status.groups ?? [:]
        if groups.isEmpty {
            printGroup(status.defaultGroup, indent: "")
        } else {
            // Brokers without --group form the default group; it is shown when it has any.
            if status.leader != nil || !status.candidates.isEmpty {
                print("group \(ClusterLayout.defaultGroup):")
                printGroup(status.defaultGroup, indent: "  ")
            }
            for (name, group) in groups.sorted(by: { $0.key < $1.key }) {
                print("group \(name):")
                printGroup(group, indent: "  ")
            }
        }
        if let assignments = status.assignments {
            print("assigned topics:")
            for (topic, group) in assignments.sorted(by: { $0.key < $1.key }) { print("  \(topic) → \(group)") }
        }
    }

    private func printGroup(_ group: GroupStatus, indent: String) {
        if let leader = group.leader {
            print("\(indent)leader:     \(leader.broker)")
            print("\(indent)  requests:    \(leader.requestEndpoint)")
            print("\(indent)  subscribers: \(leader.subscriberEndpoint)")
            if let since = group.leaderSinceMilliseconds {
                let ago = max(0, Date().timeIntervalSince1970 - Double(since) / 1000)
                print("\(indent)  elected:     \(ago.decimal(1)) s ago (by ZooKeeper's clock)")
            }
            if let summary = group.leaderAnswerSummary { print("\(indent)  \(summary)") }
        } else {
            print("\(indent)leader:     none")
        }
        let standbys = group.candidates.filter { $0 != group.leader?.broker }
        print("\(indent)standbys:   \(standbys.isEmpty ? "none" : standbys.joined(separator: ", "))")
        if let report = group.leaderStatus {
            print("\(indent)leading for: \(report.leaderForSeconds.decimal(1)) s")
            let topics = Set(report.topics.keys).union(report.subscribedTopics).sorted()
            print("\(indent)topics:     \(topics.isEmpty ? "none" : "")")
            for topic in topics {
                let subscribed = report.subscribedTopics.contains(topic) ? "subscribed" : "no subscribers"
                let owner = report.owners?[topic].map { ", owned by \($0.short)" } ?? ""
                print("\(indent)  \(topic): \(report.topics[topic] ?? 0) forwarded, \(subscribed)\(owner)")
            }
            if let omitted = report.omittedTopics { print("\(indent)  … and \(omitted) more topics") }
            print("\(indent)publishers: \(report.publishers.isEmpty ? "none" : "")")
            for publisher in report.publishers { print("\(indent)  \(publisher)") }
            if let omitted = report.omittedPublishers { print("\(indent)  … and \(omitted) more publishers") }
            if report.malformedMessages > 0 { print("\(indent)malformed messages dropped: \(report.malformedMessages)") }
        }
    }
}
