import ArgumentParser
import FoundationEssentials
import HeraldHTTP

#if canImport(Glibc)
    import Glibc
#endif

/// `herald health`: the container health check, since images carry no `curl`.
struct HealthCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "health",
        abstract: "Probe the Herald process on this host over HTTP: exit 0 when it is ready (or alive, with --live).",
        discussion: """
            Sends GET /readyz (or /healthz with --live) to the HTTP port the process serves, resolved like the \
            process resolves it, and prints one line. Exit status: 0 on HTTP 200; 1 on any other status, a refused \
            connection or a timeout.
            """)

    @OptionGroup var http: HTTPOptions

    @Flag(help: "Probe liveness (/healthz: the process answers) instead of readiness (/readyz: it does its job).")
    var live = false

    @Option(help: Settings.healthTimeout.help)
    var timeout: Double?

    func run() async throws {
        guard let port = try http.resolvedPort() else {
            throw ValidationError(
                "the HTTP port is off, so there is nothing to probe; give the port the process serves")
        }
        guard port != 0 else {
            throw ValidationError(
                "HTTP port 0 means any free port; give health the port the process logged (--http-port)")
        }
        let timeout = try Settings.healthTimeout.value(seconds: timeout)
        let path = live ? "/healthz" : "/readyz"
        let outcome = await HealthProbe.probe(
            host: Self.probeHost(for: try http.resolvedHost()), port: port, path: path,
            timeout: timeout)
        let state = live ? (outcome.isHealthy ? "alive" : "not alive") : (outcome.isHealthy ? "ready" : "not ready")
        print("\(state): \(outcome)")
        if !outcome.isHealthy { throw ExitCode(1) }
    }

    /// The address to probe: a server bound to every interface is reached on loopback, which works even when
    /// the host's other interfaces are firewalled; a server bound to one address is reached there.
    static func probeHost(for bindHost: String) -> String {
        switch bindHost {
        case "", "0.0.0.0", "*": "127.0.0.1"
        case "::", "[::]": "::1"
        default: bindHost
        }
    }
}
