import DequeModule
import Synchronization

/// A bounded first-in first-out hand-over between async tasks: ``push(_:)`` suspends while the buffer is full,
/// so a slow consumer slows its producers instead of growing memory.
final class AsyncBuffer<Element: Sendable>: Sendable {
    private struct State {
        var elements = Deque<Element>()
        var consumer: CheckedContinuation<Element?, Never>?
        var producers: [CheckedContinuation<Void, Never>] = []
        var finished = false
    }

    private enum PushOutcome { case handed(CheckedContinuation<Element?, Never>), queued, full, finished }
    private enum PopOutcome { case element(Element, [CheckedContinuation<Void, Never>]), end, wait }

    private let state = Mutex(State())
    let limit: Int

    init(limit: Int) { self.limit = max(1, limit) }

    /// Adds an element, waiting while the buffer is full.
    /// - Returns: `false` when the buffer was finished, or the task cancelled while waiting, and the element
    ///   dropped.
    @discardableResult
    func push(_ element: Element) async -> Bool {
        while true {
            // A producer stuck behind a consumer that stopped reading must still be able to shut down.
            if Task.isCancelled { return false }
            let outcome = state.withLock { state -> PushOutcome in
                if state.finished { return .finished }
                if let consumer = state.consumer {
                    state.consumer = nil
                    return .handed(consumer)
                }
                guard state.elements.count < limit else { return .full }
                state.elements.append(element)
                return .queued
            }
            switch outcome {
            case .handed(let consumer):
                consumer.resume(returning: element)
                return true
            case .queued:
                return true
            case .finished:
                return false
            case .full:
                await withTaskCancellationHandler {
                    await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                        let resumeNow = state.withLock { state -> Bool in
                            if state.finished || Task.isCancelled || state.elements.count < limit { return true }
                            state.producers.append(continuation)
                            return false
                        }
                        if resumeNow { continuation.resume() }
                    }
                } onCancel: {
                    // Waking every waiting producer is simpler than finding this one; the others re-check.
                    let producers = state.withLock { state in
                        defer { state.producers = [] }
                        return state.producers
                    }
                    for producer in producers { producer.resume() }
                }
            }
        }
    }

    /// Ends the buffer: the consumer gets what is queued, then `nil`; producers are released.
    func finish() {
        let (consumer, producers) = state.withLock { state in
            state.finished = true
            defer {
                state.consumer = nil
                state.producers = []
            }
            return (state.elements.isEmpty ? state.consumer : nil, state.producers)
        }
        consumer?.resume(returning: nil)
        for producer in producers { producer.resume() }
    }

    /// The next element; `nil` once finished and drained, or when the task is cancelled. One consumer at a time.
    func next() async -> Element? {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Element?, Never>) in
                let outcome = state.withLock { state -> PopOutcome in
                    if let element = state.elements.popFirst() {
                        defer { state.producers = [] }
                        return .element(element, state.producers)
                    }
                    if state.finished || Task.isCancelled { return .end }
                    state.consumer = continuation
                    return .wait
                }
                switch outcome {
                case .element(let element, let producers):
                    for producer in producers { producer.resume() }
                    continuation.resume(returning: element)
                case .end:
                    continuation.resume(returning: nil)
                case .wait:
                    break
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

    /// The buffer as an async sequence, for its one consumer.
    var elements: Elements { Elements(buffer: self) }

    struct Elements: AsyncSequence, Sendable {
        typealias Failure = Never
        let buffer: AsyncBuffer

        func makeAsyncIterator() -> Iterator { Iterator(buffer: buffer) }

        struct Iterator: AsyncIteratorProtocol {
            let buffer: AsyncBuffer
            mutating func next() async -> Element? { await buffer.next() }
        }
    }
}
