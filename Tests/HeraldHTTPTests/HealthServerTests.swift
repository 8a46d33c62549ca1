import Herald
import HeraldHTTP
import Hummingbird
import HummingbirdTesting
import Logging
import Metrics
import ServiceLifecycle
import Synchronization
import Testing

/// A stand-in for a broker, publisher or subscriber whose readiness the test sets.
final class FakeHealth: HealthReporting {
    /// `Mutex` makes the stored state safe to read from the server's threads while the test changes it.
    private let state: Mutex<(ready: Bool, detail: String)>

    init(ready: Bool, detail: String) {
        state = Mutex((ready, detail))
    }

    var isReady: Bool { state.withLock { $0.ready } }
    var readinessDetail: String { state.withLock { $0.detail } }

    func set(ready: Bool, detail: String) {
        state.withLock { $0 = (ready, detail) }
    }
}

/// A logger that prints nothing: tests never bootstrap logging.
let quietLogger = Logger(label: "herald.http.tests", factory: { _ in SwiftLogNoOpLogHandler() })

/// A server on any free loopback port, with a private registry, reporting on `health`.
func makeServer(
    health: any HealthReporting = FakeHealth(ready: true, detail: "role=leader"),
    metrics: HeraldMetrics = HeraldMetrics(),
    onListening: @escaping @Sendable (Int) async -> Void = { _ in }
) -> HealthServer {
    HealthServer(
        configuration: .init(host: "127.0.0.1", port: 0), health: health, metrics: metrics, logger: quietLogger,
        onListening: onListening)
}

@Suite("Health routes")
struct HealthRouteTests {
    @Test func livenessAnswersOKWhileTheProcessRuns() async throws {
        let app = makeServer(health: FakeHealth(ready: false, detail: "no leader")).makeApplication()
        try await app.test(.router) { client in
            try await client.execute(uri: "/healthz", method: .get) { response in
                #expect(response.status == .ok)
                #expect(String(buffer: response.body) == "ok\n")
            }
        }
    }

    @Test func readinessAnswersOKWithTheDetailWhenReady() async throws {
        let app = makeServer(health: FakeHealth(ready: true, detail: "role=leader zookeeper=connected"))
            .makeApplication()
        try await app.test(.router) { client in
            try await client.execute(uri: "/readyz", method: .get) { response in
                #expect(response.status == .ok)
                #expect(String(buffer: response.body) == "role=leader zookeeper=connected\n")
            }
        }
    }

    @Test func readinessAnswersUnavailableWithTheDetailWhenNotReady() async throws {
        let app = makeServer(health: FakeHealth(ready: false, detail: "no leader")).makeApplication()
        try await app.test(.router) { client in
            try await client.execute(uri: "/readyz", method: .get) { response in
                #expect(response.status == .serviceUnavailable)
                #expect(String(buffer: response.body) == "no leader\n")
            }
        }
    }

    @Test func readinessFollowsTheReporterFromOneRequestToTheNext() async throws {
        let health = FakeHealth(ready: false, detail: "role=candidate")
        let app = makeServer(health: health).makeApplication()
        try await app.test(.router) { client in
            try await client.execute(uri: "/readyz", method: .get) { #expect($0.status == .serviceUnavailable) }
            health.set(ready: true, detail: "role=standby")
            try await client.execute(uri: "/readyz", method: .get) { response in
                #expect(response.status == .ok)
                #expect(String(buffer: response.body) == "role=standby\n")
            }
        }
    }

    @Test func unknownPathsAreNotFound() async throws {
        try await makeServer().makeApplication().test(.router) { client in
            try await client.execute(uri: "/nope", method: .get) { #expect($0.status == .notFound) }
        }
    }
}

@Suite("Metrics route")
struct MetricsRouteTests {
    @Test func metricsUseThePrometheusTextContentType() async throws {
        try await makeServer().makeApplication().test(.router) { client in
            try await client.execute(uri: "/metrics", method: .get) { response in
                #expect(response.status == .ok)
                #expect(response.headers[.contentType]?.hasPrefix("text/plain; version=0.0.4") == true)
            }
        }
    }

    @Test func metricsRenderCountersWithTheirLabels() async throws {
        let metrics = HeraldMetrics()
        Counter(label: "herald_broker_messages_in_total", dimensions: [("topic", "weather")], factory: metrics.factory)
            .increment(by: 3)
        try await makeServer(metrics: metrics).makeApplication().test(.router) { client in
            try await client.execute(uri: "/metrics", method: .get) { response in
                let text = String(buffer: response.body)
                #expect(text.contains("# TYPE herald_broker_messages_in_total counter"))
                #expect(text.contains(#"herald_broker_messages_in_total{topic="weather"} 3"#))
            }
        }
    }

    @Test func timersRenderAsHistogramsWithLatencyBucketsFrom50MicrosecondsTo10Seconds() async throws {
        let metrics = HeraldMetrics()
        let timer = Metrics.Timer(label: "herald_end_to_end_latency_seconds", factory: metrics.factory)
        timer.recordMicroseconds(70)  // between the 50 µs and 100 µs buckets
        timer.recordMilliseconds(3)  // between the 2.5 ms and 5 ms buckets
        try await makeServer(metrics: metrics).makeApplication().test(.router) { client in
            try await client.execute(uri: "/metrics", method: .get) { response in
                let text = String(buffer: response.body)
                #expect(text.contains("# TYPE herald_end_to_end_latency_seconds histogram"))
                #expect(text.contains(#"herald_end_to_end_latency_seconds_bucket{le="0.00005"} 0"#))
                #expect(text.contains(#"herald_end_to_end_latency_seconds_bucket{le="0.0001"} 1"#))
                #expect(text.contains(#"herald_end_to_end_latency_seconds_bucket{le="0.0025"} 1"#))
                #expect(text.contains(#"herald_end_to_end_latency_seconds_bucket{le="0.005"} 2"#))
                #expect(text.contains(#"herald_end_to_end_latency_seconds_bucket{le="10.0"} 2"#))
                #expect(text.contains(#"herald_end_to_end_latency_seconds_bucket{le="+Inf"} 2"#))
                #expect(text.contains("herald_end_to_end_latency_seconds_count 2"))
            }
        }
    }

    @Test func latencyBucketsAscendFrom50MicrosecondsTo10Seconds() {
        let buckets = HeraldMetrics.latencyBuckets
        #expect(buckets.first == .microseconds(50))
        #expect(buckets.last == .seconds(10))
        #expect(buckets == buckets.sorted())
    }
}

@Suite("Live server and probe")
struct LiveServerTests {
    /// Where an answer is expected: generous, since the whole suite runs in parallel on two loaded cores and a
    /// slow answer is not what these tests are about.
    let patience: Duration = .seconds(20)

    @Test func probeSeesOKFromALiveServer() async throws {
        let app = makeServer(health: FakeHealth(ready: true, detail: "role=leader")).makeApplication()
        try await app.test(.live) { client in
            let port = try #require(client.port)
            #expect(await HealthProbe.check(host: "127.0.0.1", port: port, path: "/healthz", timeout: patience))
            let outcome = await HealthProbe.probe(host: "127.0.0.1", port: port, path: "/readyz", timeout: patience)
            #expect(outcome == .answered(status: 200, body: "role=leader"))
        }
    }

    @Test func probeFailsOnAnUnreadyProcess() async throws {
        let app = makeServer(health: FakeHealth(ready: false, detail: "no leader")).makeApplication()
        try await app.test(.live) { client in
            let port = try #require(client.port)
            #expect(await HealthProbe.check(host: "127.0.0.1", port: port, path: "/readyz", timeout: patience) == false)
            let outcome = await HealthProbe.probe(host: "127.0.0.1", port: port, path: "/readyz", timeout: patience)
            #expect(outcome == .answered(status: 503, body: "no leader"))
            #expect(await HealthProbe.check(host: "127.0.0.1", port: port, path: "/healthz", timeout: patience))
        }
    }

    @Test func serverReportsItsBoundPortAndProbeFailsOnceItHasShutDown() async throws {
        let (ports, continuation) = AsyncStream.makeStream(of: Int.self)
        let server = makeServer { port in continuation.yield(port) }
        let group = ServiceGroup(
            configuration: .init(services: [server], gracefulShutdownSignals: [], logger: quietLogger))
        let port = try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            var iterator = ports.makeAsyncIterator()
            let port = try #require(await iterator.next())
            #expect(port > 0)
            #expect(await HealthProbe.check(host: "127.0.0.1", port: port, path: "/healthz", timeout: patience))
            await group.triggerGracefulShutdown()
            try await tasks.waitForAll()
            return port
        }
        let outcome = await HealthProbe.probe(host: "127.0.0.1", port: port, path: "/healthz")
        #expect(outcome.isHealthy == false)
        if case .unreachable(let reason) = outcome {
            #expect(reason.contains("refused"))
        } else {
            Issue.record("expected a refused connection, got \(outcome)")
        }
    }

    @Test func probeGivesUpAtItsTimeoutWhenTheServerDoesNotAnswer() async throws {
        // A route slower than the probe's timeout: the connection succeeds, the answer never comes in time.
        let router = Router()
        router.get("slow") { _, _ in
            try await Task.sleep(for: .seconds(3))
            return "late"
        }
        try await Application(router: router, logger: quietLogger).test(.live) { client in
            let port = try #require(client.port)
            let clock = ContinuousClock()
            let start = clock.now
            let outcome = await HealthProbe.probe(
                host: "127.0.0.1", port: port, path: "/slow", timeout: .milliseconds(500))
            let elapsed = start.duration(to: clock.now)
            // On a loaded machine even connecting may take longer than the timeout; either way the probe gave
            // up as a timeout, before the 3 s answer, which is the behaviour under test.
            guard case .unreachable(let reason) = outcome else {
                Issue.record("expected a timeout, got \(outcome)")
                return
            }
            #expect(reason.contains("timed out"))
            #expect(elapsed >= .milliseconds(500))
        }
    }

    @Test func serverThatCannotBindSaysWhichAddressAndHowToChangeIt() async throws {
        let (ports, continuation) = AsyncStream.makeStream(of: Int.self)
        let first = makeServer { port in continuation.yield(port) }
        let group = ServiceGroup(
            configuration: .init(services: [first], gracefulShutdownSignals: [], logger: quietLogger))
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            var iterator = ports.makeAsyncIterator()
            let port = try #require(await iterator.next())
            let second = HealthServer(
                configuration: .init(host: "127.0.0.1", port: port), health: FakeHealth(ready: true, detail: ""),
                metrics: HeraldMetrics(), logger: quietLogger)
            do {
                try await second.run()
                Issue.record("a second server bound the same port")
            } catch let error as HealthServerError {
                if case .cannotListen(let host, let failedPort, _) = error {
                    #expect(host == "127.0.0.1" && failedPort == port)
                }
                #expect(error.description.contains("--http-port"))
            }
            await group.triggerGracefulShutdown()
            try await tasks.waitForAll()
        }
    }
}
