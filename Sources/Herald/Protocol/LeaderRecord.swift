import FoundationEssentials
import ZeroMQ

#if canImport(Glibc)
    import Glibc
#endif

/// What the leader broker writes to ZooKeeper at `/herald/<cluster>/leader`: where clients reach it.
public struct LeaderRecord: Codable, Sendable, Hashable, CustomStringConvertible {
    /// The leader broker's identity.
    public var broker: String
    /// The cluster's dissemination mode.
    public var mode: DisseminationMode
    /// Where clients send requests (ROUTER): publishes in broker mode, registrations and lookups in direct mode.
    public var requestEndpoint: String
    /// Where subscribers connect in broker mode.
    public var subscriberEndpoint: String
    /// The leader's term: different for every time a broker starts serving, so that clients re-attach (and
    /// publishers replay, subscribers recover) even when a leader serves again at the same endpoints after
    /// losing ZooKeeper for a moment. Made of the candidate's sequence number and a count of its terms, so a
    /// later leader has a larger epoch.
    public var epoch: UInt64
    /// The wire format version the leader speaks (``WireFormat/version``); absent in records of version 1.
    public var protocolVersion: Int?
    /// The ZooKeeper session timeout the leader asked for, in milliseconds: how long its record can outlive it
    /// when it crashes. Absent in records of older builds.
    public var sessionTimeoutMilliseconds: Int?
    /// The brokers' CURVE public key (Z85) when the cluster runs with CurveZMQ; clients connect only to a leader
    /// whose key is the one they trust.
    public var curveKey: String?
    /// The largest batch frame (``WireFormat/Kind/batch``) the leader takes from a publisher, in bytes; absent
    /// in records of builds that take one message per frame, to which publishers then send no batches.
    public var batchBytes: Int?

    /// Creates a record.
    /// - Parameters:
    ///   - broker: the broker's identity.
    ///   - mode: the cluster's mode.
    ///   - requestEndpoint: the request endpoint as reachable by clients.
    ///   - subscriberEndpoint: the subscriber endpoint as reachable by clients.
    ///   - epoch: the leader's term.
    ///   - sessionTimeout: the leader's ZooKeeper session timeout.
    ///   - curveKey: the brokers' CURVE public key, if the cluster uses CurveZMQ.
    ///   - batchBytes: the largest batch frame the leader takes.
    public init(
        broker: String, mode: DisseminationMode, requestEndpoint: String, subscriberEndpoint: String, epoch: UInt64,
        sessionTimeout: Duration? = nil, curveKey: String? = nil, batchBytes: Int? = nil
    ) {
        self.broker = broker
        self.mode = mode
        self.requestEndpoint = requestEndpoint
        self.subscriberEndpoint = subscriberEndpoint
        self.epoch = epoch
        self.protocolVersion = Int(WireFormat.version)
        self.sessionTimeoutMilliseconds = sessionTimeout.flatMap { Int(exactly: ($0.seconds * 1000).rounded()) }
        self.curveKey = curveKey
        self.batchBytes = batchBytes
    }

    private enum CodingKeys: String, CodingKey {
        case broker, mode, requestEndpoint, subscriberEndpoint, epoch
        case protocolVersion = "protocol"
        case sessionTimeoutMilliseconds = "sessionTimeoutMs"
        case curveKey, batchBytes
    }

    /// Decodes a record, reading one written by version 1 (no epoch, no protocol) as epoch 0 and protocol 1,
    /// so that a client can say which side to upgrade.
    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        broker = try container.decode(String.self, forKey: .broker)
        mode = try container.decode(DisseminationMode.self, forKey: .mode)
        requestEndpoint = try container.decode(String.self, forKey: .requestEndpoint)
        subscriberEndpoint = try container.decode(String.self, forKey: .subscriberEndpoint)
        epoch = try container.decodeIfPresent(UInt64.self, forKey: .epoch) ?? 0
        protocolVersion = try container.decodeIfPresent(Int.self, forKey: .protocolVersion) ?? 1
        // Only shown to people ("expires within N s"); a value no session can have is read as absent.
        sessionTimeoutMilliseconds = (try? container.decodeIfPresent(Int.self, forKey: .sessionTimeoutMilliseconds))
            .flatMap { $0 }.flatMap { (1...86_400_000).contains($0) ? $0 : nil }
        curveKey = try container.decodeIfPresent(String.self, forKey: .curveKey)
        // A size no frame can have is read as absent: the publisher then sends one message per frame.
        batchBytes = (try? container.decodeIfPresent(Int.self, forKey: .batchBytes)).flatMap { $0 }
            .flatMap { (1...(1 << 30)).contains($0) ? $0 : nil }
        if let curveKey, !ZMQCurveKeyPair.isValidKey(curveKey) {
            throw DecodingError.dataCorruptedError(
                forKey: .curveKey, in: container, debugDescription: "not a Z85 CURVE public key")
        }
    }

    /// Whether the leader speaks this build's wire format.
    public var speaksThisVersion: Bool { protocolVersion == Int(WireFormat.version) }

    /// Why a client (`role`: publisher, subscriber) with `security` must not attach to this leader, ready to
    /// log; `nil` when it may.
    func refusal(by security: CurveSecurity?, role: String) -> String? {
        guard speaksThisVersion else {
            return
                "the leader speaks Herald wire format \(protocolVersion ?? 1), this \(role) speaks \(WireFormat.version); run the same Herald version everywhere"
        }
        return CurveSecurity.mistrust(of: self, by: security)
    }

    /// A one-line summary for logs.
    public var description: String {
        "\(broker) epoch \(epoch) (requests \(requestEndpoint), subscribers \(subscriberEndpoint))"
    }

    func encoded() -> [UInt8] { Array((try? JSONEncoder.herald.encode(self)) ?? Data()) }

    /// The largest record accepted from ZooKeeper; a real one is a few hundred bytes.
    static let maximumEncodedSize = 64 * 1024

    init?(decoding bytes: [UInt8]) {
        guard bytes.count <= Self.maximumEncodedSize,
            let record = try? JSONDecoder().decode(LeaderRecord.self, from: Data(bytes))
        else { return nil }
        self = record
    }
}
