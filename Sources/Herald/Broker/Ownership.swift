/// Which publisher owns each exclusive topic: the leader's side of ownership strength.
///
/// A publisher started with a strength (`--strength N`) contends for its topics. A topic with a live contender is
/// exclusive: subscribers deliver only its owner's messages, the owner being the strongest contender heard from
/// within ``ownerTimeout`` (on equal strength, the lower identity). Publishers without a strength are not
/// contenders; on an exclusive topic their messages are not delivered either. A topic without contenders is
/// shared, as before: every publisher's messages are delivered.
///
/// Contenders register four times per ``ownerTimeout``, so a crashed owner is replaced within that timeout of
/// its last registration, and a stopped one at once (it unregisters).
struct OwnershipTable {
    /// How long an owner may stay silent before the next strongest takes over: one heartbeat interval.
    static let ownerTimeout: Duration = .seconds(1)
    /// How often a contender registers: four times per ``ownerTimeout``, so that one or two registrations lost
    /// or late on a busy host do not hand the topic over.
    static let contenderRegistrationInterval: Duration = .milliseconds(250)
    /// Topics one report lists at most: a report must fit a control message (names are at most 255 bytes).
    static let maximumReportEntries = 2048

    private struct Contender {
        var strength: Int
        var topics: [String]
        var lastSeen: ContinuousClock.Instant
    }

    private var contenders: [PublisherID: Contender] = [:]
    /// The contenders of each contested topic, live or not.
    private var byTopic: [String: Set<PublisherID>] = [:]
    /// The contenders heard from within the timeout when the owners were last worked out.
    private var live: Set<PublisherID> = []
    /// Topics whose owner must be worked out again: a contender came, changed or left. Only these are, so a
    /// registration costs work in its own topics, not in every contender's.
    private var dirty: Set<String> = []
    /// The owner of each exclusive topic.
    private(set) var owners: [String: PublisherID] = [:]

    /// Whether any publisher contends: when none does, every topic is shared and nothing needs working out.
    var isEmpty: Bool { contenders.isEmpty && owners.isEmpty }

    /// Whether some publisher contends for `topic`, live or not.
    func isContested(_ topic: String) -> Bool { byTopic[topic] != nil }

    /// Notes a registration: a contender when it has a strength, otherwise not (any longer).
    mutating func note(_ registration: PublisherRegistration, now: ContinuousClock.Instant) {
        guard let strength = registration.strength else { return remove(registration.publisher) }
        let publisher = registration.publisher
        let previous = contenders[publisher]
        contenders[publisher] = Contender(strength: strength, topics: registration.topics, lastSeen: now)
        guard previous?.strength != strength || previous?.topics != registration.topics else { return }
        for topic in previous?.topics ?? [] { unmap(publisher, from: topic) }
        for topic in registration.topics { byTopic[topic, default: []].insert(publisher) }
        dirty.formUnion(registration.topics)
    }

    /// Forgets a publisher that left or expired.
    mutating func remove(_ publisher: PublisherID) {
        guard let removed = contenders.removeValue(forKey: publisher) else { return }
        for topic in removed.topics { unmap(publisher, from: topic) }
        live.remove(publisher)
    }

    private mutating func unmap(_ publisher: PublisherID, from topic: String) {
        byTopic[topic]?.remove(publisher)
        if byTopic[topic]?.isEmpty == true { byTopic[topic] = nil }
        dirty.insert(topic)
    }

    /// Works out again the owners of the topics whose contenders changed or came and went.
    /// - Returns: the topics whose owner changed, or that became shared.
    mutating func update(now: ContinuousClock.Instant) -> Set<String> {
        guard !contenders.isEmpty || !dirty.isEmpty else { return [] }
        let alive = Set(contenders.filter { now - $0.value.lastSeen <= Self.ownerTimeout }.keys)
        for publisher in alive.symmetricDifference(live) { dirty.formUnion(contenders[publisher]?.topics ?? []) }
        live = alive
        var differing = Set<String>()
        for topic in dirty {
            var best: (publisher: PublisherID, strength: Int)?
            for publisher in byTopic[topic] ?? [] where alive.contains(publisher) {
                guard let strength = contenders[publisher]?.strength else { continue }
                if let current = best, !Self.outranks(publisher, strength, current) { continue }
                best = (publisher, strength)
            }
            if owners[topic] != best?.publisher {
                owners[topic] = best?.publisher
                differing.insert(topic)
            }
        }
        dirty = []
        return differing
    }

    /// The owners of the exclusive topics that `wanted` selects, at most ``maximumReportEntries`` of them.
    func report(where wanted: (String) -> Bool) -> [String: PublisherID] {
        var report: [String: PublisherID] = [:]
        for (topic, owner) in owners where wanted(topic) {
            guard report.count < Self.maximumReportEntries else { break }
            report[topic] = owner
        }
        return report
    }

    /// Whether `publisher` with `strength` outranks the current owner.
    static func outranks(
        _ publisher: PublisherID, _ strength: Int, _ current: (publisher: PublisherID, strength: Int)
    ) -> Bool {
        if strength != current.strength { return strength > current.strength }
        return (publisher.high, publisher.low) < (current.publisher.high, current.publisher.low)
    }
}
