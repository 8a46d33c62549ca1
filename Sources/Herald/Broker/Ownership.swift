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
    /// The contenders heard from within the timeout when the owners were last worked out.
    private var live: Set<PublisherID> = []
    private var changed = false
    /// The owner of each exclusive topic.
    private(set) var owners: [String: PublisherID] = [:]

    /// The topics some publisher contends for, live or not.
    private(set) var contested: Set<String> = []

    /// Whether any publisher contends: when none does, every topic is shared and nothing needs working out.
    var isEmpty: Bool { contenders.isEmpty && owners.isEmpty }

    /// Notes a registration: a contender when it has a strength, otherwise not (any longer).
    mutating func note(_ registration: PublisherRegistration, now: ContinuousClock.Instant) {
        guard let strength = registration.strength else { return remove(registration.publisher) }
        let previous = contenders[registration.publisher]
        contenders[registration.publisher] = Contender(strength: strength, topics: registration.topics, lastSeen: now)
        if previous?.strength != strength || previous?.topics != registration.topics {
            changed = true
            contested.formUnion(registration.topics)
        }
    }

    /// Forgets a publisher that left or expired.
    mutating func remove(_ publisher: PublisherID) {
        guard contenders.removeValue(forKey: publisher) != nil else { return }
        changed = true
        contested = Set(contenders.values.flatMap(\.topics))
    }

    /// Works the owners out again when the contenders or their liveness changed.
    /// - Returns: the topics whose owner changed, or that became shared.
    mutating func update(now: ContinuousClock.Instant) -> Set<String> {
        guard !contenders.isEmpty || !owners.isEmpty else { return [] }
        let alive = Set(contenders.filter { now - $0.value.lastSeen <= Self.ownerTimeout }.keys)
        guard changed || alive != live else { return [] }
        changed = false
        live = alive
        var best: [String: (publisher: PublisherID, strength: Int)] = [:]
        for publisher in alive {
            guard let contender = contenders[publisher] else { continue }
            for topic in contender.topics {
                if let current = best[topic], !Self.outranks(publisher, contender.strength, current) { continue }
                best[topic] = (publisher, contender.strength)
            }
        }
        let next = best.mapValues(\.publisher)
        var differing = Set<String>()
        for (topic, owner) in next where owners[topic] != owner { differing.insert(topic) }
        for topic in owners.keys where next[topic] == nil { differing.insert(topic) }
        owners = next
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
