import Foundation

/// The 16-byte identity of a publisher process. A publisher that restarts gets a new one, which subscribers
/// treat as a new sequence epoch rather than as a gap or duplicates.
public struct PublisherID: Sendable, Hashable, CustomStringConvertible, Codable {
    /// The raw identity.
    public let uuid: UUID

    /// A new random identity.
    public init() { uuid = UUID() }

    /// An identity from a UUID.
    /// - Parameter uuid: the UUID.
    public init(uuid: UUID) { self.uuid = uuid }

    /// The first eight hex digits, enough to tell publishers apart in logs.
    public var short: String { String(uuid.uuidString.prefix(8)).lowercased() }

    /// The full UUID in lower case.
    public var description: String { uuid.uuidString.lowercased() }

    var bytes: [UInt8] {
        withUnsafeBytes(of: uuid.uuid) { Array($0) }
    }

    init?(bytes: ArraySlice<UInt8>) {
        guard bytes.count == 16 else { return nil }
        var raw: uuid_t = (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        withUnsafeMutableBytes(of: &raw) { $0.copyBytes(from: bytes) }
        uuid = UUID(uuid: raw)
    }
}

/// The metadata every data message carries next to its topic and payload.
public struct MessageHeader: Sendable, Hashable {
    /// Wire format version; a receiver drops messages of versions it does not know.
    static let version: UInt8 = 1
    /// Encoded size: version, flags, publisher, sequence, timestamp.
    static let encodedSize = 1 + 1 + 16 + 8 + 8

    /// Who published the message.
    public var publisher: PublisherID
    /// The publisher's sequence number on this topic, from 1, increasing by one per message.
    public var sequence: UInt64
    /// When the publisher sent it, in nanoseconds since the Unix epoch.
    public var sentAt: UInt64

    /// Creates a header.
    /// - Parameters:
    ///   - publisher: the publisher's identity.
    ///   - sequence: its sequence number.
    ///   - sentAt: nanoseconds since the Unix epoch.
    public init(publisher: PublisherID, sequence: UInt64, sentAt: UInt64) {
        self.publisher = publisher
        self.sequence = sequence
        self.sentAt = sentAt
    }

    func encoded() -> [UInt8] {
        var bytes = [UInt8]()
        bytes.reserveCapacity(Self.encodedSize)
        bytes.append(Self.version)
        bytes.append(0)
        bytes.append(contentsOf: publisher.bytes)
        withUnsafeBytes(of: sequence.bigEndian) { bytes.append(contentsOf: $0) }
        withUnsafeBytes(of: sentAt.bigEndian) { bytes.append(contentsOf: $0) }
        return bytes
    }

    init?(decoding bytes: [UInt8]) {
        // No flags are defined in version 1; a message with any set is from a future or broken sender.
        guard bytes.count == Self.encodedSize, bytes[0] == Self.version, bytes[1] == 0,
            let publisher = PublisherID(bytes: bytes[2..<18])
        else { return nil }
        self.publisher = publisher
        sequence = bytes[18..<26].reduce(0) { $0 << 8 | UInt64($1) }
        sentAt = bytes[26..<34].reduce(0) { $0 << 8 | UInt64($1) }
    }
}

/// A data message as it travels to subscribers: `[topic key, header, payload]`.
struct DataFrames {
    var topic: Topic
    var header: MessageHeader
    var payload: [UInt8]

    var frames: [[UInt8]] { [topic.key, header.encoded(), payload] }

    init(topic: Topic, header: MessageHeader, payload: [UInt8]) {
        self.topic = topic
        self.header = header
        self.payload = payload
    }

    /// Decodes frames from the network; `nil` for anything malformed, which the caller counts and drops.
    init?(frames: ArraySlice<[UInt8]>) {
        guard frames.count == 3, let topic = Topic(key: frames[frames.startIndex]),
            let header = MessageHeader(decoding: frames[frames.startIndex + 1])
        else { return nil }
        self.init(topic: topic, header: header, payload: frames[frames.startIndex + 2])
    }
}

/// The kinds of message a client sends to the leader broker's request socket, in the first frame.
enum RequestKind: UInt8 {
    /// Broker mode: `[kind, topic key, header, payload]`, forwarded to subscribers.
    case publish = 1
    /// `[kind, JSON PublisherRegistration]`, sent by publishers on attaching and then as a heartbeat.
    case register = 2
    /// `[kind, JSON PublisherRegistration]`, sent by a publisher that stops cleanly.
    case unregister = 3
    /// Direct mode: `[kind, JSON DiscoveryQuery]`; the reply is `[kind, JSON DiscoveryReply]`.
    case lookup = 4
    /// `[kind]`; the reply is `[kind, JSON BrokerStatus]`.
    case status = 5
    /// Broker mode: `[kind, JSON HistoryRequest]`; the reply is any number of `[kind, topic key, header,
    /// payload]` followed by `[historyEnd, JSON HistoryEnd]`.
    case history = 6
    /// The last frame sequence of a history reply.
    case historyEnd = 7
}

/// A subscriber's request for messages a broker kept.
struct HistoryRequest: Codable, Sendable, Equatable {
    /// The most topics one request is served for; the rest are ignored. A subscriber names its own topics,
    /// which are few; more is a mistake or an attack on the broker's time.
    static let maximumTopics = 1024

    /// The topics asked about.
    var topics: [String]
    /// For late joiners: the last `limit` messages of each topic. `nil` asks only for recovery (`after`).
    var limit: Int?
    /// For recovery after a failover or a gap: per publisher (UUID text) and topic, the next sequence number
    /// still owed; the broker sends what it kept from there on.
    var after: [String: [String: UInt64]]
}

/// The end of a history reply.
struct HistoryEnd: Codable, Sendable, Equatable {
    /// How many messages of history each topic's publishers offer (the most any of them declared).
    var offered: [String: Int]
    /// Messages sent in this reply.
    var sent: Int
}

/// A publisher's announcement to the leader.
struct PublisherRegistration: Codable, Sendable, Equatable {
    var publisher: PublisherID
    /// Direct mode: where subscribers connect; empty in broker mode.
    var endpoint: String
    var topics: [String]
    /// How many messages per topic the publisher asks brokers to keep for late joiners.
    var history: Int?
}

/// A direct-mode subscriber's question to the leader.
struct DiscoveryQuery: Codable, Sendable, Equatable {
    var topics: [String]
}

/// The leader's answer: the live publishers of the asked topics.
struct DiscoveryReply: Codable, Sendable, Equatable {
    var publishers: [PublisherRegistration]
    /// Whether the leader has led long enough to have heard every live publisher's heartbeat, so that a
    /// publisher missing from the list really is gone (a fresh leader's list may still be filling).
    var complete: Bool
}

/// What the leader reports about itself to `herald status`.
public struct BrokerStatus: Codable, Sendable, Equatable {
    /// The broker's identity.
    public var broker: String
    /// The cluster's dissemination mode.
    public var mode: DisseminationMode
    /// Seconds since this broker became leader.
    public var leaderForSeconds: Double
    /// Topics seen from publishers, with messages forwarded per topic (broker mode).
    public var topics: [String: UInt64]
    /// Topics subscribers asked for through the broker (broker mode).
    public var subscribedTopics: [String]
    /// Publishers known to the broker: direct-mode registrations, or broker-mode senders seen recently.
    public var publishers: [String]
    /// Messages dropped because they were malformed.
    public var malformedMessages: UInt64
}

extension JSONEncoder {
    static let herald: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return encoder
    }()
}

/// A client's message to the leader's request socket, parsed and validated; anything else is malformed.
enum BrokerRequest {
    case publish(DataFrames)
    case register(PublisherRegistration)
    case unregister(PublisherRegistration)
    case lookup(DiscoveryQuery)
    case status
    case history(HistoryRequest)

    /// Parses the frames a ROUTER delivers after the sender's routing id; `nil` for anything malformed.
    init?(frames: ArraySlice<[UInt8]>) {
        guard let first = frames.first, first.count == 1, let kind = RequestKind(rawValue: first[0]) else {
            return nil
        }
        let body = frames.dropFirst()
        switch kind {
        case .publish:
            guard let data = DataFrames(frames: body) else { return nil }
            self = .publish(data)
        case .register:
            guard let registration = Self.json(PublisherRegistration.self, body) else { return nil }
            self = .register(registration)
        case .unregister:
            guard let registration = Self.json(PublisherRegistration.self, body) else { return nil }
            self = .unregister(registration)
        case .lookup:
            guard let query = Self.json(DiscoveryQuery.self, body) else { return nil }
            self = .lookup(query)
        case .status:
            guard body.isEmpty else { return nil }
            self = .status
        case .history:
            guard let query = Self.json(HistoryRequest.self, body) else { return nil }
            self = .history(query)
        case .historyEnd:
            return nil
        }
    }

    /// Decodes a single JSON frame, refusing oversized ones before parsing.
    private static func json<T: Decodable>(_ type: T.Type, _ body: ArraySlice<[UInt8]>) -> T? {
        guard body.count == 1, let frame = body.first, frame.count <= maximumControlFrame else { return nil }
        return try? JSONDecoder().decode(type, from: Data(frame))
    }

    /// Control messages are small; a bigger one is garbage or an attack on the parser.
    static let maximumControlFrame = 1 << 20
}
