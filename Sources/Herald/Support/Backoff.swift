/// Exponential back-off with jitter for retrying a connection, so that many clients restarted together do
/// not hammer ZooKeeper or a broker in lockstep.
struct Backoff: Sendable {
    /// The first delay: short, since most outages Herald sees are a leader changing.
    static let initialDelay: Duration = .milliseconds(100)
    /// The longest delay: a client reconnects within this long after a long outage ends.
    static let maximumDelay: Duration = .seconds(5)

    private var next = Backoff.initialDelay

    /// The delay to wait now; each call doubles the following one up to the maximum.
    mutating func nextDelay() -> Duration {
        let current = next
        next = min(next * 2, Self.maximumDelay)
        // Up to 20 % jitter, never below the nominal delay's 80 %.
        return current * Double.random(in: 0.8...1.0)
    }

    /// Starts over after a success.
    mutating func reset() { next = Self.initialDelay }
}

extension Duration {
    /// Seconds as a floating-point number, for logs, reports and JSON.
    public var seconds: Double {
        Double(components.seconds) + Double(components.attoseconds) / 1e18
    }
}
