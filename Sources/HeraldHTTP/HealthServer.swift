import Herald
import Hummingbird
import Logging
import ServiceLifecycle
import Synchronization

/// The HTTP surface of a Herald process: liveness, readiness and Prometheus metrics for orchestrators and scrapers.
///
/// Routes:
/// - `GET /healthz`: `200 ok` whenever the process can answer at all (liveness).
/// - `GET /readyz`: `200` with ``HealthReporting/readinessDetail`` when ``HealthReporting/isReady``,
///   otherwise `503` with the same detail (readiness).
/// - `GET /metrics`: the ``HeraldMetrics`` registry in the Prometheus text format.
///
/// It is a swift-service-lifecycle `Service`: put it in the process's `ServiceGroup` before the service it
/// reports on, so liveness answers while that service starts and the server stops last on SIGTERM.
public struct HealthServer: Service {
    /// Where the server listens.
    public struct Configuration: Sendable, Equatable {
        /// Every interface, so probes from a container runtime or Kubernetes reach the process.
        public static let defaultHost = "0.0.0.0"
        /// The customary port of an HTTP side channel; not one of Herald's ZeroMQ ports (5555-5557).
        public static let defaultPort = 8080

        /// The local address to bind.
        public var host: String
        /// The TCP port to bind; `0` lets the system pick a free one, reported to `onListening`.
        public var port: Int

        /// Makes a configuration.
        /// - Parameters:
        ///   - host: The local address to bind.
        ///   - port: The TCP port to bind, `0` for any free port.
        public init(host: String = defaultHost, port: Int = defaultPort) {
            self.host = host
            self.port = port
        }
    }

    /// The `Content-Type` of `/metrics`: the Prometheus text exposition format.
    public static let metricsContentType = "text/plain; version=0.0.4; charset=utf-8"

    /// Where the server listens.
    public let configuration: Configuration

    /// Makes a server; nothing listens until ``run()``.
    /// - Parameters:
    ///   - configuration: Where to listen.
    ///   - health: What `/readyz` reports on: a broker, publisher or subscriber.
    ///   - metrics: The registry `/metrics` renders.
    ///   - logger: Receives the bound address at info and server errors.
    ///   - onListening: Called once with the bound port when the server accepts connections; with port `0`
    ///     it is the only way to learn the port.
    public init(
        configuration: Configuration = Configuration(),
        health: any HealthReporting,
        metrics: HeraldMetrics,
        logger: Logger,
        onListening: @escaping @Sendable (_ port: Int) async -> Void = { _ in }
    ) {
        self.configuration = configuration
        self.health = health
        self.metrics = metrics
        self.logger = logger
        self.onListening = onListening
    }

    /// Serves until graceful shutdown or cancellation.
    ///
    /// - Throws: ``HealthServerError/cannotListen(host:port:reason:)`` when the address cannot be bound,
    ///   for example because another process holds the port.
    public func run() async throws {
        let listening = Mutex(false)
        let application = makeApplication { port in
            listening.withLock { $0 = true }
        }
        do {
            try await application.run()
        } catch {
            // Only a failure before the socket was bound is a configuration problem the user can fix; later
            // errors are Hummingbird's own and pass through unchanged.
            guard !listening.withLock({ $0 }) else { throw error }
            throw HealthServerError.cannotListen(host: configuration.host, port: configuration.port, reason: "\(error)")
        }
    }

    /// Builds the Hummingbird application ``run()`` serves, for in-process tests with `HummingbirdTesting`.
    /// - Returns: An application with the three routes, bound to ``configuration``.
    public func makeApplication() -> some ApplicationProtocol {
        makeApplication { _ in }
    }

    // MARK: - Private

    /// What `/readyz` reports on.
    private let health: any HealthReporting
    /// What `/metrics` renders.
    private let metrics: HeraldMetrics
    /// The process's logger; the server logs through a quieter copy (see `makeApplication(marking:)`).
    private let logger: Logger
    /// The caller's hook for the bound port.
    private let onListening: @Sendable (Int) async -> Void

    /// Builds the application; `marking` runs first when the socket is bound, so ``run()`` can tell bind
    /// failures from later ones.
    private func makeApplication(
        marking: @escaping @Sendable (Int) -> Void
    ) -> Application<RouterResponder<BasicRequestContext>> {
        let router = Router()
        let health = self.health
        let metrics = self.metrics
        router.get("healthz") { _, _ in
            Self.text(.ok, "ok")
        }
        router.get("readyz") { _, _ in
            Self.text(health.isReady ? .ok : .serviceUnavailable, health.readinessDetail)
        }
        router.get("metrics") { _, _ in
            Response(
                status: .ok,
                headers: [.contentType: Self.metricsContentType],
                body: ResponseBody(byteBuffer: ByteBuffer(bytes: metrics.render())))
        }

        // Hummingbird logs its own "Server started" line at info; ours carries Herald's metadata instead, so
        // the server's logger starts at notice to keep one line per event while still showing its warnings.
        var serverLogger = logger
        serverLogger.logLevel = max(logger.logLevel, .notice)
        let logger = self.logger
        let configuration = self.configuration
        let onListening = self.onListening
        return Application(
            router: router,
            configuration: ApplicationConfiguration(
                address: .hostname(configuration.host, port: configuration.port), serverName: "herald"),
            onServerRunning: { channel in
                let port = channel.localAddress?.port ?? configuration.port
                marking(port)
                logger.info(
                    "HTTP health server listening",
                    metadata: [
                        "http.address": "http://\(Self.authority(configuration.host, port))",
                        "http.routes": "/healthz /readyz /metrics",
                    ])
                await onListening(port)
            },
            logger: serverLogger)
    }

    /// A short plain-text response; the trailing newline keeps `curl` output on its own line.
    private static func text(_ status: HTTPResponse.Status, _ body: String) -> Response {
        Response(
            status: status,
            headers: [.contentType: "text/plain; charset=utf-8"],
            body: ResponseBody(byteBuffer: ByteBuffer(string: body + "\n")))
    }

    /// `host:port`, bracketing IPv6 literals as URLs require.
    static func authority(_ host: String, _ port: Int) -> String {
        host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
    }
}

/// Why the HTTP health server could not serve.
public enum HealthServerError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The address could not be bound: the port is taken, the host is not a local address, or the port needs
    /// privileges.
    case cannotListen(host: String, port: Int, reason: String)

    /// A message that names the address and the options that change it.
    public var description: String {
        switch self {
        case .cannotListen(let host, let port, let reason):
            "cannot serve HTTP on \(HealthServer.authority(host, port)): \(reason); choose another address with "
                + "--http-host/--http-port (HERALD_HTTP_HOST/HERALD_HTTP_PORT), 0 for any free port, or off"
        }
    }
}
