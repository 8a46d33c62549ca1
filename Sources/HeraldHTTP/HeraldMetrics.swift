import Metrics
import Prometheus

/// The Prometheus registry behind a Herald process's `/metrics`, and the swift-metrics factory that fills it.
///
/// Herald's libraries only emit through swift-metrics; they never choose a backend. The executable calls
/// ``bootstrap()`` once, before it creates a broker, publisher or subscriber, so that every counter, gauge and
/// timer they make lands in ``registry``, which ``HealthServer`` renders. Tests make their own instance with
/// ``init()`` and hand ``factory`` to metrics explicitly, leaving the process-wide `MetricsSystem` untouched.
public struct HeraldMetrics: Sendable {
    /// Histogram buckets for every swift-metrics `Timer`, notably `herald_end_to_end_latency_seconds`.
    ///
    /// Loopback ZeroMQ delivers in tens of microseconds while a failover stalls messages for seconds, so the
    /// buckets run from 50 µs to 10 s in 1-2.5-5 steps: fine enough to see a healthy path, wide enough to see a
    /// leader change. swift-prometheus's defaults start at 5 ms and would put every healthy message in one bucket.
    public static let latencyBuckets: [Duration] = [
        .microseconds(50), .microseconds(100), .microseconds(250), .microseconds(500),
        .milliseconds(1), .microseconds(2500), .milliseconds(5),
        .milliseconds(10), .milliseconds(25), .milliseconds(50),
        .milliseconds(100), .milliseconds(250), .milliseconds(500),
        .seconds(1), .milliseconds(2500), .seconds(5), .seconds(10),
    ]

    /// The registry `/metrics` renders.
    public let registry: PrometheusCollectorRegistry

    /// A swift-metrics factory that records into ``registry``, with ``latencyBuckets`` for timers.
    public let factory: PrometheusMetricsFactory

    /// Makes a fresh registry and factory without touching the process-wide `MetricsSystem`.
    ///
    /// Use it in tests, passing ``factory`` to `Counter(label:dimensions:factory:)` and friends.
    public init() {
        let registry = PrometheusCollectorRegistry()
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.defaultDurationHistogramBuckets = Self.latencyBuckets
        self.registry = registry
        self.factory = factory
    }

    /// Bootstraps the process-wide `MetricsSystem` with Herald's Prometheus factory, once, and returns it.
    ///
    /// Only executables call this, and before they create any Herald service: swift-metrics binds a metric to the
    /// factory in place when the metric is made. Calling it again returns the same instance instead of
    /// bootstrapping twice (which swift-metrics forbids). It must not be mixed with another
    /// `MetricsSystem.bootstrap` in the same process.
    /// - Returns: The metrics every Herald library in this process now records into.
    @discardableResult
    public static func bootstrap() -> HeraldMetrics {
        global
    }

    /// Renders every metric in the Prometheus text exposition format, version 0.0.4.
    /// - Returns: The UTF-8 bytes of the exposition.
    public func render() -> [UInt8] {
        registry.emitToBuffer()
    }

    // MARK: - Private

    /// A lazily initialised global: Swift runs the initialiser exactly once, even when several threads race
    /// to it, which is what makes ``bootstrap()`` safe to call more than once.
    private static let global: HeraldMetrics = {
        let metrics = HeraldMetrics()
        MetricsSystem.bootstrap(metrics.factory)
        return metrics
    }()
}
