import CoreMetrics
import Synchronization

/// The metrics Herald emits through swift-metrics; the executable decides where they go (Prometheus).
///
/// Names follow Prometheus conventions, since that is where operators read them.
enum Instruments {
    static let brokerMessagesIn = "herald_broker_messages_in_total"
    static let brokerMessagesOut = "herald_broker_messages_out_total"
    static let brokerMalformed = "herald_broker_malformed_messages_total"
    static let brokerRefused = "herald_broker_refused_requests_total"
    static let brokerEvicted = "herald_broker_log_evicted_total"
    static let brokerSkipped = "herald_broker_subscriber_skipped_total"
    static let brokerDuplicates = "herald_broker_duplicates_dropped_total"
    static let brokerStalls = "herald_broker_subscriber_stalls_total"
    static let brokerLogBytes = "herald_broker_log_bytes"
    static let brokerTopics = "herald_broker_topics"
    static let leaderChanges = "herald_leader_changes_total"
    static let brokerRole = "herald_broker_role"
    static let brokerClients = "herald_broker_connected_clients"
    static let zookeeperConnected = "herald_zookeeper_connected"
    static let published = "herald_published_total"
    static let received = "herald_received_total"
    static let latency = "herald_end_to_end_latency_seconds"
    static let lost = "herald_messages_lost_total"
    static let duplicated = "herald_messages_duplicated_total"
    static let reordered = "herald_messages_reordered_total"
    static let malformedReceived = "herald_malformed_messages_total"
    static let expired = "herald_publisher_expired_total"

    /// Records whether a ZooKeeper session is connected.
    static func recordZooKeeper(connected: Bool) {
        Gauge(label: zookeeperConnected).record(connected ? 1 : 0)
    }
}

/// Counters by topic, created once per topic: looking a counter up in the metrics backend on every message
/// would cost a lock and a dictionary lookup each time.
///
/// Topic names come from clients, so the labels are bounded: past ``limit`` topics, the rest are counted
/// under the label `_other`, and the metrics cannot grow without bound.
final class TopicCounters: Sendable {
    /// Topics that get their own label by default: enough for dashboards, few enough for Prometheus.
    static let defaultLimit = 1000
    /// The label of every topic past the limit.
    static let overflowLabel = "_other"

    private let label: String
    private let state = Mutex<(counters: [String: Counter], limit: Int)>(([:], TopicCounters.defaultLimit))

    init(label: String) { self.label = label }

    /// Topics that get their own label.
    var limit: Int {
        get { state.withLock { $0.limit } }
        set { state.withLock { $0.limit = max(0, newValue) } }
    }

    func increment(_ topic: String, by amount: Int = 1) {
        let counter = state.withLock { state in
            if let counter = state.counters[topic] { return counter }
            let name = state.counters.count < state.limit ? topic : Self.overflowLabel
            if let counter = state.counters[name] { return counter }
            let counter = Counter(label: label, dimensions: [("topic", name)])
            state.counters[name] = counter
            return counter
        }
        counter.increment(by: amount)
    }
}
