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
    @OptionGroup var http: HTTPOptions

    @Option(help: "Dissemination mode, fixed by the cluster's first broker: broker or direct. (env: HERALD_MODE; default: broker)")
    var mode: String?

    @Option(help: "Port for publishers and client requests; 0 picks a free one. (env: HERALD_REQUEST_PORT; default: 5555)")
    var requestPort: Int?

    @Option(help: "Port for subscribers; 0 picks a free one. (env: HERALD_SUBSCRIBER_PORT; default: 5556)")
    var subscriberPort: Int?

    @Option(help: "This broker's identity in the cluster. (env: HERALD_BROKER_ID; default: <host>-<pid>)")
    var brokerID: String?

    func run() async throws {
        let modeName = Setting.string(mode, "HERALD_MODE", default: "broker")
        guard let mode = DisseminationMode(rawValue: modeName) else {
            throw ValidationError("unknown mode '\(modeName)'; use broker or direct")
        }
        var configuration = BrokerConfiguration(
            zookeeper: try cluster.zookeeperConfiguration(), layout: try cluster.layout(), mode: mode,
            brokerID: Setting.string(brokerID, "HERALD_BROKER_ID", default: BrokerConfiguration.defaultBrokerID()))
        configuration.bindHost = network.resolvedBindHost
        configuration.advertiseHost = network.resolvedAdvertiseHost
        configuration.requestPort = try Setting.port(requestPort, "HERALD_REQUEST_PORT", default: BrokerConfiguration.defaultRequestPort)
        configuration.subscriberPort = try Setting.port(
            subscriberPort, "HERALD_SUBSCRIBER_PORT", default: BrokerConfiguration.defaultSubscriberPort)
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
