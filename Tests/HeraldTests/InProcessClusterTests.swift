import Foundation
import LocalZooKeeper
import Logging
import Synchronization
import TestSupport
import Testing
import ZooKeeper

@testable import Herald

/// A broker, a publisher and a subscriber running as tasks of the test process against a real ZooKeeper, for
/// faults that are injected into ZooKeeper rather than into Herald's processes.
final class InProcessCluster: Sendable {
    let broker: Broker
    let publisher: Publisher
    let subscriber: Subscriber
    let received = Mutex<[UInt64]>([])
    let payloads = Mutex<[[UInt8]]>([])
    private let tasks = Mutex<[Task<Void, Never>]>([])

    init(
        zookeeper: String, cluster: String, sessionTimeout: Duration = .seconds(2),
        subscriberBufferBytes: Int = SubscriberConfiguration.defaultBufferBytes, subscriberBusyPoll: Duration = .zero
    ) throws {
        let configuration = ZooKeeperConfiguration(connectionString: zookeeper, sessionTimeout: sessionTimeout)
        let layout = try ClusterLayout(cluster: cluster)
        var brokerConfiguration = BrokerConfiguration(zookeeper: configuration, layout: layout, brokerID: "b1")
        brokerConfiguration.bindHost = "127.0.0.1"
        brokerConfiguration.requestPort = 0
        brokerConfiguration.subscriberPort = 0
        broker = Broker(configuration: brokerConfiguration, logger: testLogger("broker"))
        var publisherConfiguration = PublisherConfiguration(zookeeper: configuration, layout: layout)
        publisherConfiguration.retentionAge = .seconds(60)
        publisher = try Publisher(configuration: publisherConfiguration, topics: ["t"], logger: testLogger("publisher"))
        var subscriberConfiguration = SubscriberConfiguration(zookeeper: configuration, layout: layout)
        subscriberConfiguration.bufferBytes = subscriberBufferBytes
        subscriberConfiguration.busyPoll = subscriberBusyPoll
        subscriber = try Subscriber(configuration: subscriberConfiguration, topics: ["t"], logger: testLogger("subscriber"))
    }

    /// Starts everything, with the publisher sending every 10 ms unless `publishing` is off, and a task that
    /// records what the subscriber delivers unless `consuming` is off (the test then reads `subscriber.messages`).
    func start(publishing: Bool = true, consuming: Bool = true) {
        var tasks = [
            Task { _ = try? await self.broker.run() },
            Task { _ = try? await self.publisher.run() },
            Task { _ = try? await self.subscriber.run() },
        ]
        if consuming {
            tasks.append(Task {
                for await message in self.subscriber.messages {
                    self.received.withLock { $0.append(message.header.sequence) }
                    self.payloads.withLock { $0.append(Array(message.payload)) }
                }
            })
        }
        if publishing {
            tasks.append(Task {
                while !Task.isCancelled {
                    _ = try? await self.publisher.publish([1], on: "t")
                    try? await Task.sleep(for: .milliseconds(10))
                }
            })
        }
        self.tasks.withLock { $0 = tasks }
    }

    func stop() async {
        let tasks = self.tasks.withLock { $0 }
        for task in tasks { task.cancel() }
        for task in tasks { await task.value }
    }

        var count: Int { received.withLock { $0.count } }

    /// Starts everything but the publishing task and publishes until the subscriber receives: what is published
    /// before its subscription is in place is not its own. Any other first message still on its way arrives
    /// during `settle`.
    /// - Returns: how many messages the subscriber had then, to count the test's own from.
    func startReceiving(settle: Duration) async throws -> Int {
        start(publishing: false)
        try await eventually(.seconds(20), "a first message") {
            _ = try? await self.publisher.publish([0], on: "t")
            return self.count > 0
        }
        try await Task.sleep(for: settle)
        return count
    }


    /// Waits until the subscriber received `more` messages beyond what it had.
    func waitForMore(_ more: Int, within limit: Duration, _ what: String) async throws {
        let target = count + more
        try await eventually(limit, what) { self.count >= target }
    }

    /// The subscriber got every message from the first one on, once and in order; duplicates that replays
    /// caused were dropped before the application, so they do not show in `received`.
    func expectExactlyOnceInOrder() {
        let sequences = received.withLock { $0 }
        let first = sequences.first ?? 1
        #expect(subscriber.statistics.lost == 0)
        #expect(sequences == Array(first..<(first + UInt64(sequences.count))))
    }
}

@Suite("ZooKeeper faults", .serialized)
struct ZooKeeperFaultTests {
    @Test func aBrokerWhoseSessionExpiresStepsDownAndRejoinsWithoutARestart() async throws {
        try await withServer { server in
            let cluster = try InProcessCluster(zookeeper: server.connectionString, cluster: "expiry")
            cluster.start()
            try await cluster.waitForMore(20, within: .seconds(20), "first messages")
            #expect(cluster.broker.leadershipCount == 1)
            // Longer than the session timeout (2 s): the server expires every session once it runs again.
            try server.pause()
            try await eventually(.seconds(10), "broker stops serving") { cluster.broker.role != .leader }
            try await Task.sleep(for: .seconds(3))
            try server.resume()
            try await eventually(.seconds(20), "broker leads again on a new session") {
                cluster.broker.role == .leader && cluster.broker.leadershipCount == 2
            }
            try await cluster.waitForMore(50, within: .seconds(20), "messages after the expiry")
            await cluster.stop()
            cluster.expectExactlyOnceInOrder()
        }
    }

    @Test func aZooKeeperRestartLeavesEveryPartRunningAndReattached() async throws {
        try await withServer { server in
            let cluster = try InProcessCluster(zookeeper: server.connectionString, cluster: "restart")
            cluster.start()
            try await cluster.waitForMore(20, within: .seconds(20), "first messages")
            await server.halt()
            try await Task.sleep(for: .milliseconds(500))
            try await server.restart()
            try await eventually(.seconds(20), "broker leads again") { cluster.broker.role == .leader }
            try await cluster.waitForMore(50, within: .seconds(20), "messages after the restart")
            #expect(cluster.subscriber.attachedLeader != nil)
            #expect(cluster.publisher.attachedLeader != nil)
            await cluster.stop()
            cluster.expectExactlyOnceInOrder()
        }
    }

    @Test func losingOneMemberOfAThreeNodeEnsembleChangesNothingForUsers() async throws {
        let ensemble = try await LocalZooKeeperEnsemble.start(logger: testLogger("LocalZooKeeper"))
        do {
            let cluster = try InProcessCluster(
                zookeeper: ensemble.connectionString, cluster: "ensemble", sessionTimeout: .seconds(4))
            cluster.start()
            try await cluster.waitForMore(20, within: .seconds(20), "first messages")
            for member in ensemble.members {
                await member.halt()
                try await cluster.waitForMore(100, within: .seconds(20), "messages with a member down")
                try await member.restart()
            }
            // The leader never changed: losing one member of three keeps the quorum, and so every session.
            #expect(cluster.broker.leadershipCount == 1)
            await cluster.stop()
            cluster.expectExactlyOnceInOrder()
        } catch {
            await ensemble.stop()
            throw error
        }
        await ensemble.stop()
    }
}

@Suite("Publishing many messages in one call")
struct PublishContentsTests {
    @Test func anyCollectionOfPayloadsIsPublishedInOrderAndAnOversizedOneRefusesTheCall() async throws {
        try await withServer { server in
                        let cluster = try InProcessCluster(zookeeper: server.connectionString, cluster: "contents")
            let before = try await cluster.startReceiving(settle: .milliseconds(500))

            let numbered: [[UInt8]] = (1...5).map { [UInt8($0)] }
            // A slice lends its storage; a repeated element has none to lend and is copied once.
            try await cluster.publisher.publish(contentsOf: numbered[1...], on: "t")
            try await cluster.publisher.publish(contentsOf: repeatElement([9, 9], count: 3), on: "t")
            let tooLarge = [UInt8](repeating: 7, count: PublisherConfiguration.defaultMaximumPayloadSize + 1)
            await #expect(throws: PublishError.self) {
                try await cluster.publisher.publish(contentsOf: [[8], tooLarge], on: "t")
            }
            try await cluster.publisher.publish([6], on: "t")
            try await eventually(.seconds(10), "the messages published in one call each") { cluster.count >= before + 8 }
            try await Task.sleep(for: .milliseconds(200))
            let received = cluster.payloads.withLock { Array($0.dropFirst(before)) }
            #expect(received == [[2], [3], [4], [5], [9, 9], [9, 9], [9, 9], [6]], "nothing of the refused call")
            await cluster.stop()
            cluster.expectExactlyOnceInOrder()
        }
    }
}

@Suite("Receive times")
struct ReceiveTimeTests {
    /// A subscriber whose application stopped taking messages leaves the frames queued on its socket; when the
    /// application takes them again, its socket thread takes them all in one wake-up. Each must carry the time
    /// it was taken: one time for all of them would date every frame that arrived during that wake-up too
    /// early, even before it was sent.
    @Test func framesTakenInOneWakeUpEachCarryTheTimeTheyWereTaken() async throws {
        try await withServer { server in
            // One byte of buffer: a batch the application has not taken stops the socket thread.
            let cluster = try InProcessCluster(zookeeper: server.connectionString, cluster: "stamps", subscriberBufferBytes: 1)
            cluster.start(publishing: false, consuming: false)
            let taken = Mutex<[ReceivedMessage]>([])
            let resume = Atomic<Bool>(false)
            let application = Task {
                for await message in cluster.subscriber.messages {
                    taken.withLock { $0.append(message) }
                    while !resume.load(ordering: .acquiring), !Task.isCancelled { try? await Task.sleep(for: .milliseconds(10)) }
                }
            }
            // Until the subscription is in place: the application takes one message, then stops taking.
            try await eventually(.seconds(20), "a first message") {
                _ = try? await cluster.publisher.publish([0], on: "t")
                return !taken.withLock { $0.isEmpty }
            }
            try await Task.sleep(for: .milliseconds(300))
            // One message per frame, a millisecond apart, while the socket thread does not read them.
            for _ in 0..<100 {
                try await cluster.publisher.publish([1], on: "t")
                try await Task.sleep(for: .milliseconds(1))
            }
            try await Task.sleep(for: .milliseconds(300))
            resume.store(true, ordering: .releasing)
            try await eventually(.seconds(10), "the 100 messages") { taken.withLock { $0.filter { $0.payload.first == 1 }.count } >= 100 }
            await cluster.stop()
            application.cancel()
            await application.value
            let stamped = taken.withLock { $0.filter { $0.payload.first == 1 } }
            for message in stamped {
                #expect(message.receivedAt >= message.header.sentAt, "received before it was sent")
            }
            let times = stamped.map(\.receivedAt)
            #expect(times == times.sorted(), "taken in order, so stamped in order")
            // Frames taken one after another, each decoded and sequenced in between, read the clock nanoseconds
            // apart at least; one reading per wake-up gave most of them the same time.
            #expect(Set(times).count > stamped.count / 2, "\(Set(times).count) distinct receive times for \(stamped.count) frames")
        }
    }
}

@Suite("Busy-poll")
struct BusyPollTests {
    /// A socket thread that checks its sockets before it sleeps changes when it looks, never what it delivers:
    /// bursts closer together than its spin and pauses longer than it arrive once each, in order.
    @Test func aSubscriberThatSpinsBeforeSleepingDeliversEveryMessageOnceInOrder() async throws {
        try await withServer { server in
            let cluster = try InProcessCluster(
                                zookeeper: server.connectionString, cluster: "spin", subscriberBusyPoll: .microseconds(500))
            let before = try await cluster.startReceiving(settle: .milliseconds(300))

            for _ in 0..<20 {
                for _ in 0..<50 { try await cluster.publisher.publish([1], on: "t") }
                try await Task.sleep(for: .milliseconds(5))
            }
            try await eventually(.seconds(20), "1,000 messages") { cluster.count >= before + 1000 }
            try await Task.sleep(for: .milliseconds(200))
            #expect(cluster.payloads.withLock { $0.dropFirst(before).filter { $0 == [1] }.count } == 1000)
            await cluster.stop()
            cluster.expectExactlyOnceInOrder()
        }
    }
}

@Suite("Waiting for published messages to leave")
struct WaitUntilSentTests {
    /// Messages that outlive the retention age while no leader is there leave the buffer unsent: once the rest
    /// has gone to the next leader, the wait must not report every message sent (`herald publish --count` says
    /// "published every message" on it).
    @Test func messagesThatExpiredUnsentAreNotReportedAsSent() async throws {
        try await withServer { server in
            let zookeeper = ZooKeeperConfiguration(connectionString: server.connectionString, sessionTimeout: .seconds(2))
            let layout = try ClusterLayout(cluster: "expired-unsent")
            func broker() -> Broker {
                var configuration = BrokerConfiguration(zookeeper: zookeeper, layout: layout, brokerID: "b1")
                configuration.bindHost = "127.0.0.1"
                configuration.requestPort = 0
                configuration.subscriberPort = 0
                return Broker(configuration: configuration, logger: testLogger("broker"))
            }
            var configuration = PublisherConfiguration(zookeeper: zookeeper, layout: layout)
            configuration.retentionAge = .milliseconds(200)
            let publisher = try Publisher(configuration: configuration, topics: ["t"], logger: testLogger("publisher"))
            let publishing = Task { _ = try? await publisher.run() }
            // A first leader tells the publisher the cluster's mode; it then goes away.
            let first = Task { _ = try? await broker().run() }
            try await eventually(.seconds(20), "attached to the first leader") { publisher.attachedLeader != nil }
            first.cancel()
            await first.value
            try await eventually(.seconds(20), "detached from the first leader") { publisher.attachedLeader == nil }

            for _ in 0..<3 { try await publisher.publish([1], on: "t") }
            try await Task.sleep(for: .milliseconds(300))
            // Each publish drops what is older than the retention age: the three above, unsent.
            for _ in 0..<3 { try await publisher.publish([2], on: "t") }
            #expect(publisher.expiredCount == 3)

            let second = Task { _ = try? await broker().run() }
            let allSent = await publisher.waitUntilSent()
            #expect(!allSent, "three of the six messages never left")
            #expect(publisher.attachedLeader != nil)
            second.cancel()
            publishing.cancel()
            await second.value
            await publishing.value
        }
    }
}
