import ArgumentParser
import Foundation
import Herald
import HeraldHTTP
import Logging
import ServiceLifecycle
import Synchronization

struct SubscribeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "subscribe",
        abstract: "Print the messages of one or more topics as they arrive, with end-to-end latency.")

    @OptionGroup var cluster: ClusterOptions
    @OptionGroup var security: SecurityOptions
    @OptionGroup var http: HTTPOptions

    @Option(help: "Topic to receive, or a pattern: '+' matches one level, a last '#' everything below (sensors/+/temp, sensors/#); repeat for several. (env: HERALD_TOPIC, comma-separated)")
    var topic: [String] = []

    @Option(help: "Stop after this many messages. (env: HERALD_COUNT; default: no limit)")
    var count: Int?

    @Option(help: "Broker mode: first receive up to the last N messages of each topic the broker kept. (env: HERALD_HISTORY; default: 0)")
    var history: Int?

    @Flag(help: "Print one JSON object per message per line (topic, publisher, seq, latency_us, payload). (env: HERALD_JSON=1)")
    var json = false

    @Option(help: "How payloads are printed: auto (text when UTF-8, else base64), text, base64 or none. (env: HERALD_PAYLOAD; default: auto)")
    var payload: String?

    @Option(help: "Broker mode: bytes the leader may send ahead of this subscriber's acknowledgements. (env: HERALD_WINDOW; default: 1048576)")
    var window: Int?

    @Option(help: "Bytes of received messages waiting to be printed at most; past it the leader, then publishers, slow down. (env: HERALD_BUFFER_BYTES; default: 16777216)")
    var bufferBytes: Int?

    @Option(help: "Bytes of out-of-order messages held for reordering at most. (env: HERALD_REORDER_BYTES; default: 16777216)")
    var reorderBytes: Int?

    @Option(help: "Largest message accepted from a leader or publisher, in bytes. (env: HERALD_MAX_MESSAGE_SIZE; default: 1052672)")
    var maxMessageSize: Int?

    func run() async throws {
        let names =
            topic.isEmpty
            ? (Setting.value(nil, "HERALD_TOPIC")?.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) } ?? [])
            : topic
        guard !names.isEmpty else { throw ValidationError("at least one topic is required: --topic NAME or HERALD_TOPIC") }
        let filters = try parseFilters(names)
        let count = try Setting.integer(count, "HERALD_COUNT", default: nil, range: 1...Int.max)
        let json = json || ["1", "true", "yes"].contains(Setting.value(nil, "HERALD_JSON")?.lowercased() ?? "")
        let payloadName = Setting.string(payload, "HERALD_PAYLOAD", default: "auto")
        guard let payloadStyle = MessageLineEncoder.PayloadStyle(rawValue: payloadName) else {
            throw ValidationError("unknown payload style '\(payloadName)'; use auto, text, base64 or none")
        }
        let logger = try cluster.makeLogger("herald.subscriber")
        // Before the subscriber exists: swift-metrics binds each metric to the backend when the metric is made.
        HeraldMetrics.bootstrap()
        var configuration = SubscriberConfiguration(
            zookeeper: try cluster.zookeeperConfiguration(), layout: try cluster.layout())
        configuration.security = try security.curveSecurity(server: false)
        configuration.history =
            try Setting.integer(history, "HERALD_HISTORY", default: 0, range: 0...BrokerConfiguration.defaultHistoryLimit) ?? 0
        configuration.window =
            try Setting.integer(window, "HERALD_WINDOW", default: configuration.window, range: 65_536...(1 << 30))
            ?? configuration.window
        configuration.bufferBytes =
            try Setting.integer(bufferBytes, "HERALD_BUFFER_BYTES", default: configuration.bufferBytes, range: 65_536...(1 << 34))
            ?? configuration.bufferBytes
        configuration.reorderBytes =
            try Setting.integer(reorderBytes, "HERALD_REORDER_BYTES", default: configuration.reorderBytes, range: 0...(1 << 34))
            ?? configuration.reorderBytes
        configuration.maximumMessageSize =
            try Setting.integer(
                maxMessageSize, "HERALD_MAX_MESSAGE_SIZE", default: configuration.maximumMessageSize, range: 1024...(1 << 30))
            ?? configuration.maximumMessageSize
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
