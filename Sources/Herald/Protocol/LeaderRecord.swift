import Foundation

/// What the leader broker writes to ZooKeeper at `/herald/<cluster>/leader`: where clients reach it.
public struct LeaderRecord: Codable, Sendable, Hashable, CustomStringConvertible {
    /// The leader broker's identity.
    public var broker: String
    /// The cluster's dissemination mode.
    public var mode: DisseminationMode
    /// Where clients send requests (ROUTER): publishes in broker mode, registrations and lookups in direct mode.
    public var requestEndpoint: String
    /// Where subscribers connect (XPUB) in broker mode.
    public var subscriberEndpoint: String

    /// Creates a record.
    /// - Parameters:
    ///   - broker: the broker's identity.
    ///   - mode: the cluster's mode.
    ///   - requestEndpoint: the request endpoint as reachable by clients.
    ///   - subscriberEndpoint: the subscriber endpoint as reachable by clients.
    public init(broker: String, mode: DisseminationMode, requestEndpoint: String, subscriberEndpoint: String) {
        self.broker = broker
        self.mode = mode
        self.requestEndpoint = requestEndpoint
        self.subscriberEndpoint = subscriberEndpoint
    }

    /// A one-line summary for logs.
    public var description: String { "\(broker) (requests \(requestEndpoint), subscribers \(subscriberEndpoint))" }

    func encoded() -> [UInt8] { Array((try? JSONEncoder.herald.encode(self)) ?? Data()) }

    init?(decoding bytes: [UInt8]) {
        guard let record = try? JSONDecoder().decode(LeaderRecord.self, from: Data(bytes)) else { return nil }
        self = record
    }
}
