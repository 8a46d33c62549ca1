import Foundation
import Synchronization
import TestSupport
import Testing
import ZeroMQ

@Suite("Async socket bridge")
struct AsyncSocketTests {
    let context: ZMQContext

    init() throws {
        context = try ZMQContext()
    }

    @Test func messagesFlowInOrderBetweenAsyncSockets() async throws {
        let pull = try AsyncZMQSocket(context: context, type: .pull, receiveBufferLimit: 16) {
            try $0.bind("tcp://127.0.0.1:*")
        }
        let endpoint = try await pull.withSocket { try $0.lastEndpoint() }
        let push = try AsyncZMQSocket(context: context, type: .push) { try $0.connect(endpoint) }
        let count = 10_000
        let producer = Task {
            for index in 0..<count {
                try await push.send(ZMQMessage(frames: [Array("seq".utf8), withUnsafeBytes(of: index) { Array($0) }]))
            }
        }
        // The receive buffer (16) is far smaller than the count, so this also exercises pausing and resuming.
        let received = try await within(.seconds(30), "10,000 messages") {
            var numbers: [Int] = []
            for await message in pull.messages {
                numbers.append(message.frames[1].withUnsafeBytes { $0.loadUnaligned(as: Int.self) })
                if numbers.count == count { break }
            }
            return numbers
        }
        try await producer.value
        #expect(received == Array(0..<count))
        await push.close()
        await pull.close()
    }

    @Test func subscriptionsChangeThroughWithSocket() async throws {
        let publisher = try AsyncZMQSocket(context: context, type: .pub) { try $0.bind("inproc://topics") }
        let subscriber = try AsyncZMQSocket(context: context, type: .sub) { try $0.connect("inproc://topics") }
        try await subscriber.withSocket { try $0.set(.subscribe(Array("b".utf8))) }
        // Subscriptions travel to the publisher asynchronously: publish until one arrives.
        let publishing = Task {
            while !Task.isCancelled {
                try await publisher.send(ZMQMessage(strings: ["a", "skip"]))
                try await publisher.send(ZMQMessage(strings: ["b", "keep"]))
                try await Task.sleep(for: .milliseconds(10))
            }
        }
        let message = try await within(.seconds(10), "subscribed message") {
            var iterator = subscriber.messages.makeAsyncIterator()
            return await iterator.next()
        }
        publishing.cancel()
        #expect(message?.strings == ["b", "keep"])
        await subscriber.close()
        await publisher.close()
    }

    @Test func sendSuspendsWhenTheQueueIsFullAndCancellationReleasesIt() async throws {
        // No completed connection and `immediate`: libzmq accepts nothing, so the bridge's own queue fills up.
        let push = try AsyncZMQSocket(context: context, type: .push, sendQueueLimit: 4) {
            try $0.set(.immediate(true))
            try $0.connect("tcp://127.0.0.1:1")
        }
        for _ in 0..<4 { try await push.send(ZMQMessage([0])) }
        let returned = Atomic<Bool>(false)
        let blocked = Task { () -> ZMQError? in
            defer { returned.store(true, ordering: .releasing) }
            do throws(ZMQError) {
                try await push.send(ZMQMessage([1]))
                return nil
            } catch {
                return error
            }
        }
        try await Task.sleep(for: .milliseconds(100))
        let returnedEarly = returned.load(ordering: .acquiring)
        #expect(!returnedEarly, "send returned although the queue was full")
        blocked.cancel()
        let error: ZMQError? = try await within(.seconds(10), "cancelled send") { await blocked.value }
        #expect(error?.code == ECANCELED)
        await push.close()
    }

    @Test func failedRoutesAreCountedNotFatal() async throws {
        let router = try AsyncZMQSocket(context: context, type: .router) {
            try $0.set(.routerMandatory(true))
            try $0.bind("inproc://routes")
        }
        try await router.send(ZMQMessage(strings: ["nobody", "hello"]))
        try await within(.seconds(10), "failed send counted") {
            while router.failedSendCount == 0 { try await Task.sleep(for: .milliseconds(5)) }
        }
        #expect(router.failedSendCount == 1)
        await router.close()
    }

    @Test func withSocketErrorsReachTheCaller() async throws {
        let socket = try AsyncZMQSocket(context: context, type: .pull)
        let error = try await #require(throws: ZMQError.self) {
            try await socket.withSocket { try $0.bind("bogus://x") }
        }
        #expect(error.code == EPROTONOSUPPORT)
        await socket.close()
        await #expect(throws: ZMQError.self) { try await socket.withSocket { try $0.lastEndpoint() } }
    }
}
