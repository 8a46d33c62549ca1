import FoundationEssentials
import ZeroMQ

#if canImport(Glibc)
    import Glibc
#endif

/// The 16-byte identity of a publisher process. A publisher that restarts gets a new one, which subscribers
/// treat as a new sequence epoch rather than as a gap or duplicates.
///
/// Kept as two integers, so that a subscriber or broker hashes and compares it per message without touching
/// Foundation.
public struct PublisherID: Sendable, Hashable, CustomStringConvertible, Codable {
    /// The first eight bytes, big-endian.
    let high: UInt64
    /// The last eight bytes, big-endian.
    let low: UInt64

    /// A new random identity (a version 4 UUID).
    public init() { self.init(uuid: UUID()) }

    /// An identity from a UUID.
    /// - Parameter uuid: the UUID.
    public init(uuid: UUID) {
        (high, low) = withUnsafeBytes(of: uuid.uuid) { ($0.loadBigEndianUInt64(at: 0), $0.loadBigEndianUInt64(at: 8)) }
    }

    init(high: UInt64, low: UInt64) {
        self.high = high
        self.low = low
    }

    /// A new identity bound to a CURVE public key: its first eight bytes are the key's, the rest random. A
    /// leader accepts such an identity only from a connection authenticated with that key, so no other key can
    /// claim it, even first after a failover.
    /// - Parameter key: the public key, in Z85 text; a random identity if it is not one.
    public init(curveKey key: String) {
        let random = PublisherID()
        guard let prefix = PublisherID.keyPrefix(key) else {
            self = random
            return
        }
        self.init(high: prefix, low: random.low)
    }

    /// The first eight bytes of a CURVE public key, big-endian, as identities bound to it begin.
    static func keyPrefix(_ key: String) -> UInt64? {
        guard let bytes = ZMQCurveKeyPair.bytes(ofKey: key) else { return nil }
        return bytes.prefix(8).reduce(0) { $0 << 8 | UInt64($1) }
    }

    /// Whether this identity is bound to `key` (see ``init(curveKey:)``).
    func isBound(to key: String) -> Bool { Self.keyPrefix(key) == high }

    /// An identity from its text form, as ``description`` writes it.
    /// - Parameter text: a UUID.
    public init?(_ text: String) {
        guard let uuid = UUID(uuidString: text) else { return nil }
        self.init(uuid: uuid)
    }

    /// The identity as a UUID.
    public var uuid: UUID {
        var raw: uuid_t = (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        withUnsafeMutableBytes(of: &raw) { buffer in
            buffer.storeBytes(of: high.bigEndian, toByteOffset: 0, as: UInt64.self)
            buffer.storeBytes(of: low.bigEndian, toByteOffset: 8, as: UInt64.self)
        }
        return UUID(uuid: raw)
    }

    /// The first eight hex digits, enough to tell publishers apart in logs.
    public var short: String {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(8)
        appendText(to: &bytes, short: true)
        return String(decoding: bytes, as: UTF8.self)
    }

    /// The full UUID in lower case.
    public var description: String {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(36)
        appendText(to: &bytes)
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Appends the UUID text in lower case (or its first eight digits), written directly: subscribers print it
    /// for every message, where Foundation's formatting would cost more than the rest of the line.
    /// - Parameters:
    ///   - output: where the text goes.
    ///   - short: only the first eight digits.
    public func appendText(to output: inout [UInt8], short: Bool = false) {
        // Written on the stack and appended at once: one capacity check per identity, not one per digit.
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 36) { text in
            var end = 0
            func put(_ value: UInt64, from start: Int, count: Int) {
                for index in start..<(start + count) {
                    text[end] = UInt8(lowercaseHexDigit: UInt8(truncatingIfNeeded: value >> UInt64(60 - 4 * index)))
                    end += 1
                }
            }
            func dash() {
                text[end] = UInt8(ascii: "-")
                end += 1
            }
            put(high, from: 0, count: 8)
            if !short {
                dash()
                put(high, from: 8, count: 4)
                dash()
                put(high, from: 12, count: 4)
                dash()
                put(low, from: 0, count: 4)
                dash()
                put(low, from: 4, count: 12)
            }
            output.append(contentsOf: UnsafeBufferPointer(rebasing: text[..<end]))
        }
    }

    /// Encoded as its UUID text.
    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        guard let identity = PublisherID(text) else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "not a UUID"))
        }
        self = identity
    }

    /// Encodes the UUID text.
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }
}

/// The metadata every data message carries next to its topic and payload.
public struct MessageHeader: Sendable, Hashable {
    /// Who published the message.
    public var publisher: PublisherID
    /// The publisher's sequence number on this topic, from 1, increasing by one per message.
    public var sequence: UInt64
    /// When the publisher sent it, in nanoseconds since the Unix epoch, by the publisher's clock.
    public var sentAt: UInt64

    /// Creates a header.
    /// - Parameters:
    ///   - publisher: the publisher's identity.
    ///   - sequence: its sequence number, from 1.
    ///   - sentAt: nanoseconds since the Unix epoch.
    public init(publisher: PublisherID, sequence: UInt64, sentAt: UInt64) {
        self.publisher = publisher
        self.sequence = sequence
        self.sentAt = sentAt
    }
}

// MARK: - Control bodies

/// A publisher's announcement to the leader; it is also its heartbeat.
struct PublisherRegistration: Codable, Sendable, Equatable {
    var publisher: PublisherID
    /// Direct mode: where subscribers connect; empty in broker mode.
    var endpoint: String
    var topics: [String]
    /// How many messages per topic the publisher asks brokers to keep for late joiners.
    var history: Int?
    /// When the publisher started, in nanoseconds since the Unix epoch: a direct-mode subscriber that was
    /// there first is owed its stream from its first message.
    var startedAt: UInt64?
    /// Direct mode with CurveZMQ: the publisher's CURVE public key (Z85), which subscribers require of its
    /// endpoint. The leader accepts it only from a connection authenticated with that key.
    var curveKey: String?
    /// Ownership strength: the strongest live publisher of a topic owns it, and subscribers deliver only its
    /// messages (``OwnershipTable``); `nil` for a publisher that does not contend.
    var strength: Int?
    /// Broker mode: `true` on the heartbeats of a connection a leader already took a registration on. A leader
    /// that no longer knows the connection (silent past its registration: a paused process, a reconnected socket)
    /// refuses it rather than count the connection's credit and messages from zero, which would lose what was in
    /// flight and stall a publisher that was granted more; the publisher attaches again and replays.
    var renewal: Bool?

    /// The longest endpoint accepted: real ones (`tcp://host:port`) are far shorter.
    static let maximumEndpointLength = 1024

    /// Bytes a leader counts for keeping this registration: its strings and a fixed share per entry.
    var footprint: Int {
        topics.reduce(128 + endpoint.utf8.count + (curveKey?.utf8.count ?? 0)) { $0 + 32 + $1.utf8.count }
    }
}

/// The owners of exclusive topics, from the leader to a subscriber: complete for the topics the subscriber
/// follows or matches, so that a topic it does not list is shared.
struct OwnershipReport: Codable, Sendable, Equatable {
    var owners: [String: PublisherID]
}

/// The leader's word to a subscriber that messages of a topic left its log before the subscriber was sent them:
/// per publisher (UUID text), the number of the last that left. Without it a subscriber sees a gap only between
/// two messages it receives, and misses the end of a stream that stops. The numbers up to it may still come (a
/// publisher that registered again replays into the same log; a topic moving between groups arrives from two
/// leaders), so the subscriber counts those still missing as lost only when its gap timeout expires.
struct SkippedNotice: Codable, Sendable, Equatable {
    var topic: String
    var through: [String: UInt64]
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
    /// The owners of the exclusive topics among those asked for; `nil` while a fresh leader has not yet heard
    /// every contender, so that the subscriber keeps what it knew.
    var owners: [String: PublisherID]?
}

/// A broker-mode subscriber's subscription, sent on attaching to a leader and to recover what it missed.
///
/// The leader keeps a cursor per subscribed topic into its log of that topic and sends from there, as fast as
/// the subscriber's window allows: late-joiner history, recovery after a failover and live messages travel
/// one ordered path.
struct SubscribeRequest: Codable, Sendable, Equatable {
    /// The topics.
    var topics: [String]
    /// Bytes the subscriber can take ahead of its acknowledgements (``WireFormat/Kind/consumed``).
    var window: Int
    /// First attachment only: the last `history` messages of each topic, as far as publishers offer them.
    var history: Int?
    /// Per topic, per publisher (UUID text): the next sequence number the subscriber is owed. The leader
    /// sends those publishers' kept messages from there on.
    var resume: [String: [String: UInt64]]?
    /// When the subscriber first subscribed, in nanoseconds since the Unix epoch: kept messages of publishers
    /// not in ``resume`` are sent if they were sent after it. Absent on a first attachment, which starts live.
    var since: UInt64?
    /// The largest batch frame (``WireFormat/Kind/batch``) the subscriber takes, its socket's message size limit;
    /// absent from older subscribers. A leader sends a larger batch, or any batch to an older subscriber, one
    /// message per frame.
    var batchBytes: Int?
    /// Whether the subscriber takes ``WireFormat/Kind/skipped`` notices; absent from older subscribers, which
    /// would count one as malformed.
    var skipNotices: Bool?

    /// The request as a control frame that a leader accepts. Publishers can be invented by anyone who can
    /// publish, and each one a subscriber knows adds a resume entry: a request over the leader's limit on
    /// control messages would be dropped, and sent again, forever. So resume entries are left out, half at a
    /// time, until it fits; streams left out are sent from ``since`` instead, and the sequencer drops what it
    /// already has.
    func encodedWithinLimit(_ limit: Int = WireFormat.maximumControlBody + 2) -> [UInt8] {
        var request = self
        var bytes = ControlFrame.encode(.subscribe, request)
        while bytes.count > limit, let owed = request.resume, !owed.isEmpty {
            let entries = owed.flatMap { topic, streams in streams.map { (topic, $0.key, $0.value) } }
            var kept: [String: [String: UInt64]] = [:]
            for (topic, publisher, next) in entries.prefix(entries.count / 2) {
                kept[topic, default: [:]][publisher] = next
            }
            request.resume = kept
            bytes = ControlFrame.encode(.subscribe, request)
        }
        return bytes
    }
}

/// The leader's answer to a ``SubscribeRequest``.
struct SubscribeReply: Codable, Sendable, Equatable {
    /// Per topic: the most history any of its publishers offers.
    var offered: [String: Int]
    /// Per topic: how many kept log entries (messages, or batches of them) are on their way before live ones.
    var backlog: [String: Int]
    /// The window the leader uses: the subscriber's, capped by the leader's limit.
    var window: Int
}

/// Why a leader refused a request, sent back to the client that made it.
struct Refusal: Codable, Sendable, Equatable {
    /// What the client should do.
    enum Reason: String, Codable, Sendable, CaseIterable {
        /// The client speaks another wire format version: upgrade one side.
        case versionMismatch = "version_mismatch"
        /// Data from a connection that has not registered (or whose registration expired): register again.
        case notRegistered = "not_registered"
        /// Data beyond the credit the leader granted: the sender ignores flow control.
        case overCredit = "over_credit"
        /// A consumption report from a connection with no subscription: subscribe again.
        case notSubscribed = "not_subscribed"
        /// More topics in one request than the leader accepts.
        case tooManyTopics = "too_many_topics"
        /// A new topic while the leader already holds as many as it accepts.
        case topicLimit = "topic_limit"
        /// A new publisher while the leader already knows as many as it accepts.
        case publisherLimit = "publisher_limit"
        /// A new subscriber while the leader already serves as many as it accepts.
        case subscriberLimit = "subscriber_limit"
        /// A topic name that is not valid.
        case invalidTopic = "invalid_topic"
        /// An unregistration from another connection than the one that registered.
        case notOwner = "not_owner"
        /// A registration the leader cannot keep: an endpoint too long, or no room left for registrations.
        case registrationLimit = "registration_limit"
        /// More status requests than the leader answers per second: ask again in a moment.
        case rateLimited = "rate_limited"
        /// The client's CURVE key may not publish on, or subscribe to, a topic it asked for.
        case forbidden = "forbidden"
    }

    var reason: Reason
    /// A sentence for logs.
    var detail: String
}

/// What the leader reports about itself to `herald status`.
public struct BrokerStatus: Codable, Sendable, Equatable {
    /// The broker's identity.
    public var broker: String
    /// The cluster's dissemination mode.
    public var mode: DisseminationMode
    /// The leader's term, as in its ``LeaderRecord``.
    public var epoch: UInt64?
    /// Seconds since this broker became leader.
    public var leaderForSeconds: Double
    /// Topics seen from publishers, with messages forwarded per topic (broker mode).
    public var topics: [String: UInt64]
    /// Topics subscribers asked for (broker mode).
    public var subscribedTopics: [String]
    /// Subscribers attached (broker mode).
    public var subscribers: Int?
    /// Publishers known to the broker: direct-mode registrations, or broker-mode senders seen recently.
    public var publishers: [String]
    /// Messages dropped because they were malformed.
    public var malformedMessages: UInt64
    /// Requests refused, by reason.
    public var refused: [String: UInt64]?
    /// Bytes kept in the broker's logs, and their limit.
    public var logBytes: Int?
    public var logLimitBytes: Int?
    /// Topics and publishers left out of ``topics`` and ``publishers`` so that the report fits one control
    /// message (absent when none were).
    public var omittedTopics: Int?
    /// The owner of each exclusive topic listed (ownership strength).
    public var owners: [String: PublisherID]?
    public var omittedPublishers: Int?
}

extension UInt8 {
    /// The ASCII lower-case hexadecimal digit of the low four bits of `nibble`: computed, not looked up, so text
    /// written per message reads no table.
    init(lowercaseHexDigit nibble: UInt8) {
        let digit = nibble & 0xF
        self = digit < 10 ? UInt8(ascii: "0") + digit : UInt8(ascii: "a") + digit - 10
    }
}
