import ArgumentParser
import Herald
import HeraldHTTP
import Logging
import ServiceLifecycle

struct BrokerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "broker",
        abstract: "Run a broker: the first one leads, the others wait as warm standbys.")

    @OptionGroup var cluster: ClusterOptions
    @OptionGroup var network: NetworkOptions
    @OptionGroup var security: SecurityOptions
    @OptionGroup var http: HTTPOptions

    @Option(help: "Dissemination mode, fixed by the cluster's first broker: broker or direct. (env: HERALD_MODE; default: broker)")
    var mode: String?

    @Option(help: "Port for publishers and client requests; 0 picks a free one. (env: HERALD_REQUEST_PORT; default: 5555)")
    var requestPort: Int?

    @Option(help: "Port for subscribers; 0 picks a free one. (env: HERALD_SUBSCRIBER_PORT; default: 5556)")
    var subscriberPort: Int?

    @Option(help: "This broker's identity in the cluster. (env: HERALD_BROKER_ID; default: <host>-<pid>-<random>)")
    var brokerID: String?

    @Option(help: "The broker group: each group elects its own leader and serves the topics routed to it. (env: HERALD_GROUP; default: default)")
    var group: String?

    @Option(help: "Largest message a client may send, in bytes; larger ones cut the sender off. (env: HERALD_MAX_MESSAGE_SIZE; default: 1052672)")
    var maxMessageSize: Int?

    @Option(help: "Bytes of messages kept in all topics' logs, for recovery, history and slow subscribers. (env: HERALD_LOG_BYTES; default: 67108864)")
    var logBytes: Int?

    @Option(help: "Bytes of messages kept per topic. (env: HERALD_TOPIC_LOG_BYTES; default: 33554432)")
    var topicLogBytes: Int?

    @Option(help: "Bytes a publisher may send ahead of the broker's credit. (env: HERALD_PUBLISHER_WINDOW; default: 2097152)")
    var publisherWindow: Int?

    @Option(help: "Seconds a subscriber that takes nothing may slow publishers before it is left behind. (env: HERALD_STALL_TIMEOUT; default: 2)")
    var stallTimeout: Double?

    @Option(help: "Topics the broker holds at most; more are refused. (env: HERALD_MAX_TOPICS; default: 10000)")
    var maxTopics: Int?

    @Option(help: "Topic subscriptions the broker holds at most, over all subscribers; more are refused. (env: HERALD_MAX_SUBSCRIPTIONS; default: 100000)")
    var maxSubscriptions: Int?

    @Option(help: "Bytes of publisher registrations (endpoints and topic lists) the broker holds at most. (env: HERALD_REGISTRATION_BYTES; default: 16777216)")
    var registrationBytes: Int?

    func run() async throws {
        let modeName = Setting.string(mode, "HERALD_MODE", default: "broker")
        guard let mode = DisseminationMode(rawValue: modeName) else {
            throw ValidationError("unknown mode '\(modeName)'; use broker or direct")
        }
        var configuration = BrokerConfiguration(
            zookeeper: try cluster.zookeeperConfiguration(), layout: try cluster.layout(group: Setting.string(group, "HERALD_GROUP", default: ClusterLayout.defaultGroup)), mode: mode,
            brokerID: Setting.string(brokerID, "HERALD_BROKER_ID", default: BrokerConfiguration.defaultBrokerID()))
        configuration.bindHost = network.resolvedBindHost
        configuration.advertiseHost = network.resolvedAdvertiseHost
        configuration.requestPort = try Setting.port(requestPort, "HERALD_REQUEST_PORT", default: BrokerConfiguration.defaultRequestPort)
        configuration.subscriberPort = try Setting.port(
            subscriberPort, "HERALD_SUBSCRIBER_PORT", default: BrokerConfiguration.defaultSubscriberPort)
        configuration.maximumMessageSize =
            try Setting.integer(
                maxMessageSize, "HERALD_MAX_MESSAGE_SIZE", default: configuration.maximumMessageSize, range: 1024...(1 << 30))
            ?? configuration.maximumMessageSize
        configuration.logBytes =
            try Setting.integer(logBytes, "HERALD_LOG_BYTES", default: configuration.logBytes, range: 0...(1 << 40))
            ?? configuration.logBytes
        configuration.topicLogBytes =
            try Setting.integer(topicLogBytes, "HERALD_TOPIC_LOG_BYTES", default: configuration.topicLogBytes, range: 0...(1 << 40))
            ?? configuration.topicLogBytes
        configuration.publisherWindow =
            try Setting.integer(
                publisherWindow, "HERALD_PUBLISHER_WINDOW", default: configuration.publisherWindow, range: 65_536...(1 << 30))
            ?? configuration.publisherWindow
        let stall = try Setting.double(stallTimeout, "HERALD_STALL_TIMEOUT", default: configuration.stallTimeout.seconds)
        guard stall > 0, stall <= 3600 else { throw ValidationError("stall timeout must be between 0 and 3600 seconds, got \(stall)") }
        configuration.stallTimeout = .milliseconds(Int(stall * 1000))
        configuration.maximumTopics =
            try Setting.integer(maxTopics, "HERALD_MAX_TOPICS", default: configuration.maximumTopics, range: 1...10_000_000)
            ?? configuration.maximumTopics
        configuration.maximumSubscriptions =
            try Setting.integer(
                maxSubscriptions, "HERALD_MAX_SUBSCRIPTIONS", default: configuration.maximumSubscriptions, range: 1...100_000_000)
            ?? configuration.maximumSubscriptions
        configuration.registrationBytes =
            try Setting.integer(
                registrationBytes, "HERALD_REGISTRATION_BYTES", default: configuration.registrationBytes, range: 65_536...(1 << 40))
            ?? configuration.registrationBytes
        configuration.security = try security.curveSecurity(server: true)
        do {
            try configuration.validate()
        } catch {
            throw ValidationError("\(error)")
        }
        let logger = try cluster.makeLogger("herald.broker")
        // Before the broker exists: swift-metrics binds each metric to the backend when the metric is made.
        HeraldMetrics.bootstrap()
        let broker = Broker(configuration: configuration, logger: logger)
        let httpServices = try http.services(reportingOn: broker, logger: logger)
        try await reportingConfigurationErrors {
            let group = ServiceGroup(
                configuration: .init(
                    services: httpServices + [.init(service: broker)], gracefulShutdownSignals: [.sigterm, .sigint],
                    logger: logger))
            try await group.run()
        }
    }
}
