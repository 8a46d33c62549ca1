import Foundation
import Histogram
import Synchronization
import ZeroMQ

/// Raw ZeroMQ over loopback TCP through the project's own `ZeroMQ` module: the floor Herald is measured against.
enum RawZeroMQBaseline {
    /// One-hop PUSH/PULL throughput of one message size.
    struct Throughput: Codable, Sendable {
        var size: Int
        var messages: Int
        var seconds: Double
        var messagesPerSecond: Double
        var megabytesPerSecond: Double
    }

    /// REQ/REP round trips of one message size; latency is reported one way (RTT / 2).
    struct Latency: Codable, Sendable {
        var size: Int
        var roundTrips: Int
        var oneWay: LatencySummary
    }

    /// Bytes to push per throughput point: enough for a stable rate, few enough to take about a second.
    static let throughputBytes = 256 << 20
    /// Messages per throughput point, whatever the size.
    static let throughputMessageRange = 2_000...1_000_000
    /// Round trips per latency point, after `latencyWarmup` unrecorded ones.
    static let latencyRoundTrips = 20_000
    static let latencyWarmup = 1_000

    /// PUSH on one thread, PULL on another, one TCP connection on loopback; timed from the first to the last
    /// message the PULL side receives.
    static func pushPull(size: Int) async throws -> Throughput {
        let count = min(max(throughputBytes / max(size, 1), throughputMessageRange.lowerBound), throughputMessageRange.upperBound)
        let context = try ZMQContext()
        defer { context.terminate() }
        let pull = UncheckedSendable(try ZMQSocket(context: context, type: .pull))
        let endpoint = try pull.value.bind("tcp://127.0.0.1:*")
        let sender = onThread {
            let push = try ZMQSocket(context: context, type: .push)
            defer { push.close() }
            try push.connect(endpoint)
            let message = ZMQMessage([UInt8](repeating: 0x61, count: size))
            for _ in 0..<count { try push.send(message) }
        }
        let seconds = try await onThread {
            let pull = pull.value
            defer { pull.close() }
            _ = try pull.receive()
            let start = ContinuousClock.now
            for _ in 1..<count { _ = try pull.receive() }
            return (ContinuousClock.now - start).seconds
        }.value
        try await sender.value
        let rate = Double(count - 1) / seconds
        return Throughput(
            size: size, messages: count, seconds: seconds, messagesPerSecond: rate,
            megabytesPerSecond: rate * Double(size) / 1e6)
    }

    /// REQ/REP ping-pong on loopback TCP; each round trip's half is recorded in nanoseconds.
    static func requestReply(size: Int) async throws -> Latency {
        let context = try ZMQContext()
        defer { context.terminate() }
        let reply = UncheckedSendable(try ZMQSocket(context: context, type: .rep))
        let endpoint = try reply.value.bind("tcp://127.0.0.1:*")
        let total = latencyWarmup + latencyRoundTrips
        let echo = onThread {
            let reply = reply.value
            defer { reply.close() }
            for _ in 0..<total { try reply.send(try reply.receive()) }
        }
        let histogram = try await onThread {
            let request = try ZMQSocket(context: context, type: .req)
            defer { request.close() }
            try request.connect(endpoint)
            let message = ZMQMessage([UInt8](repeating: 0x61, count: size))
            var histogram = Histogram<UInt64>(highestTrackableValue: 60_000_000_000, numberOfSignificantValueDigits: .three)
            for index in 0..<total {
                let start = ContinuousClock.now
                try request.send(message)
                _ = try request.receive()
                let elapsed = ContinuousClock.now - start
                if index >= latencyWarmup {
                    let nanoseconds = elapsed.components.seconds * 1_000_000_000 + elapsed.components.attoseconds / 1_000_000_000
                    _ = histogram.record(UInt64(max(1, nanoseconds / 2)))
                }
            }
            return histogram
        }.value
        try await echo.value
        return Latency(size: size, roundTrips: latencyRoundTrips, oneWay: LatencySummary(nanoseconds: histogram))
    }
}

/// A body run on its own thread (blocking ZeroMQ calls must not hold a Swift concurrency thread).
struct ThreadTask<Value: Sendable>: Sendable {
    private let box: ResultBox<Value>
    fileprivate init(box: ResultBox<Value>) { self.box = box }
    var value: Value {
        get async throws { try await box.wait() }
    }
}

private final class ResultBox<Value: Sendable>: Sendable {
    private let state = Mutex<(result: Result<Value, any Error>?, waiter: CheckedContinuation<Value, any Error>?)>(
        (nil, nil))

    func finish(_ result: Result<Value, any Error>) {
        let waiter = state.withLock { state -> CheckedContinuation<Value, any Error>? in
            state.result = result
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume(with: result)
    }

    func wait() async throws -> Value {
        try await withCheckedThrowingContinuation { continuation in
            let ready = state.withLock { state -> Result<Value, any Error>? in
                if state.result == nil { state.waiter = continuation }
                return state.result
            }
            if let ready { continuation.resume(with: ready) }
        }
    }
}

/// Starts `body` on a new thread at once.
func onThread<Value: Sendable>(_ body: @escaping @Sendable () throws -> Value) -> ThreadTask<Value> {
    let box = ResultBox<Value>()
    Thread.detachNewThread { box.finish(Result { try body() }) }
    return ThreadTask(box: box)
}

/// Hands a socket made on one thread to the one thread that uses it from then on.
struct UncheckedSendable<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}
