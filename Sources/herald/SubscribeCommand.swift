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
        let printer = MessagePrinter(count: count, encoder: MessageLineEncoder(json: json, payload: payloadStyle))
        // Printed on the socket thread: no other thread to wake per batch, which at a paced rate is per message.
        let subscriber = try Subscriber(
            configuration: configuration, filters: filters, logger: logger, handler: { printer.print($0) })
        let printing = PrintingService(printer: printer, subscriber: subscriber)
        let group = ServiceGroup(
            configuration: .init(
                services: try http.services(reportingOn: subscriber, logger: logger) + [
                    .init(service: subscriber),
                    .init(service: printing, successTerminationBehavior: .gracefullyShutdownGroup),
                ],
                gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await reportingConfigurationErrors { try await group.run() }
    }
}

/// Prints received messages to standard output, on the subscriber's socket thread: one line each, one `write`
/// per batch, so a pipe sees them as they arrive without a system call per line.
final class MessagePrinter: Sendable {
    private struct State {
        var buffer: [UInt8] = []
        var received = 0
        var publishers = Set<PublisherID>()
        var done = false
    }

    private let count: Int?
    private let encoder: MessageLineEncoder
    private let output = DescriptorWriter(descriptor: STDOUT_FILENO)
    // Locked by the socket thread once per batch, and by the task that stops the printing: never contended
    // while messages flow.
    private let state = Mutex(State())
    /// Ends once the count is reached or standard output no longer takes lines.
    let finished: AsyncStream<Never>
    private let finish: AsyncStream<Never>.Continuation

    init(count: Int?, encoder: MessageLineEncoder) {
        self.count = count
        self.encoder = encoder
        (finished, finish) = AsyncStream.makeStream()
    }

    /// Prints a batch; nothing once finished.
    func print(_ batch: MessageBatch) {
        let finishedNow = state.withLock { state -> Bool in
            guard !state.done else { return false }
            state.buffer.removeAll(keepingCapacity: true)
            for message in batch {
                encoder.append(message, to: &state.buffer)
                state.publishers.insert(message.header.publisher)
                state.received += 1
                if let count, state.received >= count {
                    state.done = true
                    break
                }
            }
            // A reader that went away (a closed pipe) ends the printing, not the process with SIGPIPE.
            if !output.write(state.buffer) { state.done = true }
            return state.done
        }
        if finishedNow { finish.finish() }
    }

    /// Stops printing.
    /// - Returns: how many messages were printed, and from how many publishers.
    func stop() -> (received: Int, publishers: Int) {
        state.withLock { state in
            state.done = true
            return (state.received, state.publishers.count)
        }
    }
}

/// Waits while the subscriber's messages are printed, until the count is reached, standard output closes or
/// the process shuts down; then prints the summary to standard error.
struct PrintingService: Service {
    let printer: MessagePrinter
    let subscriber: Subscriber

    func run() async throws {
        // Ends early when cancelled, as on a graceful shutdown.
        await cancelWhenGracefulShutdown { for await _ in printer.finished {} }
        let (received, publishers) = printer.stop()
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
}
