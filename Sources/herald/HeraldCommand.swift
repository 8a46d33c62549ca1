import ArgumentParser

@main
struct HeraldCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "herald",
        abstract: "Fault-tolerant topic-based publish/subscribe over ZeroMQ, with ZooKeeper leader election.",
        discussion: """
            Every option can also be set by the environment variable named in its help; a flag beats its variable.
            """,
        subcommands: [
            BrokerCommand.self, PublishCommand.self, SubscribeCommand.self, StatusCommand.self, HealthCommand.self,
            DemoCommand.self, BenchCommand.self,
        ]
    )
}
