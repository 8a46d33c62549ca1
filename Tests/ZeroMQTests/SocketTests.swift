import Foundation
import Testing
import ZeroMQ

@Suite("Synchronous sockets")
struct SocketTests {
    let context: ZMQContext

    init() throws {
        context = try ZMQContext()
    }

    @Test func multipartMessagesCrossInprocIntact() throws {
        let pull = try ZMQSocket(context: context, type: .pull)
        try pull.bind("inproc://multipart")
        let push = try ZMQSocket(context: context, type: .push)
        try push.connect("inproc://multipart")
        let sent = ZMQMessage([1, 2, 3], [], Array(repeating: 7, count: 100_000))
        try push.send(sent)
        #expect(try receive(pull) == sent)
    }

    @Test func pubSubDeliversOnlySubscribedTopicsOverTCP() throws {
        let publisher = try ZMQSocket(context: context, type: .pub)
        let endpoint = try publisher.bind("tcp://127.0.0.1:*")
        let subscriber = try ZMQSocket(context: context, type: .sub)
        try subscriber.set(.subscribe(Array("weather".utf8)))
        try subscriber.connect(endpoint)

        // A SUB socket misses what is published before its subscription reaches the publisher, so publish
        // until the first message arrives, with an unsubscribed topic interleaved each time.
        try subscriber.set(.receiveTimeout(.milliseconds(50)))
        var first: ZMQMessage?
        for _ in 0..<200 where first == nil {
            try publisher.send(ZMQMessage(strings: ["sports", "goal"]))
            try publisher.send(ZMQMessage(strings: ["weather", "sunny"]))
            first = try? subscriber.receive()
        }
        #expect(first?.strings == ["weather", "sunny"])

        try publisher.send(ZMQMessage(strings: ["sports", "goal"]))
        try publisher.send(ZMQMessage(strings: ["weatherX", "prefix match"]))
        try publisher.send(ZMQMessage(strings: ["weather", "rain"]))
        var received: [[String]] = []
        while let message = try? receive(subscriber, timeout: .milliseconds(300)) {
            received.append(message.strings)
        }
        // ZeroMQ filters by prefix: "weatherX" passes its filter; exact topic matching is Herald's job.
        #expect(!received.contains(["sports", "goal"]))
        #expect(received.suffix(2) == [["weatherX", "prefix match"], ["weather", "rain"]])
    }

    @Test func bindingToPortZeroReportsTheActualPort() throws {
        let socket = try ZMQSocket(context: context, type: .router)
        let endpoint = try socket.bind("tcp://127.0.0.1:0")
        let port = try #require(endpoint.split(separator: ":").last.flatMap { Int($0) })
        #expect(port > 0)
        #expect(try socket.lastEndpoint() == endpoint)
    }

    @Test func routerAndDealerExchangeWithRoutingIDs() throws {
        let router = try ZMQSocket(context: context, type: .router)
        let endpoint = try router.bind("tcp://127.0.0.1:*")
        let dealer = try ZMQSocket(context: context, type: .dealer)
        try dealer.set(.routingID(Array("client-1".utf8)))
        try dealer.connect(endpoint)
        try dealer.send(ZMQMessage(strings: ["hello"]))
        let request = try receive(router)
        #expect(request.strings == ["client-1", "hello"])
        try router.send(ZMQMessage(frames: [request.frames[0], Array("welcome".utf8)]))
        #expect(try receive(dealer).strings == ["welcome"])
    }

    @Test func requestReplyRoundTrip() throws {
        let rep = try ZMQSocket(context: context, type: .rep)
        let endpoint = try rep.bind("tcp://127.0.0.1:*")
        let req = try ZMQSocket(context: context, type: .req)
        try req.connect(endpoint)
        try req.send(ZMQMessage(strings: ["ping"]))
        #expect(try receive(rep).strings == ["ping"])
        try rep.send(ZMQMessage(strings: ["pong"]))
        #expect(try receive(req).strings == ["pong"])
    }

    @Test func xpubVerboseReportsEverySubscription() throws {
        let xpub = try ZMQSocket(context: context, type: .xpub)
        try xpub.set(.xpubVerbose(true))
        let endpoint = try xpub.bind("tcp://127.0.0.1:*")
        let first = try ZMQSocket(context: context, type: .sub)
        try first.set(.subscribe(Array("t".utf8)))
        try first.connect(endpoint)
        let second = try ZMQSocket(context: context, type: .sub)
        try second.set(.subscribe(Array("t".utf8)))
        try second.connect(endpoint)
        // A subscription message is a 1 byte (subscribe) followed by the prefix; without verbose mode the
        // second, duplicate subscription would not be reported.
        #expect(try receive(xpub).frames == [[1] + Array("t".utf8)])
        #expect(try receive(xpub).frames == [[1] + Array("t".utf8)])
    }

    @Test func xsubForwardsSubscriptionsAsMessages() throws {
        let pub = try ZMQSocket(context: context, type: .pub)
        let endpoint = try pub.bind("tcp://127.0.0.1:*")
        let xsub = try ZMQSocket(context: context, type: .xsub)
        try xsub.connect(endpoint)
        try xsub.send(ZMQMessage([1] + Array("news".utf8)))
        try xsub.set(.receiveTimeout(.milliseconds(50)))
        var received: ZMQMessage?
        for _ in 0..<200 where received == nil {
            try pub.send(ZMQMessage(strings: ["news", "x"]))
            received = try? xsub.receive()
        }
        #expect(received?.strings == ["news", "x"])
    }

    @Test func receivingWithoutWaitingOnAnEmptySocketWouldBlock() throws {
        let pull = try ZMQSocket(context: context, type: .pull)
        try pull.bind("inproc://empty")
        #expect { try pull.receive(dontWait: true) } throws: { ($0 as? ZMQError)?.kind == .wouldBlock }
    }

    @Test func bindingAnAddressInUseFailsWithItsErrno() throws {
        let first = try ZMQSocket(context: context, type: .pull)
        let endpoint = try first.bind("tcp://127.0.0.1:*")
        let second = try ZMQSocket(context: context, type: .pull)
        let error = try #require(throws: ZMQError.self) { try second.bind(endpoint) }
        #expect(error.code == EADDRINUSE)
        #expect(error.description.contains("choose another port"))
    }

    @Test func malformedEndpointIsRejected() throws {
        let socket = try ZMQSocket(context: context, type: .push)
        let error = try #require(throws: ZMQError.self) { try socket.connect("tcp://no-port-here") }
        #expect(error.kind == .other)
        #expect(!error.message.isEmpty)
    }

    @Test func usingAClosedSocketFailsInsteadOfCrashing() throws {
        let socket = try ZMQSocket(context: context, type: .push)
        socket.close()
        socket.close()
        #expect { try socket.send(ZMQMessage([1])) } throws: { ($0 as? ZMQError)?.kind == .socketClosed }
    }

    @Test func everyOptionHerladUsesIsAccepted() throws {
        let sub = try ZMQSocket(context: context, type: .sub)
        let options: [ZMQSocketOption] = [
            .linger(.milliseconds(100)), .linger(nil), .sendHighWaterMark(500), .receiveHighWaterMark(500),
            .heartbeatInterval(.seconds(1)), .heartbeatTimeout(.seconds(3)), .heartbeatTimeToLive(.seconds(6)),
            .tcpKeepalive(true), .tcpKeepaliveIdle(.seconds(30)), .tcpKeepaliveInterval(.seconds(5)),
            .tcpKeepaliveCount(3), .subscribe(Array("a".utf8)), .unsubscribe(Array("a".utf8)),
            .immediate(true), .reconnectInterval(.milliseconds(100)), .reconnectIntervalMax(.seconds(2)),
            .sendTimeout(.seconds(1)), .receiveTimeout(nil), .routingID(Array("me".utf8)),
        ]
        for option in options { try sub.set(option) }
        let xpub = try ZMQSocket(context: context, type: .xpub)
        try xpub.set(.xpubVerbose(true))
        try xpub.set(.xpubWelcomeMessage(Array("hi".utf8)))
        let router = try ZMQSocket(context: context, type: .router)
        try router.set(.routerMandatory(true))
    }

    @Test func anOptionOnTheWrongSocketTypeIsRefused() throws {
        let push = try ZMQSocket(context: context, type: .push)
        let error = try #require(throws: ZMQError.self) { try push.set(.subscribe([])) }
        #expect(error.code == EINVAL)
    }

    @Test func curveEncryptedRoundTrip() throws {
        try #require(ZMQContext.has("curve"), "libzmq here lacks CURVE; Debian's libzmq5 has it")
        let server = try ZMQCurveKeyPair.generate()
        let client = try ZMQCurveKeyPair.generate()
        #expect(server.publicKey.count == 40 && server.secretKey.count == 40)
        let pull = try ZMQSocket(context: context, type: .pull)
        try pull.set(.curveServer(true))
        try pull.set(.curveSecretKey(server.secretKey))
        let endpoint = try pull.bind("tcp://127.0.0.1:*")
        let push = try ZMQSocket(context: context, type: .push)
        try push.set(.curveServerKey(server.publicKey))
        try push.set(.curvePublicKey(client.publicKey))
        try push.set(.curveSecretKey(client.secretKey))
        try push.connect(endpoint)
        try push.send(ZMQMessage(strings: ["secret"]))
        #expect(try receive(pull).strings == ["secret"])
    }

    @Test func pollerReportsReadinessOfSocketsOnly() throws {
        let pull = try ZMQSocket(context: context, type: .pull)
        try pull.bind("inproc://poll")
        let push = try ZMQSocket(context: context, type: .push)
        try push.connect("inproc://poll")
        let poller = ZMQPoller()
        let entry = poller.register(pull, for: .readable)
        #expect(try poller.poll(timeout: .zero) == 0)
        try push.send(ZMQMessage([42]))
        #expect(try poller.poll(timeout: .seconds(5)) == 1)
        #expect(poller.readyEvents(entry).contains(.readable))
        #expect(try pull.readiness().contains(.readable))
    }

    /// A spinning poll sees a message that arrives over TCP while it spins, and one that arrives only after the
    /// spin, once it sleeps; with none it waits out the whole timeout, not just the spin.
    @Test func aSpinningPollSeesMessagesDuringAndAfterTheSpin() throws {
        let pull = try ZMQSocket(context: context, type: .pull)
        let endpoint = try pull.bind("tcp://127.0.0.1:*")
        let poller = ZMQPoller()
        let entry = poller.register(pull, for: .readable)

        let clock = ContinuousClock()
        var start = clock.now
        #expect(try poller.poll(timeout: .milliseconds(100), spinningUpTo: .milliseconds(20)) == 0)
        #expect(clock.now - start >= .milliseconds(100), "waited \(clock.now - start), not the timeout")

        // The spin below is 30 ms: one message comes during it, one after it.
        for delay in [0.005, 0.06] {
            let context = context
            let sender = Thread {
                // A socket of the sending thread's own, connected before the pause.
                guard let push = try? ZMQSocket(context: context, type: .push), (try? push.connect(endpoint)) != nil
                else { return }
                Thread.sleep(forTimeInterval: delay)
                try? push.send(ZMQMessage([42]))
            }
            start = clock.now
            sender.start()
            #expect(try poller.poll(timeout: .seconds(5), spinningUpTo: .milliseconds(30)) == 1, "sent after \(delay) s")
            #expect(clock.now - start < .seconds(5), "sent after \(delay) s: not seen until the timeout")
            #expect(poller.readyEvents(entry).contains(.readable))
            #expect(try receive(pull) == ZMQMessage([42]))
        }
    }
}
