import FoundationEssentials
import Histogram

#if canImport(Glibc)
    import Glibc
#endif

/// Percentiles of one latency distribution, in microseconds.
public struct LatencySummary: Codable, Sendable {
    var count: UInt64
    var p50: Double
    var p90: Double
    var p99: Double
    var p999: Double
    var max: Double
    var mean: Double
    /// Points of the cumulative distribution, for plots: (percentile, microseconds).
    var cdf: [[Double]]

    /// From a histogram of nanoseconds (the raw baseline, where microseconds would be too coarse).
    init(nanoseconds histogram: Histogram<UInt64>) { self.init(histogram, unitsPerMicrosecond: 1000) }
    /// From a histogram of microseconds (`latency_us` of `herald subscribe --json`).
    init(microseconds histogram: Histogram<UInt64>) { self.init(histogram, unitsPerMicrosecond: 1) }

    private init(_ histogram: Histogram<UInt64>, unitsPerMicrosecond: Double) {
        func at(_ percentile: Double) -> Double { Double(histogram.valueAtPercentile(percentile)) / unitsPerMicrosecond }
        count = histogram.totalCount
        p50 = at(50)
        p90 = at(90)
        p99 = at(99)
        p999 = at(99.9)
        max = Double(histogram.max) / unitsPerMicrosecond
        mean = histogram.mean / unitsPerMicrosecond
        cdf = count == 0 ? [] : histogram.percentiles(ticksPerHalfDistance: 5).map {
            [$0.percentile, Double($0.value) / unitsPerMicrosecond]
        }
    }
}

extension LatencySummary {
    /// What several rounds of one point measured, taken together: each percentile is the median of the rounds'
    /// (a round the host slowed moves it no more than one round that it sped up), the maximum is the largest,
    /// the count the sum. `cdf` is the distribution of every round's messages together, where one was recorded.
    init(medianOf rounds: [LatencySummary], cdf: [[Double]] = []) {
        func median(_ value: (LatencySummary) -> Double) -> Double { Self.median(rounds.map(value)) }
        count = rounds.reduce(0) { $0 + $1.count }
        p50 = median(\.p50)
        p90 = median(\.p90)
        p99 = median(\.p99)
        p999 = median(\.p999)
        max = rounds.map(\.max).max() ?? 0
        mean = median(\.mean)
        self.cdf = cdf
    }

    /// The same figures without the distribution, which only the combined row carries.
    var withoutDistribution: LatencySummary {
        var copy = self
        copy.cdf = []
        return copy
    }

    /// The middle value, or the mean of the two middle values of an even count; 0 for none.
    static func median(_ values: [Double]) -> Double {
        let sorted = values.sorted()
        guard !sorted.isEmpty else { return 0 }
        let middle = sorted.count / 2
        return sorted.count % 2 == 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2
    }
}

/// One kind of measurement at one rate and size in one latency round: what the latency table's rows are the
/// medians of.
struct LatencyRoundFigure: Codable, Sendable {
    /// The kinds of a round, in the order they run at every point.
    static let kinds = ["raw", "chain", "broker", "direct"]

    var round: Int
    /// `raw` (REQ/REP one way), `chain` (the proxy chain), `broker` or `direct`.
    var kind: String
    var rate: Double
    var size: Int
    /// The rate the messages went out at (raw and chain; Herald's publisher paces to the rate asked for).
    var sentPerSecond: Double?
    /// Messages missing at the subscriber (broker and direct).
    var missing: Int?
    /// Steal time while this one measurement ran, in percent of all CPU time: which round the host slowed.
    var stealPercent: Double? = nil
    /// Without its distribution: the combined row has that.
    var latency: LatencySummary
}

/// End-to-end latency of one mode, rate and size.
struct LatencyPoint: Codable, Sendable {
    var mode: String
    var rate: Double
    var size: Int
    var sent: Int
    var measured: Int
    var missing: Int
    var latency: LatencySummary
}

/// Broker throughput of one size and one publisher/subscriber shape.
struct ThroughputPoint: Codable, Sendable {
    var publishers: Int
    var subscribers: Int
    var size: Int
    var windowSeconds: Double
    /// Messages delivered to all subscribers per second.
    var deliveredPerSecond: Double
    /// Distinct messages through the broker per second: delivered / subscribers (each sees every message).
    var messagesPerSecond: Double
    var megabytesPerSecond: Double
    /// Sums of the subscribers' closing summaries.
    var received: Int
    var lost: Int
}

/// Aggregate throughput of two topics served by one broker group or by two.
struct GroupThroughputPoint: Codable, Sendable {
    var groups: Int
    var size: Int
    var windowSeconds: Double
    /// Messages per second over both topics, each to its one subscriber.
    var messagesPerSecond: Double
    var lost: Int
}

/// One leader failover.
struct FailoverRound: Codable, Sendable {
    var signal: String
    var round: Int
    var killedLeader: String
    var newLeader: String
    /// Wall clock of the signal, nanoseconds since the epoch (for plots).
    var killedAtNanoseconds: UInt64
    /// Signal to a different leader record in ZooKeeper (what `herald status --json` shows).
    var newLeaderMilliseconds: Double
    /// Signal to the first message sent after the signal that the subscriber read (replays do not count).
    var receivingAgainMilliseconds: Double
    /// The longest silence at the subscriber between the signal and that message.
    var gapMilliseconds: Double
    var received: Int
    var lost: Int
    var duplicates: Int
    var reordered: Int
}

/// Resident memory of brokers, read from `/proc/PID/status`.
struct MemoryReading: Codable, Sendable {
    var idleLeaderKilobytes: Int
    var idleStandbyKilobytes: Int
}

/// Peak memory with a stopped subscriber under a full-speed publisher.
struct OverloadReading: Codable, Sendable {
    var seconds: Double
    var brokerPeakKilobytes: Int
    var publisherPeakKilobytes: Int
    var brokerBoundBytes: Int
    var publisherBoundBytes: Int
    var subscriberReceived: Int
    var subscriberLost: Int
}

/// One target of the issue, checked against this run.
struct TargetCheck: Codable, Sendable {
    var name: String
    var target: String
    var measured: String
    var pass: Bool
}

/// The machine the figures come from.
struct MachineInfo: Codable, Sendable {
    var processors: Int
    var cpuModel: String
    var memoryGigabytes: Double
    var kernel: String
    var zeroMQVersion: String

    static func current(zeroMQ: String) -> MachineInfo {
        let cpuinfo = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? ""
        let model =
            cpuinfo.split(separator: "\n").first { $0.hasPrefix("model name") }.map {
                $0.split(separator: ":", maxSplits: 1).last.map { $0.trimmingWhitespace() } ?? ""
            } ?? "unknown"
        var system = utsname()
        uname(&system)
        let release = withUnsafeBytes(of: system.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        return MachineInfo(
            processors: ProcessInfo.processInfo.activeProcessorCount, cpuModel: model,
            memoryGigabytes: Double(ProcessInfo.processInfo.physicalMemory) / Double(1 << 30), kernel: release,
            zeroMQVersion: zeroMQ)
    }
}

/// Everything one `herald bench` run measured.
struct BenchResults: Codable, Sendable {
    var startedAt: String
    var machine: MachineInfo
    var settings: [String: String]
    var baselineThroughput: [ZeroMQBaseline.Throughput] = []
    var baselineLatency: [ZeroMQBaseline.Latency] = []
    var proxyChain: ZeroMQBaseline.ProxyChain?
    var proxyChainLatency: [ZeroMQBaseline.Latency] = []
    var latency: [LatencyPoint] = []
    /// Every round's figures; `baselineLatency`, `proxyChainLatency` and `latency` hold their medians.
    var latencyRounds: [LatencyRoundFigure] = []
    /// What each mode's latency subscriber counted lost over every round, from its closing summary.
    var latencySubscriberLost: [String: Int] = [:]
    var throughput: [ThroughputPoint] = []
    var groups: [GroupThroughputPoint] = []
    var failover: [FailoverRound] = []
    var memory: MemoryReading?
    var overload: OverloadReading?
    /// Per scenario, then the whole run as "run".
    var load: [LoadReading] = []
    var targets: [TargetCheck] = []

    /// The raw figure at the same rate and size, or the nearest size at that rate.
    func baselineLatency(size: Int, rate: Double) -> ZeroMQBaseline.Latency? {
        let atRate = baselineLatency.filter { $0.rate == rate }
        return atRate.first { $0.size == size } ?? atRate.min { abs($0.size - size) < abs($1.size - size) }
    }

    /// The proxy chain's figure at the same rate and size: what a broker that only forwards does at that point.
    func proxyChainLatency(size: Int, rate: Double) -> ZeroMQBaseline.Latency? {
        proxyChainLatency.first { $0.size == size && $0.rate == rate }
    }

    func baselineThroughput(size: Int) -> ZeroMQBaseline.Throughput? {
        baselineThroughput.first { $0.size == size }
    }
}

// MARK: - Files

extension BenchResults {
    /// Writes `results.json` and one CSV per table into `directory`.
    func write(to directory: String, failoverMessages: [(round: FailoverRound, messages: [BenchMessage])]) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        try encoder.encode(self).write(to: URL(fileURLWithPath: directory + "/results.json"))

        var csv = "kind,size,messages,seconds,msgs_per_s,mb_per_s,p50_us,p90_us,p99_us,p999_us,max_us\n"
        for point in baselineThroughput {
            csv += "push_pull,\(point.size),\(point.count),,\(f(point.messagesPerSecond)),\(f(point.megabytesPerSecond)),,,,,\n"
        }
        for point in baselineLatency {
            let l = point.oneWay
            csv += "req_rep_one_way_at_\(f(point.rate, 0))_per_s,\(point.size),\(point.count),,\(f(point.sentPerSecond)),,\(f(l.p50)),\(f(l.p90)),\(f(l.p99)),\(f(l.p999)),\(f(l.max))\n"
        }
        for point in proxyChainLatency {
            let l = point.oneWay
            csv += "proxy_chain_one_way_at_\(f(point.rate, 0))_per_s,\(point.size),\(point.count),,\(f(point.sentPerSecond)),,\(f(l.p50)),\(f(l.p90)),\(f(l.p99)),\(f(l.p999)),\(f(l.max))\n"
        }
        if let chain = proxyChain {
            csv += "proxy_chain_loss_free,\(chain.size),,,\(f(chain.lossFreeRate)),,,,,,\n"
            csv += "proxy_chain_full_speed,\(chain.size),,,\(f(chain.fullSpeedMessagesPerSecond)),,,,,,\n"
        }
        try write(csv, directory + "/baseline.csv")

        csv = "mode,rate,size,sent,measured,missing,p50_us,p90_us,p99_us,p999_us,max_us,mean_us\n"
        var cdf = "mode,rate,size,percentile,latency_us\n"
        for point in latency {
            let l = point.latency
            csv += "\(point.mode),\(f(point.rate)),\(point.size),\(point.sent),\(point.measured),\(point.missing),\(f(l.p50)),\(f(l.p90)),\(f(l.p99)),\(f(l.p999)),\(f(l.max)),\(f(l.mean))\n"
            for row in l.cdf { cdf += "\(point.mode),\(f(point.rate)),\(point.size),\(row[0]),\(row[1])\n" }
        }

        try write(csv, directory + "/latency.csv")

        csv = "round,kind,rate,size,count,sent_per_s,missing,p50_us,p90_us,p99_us,p999_us,max_us,steal_percent\n"
        for figure in latencyRounds {
            let l = figure.latency
            csv += "\(figure.round),\(figure.kind),\(f(figure.rate)),\(figure.size),\(l.count),\(figure.sentPerSecond.map { f($0) } ?? ""),\(figure.missing.map { "\($0)" } ?? ""),\(f(l.p50)),\(f(l.p90)),\(f(l.p99)),\(f(l.p999)),\(f(l.max)),\(figure.stealPercent.map { f($0, 1) } ?? "")\n"
        }
        try write(csv, directory + "/latency_rounds.csv")
        try write(cdf, directory + "/latency_cdf.csv")

        csv = "publishers,subscribers,size,window_s,messages_per_s,delivered_per_s,mb_per_s,received,lost\n"
        for point in throughput {
            csv += "\(point.publishers),\(point.subscribers),\(point.size),\(f(point.windowSeconds)),\(f(point.messagesPerSecond)),\(f(point.deliveredPerSecond)),\(f(point.megabytesPerSecond)),\(point.received),\(point.lost)\n"
        }
        try write(csv, directory + "/throughput.csv")

        csv = "groups,size,window_s,messages_per_s,lost\n"
        for point in groups {
            csv += "\(point.groups),\(point.size),\(f(point.windowSeconds)),\(f(point.messagesPerSecond)),\(point.lost)\n"
        }
        try write(csv, directory + "/groups.csv")

        csv = "signal,round,killed_leader,new_leader,killed_at_ns,new_leader_ms,receiving_again_ms,gap_ms,received,lost,duplicates,reordered\n"
        for round in failover {
            csv += "\(round.signal),\(round.round),\(round.killedLeader),\(round.newLeader),\(round.killedAtNanoseconds),\(f(round.newLeaderMilliseconds)),\(f(round.receivingAgainMilliseconds)),\(f(round.gapMilliseconds)),\(round.received),\(round.lost),\(round.duplicates),\(round.reordered)\n"
        }
        try write(csv, directory + "/failover.csv")

        csv = "signal,round,killed_at_ns,seq,sent_at_ns,latency_us,read_at_ns\n"
        for (round, messages) in failoverMessages {
            for message in messages {
                csv += "\(round.signal),\(round.round),\(round.killedAtNanoseconds),\(message.sequence),\(message.sentAt),\(message.latencyMicroseconds),\(message.readAt)\n"
            }
        }
        try write(csv, directory + "/failover_messages.csv")

        csv = "scenario,seconds,steal_percent,busy_percent,load_average_at_start\n"
        for reading in load {
            csv += "\(reading.scenario),\(f(reading.seconds)),\(f(reading.stealPercent)),\(f(reading.busyPercent)),\(reading.loadAverageAtStart.map { f($0) } ?? "")\n"
        }
        try write(csv, directory + "/load.csv")
    }

    private func write(_ text: String, _ path: String) throws {
        try Data(text.utf8).write(to: URL(fileURLWithPath: path))
    }
}

/// A number for CSV and tables: short, no exponent.
func f(_ value: Double, _ digits: Int = 2) -> String { value.decimal(digits) }

// MARK: - Summary table

extension BenchResults {
    /// The human summary printed on standard output.
    func summary() -> String {
        var out = "\n== herald bench: \(machine.processors) CPUs, \(machine.cpuModel), \(f(machine.memoryGigabytes, 1)) GiB, libzmq \(machine.zeroMQVersion)\n"
        if !baselineLatency.isEmpty || !baselineThroughput.isEmpty {
            out += "\n-- raw ZeroMQ baseline (libzmq from C, each peer its own process, loopback TCP; latency: the median of the rounds, measured beside Herald's)\n"
            // "sent/s" is the rate the requests went out at: a round trip longer than the period holds the next back.
            out += pad(["size", "rate/s", "sent/s", "one-way p50 us", "p99 us", "max us"]) + "\n"
            for point in baselineLatency {
                let l = point.oneWay
                out += pad(["\(point.size)", f(point.rate, 0), f(point.sentPerSecond, 0), f(l.p50), f(l.p99), f(l.max)]) + "\n"
            }
            out += pad(["size", "PUSH/PULL msg/s", "MB/s"]) + "\n"
            for point in baselineThroughput {
                out += pad(["\(point.size)", f(point.messagesPerSecond, 0), f(point.megabytesPerSecond, 1)]) + "\n"
            }
            for point in proxyChainLatency {
                let l = point.oneWay
                out += "proxy chain PUB -> zmq_proxy -> SUB (two hops), \(point.size) B at \(f(point.rate, 0))/s (sent at \(f(point.sentPerSecond, 0))/s): one-way p50 \(f(l.p50)) us, p99 \(f(l.p99)) us, max \(f(l.max)) us\n"
            }
            if let chain = proxyChain {
                out += "proxy chain PUB -> zmq_proxy -> SUB, \(chain.size) B: loss-free up to \(f(chain.lossFreeRate, 0)) msg/s (sweep \(chain.sweep.map { "\(f($0[0], 0)):\(f($0[1], 0)) lost" }.joined(separator: ", "))); full speed drains \(f(chain.fullSpeedMessagesPerSecond, 0)) msg/s losing \(f(chain.fullSpeedLostFraction * 100, 1))%\n"
            }
        }
        if !latency.isEmpty {
            let rounds = Set(latencyRounds.map(\.round)).count
            out += "\n-- end-to-end latency (publisher send to subscriber receive), microseconds"
                + (rounds > 1 ? "; each figure the median of \(rounds) rounds, n their sum\n" : "\n")
            out += pad([
                "mode", "rate/s", "size", "n", "p50", "p90", "p99", "p99.9", "max", "p50/raw", "p99/raw", "p50/chain",
                "p99/chain",
            ]) + "\n"
            for point in latency {
                let l = point.latency
                let raw = baselineLatency(size: point.size, rate: point.rate)?.oneWay
                // Broker mode makes the proxy chain's two hops; direct mode makes one, so only raw compares with it.
                let chain = point.mode == "broker" ? proxyChainLatency(size: point.size, rate: point.rate)?.oneWay : nil
                out += pad([
                    point.mode, f(point.rate, 0), "\(point.size)", "\(l.count)", f(l.p50, 0), f(l.p90, 0), f(l.p99, 0),
                    f(l.p999, 0), f(l.max, 0), raw.map { f(l.p50 / $0.p50) + "x" } ?? "-",
                    raw.map { f(l.p99 / $0.p99) + "x" } ?? "-", chain.map { f(l.p50 / $0.p50) + "x" } ?? "-",
                    chain.map { f(l.p99 / $0.p99) + "x" } ?? "-",
                ]) + "\n"
            }
            if latency.contains(where: { $0.mode == "printed" }) {
                out += "(broker and direct: the subscriber prints no payloads, --payload none; printed: broker mode into a subscriber printing them)\n"
            }
        }
        let rounds = Set(latencyRounds.map(\.round)).sorted()
        if !rounds.isEmpty {
            out += "\n-- latency rounds (each figure above is the median of these; per round, every point measured raw, chain, broker, direct back to back), p50 microseconds; steal: percent of CPU time the host took during each of the four\n"
            out += pad(["round", "rate/s", "size", "raw", "chain", "broker", "direct", "broker/raw", "direct/raw", "broker/chain", "steal %"]) + "\n"
            for round in rounds {
                let figures = latencyRounds.filter { $0.round == round }
                var points: [(rate: Double, size: Int)] = []
                for figure in figures where !points.contains(where: { $0 == (figure.rate, figure.size) }) {
                    points.append((figure.rate, figure.size))
                }
                for point in points {
                    func figure(_ kind: String) -> LatencyRoundFigure? {
                        figures.first { $0.kind == kind && $0.rate == point.rate && $0.size == point.size }
                    }
                    func p50(_ kind: String) -> Double? { figure(kind)?.latency.p50 }
                    func ratio(_ over: String, _ under: String) -> String {
                        guard let over = p50(over), let under = p50(under), under > 0 else { return "-" }
                        return f(over / under) + "x"
                    }
                    out += pad(
                        ["\(round)", f(point.rate, 0), "\(point.size)"]
                            + LatencyRoundFigure.kinds.map { kind in p50(kind).map { f($0, 0) } ?? "-" }
                            + [ratio("broker", "raw"), ratio("direct", "raw"), ratio("broker", "chain")]
                            + [
                                LatencyRoundFigure.kinds.map { kind in figure(kind)?.stealPercent.map { f($0, 0) } ?? "-" }
                                    .joined(separator: "/")
                            ]) + "\n"
                }
            }
        }
        if !throughput.isEmpty {
            out += "\n-- broker throughput (subscriber side; messages/s through the broker, each delivered to every subscriber)\n"
            out += pad(["pubs", "subs", "size", "msg/s", "delivered/s", "MB/s", "raw msg/s", "herald/raw", "lost"]) + "\n"
            for point in throughput {
                let raw = baselineThroughput(size: point.size)
                out += pad([
                    "\(point.publishers)", "\(point.subscribers)", "\(point.size)", f(point.messagesPerSecond, 0),
                    f(point.deliveredPerSecond, 0), f(point.megabytesPerSecond, 1),
                    raw.map { f($0.messagesPerSecond, 0) } ?? "-",
                    raw.map { f(point.messagesPerSecond / $0.messagesPerSecond, 3) + "x" } ?? "-", "\(point.lost)",
                ]) + "\n"
            }
        }
        if !groups.isEmpty {
            out += "\n-- broker groups (two topics at full speed, a publisher and a subscriber each; topics assigned one per group)\n"
            out += pad(["groups", "size", "msg/s (both topics)", "vs 1 group", "lost"]) + "\n"
            let one = groups.first { $0.groups == 1 }?.messagesPerSecond
            for point in groups {
                out += pad([
                    "\(point.groups)", "\(point.size)", f(point.messagesPerSecond, 0),
                    one.map { f(point.messagesPerSecond / $0, 2) + "x" } ?? "-", "\(point.lost)",
                ]) + "\n"
            }
        }
        if !failover.isEmpty {
            out += "\n-- leader failover (3 brokers; milliseconds from the signal to the new leader's record, to the first message sent after the signal, and the longest silence)\n"
            out += pad(["signal", "round", "new leader ms", "first new ms", "gap ms", "received", "lost", "dups", "reord"]) + "\n"
            for round in failover {
                out += pad([
                    round.signal, "\(round.round)", f(round.newLeaderMilliseconds, 0), f(round.receivingAgainMilliseconds, 0),
                    f(round.gapMilliseconds, 0), "\(round.received)", "\(round.lost)", "\(round.duplicates)",
                    "\(round.reordered)",
                ]) + "\n"
            }
        }
        if let overload {
            out += "\n-- overload: a stopped subscriber, a 16 KiB publisher at full speed for \(f(overload.seconds, 0)) s: broker peak VmRSS \(overload.brokerPeakKilobytes) kB (log bound \(overload.brokerBoundBytes >> 10) kB), publisher peak \(overload.publisherPeakKilobytes) kB (retention bound \(overload.publisherBoundBytes >> 10) kB); the subscriber, resumed, received \(overload.subscriberReceived) and counted \(overload.subscriberLost) lost\n"
        }
        if !load.isEmpty {
            // Steal time is CPU time the host gave to others while this VM had work: every figure above is slower and
            // noisier by it, which the figures themselves cannot show.
            out += "\n-- machine load (percent of all CPU time; steal: taken by the host while this machine had work)\n"
            out += pad(["scenario", "seconds", "steal %", "busy %", "load avg at start"]) + "\n"
            for reading in load {
                out += pad([
                    reading.scenario, f(reading.seconds, 0), f(reading.stealPercent, 1), f(reading.busyPercent, 1),
                    reading.loadAverageAtStart.map { f($0, 2) } ?? "-",
                ]) + "\n"
            }
        }
        if let memory {
            out += "\n-- idle broker memory: leader VmRSS \(memory.idleLeaderKilobytes) kB, standby VmRSS \(memory.idleStandbyKilobytes) kB\n"
        }
        if !targets.isEmpty {
            out += "\n-- targets\n"
            for target in targets {
                let verdict = target.target == "for reference" ? "INFO" : target.pass ? "PASS" : "MISS"
                out += "\(verdict)  \(target.name): \(target.measured) (target \(target.target))\n"
            }
        }
        return out
    }

    private func pad(_ columns: [String]) -> String {
        columns.enumerated().map { index, text in
            let width = index == 0 ? 8 : 12
            return text.count >= width ? text + " " : text + String(repeating: " ", count: width - text.count)
        }.joined()
    }
}
