import Histogram
import Testing

@testable import HeraldBench

@Suite("Latency rounds")
struct LatencyRoundsTests {
    /// A summary of `values` microseconds, as a latency run makes one.
    private func summary(_ values: [UInt64]) -> LatencySummary {
        var histogram = Histogram<UInt64>(highestTrackableValue: 3_600_000_000, numberOfSignificantValueDigits: .three)
        for value in values { _ = histogram.record(value) }
        return LatencySummary(microseconds: histogram)
    }

    @Test func theMedianIsTheMiddleValueOrTheMeanOfTheTwoMiddleOnes() {
        #expect(LatencySummary.median([]) == 0)
        #expect(LatencySummary.median([7]) == 7)
        #expect(LatencySummary.median([300, 100, 200]) == 200)
        #expect(LatencySummary.median([400, 100, 300, 200]) == 250)
    }

    @Test func oneSlowedRoundMovesNoPercentileButTheMaximum() {
        let quiet = summary(Array(repeating: 100, count: 90) + Array(repeating: 400, count: 10))
        let alsoQuiet = summary(Array(repeating: 110, count: 90) + Array(repeating: 500, count: 10))
        // A round the host slowed tenfold.
        let slowed = summary(Array(repeating: 1000, count: 90) + Array(repeating: 9000, count: 10))
        let combined = LatencySummary(medianOf: [quiet, slowed, alsoQuiet], cdf: [[50, 1]])

        #expect(combined.count == 300)
        #expect(combined.p50 == 110)
        #expect(combined.p99 == 500)
        #expect(combined.max == slowed.max)
        #expect(combined.cdf == [[50, 1]])
    }

    @Test func theSummaryShowsEveryRoundsPairedRatiosBesideTheMedians() {
        var results = BenchResults(startedAt: "now", machine: .current(zeroMQ: "4.3.4"), settings: [:])
        // Round 2 is the one the host slowed: a quarter of the CPU time went elsewhere while it ran.
        for (round, raw, broker, steal) in [(1, 100.0, 240.0, 0.4), (2, 400.0, 1200.0, 25.2), (3, 120.0, 270.0, 1.0)] {
            for (kind, p50) in [("raw", raw), ("broker", broker)] {
                var latency = summary([UInt64(p50)])
                latency.p50 = p50
                results.latencyRounds.append(
                    LatencyRoundFigure(
                        round: round, kind: kind, rate: 1000, size: 64, stealPercent: kind == "raw" ? steal : steal + 1,
                        latency: latency))
            }
        }
        let rounds = results.latencyRounds
        results.latency = [
            LatencyPoint(
                mode: "broker", rate: 1000, size: 64, sent: 3, measured: 3, missing: 0,
                latency: LatencySummary(medianOf: rounds.filter { $0.kind == "broker" }.map(\.latency)))
        ]
        results.baselineLatency = [
            ZeroMQBaseline.Latency(
                size: 64, rate: 1000, sentPerSecond: 1000, count: 3,
                oneWay: LatencySummary(medianOf: rounds.filter { $0.kind == "raw" }.map(\.latency)))
        ]

        let lines = results.summary().split(separator: "\n").map { $0.split(separator: " ").joined(separator: " ") }
        #expect(lines.contains { $0.hasPrefix("-- end-to-end latency") && $0.contains("the median of 3 rounds") })
        // The medians, 270 against 120 µs, and their ratio.
        #expect(lines.contains { $0.hasPrefix("broker 1000 64 3 270 ") && $0.contains(" 2.25x ") })
        // Each round's pair and its own ratio: the slowed round's 3.00x is there to read, not hidden in the median,
        // and so is the steal time of each of its measurements (raw/chain/broker/direct).
        #expect(lines.contains("1 1000 64 100 - 240 - 2.40x - - 0/-/1/-"))
        #expect(lines.contains("2 1000 64 400 - 1200 - 3.00x - - 25/-/26/-"))
        #expect(lines.contains("3 1000 64 120 - 270 - 2.25x - - 1/-/2/-"))
    }
}
