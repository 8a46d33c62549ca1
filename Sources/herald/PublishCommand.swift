import ArgumentParser
import Foundation
import Herald
import HeraldHTTP
import Logging
import ServiceLifecycle
import Synchronization

struct PublishCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "publish",
        abstract: "Publish automated messages on a topic, following the leader broker.")

    @OptionGroup var cluster: ClusterOptions
    @OptionGroup var network: NetworkOptions
    @OptionGroup var http: HTTPOptions

    @Option(help: "Topic to publish on. (env: HERALD_TOPIC)")
    var topic: String?

    @Option(help: "Messages per second; 0 sends as fast as possible. (env: HERALD_RATE; default: 10)")
    var rate: Double?

    @Option(help: "Stop after this many messages. (env: HERALD_COUNT; default: no limit)")
    var count: Int?

    @Option(help: "Payload size in bytes. (env: HERALD_SIZE; default: 64)")
    var size: Int?

    @Option(help: "Largest payload accepted, in bytes. (env: HERALD_MAX_PAYLOAD; default: 1048576)")
    var maxPayload: Int?

    @Option(help: "Direct mode: port subscribers connect to; 0 picks a free one. (env: HERALD_PUBLISHER_PORT; default: 5557)")
    var port: Int?

    @Option(help: "Messages per topic brokers keep for late joiners (herald subscribe --history). (env: HERALD_HISTORY; default: 0)")
    var history: Int?

    @Option(help: "Broker mode: messages kept for replay after a leader failover. (env: HERALD_RETENTION_COUNT; default: 100000)")
    var retentionCount: Int?

    @Option(help: "Broker mode: seconds a message is kept for replay; an outage longer than this loses older messages, and subscribers count them. (env: HERALD_RETENTION_AGE; default: 10)")
    var retentionAge: Double?

    func run() async throws {
        guard let name = Setting.value(topic, "HERALD_TOPIC") else {
            throw ValidationError("a topic is required: --topic NAME or HERALD_TOPIC")
        }
        let topic = try parseTopics([name])[0]
        let rate = try Setting.double(rate, "HERALD_RATE", default: 10)
        guard rate >= 0 else { throw ValidationError("rate must not be negative, got \(rate)") }
        let count = try Setting.integer(count, "HERALD_COUNT", default: nil, range: 1...Int.max)
        let size = try Setting.integer(size, "HERALD_SIZE", default: 64, range: 0...Int(Int32.max)) ?? 64
        var configuration = PublisherConfiguration(
            zookeeper: try cluster.zookeeperConfiguration(), layout: try cluster.layout())
        configuration.bindHost = network.resolvedBindHost
        configuration.advertiseHost = network.resolvedAdvertiseHost
        configuration.port = try Setting.port(port, "HERALD_PUBLISHER_PORT", default: PublisherConfiguration.defaultPort)
        configuration.maximumPayloadSize =
            try Setting.integer(maxPayload, "HERALD_MAX_PAYLOAD", default: configuration.maximumPayloadSize, range: 1...Int(Int32.max))
            ?? configuration.maximumPayloadSize
        configuration.historyOffered =
            try Setting.integer(history, "HERALD_HISTORY", default: 0, range: 0...BrokerConfiguration.defaultHistoryLimit) ?? 0
        configuration.retentionCount =
            try Setting.integer(retentionCount, "HERALD_RETENTION_COUNT", default: configuration.retentionCount, range: 0...10_000_000)
            ?? configuration.retentionCount
        let retentionAge = try Setting.double(retentionAge, "HERALD_RETENTION_AGE", default: configuration.retentionAge.seconds)
        guard retentionAge >= 0, retentionAge <= 3600 else {
            throw ValidationError("retention age must be between 0 and 3600 seconds, got \(retentionAge)")
        }
        configuration.retentionAge = .milliseconds(Int(retentionAge * 1000))
        guard size <= configuration.maximumPayloadSize else {
            throw ValidationError(
                "size \(size) exceeds the maximum payload of \(configuration.maximumPayloadSize) bytes; lower --size or raise --max-payload")
        }
        let logger = try cluster.makeLogger("herald.publisher")
        // Before the publisher exists: swift-metrics binds each metric to the backend when the metric is made.
        HeraldMetrics.bootstrap()
        let publisher = try Publisher(configuration: configuration, topics: [topic], logger: logger)
        let driver = PublishLoop(publisher: publisher, topic: topic, rate: rate, count: count, size: size, logger: logger)
        let group = ServiceGroup(
            configuration: .init(
                services: try http.services(reportingOn: publisher, logger: logger) + [
                    .init(service: publisher),
                    .init(service: driver, successTerminationBehavior: .gracefullyShutdownGroup),
                ],
                gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await reportingConfigurationErrors { try await group.run() }
    }
}

/// Publishes automated messages at a steady rate, like the classic classroom demo's weather publisher.
struct PublishLoop: Service {
    let publisher: Publisher
    let topic: Topic
    let rate: Double
    let count: Int?
    let size: Int
    let logger: Logger

    /// After the last message, time for it to leave the process before the sockets close.
    static let drainPause: Duration = .milliseconds(500)

    func run() async throws {
        let clock = ContinuousClock()
        let sent = Mutex(0)
        do {
            try await cancelWhenGracefulShutdown {
                var next = clock.now
                while count.map({ sent.withLock { $0 } < $0 }) ?? true {
                    let number = sent.withLock { $0 }
                    if rate > 0 {
                        try await clock.sleep(until: next)
                        // Keep the rate steady, but after a stall (waiting for the cluster's mode) do not burst
                        // to catch up on more than a second's worth of messages.
                        next = max(next + .seconds(1 / rate), clock.now - .seconds(1))
                    }
                    let sequence = try await publisher.publish(payload(number + 1), on: topic)
                    sent.withLock { $0 += 1 }
                    if sequence % 1000 == 0 { logger.debug("published", metadata: ["sequence": "\(sequence)"]) }
                }
            }
        } catch is CancellationError {
            // A graceful shutdown (SIGTERM, SIGINT) ends the loop by cancellation: a normal stop.
        }
        let total = sent.withLock { $0 }
        if let count, total >= count {
            // Messages wait in the retention buffer while no leader is known: give them a chance to leave.
            await publisher.waitUntilAttached()
            try? await Task.sleep(for: Self.drainPause)
            logger.info("published every message", metadata: ["count": "\(total)"])
        }
    }

    /// A readable reading padded to the requested size.
    private func payload(_ number: Int) -> [UInt8] {
        let text = "\(topic) #\(number) reading=\(Int.random(in: -20...40))"
        var bytes = Array(text.utf8.prefix(size))
        if bytes.count < size { bytes += Array(repeating: UInt8(ascii: "."), count: size - bytes.count) }
        return bytes
    }
}
