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

    @Option(help: Settings.mode.help)
    var mode: String?

    @Option(help: Settings.requestPort.help)
    var requestPort: Int?

    @Option(help: Settings.subscriberPort.help)
    var subscriberPort: Int?

    @Option(help: Settings.brokerID.help)
    var brokerID: String?

    @Option(help: Settings.group.help)
    var group: String?

    @Option(help: Settings.brokerMaxMessageSize.help)
    var maxMessageSize: Int?

    @Option(help: Settings.logBytes.help)
    var logBytes: Int?

    @Option(help: Settings.topicLogBytes.help)
    var topicLogBytes: Int?

    @Option(help: Settings.publisherWindow.help)
    var publisherWindow: Int?

    @Option(help: Settings.stallTimeout.help)
    var stallTimeout: Double?

    @Option(help: Settings.maxTopics.help)
    var maxTopics: Int?

    @Option(help: Settings.maxSubscriptions.help)
    var maxSubscriptions: Int?

    @Option(help: Settings.registrationBytes.help)
    var registrationBytes: Int?

    func run() async throws {
        var configuration = BrokerConfiguration(
            zookeeper: try cluster.zookeeperConfiguration(), layout: try cluster.layout(group: try Settings.group.value(group)),
            mode: try Settings.mode.value(parsing: mode),
            brokerID: try Settings.brokerID.optionalValue(brokerID) ?? BrokerConfiguration.defaultBrokerID())
        configuration.bindHost = try network.resolvedBindHost()
        configuration.advertiseHost = try network.resolvedAdvertiseHost()
        configuration.requestPort = try Settings.requestPort.value(requestPort)
        configuration.subscriberPort = try Settings.subscriberPort.value(subscriberPort)
        configuration.maximumMessageSize = try Settings.brokerMaxMessageSize.value(maxMessageSize)
        configuration.logBytes = try Settings.logBytes.value(logBytes)
        configuration.topicLogBytes = try Settings.topicLogBytes.value(topicLogBytes)
        configuration.publisherWindow = try Settings.publisherWindow.value(publisherWindow)
        configuration.stallTimeout = try Settings.stallTimeout.value(seconds: stallTimeout)
        configuration.maximumTopics = try Settings.maxTopics.value(maxTopics)
        configuration.maximumSubscriptions = try Settings.maxSubscriptions.value(maxSubscriptions)
        configuration.registrationBytes = try Settings.registrationBytes.value(registrationBytes)
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
