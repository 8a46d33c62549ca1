import Testing

@testable import HeraldBench

@Suite("Machine load")
struct MachineLoadTests {
    @Test func theAggregateLineSplitsIntoBusyIdleAndSteal() throws {
        let text = """
            cpu  4705 356 584 3699 23 23 7 12 40 2
            cpu0 2352 178 292 1849 11 11 3 6 20 1
            intr 1462898 0 0
            """
        let times = try #require(CPUTimes(procStat: text))
        // Guest time (the last two) is already inside user and nice.
        #expect(times == CPUTimes(busy: 4705 + 356 + 584 + 23 + 7, idle: 3699 + 23, steal: 12))
        #expect(times.total == 5675 + 3722 + 12)
    }

    @Test(arguments: [
        "",
        "cpu0 4705 356 584 3699 23 23 7 12",
        "cpu  4705 356 584 3699 23 23 7",
        "cpu  4705 356 584 3699 23 23 7 x12",
        "cpu  4705 -356 584 3699 23 23 7 12",
        "cpu  18446744073709551615 1 0 0 0 0 0 0",
        "cpu  9223372036854775808 0 0 9223372036854775808 0 0 0 0",
    ])
    func anythingElseIsNoReadingRatherThanATrap(text: String) {
        #expect(CPUTimes(procStat: text) == nil)
    }

    @Test func aReadingIsTheShareOfAllCPUTimeInTheInterval() {
        let start = CPUTimes(busy: 1_000, idle: 5_000, steal: 100)
        let end = CPUTimes(busy: 1_600, idle: 5_300, steal: 200)
        let reading = LoadReading(scenario: "latency", seconds: 5, from: start, to: end, loadAverageAtStart: 0.5)
        #expect(reading.stealPercent == 10)
        #expect(reading.busyPercent == 60)
        #expect(reading.loadAverageAtStart == 0.5)
    }

    @Test func countersThatWentBackwardsGiveZeroNotATrap() {
        let start = CPUTimes(busy: 1_600, idle: 5_300, steal: 200)
        let end = CPUTimes(busy: 1_000, idle: 5_000, steal: 100)
        let reading = LoadReading(scenario: "run", seconds: 1, from: start, to: end, loadAverageAtStart: nil)
        #expect(reading.stealPercent == 0)
        #expect(reading.busyPercent == 0)
    }

    @Test func oneMeasurementGetsItsOwnStealShareBesideItsResult() async throws {
        let (turns, steal) = await measuringSteal { () async -> UInt64 in
            var spin: UInt64 = 0
            let until = ContinuousClock.now.advanced(by: .milliseconds(20))
            while ContinuousClock.now < until { spin &+= 1 }
            return spin
        }
        #expect(turns > 0)
        let share = try #require(steal, "this Linux machine has /proc/stat")
        #expect((0...100).contains(share))
    }

    @Test func thisMachinesCountersAdvanceAndTheRecorderNamesEachPart() throws {
        let first = try #require(CPUTimes.current(), "this Linux machine has /proc/stat")
        var recorder = LoadRecorder()
        recorder.start("baseline")
        var spin: UInt64 = 0
        let until = ContinuousClock.now.advanced(by: .milliseconds(50))
        while ContinuousClock.now < until { spin &+= 1 }
        recorder.start("latency")
        let readings = recorder.finish()
        let last = try #require(CPUTimes.current())
        #expect(last.total > first.total)
        #expect(last.busy > first.busy, "50 ms of spinning (\(spin) turns) is busy time")
        #expect(readings.map(\.scenario) == ["baseline", "latency", "run"])
        #expect(readings.allSatisfy { (0...100).contains($0.stealPercent) && (0...100).contains($0.busyPercent) })
        #expect(readings[0].seconds >= 0.05)
        #expect(currentLoadAverage() != nil)
    }
}
