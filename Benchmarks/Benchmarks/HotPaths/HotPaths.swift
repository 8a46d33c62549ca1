// The per-message work of Herald's data path, one benchmark per hot path, at 64 B and 16 KiB payloads.
//
// Two views of each path:
// - "<path>": time per message (package-benchmark scales an iteration to 1,000 messages and reports per message);
// - "<path> ×100k allocations": each iteration is 100,000 messages, unscaled, so "Malloc (total)" is the number
//   of allocations for 100,000 messages in the steady state, exactly. The target is 0.
import Benchmark

@_spi(Drivers) import Herald

/// Messages per iteration of the allocation-counting benchmarks.
let messagesPerCount = 100_000

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .throughput, .mallocCountTotal],
        scalingFactor: .kilo,
        maxDuration: .seconds(2),
        maxIterations: 1_000_000
    )
    let counting = Benchmark.Configuration(
        metrics: [.mallocCountTotal, .wallClock], scalingFactor: .one, maxDuration: .seconds(5), maxIterations: 5)

    /// Both views of a loop that takes `count` messages per call, sharing one loop: time per message, and the
    /// allocations of 100,000 messages. `result` is kept from the optimizer, so the work cannot be dropped.
    func register<Loop>(_ name: String, _ loop: Loop, run: @escaping (inout Loop, Int) -> Void, result: @escaping (Loop) -> Int) {
        var loop = loop
        Benchmark(name) { benchmark in
            benchmark.startMeasurement()
            run(&loop, benchmark.scaledIterations.count)
            blackHole(result(loop))
        }
        Benchmark("\(name) ×100k allocations", configuration: counting) { benchmark in
            for _ in benchmark.scaledIterations { run(&loop, messagesPerCount) }
            blackHole(result(loop))
        }
    }

    for size in [64, 16_384] {
        register("encode \(size) B", EncodeLoop(payloadSize: size), run: { $0.run($1) }, result: { _ in 0 })
        register("decode \(size) B", DecodeLoop(payloadSize: size), run: { $0.run($1) }, result: { Int(truncatingIfNeeded: $0.checksum) })
        register("sequence \(size) B", SequenceLoop(payloadSize: size), run: { $0.run($1) }, result: \.delivered)
        // `herald subscribe`'s printing task: plain lines, and the JSON lines the benchmarks read, with and
        // without the payload.
        for (style, json, payload) in [("plain", false, MessageLineEncoder.PayloadStyle.none), ("json", true, .none), ("json with payload", true, .auto)] {
            register(
                "print \(size) B \(style)", PrintLoop(payloadSize: size, json: json, payload: payload), run: { $0.run($1) },
                result: \.printed)
        }
        // One message per frame to 1 and 4 subscribers, and a full-speed publisher's batches (64 KiB at most) to
        // 1: the broker's work per message when it keeps and forwards one frame per batch.
        // The last: batches to a subscriber that takes none (an older one), which gets each message in a frame of
        // its own, made anew: one allocation per message, by design, and no more work per message for a large batch
        // than for a small one.
        let perBatch = max(1, min(256, (64 << 10) / (size + 64)))
        for (subscribers, perFrame, takesBatches) in [(1, 1, true), (4, 1, true), (1, perBatch, true), (1, perBatch, false)] {
            let name = perFrame == 1
                ? "forward \(size) B to \(subscribers) subscribers"
                : "forward \(size) B in batches of \(perFrame) to \(subscribers) subscriber"
                    + (takesBatches ? "" : " taking none")
            let limit = takesBatches ? 1 << 20 : nil
            Benchmark(name) { benchmark in
                var forward = try ForwardLoop(
                    payloadSize: size, subscribers: subscribers, messagesPerFrame: perFrame, subscriberBatchBytes: limit)
                benchmark.startMeasurement()
                forward.run(benchmark.scaledIterations.count)
                benchmark.stopMeasurement()
                blackHole(forward.delivered)
            }
            Benchmark("\(name) ×100k allocations", configuration: counting) { benchmark in
                var forward = try ForwardLoop(
                    payloadSize: size, subscribers: subscribers, messagesPerFrame: perFrame, subscriberBatchBytes: limit)
                benchmark.startMeasurement()
                for _ in benchmark.scaledIterations { forward.run(messagesPerCount) }
                benchmark.stopMeasurement()
                blackHole(forward.delivered)
            }
        }
    }
}
