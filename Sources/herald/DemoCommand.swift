import ArgumentParser

struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Start a local ZooKeeper, 3 brokers, a publisher and a subscriber; kill the leader and watch the failover.")

    func run() async throws {}
}
