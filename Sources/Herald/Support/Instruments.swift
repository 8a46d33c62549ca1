import CoreMetrics
import Synchronization

/// The metrics Herald emits through swift-metrics; the executable decides where they go (Prometheus).
///
/// Names follow Prometheus conventions, since that is where operators read them.
enum Instruments {
    static let brokerMessagesIn = "herald_broker_messages_in_total"
    static let brokerMessagesOut = "herald_broker_messages_out_total"
    static let brokerMalformed = "herald_broker_malformed_messages_total"
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

    /// Records whether a ZooKeeper session is connected.
    static func recordZooKeeper(connected: Bool) {
        Gauge(label: zookeeperConnected).record(connected ? 1 : 0)
    }
}

/// Counters by topic, created once per topic: looking a counter up in the metrics backend on every message
/// would cost a lock and a dictionary lookup each time.
final class TopicCounters: Sendable {
    private let label: String
    private let counters = Mutex<[String: Counter]>([:])

    init(label: String) { self.label = label }

    func increment(_ topic: String, by amount: Int = 1) {
        let counter = counters.withLock { counters in
            if let counter = counters[topic] { return counter }
            let counter = Counter(label: label, dimensions: [("topic", topic)])
            counters[topic] = counter
            return counter
        }
        counter.increment(by: amount)
    }
}
