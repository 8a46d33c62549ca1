import ChildProcesses
import FoundationEssentials
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// Raw libzmq, called from C by `herald-zmq-baseline`, each peer in its own process: the floor Herald is
/// measured against, in the same run and on the same machine.
public enum ZeroMQBaseline {
    /// REQ/REP round trips at one rate and size; latency one way (RTT / 2).
    public struct Latency: Codable, Sendable {
        public var size: Int
        /// Round trips per second asked for (0: back to back).
        public var rate: Double
        /// The rate the messages went out at: below `rate` when a round trip takes longer than the period.
        public var sentPerSecond: Double
        public var count: Int
        public var oneWay: LatencySummary
    }

    /// PUSH/PULL between two processes at full speed.
    public struct Throughput: Codable, Sendable {
        public var size: Int
        public var count: Int
        public var messagesPerSecond: Double
        public var megabytesPerSecond: Double
    }

    /// PUB → zmq_proxy (XSUB/XPUB) → SUB, three processes: what a broker that does nothing but forward achieves.
    public struct ProxyChain: Codable, Sendable {
        public var size: Int
        /// The highest paced rate tried that lost nothing, messages per second.
        public var lossFreeRate: Double
        /// Rates tried, with what each lost.
        public var sweep: [[Double]]
        /// Full speed: the rate the subscriber drained at, and the share of messages lost.
        public var fullSpeedMessagesPerSecond: Double
        public var fullSpeedLostFraction: Double
    }

    /// Runs the C tool with `arguments` and decodes the one JSON object it prints.
    static func run<T: Decodable>(_ type: T.Type, _ arguments: [String]) async throws -> T {
        let executable = ChildProcess.currentExecutable
        let binary = String(executable[..<(executable.lastIndex(of: "/") ?? executable.startIndex)]) + "/herald-zmq-baseline"
        guard access(binary, X_OK) == 0 else {
            throw BenchError("\(binary) is missing; build it next to herald: swift build -c release --product herald-zmq-baseline")
        }
        let printed = Mutex<[UInt8]>([])
        let tool = try await ChildProcess.start(
            name: "herald-zmq-baseline", executable: binary, arguments: arguments,
            standardOutput: .lines { line in printed.withLock { $0 += line } })
        // The longest run, 2,000,000 messages through the proxy chain, takes seconds; an hour means it hangs.
        let status = await tool.waitForExit(timeout: .seconds(3600))
        guard status == 0 else {
            throw BenchError("herald-zmq-baseline \(arguments.joined(separator: " ")) exited with \(status.map { "\($0)" } ?? "nothing: it hangs")")
        }
        return try JSONDecoder.baseline.decode(T.self, from: Data(printed.withLock { $0 }))
    }

    private struct LatencyOutput: Decodable {
        var size: Int
        var count: Int
        var rate: Double
        var sentPerS: Double
        var oneWayUs: Percentiles
    }

    private struct ThroughputOutput: Decodable {
        var size: Int
        var count: Int
        var msgsPerS: Double
        var mbytesPerS: Double
    }

    private struct ChainOutput: Decodable {
        var received: Int
        var lost: Int
        var sentPerS: Double?
        var msgsPerS: Double?
        var oneWayUs: Percentiles?
    }

    struct Percentiles: Decodable {
        var min: Double
        var p50: Double
        var p90: Double
        var p99: Double
        var p999: Double
        var max: Double
    }

    /// Paced REQ/REP one-way latency.
    static func latency(size: Int, rate: Double, count: Int) async throws -> Latency {
        let output = try await run(
            LatencyOutput.self,
            ["latency", "--size", "\(max(size, 1))", "--count", "\(count)", "--rate", "\(Int(rate))"])
        return Latency(
            size: size, rate: rate, sentPerSecond: output.sentPerS, count: output.count,
            oneWay: LatencySummary(output.oneWayUs, count: output.count))
    }

    /// PUSH/PULL throughput.
    static func throughput(size: Int) async throws -> Throughput {
        let count = min(max((256 << 20) / max(size, 1), 2_000), 2_000_000)
        let output = try await run(ThroughputOutput.self, ["throughput", "--size", "\(max(size, 1))", "--count", "\(count)"])
        return Throughput(
            size: size, count: output.count, messagesPerSecond: output.msgsPerS, megabytesPerSecond: output.mbytesPerS)
    }

    /// One-way latency through the proxy chain at a paced rate: two hops, like Herald's broker mode, with a
    /// broker that does nothing but forward.
    static func proxyChainLatency(size: Int, rate: Double, count: Int) async throws -> Latency {
        let output = try await run(
            ChainOutput.self,
            ["proxy-chain", "--size", "\(max(size, 20))", "--count", "\(count)", "--rate", "\(Int(rate))"])
        guard let percentiles = output.oneWayUs, let sent = output.sentPerS else {
            throw BenchError("the proxy chain reported no latency")
        }
        return Latency(
            size: size, rate: rate, sentPerSecond: sent, count: output.received,
            oneWay: LatencySummary(percentiles, count: output.received))
    }

    /// The proxy chain: a sweep of paced rates for the highest that loses nothing, and one run at full speed.
    static func proxyChain(size: Int, rates: [Double], seconds: Double) async throws -> ProxyChain {
        var sweep: [[Double]] = []
        var lossFree = 0.0
        for rate in rates {
            let output = try await run(
                ChainOutput.self,
                ["proxy-chain", "--size", "\(max(size, 20))", "--count", "\(Int(rate * seconds))", "--rate", "\(Int(rate))"])
            sweep.append([rate, Double(output.lost)])
            if output.lost == 0 { lossFree = max(lossFree, rate) } else { break }
        }
        let full = try await run(ChainOutput.self, ["proxy-chain", "--size", "\(max(size, 20))", "--count", "2000000"])
        return ProxyChain(
            size: size, lossFreeRate: lossFree, sweep: sweep, fullSpeedMessagesPerSecond: full.msgsPerS ?? 0,
            fullSpeedLostFraction: Double(full.lost) / Double(max(1, full.received + full.lost)))
    }
}

extension JSONDecoder {
    fileprivate static var baseline: JSONDecoder {
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        return decoder
    }
}

extension LatencySummary {
    /// From the baseline tool's percentiles, which come without a distribution.
    init(_ percentiles: ZeroMQBaseline.Percentiles, count: Int) {
        self.count = UInt64(count)
        p50 = percentiles.p50
        p90 = percentiles.p90
        p99 = percentiles.p99
        p999 = percentiles.p999
        max = percentiles.max
        mean = percentiles.p50
        cdf = []
    }
}

/// A benchmark step that could not run, with what to do about it.
public struct BenchError: Error, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}
