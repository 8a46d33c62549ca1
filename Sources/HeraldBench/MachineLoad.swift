import FoundationEssentials

/// The machine's CPU time counters, from the aggregate `cpu` line of `/proc/stat`, in clock ticks.
///
/// On a virtual machine, `steal` is time the host gave this machine's CPUs to something else while they had work
/// to do. A run under steal time is slower and noisier at every point (a thread that wakes up waits for the host),
/// and nothing in the figures themselves says so; each run therefore records it next to them.
struct CPUTimes: Sendable, Equatable {
    /// user, nice, system, irq and softirq.
    var busy: UInt64
    /// idle and iowait.
    var idle: UInt64
    var steal: UInt64

    var total: UInt64 { busy &+ idle &+ steal }

    init(busy: UInt64, idle: UInt64, steal: UInt64) {
        self.busy = busy
        self.idle = idle
        self.steal = steal
    }

    /// Parses the first line of `/proc/stat`: `cpu  user nice system idle iowait irq softirq steal [guest guest_nice]`.
    /// Nil when that line is missing or malformed, or when its sums would not fit 64 bits. Guest time is already
    /// counted in user and nice, so it is left out.
    init?(procStat text: some StringProtocol) {
        guard let line = text.split(separator: "\n", maxSplits: 1).first else { return nil }
        let fields = line.split(separator: " ", omittingEmptySubsequences: true)
        guard fields.count >= 9, fields[0] == "cpu" else { return nil }
        var values: [UInt64] = []
        for field in fields[1...8] {
            guard let value = UInt64(field) else { return nil }
            values.append(value)
        }
        let (user, nice, system, idle, iowait, irq, softirq, steal) =
            (values[0], values[1], values[2], values[3], values[4], values[5], values[6], values[7])
        guard let busy = Self.sum([user, nice, system, irq, softirq]), let waiting = Self.sum([idle, iowait]),
            Self.sum([busy, waiting, steal]) != nil
        else { return nil }
        self.init(busy: busy, idle: waiting, steal: steal)
    }

    /// This machine's counters now; nil where there is no `/proc/stat`.
    static func current() -> CPUTimes? {
        guard let text = try? String(contentsOfFile: "/proc/stat", encoding: .utf8) else { return nil }
        return CPUTimes(procStat: text)
    }

    /// Steal and busy time since `start`, as percentages of all CPU time in between. Counters that went backwards
    /// (a reset, a migrated VM) give 0, not a trap.
    func percentages(since start: CPUTimes) -> (steal: Double, busy: Double) {
        func delta(_ a: UInt64, _ b: UInt64) -> Double { b >= a ? Double(b - a) : 0 }
        let total = delta(start.total, self.total)
        guard total > 0 else { return (0, 0) }
        return (100 * delta(start.steal, steal) / total, 100 * delta(start.busy, busy) / total)
    }

    private static func sum(_ values: [UInt64]) -> UInt64? {
        var total: UInt64 = 0
        for value in values {
            let (next, overflow) = total.addingReportingOverflow(value)
            if overflow { return nil }
            total = next
        }
        return total
    }
}

/// `body`'s result and the steal time while it ran, in percent of all CPU time (nil where there is no
/// `/proc/stat`): a figure the host slowed says so beside it, where a scenario's average would spread a few slowed
/// seconds over minutes.
func measuringSteal<Result>(_ body: () async throws -> Result) async rethrows -> (Result, steal: Double?) {
    let start = CPUTimes.current()
    let result = try await body()
    guard let start, let end = CPUTimes.current() else { return (result, nil) }
    return (result, end.percentages(since: start).steal)
}

/// The 1-minute load average, from `/proc/loadavg`; nil where there is none.
func currentLoadAverage() -> Double? {
    guard let text = try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8),
        let first = text.split(separator: " ").first
    else { return nil }
    return Double(first)
}

/// How loaded the machine was during one part of a run.
struct LoadReading: Codable, Sendable, Equatable {
    var scenario: String
    var seconds: Double
    /// Of all CPU time in the interval.
    var stealPercent: Double
    var busyPercent: Double
    /// The 1-minute load average when the part began.
    var loadAverageAtStart: Double?

    /// Between two readings of the counters.
    init(scenario: String, seconds: Double, from start: CPUTimes, to end: CPUTimes, loadAverageAtStart: Double?) {
        let shares = end.percentages(since: start)
        self.scenario = scenario
        self.seconds = seconds
        self.stealPercent = shares.steal
        self.busyPercent = shares.busy
        self.loadAverageAtStart = loadAverageAtStart
    }
}

/// Records the machine's load over each scenario of a run and over the whole run.
struct LoadRecorder {
    private struct Mark {
        var scenario: String
        var times: CPUTimes?
        var loadAverage: Double?
        var instant: ContinuousClock.Instant

        static func now(_ scenario: String) -> Mark {
            Mark(scenario: scenario, times: .current(), loadAverage: currentLoadAverage(), instant: .now)
        }
    }

    private let run: Mark
    private var current: Mark?
    private(set) var readings: [LoadReading] = []

    init() { run = .now("run") }

    /// Ends the scenario under way, if any, and starts `scenario`.
    mutating func start(_ scenario: String) {
        end()
        current = .now(scenario)
    }

    /// The readings of every scenario, and last the whole run's, named "run".
    mutating func finish() -> [LoadReading] {
        end()
        let now = Mark.now("run")
        if let reading = Self.reading(from: run, to: now) { readings.append(reading) }
        return readings
    }

    private mutating func end() {
        guard let mark = current else { return }
        current = nil
        if let reading = Self.reading(from: mark, to: .now(mark.scenario)) { readings.append(reading) }
    }

    private static func reading(from start: Mark, to end: Mark) -> LoadReading? {
        guard let from = start.times, let to = end.times else { return nil }
        let elapsed = start.instant.duration(to: end.instant)
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        return LoadReading(
            scenario: start.scenario, seconds: seconds, from: from, to: to, loadAverageAtStart: start.loadAverage)
    }
}
