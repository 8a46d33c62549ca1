import Testing

@_spi(Drivers) @testable import Herald

/// The micro-benchmarks' loops must do the work they are named for: a forward loop whose frames the broker
/// refused as duplicates would time the refusal, not the forwarding.
@Suite("Benchmark loops")
struct BenchmarkLoopTests {
    @Test(arguments: [(64, 1, 1), (64, 4, 1), (64, 1, 256), (16_384, 1, 3)])
    func theForwardLoopForwardsEveryFrameItIsGiven(size: Int, subscribers: Int, perFrame: Int) throws {
        var loop = try ForwardLoop(payloadSize: size, subscribers: subscribers, messagesPerFrame: perFrame)
        let before = loop.delivered
        // The loop's warm-up went through its frames more than once already: these are numbered anew.
        let frames = 1_000
        loop.run(frames * perFrame)
        #expect(loop.delivered - before == frames * subscribers)
    }
}
