/// A validated topic name.
///
/// Topics are matched exactly: a subscriber of `weather` never gets `weatherX`. On the wire a topic travels as
/// its UTF-8 bytes followed by a zero byte, so ZeroMQ's prefix filtering already matches whole names only.
/// Names may be hierarchical, with levels separated by `/`, for subscribers' patterns (``TopicFilter``); a
/// level may not be exactly `+` or `#`, the patterns' wildcards.
public struct Topic: Sendable, Hashable, CustomStringConvertible, ExpressibleByStringLiteral {
    /// The longest topic name accepted, in UTF-8 bytes: long enough for hierarchical names, short enough to
    /// keep the per-message overhead small.
    public static let maximumLength = 255

    /// The topic's name.
    public let name: String

    /// Validates a topic name.
    /// - Parameter name: 1 to ``maximumLength`` UTF-8 bytes, with no control characters.
    /// - Throws: ``HeraldConfigurationError`` saying what is wrong with the name.
    public init(_ name: String) throws(HeraldConfigurationError) {
        try self.init(name, allowingWildcards: false)
    }

    /// Validates a name, or the text of a ``TopicFilter`` when `allowingWildcards`.
    init(_ name: String, allowingWildcards: Bool) throws(HeraldConfigurationError) {
        guard !name.isEmpty else { throw HeraldConfigurationError(.invalidName, "a topic name must not be empty") }
        guard name.utf8.count <= Self.maximumLength else {
            throw HeraldConfigurationError(
                .invalidName,
                "topic name '\(name.prefix(32))…' is \(name.utf8.count) bytes long; the limit is \(Self.maximumLength)"
            )
        }
        if let bad = name.unicodeScalars.first(where: { $0.properties.generalCategory == .control }) {
            throw HeraldConfigurationError(
                .invalidName,
                "topic name \(name.debugDescription) contains the control character U+\(String(bad.value, radix: 16, uppercase: true)); use printable characters only"
            )
        }
        if !allowingWildcards, Self.hasWildcardLevel(name.utf8) {
            throw HeraldConfigurationError(
                .invalidName,
                "topic name \(name.debugDescription) has a level that is exactly '+' or '#': those are wildcards for subscribers; rename that level"
            )
        }
        self.name = name
    }

    /// A name known to be valid (it passed ``init(_:)`` before, as a filter's text).
    init(checked name: String) { self.name = name }

    /// Whether a level of the name is exactly `+` or `#`.
    static func hasWildcardLevel(_ name: some Collection<UInt8>) -> Bool {
        var levelLength = 0
        var wildcard = false
        for byte in name {
            if byte == UInt8(ascii: "/") {
                if levelLength == 1, wildcard { return true }
                levelLength = 0
                wildcard = false
            } else {
                levelLength += 1
                wildcard = byte == UInt8(ascii: "+") || byte == UInt8(ascii: "#")
            }
        }
        return levelLength == 1 && wildcard
    }

    /// A topic from a literal in code; the literal must be a valid name.
    /// - Parameter value: the topic name.
    public init(stringLiteral value: String) {
        do {
            try self.init(value)
        } catch {
            preconditionFailure("invalid topic literal: \(error)")
        }
    }

    /// The topic's name.
    public var description: String { name }

    /// The start of every data frame on this topic (version, kind, the name and a zero byte): what a direct-mode
    /// subscriber subscribes to, so that ZeroMQ's prefix filter matches whole names only.
    var key: [UInt8] { [WireFormat.version, WireFormat.Kind.data.rawValue] + Array(name.utf8) + [0] }

    /// Checks a name received from the network, as bytes.
    /// - Returns: `nil` unless the bytes are a valid name.
    init?(validating bytes: UnsafeRawBufferPointer) {
        guard !bytes.isEmpty, bytes.count <= Self.maximumLength else { return nil }
        // Printable ASCII, the usual case, is valid as it stands.
        if bytes.allSatisfy({ (0x20...0x7E).contains($0) }) {
            guard !Self.hasWildcardLevel(bytes) else { return nil }
            self.name = String(decoding: bytes, as: UTF8.self)
            return
        }
        guard let text = String(validating: bytes, as: UTF8.self), let topic = try? Topic(text) else { return nil }
        self = topic
    }
}
