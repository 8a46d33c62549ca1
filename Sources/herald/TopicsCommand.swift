import ArgumentParser
import FoundationEssentials
import Herald

#if canImport(Glibc)
    import Glibc
#endif

struct TopicsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "topics",
        abstract: "Show which broker group serves which topic, and assign topics to groups.",
        discussion: """
            A topic assigned to a group with brokers is served by that group; any other topic by the group that \
            rendezvous hashing picks among the groups with brokers, the same in every process.
            """,
        subcommands: [List.self, Assign.self, Unassign.self],
        defaultSubcommand: List.self)

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List the groups, the assignments, and where the named topics go.")

        @OptionGroup var cluster: ClusterOptions

        @Argument(help: "Topics to route.")
        var topics: [String] = []

        func run() async throws {
            let logger = try cluster.makeLogger("herald.topics")
            let view = try await ClusterView.fetch(
                zookeeper: try cluster.zookeeperConfiguration(), layout: try cluster.layout(), logger: logger)
            print("groups:")
            if view.leaders.isEmpty { print("  none: no broker runs") }
            for (group, leader) in view.leaders.sorted(by: { $0.key < $1.key }) {
                print("  \(group): \(leader.map { "led by \($0.broker)" } ?? "electing a leader")")
            }
            print("assigned:")
            if view.assignments.isEmpty { print("  none") }
            let groups = Set(view.leaders.keys)
            for (topic, group) in view.assignments.sorted(by: { $0.key < $1.key }) {
                print("  \(topic) → \(group)\(groups.contains(group) ? "" : " (no brokers: hashed meanwhile)")")
            }
            guard !topics.isEmpty else { return }
            print("routes:")
            let routing = view.routing
            for topic in topics {
                print("  \(topic) → \(routing.group(for: topic) ?? "none")")
            }
        }
    }

    struct Assign: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Assign a topic to a group; its publishers move there, replaying what they retain, and its subscribers follow without loss.")

        @OptionGroup var cluster: ClusterOptions

        @Argument(help: "The topic.")
        var topic: String

        @Argument(help: "The group.")
        var group: String

        func run() async throws {
            let name = try parseTopics([topic])[0].name
            let layout = try cluster.layout(group: group)
            let logger = try cluster.makeLogger("herald.topics")
            let zookeeper = try cluster.zookeeperConfiguration()
            let group = layout.groupName
            try await reportingConfigurationErrors {
                try await TopicAssignments.update(zookeeper: zookeeper, layout: layout, logger: logger) { $0[name] = group }
            }
            let view = try? await ClusterView.fetch(zookeeper: zookeeper, layout: layout, logger: logger)
            let warning =
                view.map { $0.leaders[group] == nil } == true
                ? "; group \(group) has no brokers now, so the topic is hashed over the others until it has" : ""
            print("assigned \(name) to group \(group)\(warning)")
        }
    }

    struct Unassign: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Remove a topic's assignment; it is then hashed over the groups with brokers.")

        @OptionGroup var cluster: ClusterOptions

        @Argument(help: "The topic.")
        var topic: String

        func run() async throws {
            let name = try parseTopics([topic])[0].name
            let logger = try cluster.makeLogger("herald.topics")
            try await reportingConfigurationErrors {
                try await TopicAssignments.update(
                    zookeeper: try cluster.zookeeperConfiguration(), layout: try cluster.layout(), logger: logger
                ) { $0[name] = nil }
            }
            print("unassigned \(name)")
        }
    }
}
