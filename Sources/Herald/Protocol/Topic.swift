/// A validated topic name.
///
/// Topics are matched exactly: a subscriber of `weather` never gets `weatherX`. On the wire a topic travels as
/// its UTF-8 bytes followed by a zero byte, so ZeroMQ's prefix filtering already matches whole names only.
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
        guard !name.isEmpty else { throw HeraldConfigurationError("a topic name must not be empty") }
        guard name.utf8.count <= Self.maximumLength else {
            throw HeraldConfigurationError(
                "topic name '\(name.prefix(32))…' is \(name.utf8.count) bytes long; the limit is \(Self.maximumLength)"
            )
        }
        if let bad = name.unicodeScalars.first(where: { $0.properties.generalCategory == .control }) {
            throw HeraldConfigurationError(
                "topic name \(name.debugDescription) contains the control character U+\(String(bad.value, radix: 16, uppercase: true)); use printable characters only"
            )
        }
        self.name = name
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

    /// The first frame of a data message: the name and a terminating zero byte.
    var key: [UInt8] { Array(name.utf8) + [0] }

    /// Decodes a topic key received from the network.
    init?(key: [UInt8]) {
        guard key.count >= 2, key.count <= Self.maximumLength + 1, key.last == 0 else { return nil }
        let name = key.dropLast()
        // Printable ASCII, the usual case, is valid as it stands; this runs for every message received.
        if name.allSatisfy({ (0x20...0x7E).contains($0) }) {
            self.name = String(decoding: name, as: UTF8.self)
            return
        }
        guard let topic = try? Topic(String(decoding: name, as: UTF8.self)), topic.name.utf8.elementsEqual(name)
        else { return nil }
        self = topic
    }
}
