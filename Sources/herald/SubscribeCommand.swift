import ArgumentParser
import FoundationEssentials
import Herald
import HeraldHTTP
import Logging
import ServiceLifecycle
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

struct SubscribeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "subscribe",
        abstract: "Print the messages of one or more topics as they arrive, with end-to-end latency.")

    @OptionGroup var cluster: ClusterOptions
    @OptionGroup var security: SecurityOptions
    @OptionGroup var http: HTTPOptions

    @Option(help: Settings.subscribeTopics.help)
    var topic: [String] = []

    @Option(help: Settings.count.help)
    var count: Int?

    @Option(help: Settings.history.help)
    var history: Int?

    @Flag(help: Settings.json.help)
    var json = false

    @Option(help: Settings.payload.help)
    var payload: String?

    @Option(help: Settings.window.help)
    var window: Int?

    @Option(help: Settings.bufferBytes.help)
    var bufferBytes: Int?

    @Option(help: Settings.reorderBytes.help)
    var reorderBytes: Int?

    @Option(help: Settings.subscriberMaxMessageSize.help)
    var maxMessageSize: Int?

    @Option(name: .customLong("busy-poll-us"), help: Settings.busyPoll.help)
    var busyPoll: Int?

    func run() async throws {
        let names = try Settings.subscribeTopics.optionalValue(topic.isEmpty ? nil : topic) ?? []
        guard !names.isEmpty else { throw ValidationError("at least one topic is required: --topic NAME or HERALD_TOPIC") }
        let filters = try parseFilters(names)
        let count = try Settings.count.optionalValue(count)
        let json = try Settings.json.value(json)
        let payloadStyle = try Settings.payload.value(parsing: payload)
        let logger = try cluster.makeLogger("herald.subscriber")
        // Before the subscriber exists: swift-metrics binds each metric to the backend when the metric is made.
        HeraldMetrics.bootstrap()
        var configuration = SubscriberConfiguration(
            zookeeper: try cluster.zookeeperConfiguration(), layout: try cluster.layout())
        configuration.security = try security.curveSecurity(server: false)
        configuration.history = try Settings.history.value(history)
        configuration.window = try Settings.window.value(window)
        configuration.bufferBytes = try Settings.bufferBytes.value(bufferBytes)
        configuration.reorderBytes = try Settings.reorderBytes.value(reorderBytes)
        configuration.maximumMessageSize = try Settings.subscriberMaxMessageSize.value(maxMessageSize)
        configuration.busyPoll = .microseconds(try Settings.busyPoll.value(busyPoll))
        let subscriber = try Subscriber(configuration: configuration, filters: filters, logger: logger)
        let printer = MessagePrinter(
            subscriber: subscriber, count: count, encoder: MessageLineEncoder(json: json, payload: payloadStyle))
        let group = ServiceGroup(
            configuration: .init(
                services: try http.services(reportingOn: subscriber, logger: logger) + [
                    .init(service: subscriber),
                    .init(service: printer, successTerminationBehavior: .gracefullyShutdownGroup),
                ],
                gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await reportingConfigurationErrors { try await group.run() }
    }
}

/// Prints received messages to standard output: one line each, one `write` per batch, so a pipe sees them as
/// they arrive without a system call per line.
struct MessagePrinter: Service {
    let subscriber: Subscriber
    let count: Int?
    let encoder: MessageLineEncoder

    func run() async throws {
        let (received, publishers) = await cancelWhenGracefulShutdown { await printAll() }
        let statistics = subscriber.statistics
        let error = DescriptorWriter(descriptor: STDERR_FILENO)
        if let notice = subscriber.historyNotice {
            error.write(Array("herald subscribe: \(notice)\n".utf8))
        }
        // Received is what was printed, each once and in order; the sequencer counted what did not make it.
        let summary = SubscriptionSummary(
            received: received, lost: statistics.lost, duplicates: statistics.duplicates,
            reordered: statistics.reordered, publishers: publishers)
        error.write(Array(summary.line.utf8))
    }

    /// Prints until the subscriber stops or the count is reached.
    /// - Returns: how many messages were printed, and from how many publishers.
    private func printAll() async -> (received: Int, publishers: Int) {
        let output = DescriptorWriter(descriptor: STDOUT_FILENO)
        var received = 0
        var publishers = Set<PublisherID>()
        var buffer: [UInt8] = []
        batches: for await batch in subscriber.batches {
            buffer.removeAll(keepingCapacity: true)
            for message in batch {
                encoder.append(message, to: &buffer)
                publishers.insert(message.header.publisher)
                received += 1
                if let count, received >= count { break }
            }
            // A reader that went away (a closed pipe) ends the printing, not the process with SIGPIPE.
            guard output.write(buffer) else { break batches }
            if let count, received >= count { break batches }
        }
        return (received, publishers.count)
    }
}
