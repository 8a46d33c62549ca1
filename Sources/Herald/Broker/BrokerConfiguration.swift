import Foundation
import ZooKeeper

/// Everything a broker needs to know; the `herald broker` command fills it from flags and environment.
public struct BrokerConfiguration: Sendable {
    /// The default request port (ROUTER): fixed so containers can publish it; `0` picks any free port.
    public static let defaultRequestPort = 5555
    /// The default subscriber port (XPUB).
    public static let defaultSubscriberPort = 5556
    /// ZMTP heartbeat interval: a dead peer's connection is dropped after three silent intervals.
    public static let defaultHeartbeatInterval: Duration = .seconds(1)
    /// Per-peer queue limit in messages: a burst of about a second at high rates, bounded memory per peer.
    public static let defaultHighWaterMark: Int32 = 100_000
    /// The most messages a broker keeps per topic for late joiners: bounded memory whatever publishers ask.
    public static let defaultHistoryLimit = 100_000

    /// The ZooKeeper ensemble and session timeout.
    public var zookeeper: ZooKeeperConfiguration
    /// The cluster's place in ZooKeeper.
    public var layout: ClusterLayout
    /// The dissemination mode this broker expects the cluster to have.
    public var mode: DisseminationMode
    /// This broker's identity, unique in the cluster.
    public var brokerID: String
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
    /// Per-peer queue limit in messages.
    public var highWaterMark: Int32
    /// The most messages kept per topic for late joiners, whatever publishers offer.
    public var historyLimit: Int

    /// Creates a configuration with defaults for everything but the essentials.
    /// - Parameters:
    ///   - zookeeper: the ZooKeeper ensemble.
    ///   - layout: the cluster.
    ///   - mode: the expected dissemination mode.
    ///   - brokerID: a unique identity; defaults to host name and process id.
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
        self.highWaterMark = Self.defaultHighWaterMark
        self.historyLimit = Self.defaultHistoryLimit
    }

    /// `<host>-<pid>`: unique among live brokers, readable in `herald status`.
    public static func defaultBrokerID() -> String {
        "\(ProcessInfo.processInfo.hostName)-\(ProcessInfo.processInfo.processIdentifier)"
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
        let addresses = Host.current().addresses.filter { address in
            let parts = address.split(separator: ".")
            return parts.count == 4 && parts.allSatisfy { UInt8($0) != nil } && parts[0] != "127"
        }
        return addresses.first ?? "127.0.0.1"
    }
}
