import ArgumentParser
import Herald
import HeraldHTTP
import Logging
import ServiceLifecycle

/// Where a process serves `/healthz`, `/readyz` and `/metrics`, and where `herald health` probes them.
struct HTTPOptions: ParsableArguments {
    // `.unconditional` lets `--http-port -1` through: otherwise the parser takes `-1` for a short flag.
    @Option(parsing: .unconditional, help: Settings.httpPort.help)
    var httpPort: String?

    @Option(help: Settings.httpHost.help)
    var httpHost: String?

    /// One entry of a `ServiceGroup`'s service list.
    typealias ServiceEntry = ServiceGroupConfiguration.ServiceConfiguration

    func resolvedHost() throws -> String { try Settings.httpHost.value(httpHost) }

    /// The port to serve on, or `nil` when the server is turned off.
    func resolvedPort() throws -> Int? {
        switch try Settings.httpPort.value(parsing: httpPort) {
        case .port(let port): port
        case .off: nil
        }
    }

    /// The HTTP server to run beside `health`, or none when turned off.
    ///
    /// Put the result first in the `ServiceGroup`: the group starts services in order and stops them in reverse,
    /// so liveness answers while the main service starts and the metrics stay scrapeable until it has stopped.
    func services(reportingOn health: any HealthReporting, logger: Logger) throws -> [ServiceEntry] {
        guard let port = try resolvedPort() else {
            logger.info("HTTP health server turned off")
            return []
        }
        let server = HealthServer(
            configuration: .init(host: try resolvedHost(), port: port), health: health, metrics: HeraldMetrics.bootstrap(),
            logger: logger)
        return [.init(service: server)]
    }
}
