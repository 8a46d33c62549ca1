/// The subscriber's logic without sockets: data frames in, each publisher's messages once and in order out.
///
/// The socket thread feeds it what arrives; a fuzzer and the benchmarks feed it bytes directly.
struct SubscriberCore {
    /// The topics received: the exact ones asked for first, then those patterns matched, as they first arrived.
    /// A message's topic is its number here.
    private(set) var topics: [Topic]
    /// The patterns asked for.
    let patterns: [TopicFilter]
    var sequencer: Sequencer
    private var topicIndex = NameIndex()
    /// The owner of each exclusive topic, by topic number (`nil`: shared), and by name for topics not numbered
    /// yet: the leader's last report.
    private var owners: [PublisherID?] = []
    private(set) var ownersByName: [String: PublisherID] = [:]
    /// Names that arrived and matched no pattern, so that each is matched once: a direct-mode publisher's
    /// socket filters on a pattern's literal prefix only.
    private var unmatched = NameIndex()

    /// Topics a subscriber tells apart at most, those its patterns match included: names and stream state are
    /// kept per topic, so a publisher inventing names must not grow them without end.
    static let maximumTopics = 10_000
    /// Unmatched names remembered at most; past it each is matched again on arrival.
    static let maximumUnmatched = 10_000

    /// What became of a data frame.
    enum Outcome: Error, Equatable {
        /// Passed to the sequencer.
        case accepted
        /// Of a topic no filter asked for: dropped, as ZeroMQ's prefix filter would have.
        case notSubscribed
        /// Of a topic a pattern matches, past ``maximumTopics``: dropped and counted.
        case tooManyTopics
        /// Of an exclusive topic, from a publisher that does not own it: dropped.
        case notOwner
        /// Not a data frame.
        case malformed
    }

    init(filters: [TopicFilter], sequencer: Sequencer) {
        self.sequencer = sequencer
        var seen = Set<TopicFilter>()
        let filters = filters.filter { seen.insert($0).inserted }
        topics = filters.compactMap(\.exactTopic)
        patterns = filters.filter(\.isPattern)
        for topic in topics { Array(topic.name.utf8).withUnsafeBytes { _ = topicIndex.insert($0) } }
        owners = Array(repeating: nil, count: topics.count)
    }

    init(topics: [Topic], sequencer: Sequencer) {
        self.init(filters: topics.map(TopicFilter.init), sequencer: sequencer)
    }

    /// Takes one data or batch frame. A batch is checked whole before any of it is delivered, so that it is taken
    /// or dropped as one frame; its messages share a topic and a publisher, so the first one's outcome is theirs.
    @discardableResult
    mutating func acceptFrame(
        _ frame: UnsafeRawBufferPointer, receivedAt: UInt64, now: ContinuousClock.Instant,
        lostBeforeFirst: (PublisherID) -> Bool = { _ in false }, into sink: inout some Sequencer.Sink
    ) -> Outcome {
        guard frame.count >= 2, frame[1] == WireFormat.Kind.batch.rawValue else {
            return acceptData(frame, receivedAt: receivedAt, now: now, lostBeforeFirst: lostBeforeFirst, into: &sink)
        }
        guard case .success = DataRun.decode(frame) else { return .malformed }
        var outcome = Outcome.accepted
        _ = DataRun.forEachMessage(inBatch: frame) { _, message, _ in
            outcome = acceptData(message, receivedAt: receivedAt, now: now, lostBeforeFirst: lostBeforeFirst, into: &sink)
            return outcome == .accepted
        }
        return outcome
    }

    /// Takes one data frame.
    /// - Parameters:
    ///   - frame: the frame's bytes.
    ///   - receivedAt: when it arrived, in nanoseconds since the Unix epoch.
    ///   - now: the monotonic time, for gap timeouts.
    ///   - lostBeforeFirst: whether a stream first seen from this publisher is owed from its first message
    ///     (direct mode: the publisher started after this subscriber).
    ///   - sink: where deliveries go.
    @discardableResult
    mutating func acceptData(
        _ frame: UnsafeRawBufferPointer, receivedAt: UInt64, now: ContinuousClock.Instant,
        lostBeforeFirst: (PublisherID) -> Bool = { _ in false }, into sink: inout some Sequencer.Sink
    ) -> Outcome {
        guard case .success(let layout) = DataLayout.decode(frame) else { return .malformed }
        let name = UnsafeRawBufferPointer(rebasing: frame[layout.topic])
        let topic: Int
        if let known = topicIndex.find(name) {
            topic = known
        } else {
            switch matchNew(name) {
            case .success(let number): topic = number
            case .failure(let outcome): return outcome
            }
        }
        if let owner = owners[topic], owner != layout.header.publisher { return .notOwner }
        sequencer.accept(
            topic: topic, header: layout.header, payload: UnsafeRawBufferPointer(rebasing: frame[layout.payload]),
            receivedAt: receivedAt, lostBeforeFirst: lostBeforeFirst(layout.header.publisher), now: now, into: &sink)
        return .accepted
    }

    /// Takes the leader's word that messages of a topic left its log before this subscriber was sent them.
    mutating func acceptSkipped(_ notice: SkippedNotice, now: ContinuousClock.Instant) {
        guard let topic = Array(notice.topic.utf8).withUnsafeBytes({ topicIndex.find($0) }) else { return }
        for (text, through) in notice.through {
            guard let publisher = PublisherID(text) else { continue }
            sequencer.giveUp(topic: topic, publisher: publisher, through: through, now: now)
        }
    }

    /// Numbers a name not seen before, when a pattern matches it.
    private mutating func matchNew(_ name: UnsafeRawBufferPointer) -> Result<Int, Outcome> {
        guard !patterns.isEmpty else { return .failure(.notSubscribed) }
        if unmatched.find(name) != nil { return .failure(.notSubscribed) }
        guard let topic = Topic(validating: name) else { return .failure(.malformed) }
        guard patterns.contains(where: { $0.matches(name: name) }) else {
            if unmatched.count < Self.maximumUnmatched { unmatched.insert(name) }
            return .failure(.notSubscribed)
        }
        guard topics.count < Self.maximumTopics else { return .failure(.tooManyTopics) }
        topics.append(topic)
        owners.append(ownersByName.isEmpty ? nil : ownersByName[topic.name])
        return .success(topicIndex.insert(name))
    }

    /// Takes the leader's owners of the exclusive topics this subscriber follows; a topic it does not list is
    /// shared. When a topic's owner changes, each of its streams continues from its next message.
    /// - Returns: the topics whose owner changed, with the new owner (`nil`: shared now).
    @discardableResult
    mutating func applyOwners(_ report: [String: PublisherID]) -> [(topic: String, owner: PublisherID?)] {
        ownersByName = report
        var changed: [(topic: String, owner: PublisherID?)] = []
        for (number, topic) in topics.enumerated() {
            let owner = report[topic.name]
            guard owner != owners[number] else { continue }
            owners[number] = owner
            changed.append((topic.name, owner))
            sequencer.resync(topic: number)
        }
        return changed
    }

    /// What the subscriber is owed per topic name and publisher, for telling a leader where to resume.
    func owed(onTopics wanted: Set<Int>? = nil) -> [String: [String: UInt64]] {
        var owed: [String: [String: UInt64]] = [:]
        for (key, next) in sequencer.expectations where wanted?.contains(key.topic) ?? true {
            owed[topics[key.topic].name, default: [:]][key.publisher.description] = next
        }
        return owed
    }
}
