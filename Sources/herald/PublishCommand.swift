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
    @OptionGroup var security: SecurityOptions
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

    @Option(help: "Ownership strength: subscribers deliver only the strongest live publisher of a topic among those with a strength; the next takes over within a second when it dies. (env: HERALD_STRENGTH; default: none, shared)")
    var strength: Int?

    @Option(help: "Broker mode: bytes kept for replay after a leader failover, allocated up front; half may wait for credit. (env: HERALD_RETENTION_BYTES; default: 33554432)")
    var retentionBytes: Int?

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
        configuration.security = try security.curveSecurity(server: false)
        configuration.bindHost = network.resolvedBindHost
        configuration.advertiseHost = network.resolvedAdvertiseHost
        configuration.port = try Setting.port(port, "HERALD_PUBLISHER_PORT", default: PublisherConfiguration.defaultPort)
        configuration.maximumPayloadSize =
            try Setting.integer(maxPayload, "HERALD_MAX_PAYLOAD", default: configuration.maximumPayloadSize, range: 1...Int(Int32.max))
            ?? configuration.maximumPayloadSize
        configuration.historyOffered =
            try Setting.integer(history, "HERALD_HISTORY", default: 0, range: 0...BrokerConfiguration.defaultHistoryLimit) ?? 0
        configuration.strength = try Setting.integer(strength, "HERALD_STRENGTH", default: nil, range: 0...Int(Int32.max))
        configuration.retentionCount =
            try Setting.integer(retentionCount, "HERALD_RETENTION_COUNT", default: configuration.retentionCount, range: 0...10_000_000)
            ?? configuration.retentionCount
        configuration.retentionBytes =
            try Setting.integer(retentionBytes, "HERALD_RETENTION_BYTES", default: configuration.retentionBytes, range: 65_536...(1 << 34))
            ?? configuration.retentionBytes
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
        let sent = Atomic(0)
        do {
            try await cancelWhenGracefulShutdown { try await publishAll(counting: sent) }
        } catch is CancellationError {
            // A graceful shutdown (SIGTERM, SIGINT) ends the loop by cancellation: a normal stop.
        }
        let total = sent.load(ordering: .relaxed)
        if let count, total >= count {
            // Messages wait in the retention buffer while no leader is known: give them a chance to leave.
            await publisher.waitUntilAttached()
            try? await Task.sleep(for: Self.drainPause)
            logger.info("published every message", metadata: ["count": "\(total)"])
        }
    }

    private func publishAll(counting total: borrowing Atomic<Int>) async throws {
        let clock = ContinuousClock()
        var sent = 0
        // Payloads are written into reused buffers: the publisher copies them into its retention buffer, so
        // once `publish` returns they are ours again and changing them allocates nothing.
        let batchLimit = rate > 0 ? 1 : Self.batchCount(forPayloadSize: size)
        var buffers = [[UInt8]](repeating: [UInt8](repeating: UInt8(ascii: "."), count: size), count: batchLimit)
        var next = clock.now
        var readings = UInt64.random(in: .min ... .max)
        while count.map({ sent < $0 }) ?? true {
            let batch = min(batchLimit, (count ?? .max) - sent)
            if rate > 0 {
                try await clock.sleep(until: next)
                // Keep the rate steady, but after a stall (waiting for the cluster's mode) do not burst to catch
                // up on more than a second's worth of messages.
                next = max(next + .seconds(1 / rate), clock.now - .seconds(1))
            }
            for index in 0..<batch { fill(&buffers[index], number: sent + index + 1, readings: &readings) }
            let sequences = try await publisher.publish(contentsOf: buffers[0..<batch], on: topic)
            sent += batch
            total.store(sent, ordering: .relaxed)
            if sequences.upperBound % 1000 < UInt64(batch) {
                logger.debug("published", metadata: ["sequence": "\(sequences.upperBound)"])
            }
        }
    }

    /// Messages handed to the publisher at once when sending as fast as possible: up to 256, and no more than
    /// 256 KiB of payload, so that the reused buffers stay small next to the retention buffer whatever `--size` is.
    static func batchCount(forPayloadSize size: Int) -> Int {
        max(1, min(256, (256 * 1024) / max(size, 1)))
    }

    /// Writes a readable reading, `<topic> #<number> reading=<value>`, into `buffer`, padded with dots to its size.
    private func fill(_ buffer: inout [UInt8], number: Int, readings: inout UInt64) {
        buffer.withUnsafeMutableBytes { bytes in
            var offset = 0
            func put(_ byte: UInt8) {
                if offset < bytes.count { bytes[offset] = byte }
                offset += 1
            }
            func put(_ value: Int) {
                if value < 0 { put(UInt8(ascii: "-")) }
                let magnitude = value.magnitude
                var divisor: UInt = 1
                while divisor <= magnitude / 10 { divisor *= 10 }
                var rest = magnitude
                while divisor > 0 {
                    put(UInt8(ascii: "0") + UInt8(rest / divisor))
                    rest %= divisor
                    divisor /= 10
                }
            }
            for byte in topic.name.utf8 { put(byte) }
            for byte in " #".utf8 { put(byte) }
            put(number)
            for byte in " reading=".utf8 { put(byte) }
            // A cheap generator: the system's draws a random number from the kernel on every call.
            readings = readings &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            put(Int((readings >> 33) % 61) - 20)
            while offset < bytes.count { put(UInt8(ascii: ".")) }
        }
    }
}
