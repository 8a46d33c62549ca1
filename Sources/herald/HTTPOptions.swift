import ArgumentParser
import Foundation
import Herald
import HeraldHTTP
import Logging
import ServiceLifecycle

/// Where a process serves `/healthz`, `/readyz` and `/metrics`, and where `herald health` probes them.
struct HTTPOptions: ParsableArguments {
    // `.unconditional` lets `--http-port -1` through: otherwise the parser takes `-1` for a short flag.
    @Option(
        parsing: .unconditional,
        help: """
            HTTP port for /healthz, /readyz and /metrics; 0 picks a free one, off (or -1) turns the server off. \
            (env: HERALD_HTTP_PORT; default: 8080)
            """)
    var httpPort: String?

    @Option(help: "Local address the HTTP server listens on. (env: HERALD_HTTP_HOST; default: 0.0.0.0)")
    var httpHost: String?

    /// One entry of a `ServiceGroup`'s service list.
    typealias ServiceEntry = ServiceGroupConfiguration.ServiceConfiguration

    /// Words that turn the server off; `-1` too, for tools that can only pass numbers.
    static let disabledWords: Set<String> = ["off", "none", "disabled", "false", "no", "-1"]

    var resolvedHost: String {
        Setting.string(httpHost, "HERALD_HTTP_HOST", default: HealthServer.Configuration.defaultHost)
    }

    /// The port to serve on, or `nil` when the server is turned off.
    func resolvedPort() throws -> Int? {
        guard let text = Setting.value(httpPort, "HERALD_HTTP_PORT") else {
            return HealthServer.Configuration.defaultPort
        }
        let source = httpPort == nil ? "HERALD_HTTP_PORT" : "--http-port"
        let trimmed = text.trimmingCharacters(in: .whitespaces).lowercased()
        if Self.disabledWords.contains(trimmed) { return nil }
        guard let port = Int(trimmed), (0...65535).contains(port) else {
            throw ValidationError(
                "\(source) must be a port in 0...65535, or off to turn the HTTP server off; got '\(text)'")
        }
        return port
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
            configuration: .init(host: resolvedHost, port: port), health: health, metrics: HeraldMetrics.bootstrap(),
            logger: logger)
        return [.init(service: server)]
    }
}
