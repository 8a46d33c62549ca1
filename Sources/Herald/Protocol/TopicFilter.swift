/// What a subscriber asks for: one topic by its exact name, or every topic that matches an MQTT-style pattern.
///
/// Topic names are hierarchical by convention, with levels separated by `/` (`sensors/lab1/temp`). In a
/// filter, a level that is exactly `+` matches any one level, and a last level that is exactly `#` matches
/// the level above it and everything below: `sensors/+/temp` matches `sensors/lab1/temp`; `sensors/#` matches
/// `sensors`, `sensors/lab1` and `sensors/lab1/temp`; `#` matches every topic. As in MQTT, `+` and `#` are
/// wildcards only as whole levels, so `c++` is the exact topic `c++`, and no topic name may have a level that
/// is exactly `+` or `#` (``Topic/init(_:)`` refuses it), so an exact filter never means two things.
public struct TopicFilter: Sendable, Hashable, CustomStringConvertible, ExpressibleByStringLiteral {
    /// The filter as written.
    public let text: String
    /// The levels of a pattern; `nil` for an exact name.
    private let levels: [Level]?

    private enum Level: Hashable {
        case literal([UInt8])
        case anyOne
        case rest
    }

    /// Parses a filter.
    /// - Parameter text: a topic name, or a pattern whose `+` levels match one level each and whose last level
    ///   may be `#`, matching everything below.
    /// - Throws: ``HeraldConfigurationError`` saying what is wrong: an invalid name, or `#` before the last
    ///   level.
    public init(_ text: String) throws(HeraldConfigurationError) {
        // The same rules as a name for length and characters; the wildcard levels are checked here.
        _ = try Topic(text, allowingWildcards: true)
        let parts = text.utf8.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false)
        guard parts.contains(where: { $0.elementsEqual("+".utf8) || $0.elementsEqual("#".utf8) }) else {
            self.text = text
            self.levels = nil
            return
        }
        var levels: [Level] = []
        for (index, part) in parts.enumerated() {
            if part.elementsEqual("#".utf8) {
                guard index == parts.count - 1 else {
                    throw HeraldConfigurationError(
                        .invalidName,
                        "in topic filter \(text.debugDescription), '#' must be the last level: it matches everything below; use '+' for one level"
                    )
                }
                levels.append(.rest)
            } else if part.elementsEqual("+".utf8) {
                levels.append(.anyOne)
            } else {
                levels.append(.literal(Array(part)))
            }
        }
        self.text = text
        self.levels = levels
    }

    /// The filter of exactly one topic.
    /// - Parameter topic: the topic.
    public init(_ topic: Topic) {
        text = topic.name
        levels = nil
    }

    /// A filter from a literal in code; the literal must be a valid filter.
    /// - Parameter value: the filter.
    public init(stringLiteral value: String) {
        do {
            try self.init(value)
        } catch {
            preconditionFailure("invalid topic filter literal: \(error)")
        }
    }

    /// The filter as written.
    public var description: String { text }

    /// Whether it has wildcards; `false` for an exact name.
    public var isPattern: Bool { levels != nil }

    /// The exact topic it names, when it is no pattern.
    public var exactTopic: Topic? { levels == nil ? Topic(checked: text) : nil }

    /// Whether `topic` matches.
    public func matches(_ topic: Topic) -> Bool {
        Array(topic.name.utf8).withUnsafeBytes { matches(name: $0) }
    }

    /// Whether the topic named `name` matches.
    func matches(name: String) -> Bool {
        var name = name
        return name.withUTF8 { matches(name: UnsafeRawBufferPointer($0)) }
    }

    /// Whether the topic named by `name` (UTF-8 bytes, as in a frame) matches.
    func matches(name: UnsafeRawBufferPointer) -> Bool {
        guard let levels else { return name.elementsEqual(text.utf8) }
        var start = 0
        var exhausted = false
        for level in levels {
            if case .rest = level { return true }
            if exhausted { return false }
            var end = start
            while end < name.count, name[end] != UInt8(ascii: "/") { end += 1 }
            if case .literal(let bytes) = level, !bytes.elementsEqual(name[start..<end]) { return false }
            if end == name.count { exhausted = true } else { start = end + 1 }
        }
        return exhausted
    }

    /// The part before the first wildcard level, with its `/`: every matching name starts with it, except the
    /// name ``parentName`` that a `#` after it also matches. For an exact name, the whole name.
    public var literalPrefix: String {
        guard let levels else { return text }
        var prefix = ""
        for level in levels {
            guard case .literal(let bytes) = level else { break }
            prefix += String(decoding: bytes, as: UTF8.self) + "/"
        }
        return prefix
    }

    /// The name a pattern whose first wildcard is a `#` after some levels matches besides those below it:
    /// `sensors` for `sensors/#`.
    var parentName: String? {
        guard let levels, let first = levels.firstIndex(where: { $0 == .anyOne || $0 == .rest }),
            first > 0, levels[first] == .rest
        else { return nil }
        return String(literalPrefix.dropLast())
    }

    /// What a direct-mode subscriber subscribes to on a publisher's socket: the topic's whole key for an exact
    /// name, so that ZeroMQ matches whole names only; for a pattern, the key up to the first wildcard, the rest
    /// being matched on arrival.
    var subscriptionPrefix: [UInt8] {
        guard isPattern else { return Topic(checked: text).key }
        let prefix = parentName ?? literalPrefix
        return [WireFormat.version, WireFormat.Kind.data.rawValue] + Array(prefix.utf8)
    }
}

/// Filters prepared for matching many names: exact names by hash, patterns one by one.
struct TopicFilterSet: Sendable {
    private(set) var exact: Set<String> = []
    private(set) var patterns: [TopicFilter] = []

    init(_ filters: [TopicFilter]) {
        for filter in filters {
            if filter.isPattern { patterns.append(filter) } else { exact.insert(filter.text) }
        }
    }

    /// Topic names, already valid, and patterns.
    init(names: some Sequence<String>, patterns: [TopicFilter]) {
        exact = Set(names)
        self.patterns = patterns
    }

    /// Whether a filter matches the topic named `name`.
    func matches(_ name: String) -> Bool {
        exact.contains(name) || (!patterns.isEmpty && patterns.contains { $0.matches(name: name) })
    }

    /// Whether a filter matches one of `names`.
    func matchesAny(_ names: [String]) -> Bool { names.contains(where: matches) }
}

extension TopicGrant {
    /// Whether every topic `filter` can match is granted: a pattern needs the whole grant, or a granted prefix
    /// that its literal part starts with (and, for `name/#`, `name` itself).
    public func allows(_ filter: TopicFilter) -> Bool {
        guard filter.isPattern else { return allows(filter.text) }
        if everything { return true }
        let prefix = filter.literalPrefix
        return prefixes.contains { prefix.hasPrefix($0) } && (filter.parentName.map(allows) ?? true)
    }
}
