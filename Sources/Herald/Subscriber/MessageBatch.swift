import DequeModule
import Synchronization

/// A message as a subscriber receives it.
public struct ReceivedMessage: Sendable, Hashable {
    /// The topic it was published on.
    public var topic: Topic
    /// Its publisher, sequence number and send time.
    public var header: MessageHeader
    /// The message body: a slice of the batch it arrived in, so handing it on copies nothing.
    public var payload: ArraySlice<UInt8>
    /// When it arrived, in nanoseconds since the Unix epoch: when the subscriber's socket thread took the frame
    /// that carried it off the socket (the messages of one batch frame share it).
    public var receivedAt: UInt64

    /// Creates a message.
    /// - Parameters:
    ///   - topic: the topic.
    ///   - header: publisher, sequence number and send time.
    ///   - payload: the body.
    ///   - receivedAt: when it arrived, in nanoseconds since the Unix epoch.
    public init(topic: Topic, header: MessageHeader, payload: ArraySlice<UInt8>, receivedAt: UInt64) {
        self.topic = topic
        self.header = header
        self.payload = payload
        self.receivedAt = receivedAt
    }

    /// End-to-end latency from the publisher's send to this arrival (publisher and subscriber clocks must agree
    /// when they run on different hosts). Total for any send time a publisher claims: a difference beyond
    /// `Int64`'s range saturates.
    public var latency: Duration {
        .nanoseconds(Self.nanoseconds(from: header.sentAt, to: receivedAt))
    }

    /// `to - from` in nanoseconds, saturated to `Int64`'s range: a send time comes from the network, so it
    /// may be anything.
    static func nanoseconds(from start: UInt64, to end: UInt64) -> Int64 {
        if end >= start {
            let difference = end - start
            return difference > UInt64(Int64.max) ? .max : Int64(difference)
        }
        let difference = start - end
        return difference > UInt64(Int64.max) ? .min : -Int64(difference)
    }
}

/// Messages delivered together: what one wake-up of the application gets.
///
/// The payloads share one buffer, so a batch costs two allocations however many messages it holds, and its
/// messages' payloads are slices of that buffer.
public struct MessageBatch: RandomAccessCollection, Sendable {
    struct Entry: Sendable {
        var topic: Int32
        var payloadStart: Int32
        var payloadCount: Int32
        var header: MessageHeader
        var receivedAt: UInt64
    }

    /// The topics its messages name by number; those a pattern matched grow it.
    var topics: [Topic]
    var storage: [UInt8] = []
    var entries: [Entry] = []

    init(topics: [Topic], capacity: Int = 0) {
        self.topics = topics
        storage.reserveCapacity(capacity)
    }

    /// An empty batch with room for as much as `previous` held, so that filling it allocates twice, not once per
    /// doubling.
    init(following previous: MessageBatch) {
        topics = previous.topics
        storage.reserveCapacity(previous.storage.count)
        entries.reserveCapacity(previous.entries.count)
    }

    /// The position of the first message.
    public var startIndex: Int { 0 }
    /// One past the position of the last message.
    public var endIndex: Int { entries.count }

    /// The message at `position`.
    public subscript(position: Int) -> ReceivedMessage {
        let entry = entries[position]
        let start = Int(entry.payloadStart)
        return ReceivedMessage(
            topic: topics[Int(entry.topic)], header: entry.header,
            payload: storage[start..<(start + Int(entry.payloadCount))], receivedAt: entry.receivedAt)
    }

    /// The payload bytes the batch holds.
    public var payloadBytes: Int { storage.count }

    /// What the batch costs in memory, as queues count it: its payloads and one entry per message, so that a
    /// stream of empty payloads is bounded too.
    var footprint: Int { storage.count + entries.count * MemoryLayout<Entry>.stride }

    mutating func append(topic: Int, header: MessageHeader, payload: UnsafeRawBufferPointer, receivedAt: UInt64) {
        let start = storage.count
        storage.append(contentsOf: payload)
        entries.append(
            Entry(
                topic: Int32(truncatingIfNeeded: topic), payloadStart: Int32(truncatingIfNeeded: start),
                payloadCount: Int32(truncatingIfNeeded: payload.count), header: header, receivedAt: receivedAt))
    }
}

/// The hand-over from a subscriber's socket thread to the application: batches, bounded in bytes, with one
/// wake-up per batch on either side.
///
/// When the application falls behind and the bytes reach the limit, the socket thread stops reading, so its
/// acknowledgements stop and the leader stops sending: the back-pressure reaches the publishers.
final class DeliveryQueue: Sendable {
    private struct State {
        var batches = Deque<MessageBatch>()
        var bytes = 0
        var consumer: UnsafeContinuation<MessageBatch?, Never>?
        var finished = false
        /// A batch the consumer is done with, for the producer to empty and fill again: one at most, and no
        /// larger than the batches the producer fills, which its batch limits bound.
        var spare: MessageBatch?
        /// The producer found the queue full and waits to be told there is room.
        var producerWaiting = false
    }

    private let state = Mutex(State())
    /// Bytes queued at most, payloads and entries (a batch is accepted whole when the queue is below it).
    let limit: Int
    private let onRoom: @Sendable () -> Void

    /// Creates a queue.
    /// - Parameters:
    ///   - limit: bytes queued at most, payloads and entries.
    ///   - onRoom: called, on the consumer's thread, when a full queue has room again.
    init(limit: Int, onRoom: @escaping @Sendable () -> Void) {
        self.limit = max(1, limit)
        self.onRoom = onRoom
    }

    /// Whether a batch can be pushed now; when not, the producer is told through `onRoom` once there is room.
    var hasRoom: Bool {
        state.withLock { state in
            if state.bytes < limit { return true }
            state.producerWaiting = true
            return false
        }
    }

    /// Hands a batch on.
    func push(_ batch: MessageBatch) {
        guard !batch.isEmpty else { return }
        let consumer = state.withLock { state -> UnsafeContinuation<MessageBatch?, Never>? in
            guard !state.finished else { return nil }
            if let consumer = state.consumer {
                state.consumer = nil
                return consumer
            }
            state.batches.append(batch)
            state.bytes += batch.footprint
            return nil
        }
        consumer?.resume(returning: batch)
    }

    /// Ends the queue: the consumer gets what is queued, then `nil`.
    func finish() {
        let consumer = state.withLock { state in
            state.finished = true
            defer { state.consumer = nil }
            return state.batches.isEmpty ? state.consumer : nil
        }
        consumer?.resume(returning: nil)
    }

    /// An empty batch to fill after `previous`: the one the consumer gave back, if any. At a paced rate each
    /// message is a batch of its own, and a new batch would cost two allocations per message. A batch still
    /// shared (the application kept it or one of its messages) is copied on the first write, as any array.
    func emptyBatch(following previous: MessageBatch) -> MessageBatch {
        guard var spare = state.withLock({ $0.spare.take() }) else { return MessageBatch(following: previous) }
        spare.storage.removeAll(keepingCapacity: true)
        spare.entries.removeAll(keepingCapacity: true)
        spare.topics = previous.topics
        return spare
    }

    /// The next batch; `nil` once finished and drained, or when the task is cancelled. One consumer at a time.
    /// - Parameter used: the batch this consumer had before, which it no longer needs, for ``emptyBatch(following:)``.
    func next(recycling used: consuming MessageBatch? = nil) async -> MessageBatch? {
        // Moved in and out again, so that nothing here still shares the batch with the producer while this waits.
        var used = consume used
        if used != nil { state.withLock { if $0.spare == nil { $0.spare = used.take() } } }
        used = nil
        return await withTaskCancellationHandler {
            // Not a checked continuation, which allocates: at a paced rate the consumer waits once per message.
            // Each one is resumed once: here, by the `push` or `finish` that takes it out of the state, or by the
            // cancellation handler that does.
            await withUnsafeContinuation { (continuation: UnsafeContinuation<MessageBatch?, Never>) in
                enum Outcome { case batch(MessageBatch, wake: Bool), end, wait(wake: Bool) }
                let outcome = state.withLock { state -> Outcome in
                    if let batch = state.batches.popFirst() {
                        state.bytes -= batch.footprint
                        let wake = state.producerWaiting && state.bytes < limit
                        if wake { state.producerWaiting = false }
                        return .batch(batch, wake: wake)
                    }
                    if state.finished || Task.isCancelled { return .end }
                    state.consumer = continuation
                    // Empty now, so a producer that found it full may go on.
                    defer { state.producerWaiting = false }
                    return .wait(wake: state.producerWaiting)
                }
                switch outcome {
                case .batch(let batch, let wake):
                    if wake { onRoom() }
                    continuation.resume(returning: batch)
                case .end:
                    continuation.resume(returning: nil)
                case .wait(let wake):
                    if wake { onRoom() }
                }
            }
        } onCancel: {
            let consumer = state.withLock { state in
                defer { state.consumer = nil }
                return state.consumer
            }
            consumer?.resume(returning: nil)
        }
    }
}
