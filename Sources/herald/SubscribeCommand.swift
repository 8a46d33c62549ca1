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
    @OptionGroup var http: HTTPOptions

    @Option(help: "Topic to receive; repeat for several. (env: HERALD_TOPIC, comma-separated)")
    var topic: [String] = []

    @Option(help: "Stop after this many messages. (env: HERALD_COUNT; default: no limit)")
    var count: Int?

    @Option(help: "Broker mode: first receive up to the last N messages of each topic the broker kept. (env: HERALD_HISTORY; default: 0)")
    var history: Int?

    @Flag(help: "Print one JSON object per message per line (topic, publisher, seq, latency_us, payload). (env: HERALD_JSON=1)")
    var json = false

    func run() async throws {
        let names =
            topic.isEmpty
            ? (Setting.value(nil, "HERALD_TOPIC")?.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) } ?? [])
            : topic
        guard !names.isEmpty else { throw ValidationError("at least one topic is required: --topic NAME or HERALD_TOPIC") }
        let topics = try parseTopics(names)
        let count = try Setting.integer(count, "HERALD_COUNT", default: nil, range: 1...Int.max)
        let json = json || ["1", "true", "yes"].contains(Setting.value(nil, "HERALD_JSON")?.lowercased() ?? "")
        let logger = try cluster.makeLogger("herald.subscriber")
        // Before the subscriber exists: swift-metrics binds each metric to the backend when the metric is made.
        HeraldMetrics.bootstrap()
        var configuration = SubscriberConfiguration(
            zookeeper: try cluster.zookeeperConfiguration(), layout: try cluster.layout())
        configuration.history =
            try Setting.integer(history, "HERALD_HISTORY", default: 0, range: 0...BrokerConfiguration.defaultHistoryLimit) ?? 0
        let subscriber = try Subscriber(configuration: configuration, topics: topics, logger: logger)
        let printer = MessagePrinter(subscriber: subscriber, count: count, json: json)
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

/// Prints received messages to standard output, one line each, flushed at once so pipes see them live.
struct MessagePrinter: Service {
    let subscriber: Subscriber
    let count: Int?
    let json: Bool

    func run() async throws {
        let tally = Mutex((received: 0, publishers: Set<PublisherID>()))
        await cancelWhenGracefulShutdown {
            for await message in subscriber.messages {
                let received = tally.withLock {
                    $0.received += 1
                    $0.publishers.insert(message.header.publisher)
                    return $0.received
                }
                // Written straight to the descriptor, so a pipe sees each line as it arrives.
                FileHandle.standardOutput.write(Data(((json ? Self.json(message) : Self.line(message)) + "\n").utf8))
                if let count, received >= count { break }
            }
        }
        let (received, publishers) = tally.withLock { ($0.received, $0.publishers.count) }
        let statistics = subscriber.statistics
        if let notice = subscriber.historyNotice {
            FileHandle.standardError.write(Data("herald subscribe: \(notice)\n".utf8))
        }
        // Received is what was printed, each once and in order; the sequencer counted what did not make it.
        FileHandle.standardError.write(
            Data(
                "herald subscribe: received \(received), lost \(statistics.lost), duplicates \(statistics.duplicates), reordered \(statistics.reordered) (from \(publishers) publishers)\n"
                    .utf8))
    }

    static func line(_ message: ReceivedMessage) -> String {
        let latency = String(format: "%.3f", Double(message.latency.components.attoseconds) / 1e15 + Double(message.latency.components.seconds) * 1000)
        let text = String(decoding: message.payload.prefix(60), as: UTF8.self)
        return "\(message.topic) publisher=\(message.header.publisher.short) seq=\(message.header.sequence) latency_ms=\(latency) \(text)"
    }

    static func json(_ message: ReceivedMessage) -> String {
        struct Line: Encodable {
            var topic: String
            var publisher: String
            var seq: UInt64
            var sent_at_ns: UInt64
            var latency_us: Int64
            var size: Int
            var payload: String
        }
        let latency = message.latency.components
        let line = Line(
            topic: message.topic.name, publisher: message.header.publisher.description, seq: message.header.sequence,
            sent_at_ns: message.header.sentAt, latency_us: latency.seconds * 1_000_000 + latency.attoseconds / 1_000_000_000_000,
            size: message.payload.count, payload: String(decoding: message.payload, as: UTF8.self))
        return String(decoding: (try? lineEncoder.encode(line)) ?? Data(), as: UTF8.self)
    }

    /// One encoder for every line: making one per message costs more than encoding the message.
    private static let lineEncoder: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return encoder
    }()
}
