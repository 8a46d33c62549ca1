import ArgumentParser

#if canImport(Glibc)
import Glibc
#endif

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
            TopicsCommand.self, KeygenCommand.self, DemoCommand.self, BenchCommand.self,
        ]
    )

    static func main() async {
        // A reader that closes its end of a pipe must end a write with an error, not kill the process.
        signal(SIGPIPE, SIG_IGN)
        do {
            var command = try parseAsRoot()
            if var asyncCommand = command as? AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            exit(withError: error)
        }
    }
}
