import ArgumentParser
import FoundationEssentials
import Herald
import HeraldHTTP
import Logging
import OSThreads
import ServiceLifecycle
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

struct PublishCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "publish",
        abstract: "Publish automated messages on a topic, following the leader broker.")

    @OptionGroup var cluster: ClusterOptions
    @OptionGroup var security: SecurityOptions
    @OptionGroup var network: NetworkOptions
    @OptionGroup var http: HTTPOptions

    @Option(help: Settings.publishTopic.help)
    var topic: String?

    @Option(help: Settings.rate.help)
    var rate: Double?

    @Option(help: Settings.count.help)
    var count: Int?

    @Option(help: Settings.size.help)
    var size: Int?

    @Option(help: Settings.maxPayload.help)
    var maxPayload: Int?

    @Option(help: Settings.publisherPort.help)
    var port: Int?

    @Option(help: Settings.historyOffered.help)
    var history: Int?

    @Option(help: Settings.strength.help)
    var strength: Int?

    @Option(help: Settings.retentionBytes.help)
    var retentionBytes: Int?

    @Option(help: Settings.retentionCount.help)
    var retentionCount: Int?

    @Option(help: Settings.retentionAge.help)
    var retentionAge: Double?

    func run() async throws {
        guard let name = try Settings.publishTopic.optionalValue(topic) else {
            throw ValidationError("a topic is required: --topic NAME or HERALD_TOPIC")
        }
        let topic = try parseTopics([name])[0]
        let rate = try Settings.rate.value(rate)
        let count = try Settings.count.optionalValue(count)
        let size = try Settings.size.value(size)
        var configuration = PublisherConfiguration(
            zookeeper: try cluster.zookeeperConfiguration(), layout: try cluster.layout())
        configuration.security = try security.curveSecurity(server: false)
        configuration.bindHost = try network.resolvedBindHost()
        configuration.advertiseHost = try network.resolvedAdvertiseHost()
        configuration.port = try Settings.publisherPort.value(port)
        configuration.maximumPayloadSize = try Settings.maxPayload.value(maxPayload)
        configuration.historyOffered = try Settings.historyOffered.value(history)
        configuration.strength = try Settings.strength.optionalValue(strength)
        configuration.retentionCount = try Settings.retentionCount.value(retentionCount)
        configuration.retentionBytes = try Settings.retentionBytes.value(retentionBytes)
        configuration.retentionAge = try Settings.retentionAge.value(seconds: retentionAge)
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
            // Messages wait in the retention buffer while no leader is known, and while flow control holds them
            // back for a slow subscriber: the count is published once they have left, or when told to stop.
            let allSent = await cancelWhenGracefulShutdown {
                await publisher.waitUntilAttached()
                return await publisher.waitUntilSent()
            }
            try? await Task.sleep(for: Self.drainPause)
            // Otherwise the publisher says, as it stops, how many never left.
            if allSent { logger.info("published every message", metadata: ["count": "\(total)"]) }
        }
    }

    private func publishAll(counting total: borrowing Atomic<Int>) async throws {
        guard rate > 0 else { return try await publish(counting: total, pacer: nil) }
        // Paced, the loop runs on a thread of its own and sleeps there between messages: the cheapest wake-up,
        // and the message is sent on the same thread, with no hop through the pool.
        let pacer = try ThreadExecutor(name: "herald-pacer")
        defer { pacer.finish() }
        try await withTaskExecutorPreference(pacer) { try await publish(counting: total, pacer: pacer) }
    }

    private func publish(counting total: borrowing Atomic<Int>, pacer: ThreadExecutor?) async throws {
        let clock = ContinuousClock()
        var sent = 0
        // Payloads are written into reused buffers: the publisher copies them into its retention buffer, so
        // once `publish` returns they are ours again and changing them allocates nothing.
        let batchLimit = pacer == nil ? Self.batchCount(forPayloadSize: size) : 1
        var buffers = [[UInt8]](repeating: [UInt8](repeating: UInt8(ascii: "."), count: size), count: batchLimit)
        // How much of each buffer the last reading wrote: the rest is dots already and is not written again,
        // which for large payloads costs more than the whole publish.
        var written = [Int](repeating: 0, count: batchLimit)
        var next = clock.now
        var readings = UInt64.random(in: .min ... .max)
        while count.map({ sent < $0 }) ?? true {
            let batch = min(batchLimit, (count ?? .max) - sent)
            if let pacer {
                try await pacer.sleep(until: next)
                // Keep the rate steady, but after a stall (waiting for the cluster's mode) do not burst to catch
                // up on more than a second's worth of messages.
                next = max(next + .seconds(1 / rate), clock.now - .seconds(1))
            }
            for index in 0..<batch {
                written[index] = fill(
                    &buffers[index], number: sent + index + 1, readings: &readings, previous: written[index])
            }
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

    /// Writes a readable reading, `<topic> #<number> reading=<value>`, into `buffer`, which is dots after the
    /// `previous` bytes the last reading wrote, and pads with dots what this shorter one leaves of those.
    /// - Returns: the bytes written before the padding.
    private func fill(_ buffer: inout [UInt8], number: Int, readings: inout UInt64, previous: Int) -> Int {
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
            let end = min(offset, bytes.count)
            while offset < previous { put(UInt8(ascii: ".")) }
            return end
        }
    }
}
