import Foundation
import TestSupport
import Testing
import ZeroMQ

@Suite("Shutdown never hangs")
struct ShutdownTests {
    @Test func closingUnderLoadWithUndeliverableMessagesReturns() async throws {
        let context = try ZMQContext()
        // The peer never reads, so messages pile up in libzmq's queues and in the bridge's own queue.
        let sink = try ZMQSocket(context: context, type: .pull)
        let endpoint = try sink.bind("tcp://127.0.0.1:*")
        try sink.set(.receiveHighWaterMark(10))
        let socket = try AsyncZMQSocket(context: context, type: .push, sendQueueLimit: 100) {
            try $0.set(.sendHighWaterMark(10))
            try $0.connect(endpoint)
        }
        let producer = Task {
            var sent = 0
            while (try? await socket.send(ZMQMessage(Array(repeating: 1, count: 1024)))) != nil { sent += 1 }
            return sent
        }
        try await Task.sleep(for: .milliseconds(200))
        try await within(.seconds(10), "close with a full send queue") { await socket.close() }
        // The producer was suspended on a full queue; closing must release it with an error.
        let sent = try await within(.seconds(10), "producer released") { await producer.value }
        #expect(sent >= 100)
        sink.close()
        try await within(.seconds(10), "context termination") { context.terminate() }
    }

    @Test func terminatingTheContextWakesABlockedReceiveOnAnotherThread() async throws {
        let context = try ZMQContext()
        let outcome = try await within(.seconds(10), "blocked receive woken") {
            await withCheckedContinuation { (continuation: CheckedContinuation<ZMQError.Kind?, Never>) in
                let thread = Thread {
                    guard let socket = try? ZMQSocket(context: context, type: .pull),
                        (try? socket.bind("inproc://blocked")) != nil
                    else { return continuation.resume(returning: nil) }
                    let kind: ZMQError.Kind?
                    do throws(ZMQError) {
                        _ = try socket.receive()
                        kind = nil
                    } catch {
                        kind = error.kind
                    }
                    socket.close()
                    continuation.resume(returning: kind)
                }
                thread.start()
                // terminate() waits until the blocked thread has closed its socket, which it does only after
                // its receive returned ETERM.
                Thread.sleep(forTimeInterval: 0.1)
                context.terminate()
            }
        }
        #expect(outcome == .contextTerminated)
    }

    @Test func terminatingTheContextEndsAnAsyncSocketsMessages() async throws {
        let context = try ZMQContext()
        let socket = try AsyncZMQSocket(context: context, type: .pull) { try $0.bind("inproc://ended") }
        let reader = Task { () -> Int in
            var count = 0
            for await _ in socket.messages { count += 1 }
            return count
        }
        try await within(.seconds(10), "context termination with an async socket open") { context.terminate() }
        #expect(try await within(.seconds(10), "iteration ended") { await reader.value } == 0)
        await socket.close()
    }

    @Test func closingEndsIterationOfAWaitingConsumer() async throws {
        let context = try ZMQContext()
        let socket = try AsyncZMQSocket(context: context, type: .sub) { try $0.connect("tcp://127.0.0.1:1") }
        let reader = Task {
            var iterator = socket.messages.makeAsyncIterator()
            return await iterator.next()
        }
        try await Task.sleep(for: .milliseconds(50))
        try await within(.seconds(10), "close") { await socket.close() }
        #expect(try await within(.seconds(10), "reader ended") { await reader.value } == nil)
        await #expect { try await socket.send(ZMQMessage([1])) } throws: { ($0 as? ZMQError)?.kind == .socketClosed }
    }
}
