import FoundationEssentials
import ZooKeeper

#if canImport(Glibc)
    import Glibc
#endif

/// Everything a broker needs to know; the `herald broker` command fills it from flags and environment.
public struct BrokerConfiguration: Sendable {
    /// The default request port (ROUTER): fixed so containers can publish it; `0` picks any free port.
    public static let defaultRequestPort = 5555
    /// The default subscriber port (XPUB).
    public static let defaultSubscriberPort = 5556
    /// ZMTP heartbeat interval: a dead peer's connection is dropped after three silent intervals.
    public static let defaultHeartbeatInterval: Duration = .seconds(1)
    /// The largest message a client may send, in bytes: a 1 MiB payload with room for its topic and header.
    /// Larger ones are cut off by libzmq before they are allocated.
    public static let defaultMaximumMessageSize = (1 << 20) + 4096
    /// Bytes of messages kept in all topics' logs: with the rest of a broker (about 30 MB) it fits a 256 MiB
    /// container, and at 100 bytes a message it holds over half a million messages for recovery.
    public static let defaultLogBytes = 64 << 20
    /// Bytes of messages kept per topic, so one busy topic cannot push every other topic's history out.
    public static let defaultTopicLogBytes = 32 << 20
    /// Bytes a publisher may send ahead of the broker's credit: two milliseconds of traffic at 1 GB/s over
    /// loopback, far more than a round trip, so credit never slows a publisher the broker keeps up with; and
    /// more than the largest message, which must fit in a window.
    public static let defaultPublisherWindow = 2 << 20
    /// The largest window a subscriber may ask for: bytes in flight to it, bounded per subscriber.
    public static let defaultMaximumSubscriberWindow = 4 << 20
    /// How long a subscriber that takes nothing may hold publishers back before the broker stops waiting for
    /// it (it then loses what leaves the log before it comes back, and counts it).
    public static let defaultStallTimeout: Duration = .seconds(2)
    /// The most messages per topic a late joiner may ask for.
    public static let defaultHistoryLimit = 100_000
    /// Topics a broker holds at most, and topics one request may name; more are refused, and the refusal says so.
    public static let defaultMaximumTopics = 10_000
    public static let defaultMaximumTopicsPerRequest = 1024
    /// Publishers and subscribers a broker serves at most.
    public static let defaultMaximumPublishers = 10_000
    public static let defaultMaximumSubscribers = 10_000
    /// Topic subscriptions held at most, over all subscribers: 100,000 cost a few MB.
    public static let defaultMaximumSubscriptions = 100_000
    /// Bytes of publisher registrations (endpoints and topic lists) held at most.
    public static let defaultRegistrationBytes = 16 << 20

    /// The ZooKeeper ensemble and session timeout.
    public var zookeeper: ZooKeeperConfiguration
    /// The cluster's place in ZooKeeper.
    public var layout: ClusterLayout
    /// The dissemination mode this broker expects the cluster to have.
    public var mode: DisseminationMode
    /// This broker's identity, unique in the cluster.
    public var brokerID: String
    /// CurveZMQ: the brokers' key pair and the client keys admitted; `nil` runs in clear.
    public var security: CurveSecurity?
    /// The local address to listen on (`0.0.0.0`: every interface).
    public var bindHost: String
    /// The host clients use to reach this broker; `nil` derives it from ``bindHost`` or the host's address.
    public var advertiseHost: String?
    /// The request port; `0` picks any free port, and the bound one is announced.
    public var requestPort: Int
    /// The subscriber port; `0` picks any free port.
    public var subscriberPort: Int
    /// ZMTP heartbeat interval on client connections.
    public var heartbeatInterval: Duration
    /// The largest message a client may send, in bytes (`--max-message-size`).
    public var maximumMessageSize: Int
    /// Bytes of messages kept in all logs (`--log-bytes`).
    public var logBytes: Int
    /// Bytes of messages kept per topic (`--topic-log-bytes`).
    public var topicLogBytes: Int
    /// Bytes a publisher may send ahead of credit (`--publisher-window`).
    public var publisherWindow: Int
    /// The largest window a subscriber may ask for, in bytes.
    public var maximumSubscriberWindow: Int
    /// How long a subscriber that takes nothing may hold publishers back.
    public var stallTimeout: Duration
    /// The most messages per topic a late joiner may ask for.
    public var historyLimit: Int
    /// Topics held at most (`--max-topics`).
    public var maximumTopics: Int
    /// Topics one registration or subscription may name.
    public var maximumTopicsPerRequest: Int
    /// Publishers known at most.
    public var maximumPublishers: Int
    /// Subscribers served at most.
    public var maximumSubscribers: Int
    /// Topic subscriptions held at most, over all subscribers (`--max-subscriptions`).
    public var maximumSubscriptions: Int
    /// Bytes of publisher registrations held at most (`--registration-bytes`): what direct-mode discovery
    /// answers with, and what status lists.
    public var registrationBytes: Int
    /// Topics that get their own label in the per-topic metrics; the rest are counted together, so a client
    /// that invents topics cannot grow the metrics without bound.
    public var metricTopicLimit: Int

    /// Creates a configuration with defaults for everything but the essentials.
    /// - Parameters:
    ///   - zookeeper: the ZooKeeper ensemble.
    ///   - layout: the cluster.
    ///   - mode: the expected dissemination mode.
    ///   - brokerID: a unique identity; defaults to host name, process id and a random suffix.
    public init(
        zookeeper: ZooKeeperConfiguration,
        layout: ClusterLayout,
        mode: DisseminationMode = .broker,
        brokerID: String = BrokerConfiguration.defaultBrokerID()
    ) {
        self.zookeeper = zookeeper
        self.layout = layout
        self.mode = mode
        self.brokerID = brokerID
        self.bindHost = "0.0.0.0"
        self.advertiseHost = nil
        self.requestPort = Self.defaultRequestPort
        self.subscriberPort = Self.defaultSubscriberPort
        self.heartbeatInterval = Self.defaultHeartbeatInterval
        self.maximumMessageSize = Self.defaultMaximumMessageSize
        self.logBytes = Self.defaultLogBytes
        self.topicLogBytes = Self.defaultTopicLogBytes
        self.publisherWindow = Self.defaultPublisherWindow
        self.maximumSubscriberWindow = Self.defaultMaximumSubscriberWindow
        self.stallTimeout = Self.defaultStallTimeout
        self.historyLimit = Self.defaultHistoryLimit
        self.maximumTopics = Self.defaultMaximumTopics
        self.maximumTopicsPerRequest = Self.defaultMaximumTopicsPerRequest
        self.maximumPublishers = Self.defaultMaximumPublishers
        self.maximumSubscriptions = Self.defaultMaximumSubscriptions
        self.registrationBytes = Self.defaultRegistrationBytes
        self.maximumSubscribers = Self.defaultMaximumSubscribers
        self.metricTopicLimit = TopicCounters.defaultLimit
    }

    /// Checks that the limits fit together.
    /// - Throws: ``HeraldConfigurationError`` naming the setting to change.
    public func validate() throws(HeraldConfigurationError) {
        guard topicLogBytes >= 2 * maximumMessageSize else {
            throw HeraldConfigurationError(
                "the topic log of \(topicLogBytes) bytes cannot hold two messages of the largest size (\(maximumMessageSize) bytes); raise --topic-log-bytes or lower --max-message-size"
            )
        }
        guard logBytes >= topicLogBytes else {
            throw HeraldConfigurationError(
                "the log of \(logBytes) bytes is smaller than one topic's log (\(topicLogBytes) bytes); raise --log-bytes or lower --topic-log-bytes"
            )
        }
        guard publisherWindow >= maximumMessageSize else {
            throw HeraldConfigurationError(
                "the publisher window of \(publisherWindow) bytes is smaller than the largest message (\(maximumMessageSize) bytes), which could then never be sent; raise --publisher-window or lower --max-message-size"
            )
        }
    }

    /// Limits that fit together but leave flow control too little room, with the settings to change: a publisher
    /// held back at half a log may still send what its credit allows, a window, and a log that cannot take that
    /// loses what a slow subscriber was not yet sent.
    public var flowControlWarning: String? {
        guard topicLogBytes < 4 * publisherWindow else { return nil }
        return
            "the topic log of \(topicLogBytes) bytes holds fewer than four publisher windows of \(publisherWindow) bytes: a publisher held back for a slow subscriber may still overrun it, and the subscriber lose messages; raise --topic-log-bytes or lower --publisher-window"
    }

    /// `<host>-<pid>-<6 hex digits>`, new for every broker started. Host and pid alone repeat: a restarted
    /// container keeps its host name and runs as pid 1, and a broker restarted before its predecessor's session
    /// expires would otherwise share its name in the election, the brokers list and `herald status`, and
    /// delete its predecessor's presence node as if it were its own.
    public static func defaultBrokerID() -> String {
        let suffix = String(UInt32.random(in: 0..<(1 << 24)), radix: 16)
        let padded = String(repeating: "0", count: 6 - suffix.count) + suffix
        return "\(ProcessInfo.processInfo.hostName)-\(ProcessInfo.processInfo.processIdentifier)-\(padded)"
    }

    /// A bound endpoint rewritten with the host clients should use.
    func advertised(_ bound: String) -> String {
        NetworkAddress.advertised(bound, bindHost: bindHost, advertiseHost: advertiseHost)
    }
}

/// Turns endpoints a socket bound into endpoints other hosts can connect to.
enum NetworkAddress {
    static func advertised(_ bound: String, bindHost: String, advertiseHost: String?) -> String {
        guard let colon = bound.lastIndex(of: ":") else { return bound }
        let port = bound[bound.index(after: colon)...]
        let host = advertiseHost ?? (isWildcard(bindHost) ? defaultHost() : bindHost)
        return "tcp://\(host):\(port)"
    }

    static func isWildcard(_ host: String) -> Bool { host == "0.0.0.0" || host == "*" || host == "::" }

    /// The first non-loopback IPv4 address, which is what containers and hosts on a LAN reach; loopback
    /// when there is none.
    static func defaultHost() -> String {
        var list: UnsafeMutablePointer<ifaddrs>?
        guard getifaddrs(&list) == 0, let first = list else { return "127.0.0.1" }
        defer { freeifaddrs(list) }
        var cursor: UnsafeMutablePointer<ifaddrs>? = first
        while let entry = cursor {
            defer { cursor = entry.pointee.ifa_next }
            guard let address = entry.pointee.ifa_addr, address.pointee.sa_family == sa_family_t(AF_INET) else {
                continue
            }
            let ipv4 = address.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { $0.pointee.sin_addr.s_addr }
            // In network order: the first byte in memory is the first of the dotted form.
            let bytes = withUnsafeBytes(of: ipv4) { Array($0) }
            guard bytes[0] != 127 else { continue }
            return bytes.map(String.init).joined(separator: ".")
        }
        return "127.0.0.1"
    }
}
