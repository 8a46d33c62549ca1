/// The subscriber's logic without sockets: data frames in, each publisher's messages once and in order out.
///
/// The socket thread feeds it what arrives; a fuzzer and the benchmarks feed it bytes directly.
struct SubscriberCore {
    /// The subscribed topics; a message's topic is its number here.
    let topics: [Topic]
    private let topicIndex: NameIndex
    var sequencer: Sequencer

    init(topics: [Topic], sequencer: Sequencer) {
        self.topics = topics
        self.sequencer = sequencer
        var index = NameIndex()
        for topic in topics { Array(topic.name.utf8).withUnsafeBytes { _ = index.insert($0) } }
        topicIndex = index
    }

    /// Takes one data frame.
    /// - Parameters:
    ///   - frame: the frame's bytes.
    ///   - receivedAt: when it arrived, in nanoseconds since the Unix epoch.
    ///   - now: the monotonic time, for gap timeouts.
    ///   - lostBeforeFirst: whether a stream first seen from this publisher is owed from its first message
    ///     (direct mode: the publisher started after this subscriber).
    ///   - sink: where deliveries go.
    /// - Returns: `false` for a frame that is not a data frame of a subscribed topic (the caller counts it).
    mutating func acceptData(
        _ frame: UnsafeRawBufferPointer, receivedAt: UInt64, now: ContinuousClock.Instant,
        lostBeforeFirst: (PublisherID) -> Bool = { _ in false }, into sink: inout some Sequencer.Sink
    ) -> Bool {
        guard case .success(let layout) = DataLayout.decode(frame),
            let topic = topicIndex.find(UnsafeRawBufferPointer(rebasing: frame[layout.topic]))
        else { return false }
        sequencer.accept(
            topic: topic, header: layout.header, payload: UnsafeRawBufferPointer(rebasing: frame[layout.payload]),
            receivedAt: receivedAt, lostBeforeFirst: lostBeforeFirst(layout.header.publisher), now: now, into: &sink)
        return true
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
