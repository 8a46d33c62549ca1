import Foundation
import TestSupport
import Testing
import ZeroMQ
import ZooKeeper

@testable import Herald

// CurveZMQ and ZooKeeper ACLs with real processes: keys made by `herald keygen`, brokers that admit only the
// keys in their list, clients that trust only the brokers' key, identities bound to keys, and a cluster whose
// znodes only its own ZooKeeper identity may change. Serialized like the other process tests.
@Suite("Security", .serialized)
struct SecurityTests {
    static let startup: Duration = .seconds(15)

    /// Key files made by `herald keygen` in a fresh directory: `broker`, `clients/publisher`,
    /// `clients/subscriber` and `stranger`, whose key no broker admits at first.
    struct Keys {
        let directory: String
        var clients: String { directory + "/clients" }

        init() async throws {
            directory = NSTemporaryDirectory() + "herald-keys-\(UUID().uuidString.prefix(8))"
            // keygen makes the directories it writes in.
            for name in ["broker", "clients/publisher", "clients/subscriber", "stranger"] {
                let keygen = try await HeraldProcess(
                    name: "keygen \(name)", arguments: ["keygen", "--output", directory + "/" + name], environment: [:])
                #expect(try await keygen.waitForExit(timeout: .seconds(10)) == 0, "\(keygen.diagnostics())")
            }
            let attributes = try FileManager.default.attributesOfItem(atPath: directory + "/broker.key")
            #expect((attributes[.posixPermissions] as? Int) == 0o600, "a secret key is readable by its owner only")
        }

        func pair(_ name: String) throws -> ZMQCurveKeyPair {
            try CurveSecurity.keyPair(fromFile: directory + "/" + name + ".key")
        }

        /// What a client started with `name`'s key, trusting the brokers' key, gets.
        func client(_ name: String, trusting trusted: String = "broker") -> [String: String] {
            ["HERALD_KEY_FILE": directory + "/\(name).key", "HERALD_BROKER_PUBLIC_KEY": "@\(directory)/\(trusted).pub"]
        }

        /// What a broker (or direct-mode publisher) admitting the keys in `authorized` gets.
        func server(_ name: String, authorizing authorized: String) -> [String: String] {
            ["HERALD_KEY_FILE": directory + "/\(name).key", "HERALD_AUTHORIZED_KEYS": authorized]
        }

        func remove() { try? FileManager.default.removeItem(atPath: directory) }
    }

    @Test(
        "Broker mode with CurveZMQ: only admitted keys exchange messages, an identity belongs to its key, and every refusal says why"
    )
    func curveInBrokerMode() async throws {
        let keys = try await Keys()
        defer { keys.remove() }
        try await withCluster(mode: "broker") { cluster in
            let broker = try await cluster.broker("b1", environment: keys.server("broker", authorizing: keys.clients))
            try await broker.waitForLine(containing: "elected leader; serving", timeout: Self.startup)

            let subscriber = try await cluster.subscriber(
                ["secure"], name: "subscriber", environment: keys.client("clients/subscriber"))
            let stranger = try await cluster.subscriber(["secure"], name: "stranger", environment: keys.client("stranger"))
            let inClear = try await cluster.subscriber(["secure"], name: "in clear")
            let misled = try await cluster.subscriber(
                ["secure"], name: "misled", environment: keys.client("clients/subscriber", trusting: "stranger"))
            try await subscriber.waitForLine(containing: "attached to leader", timeout: Self.startup)
            let publisher = try await cluster.publisher(
                "secure", rate: 100, name: "publisher", environment: keys.client("clients/publisher"))

            try await subscriber.waitForMessage(timeout: Self.startup, "a first message over CURVE")
            try await inClear.waitForLine(containing: "cluster requires CurveZMQ", timeout: .seconds(10))
            try await misled.waitForLine(containing: "not the trusted --broker-public-key", timeout: .seconds(10))
            try await broker.waitForLine(
                containing: "refused a client whose CURVE key is not in the authorized keys", timeout: .seconds(10))
            #expect(stranger.messages.isEmpty && inClear.messages.isEmpty && misled.messages.isEmpty)

            // An admitted key (the subscriber's) cannot take over the publisher's identity, nor publish under it.
            let record = try await leaderRecord(cluster)
            let brokerKey = try #require(record.curveKey)
            let brokerPair = try keys.pair("broker")
            #expect(brokerKey == brokerPair.publicKey, "the leader record publishes the brokers' key")
            let first = try #require(subscriber.messages.first)
            let victim = try #require(PublisherID(first.publisher))
            let client = try HostileClient(
                endpoint: record.requestEndpoint, keys: try keys.pair("clients/subscriber"), serverKey: brokerKey)
            defer { client.close() }
            client.send(
                ControlFrame.encode(
                    .register, PublisherRegistration(publisher: victim, endpoint: "", topics: ["secure"])))
            #expect(
                victim.isBound(to: try keys.pair("clients/publisher").publicKey), "its identity begins with its key")
            let takeover = try #require(refusal(client.waitForReply(.refused, timeout: .seconds(5))))
            #expect(takeover.reason == .notOwner && takeover.detail.contains("not bound"), "\(takeover)")
            let own = PublisherID(curveKey: try keys.pair("clients/subscriber").publicKey)
            client.send(
                ControlFrame.encode(.register, PublisherRegistration(publisher: own, endpoint: "", topics: ["secure"])))
            _ = try #require(client.waitForCredit(timeout: .seconds(5)), "its own identity is registered")
            let forged = MessageHeader(publisher: victim, sequence: 1_000_000, sentAt: wallClockNanoseconds())
            client.send(dataFrame(topic: "secure", header: forged, payload: Array("forged".utf8)))
            let forgery = try #require(refusal(client.waitForReply(.refused, timeout: .seconds(5))))
            #expect(forgery.reason == .notOwner && forgery.detail.contains("did not register"), "\(forgery)")

            // The refused client says why, and tries again: a key added to the list is admitted from then on,
            // without restarting the broker or the client.
            try await stranger.waitForLine(containing: "refused this process's CURVE key", timeout: .seconds(10))
            try FileManager.default.copyItem(
                atPath: keys.directory + "/stranger.pub", toPath: keys.clients + "/stranger.pub")
            try await stranger.waitForMessage(
                timeout: HandshakeWatch.retryInterval + .seconds(10), "a message once its key is admitted")

            let summary = try await stopCleanly(publishers: [publisher], subscriber: subscriber)
            let messages = subscriber.messages
            #expect(sequenceProblems(in: messages).isEmpty, "\(sequenceProblems(in: messages))")
            #expect(messages.first?.seq == 1 && summary.lost == 0 && summary.publishers == 1, "summary: \(summary)")
            #expect(messages.allSatisfy { $0.publisher == victim.description }, "no forged message was delivered")
            print("[security broker] \(summary); the stranger, once admitted, received \(stranger.messages.count)")
        }
    }

    @Test(
        "Direct mode with CurveZMQ: a publisher admits only its own list of subscriber keys, and subscribers require its registered key"
    )
    func curveInDirectMode() async throws {
        let keys = try await Keys()
        defer { keys.remove() }
        // The brokers admit the stranger too; the publisher does not.
        let brokerList = keys.directory + "/broker-list"
        try FileManager.default.createDirectory(atPath: brokerList, withIntermediateDirectories: true)
        for name in ["clients/publisher", "clients/subscriber", "stranger"] {
            let text = try String(contentsOfFile: keys.directory + "/\(name).pub", encoding: .utf8)
            try text.write(
                toFile: brokerList + "/\(name.split(separator: "/").last!).pub", atomically: true, encoding: .utf8)
        }
        try await withCluster(mode: "direct") { cluster in
            let broker = try await cluster.broker("b1", environment: keys.server("broker", authorizing: brokerList))
            try await broker.waitForLine(containing: "elected leader; serving", timeout: Self.startup)
            let subscriber = try await cluster.subscriber(
                ["secure"], name: "subscriber", environment: keys.client("clients/subscriber"))
            let stranger = try await cluster.subscriber(["secure"], name: "stranger", environment: keys.client("stranger"))
            try await subscriber.waitForLine(containing: "using leader for discovery", timeout: Self.startup)
            try await stranger.waitForLine(containing: "using leader for discovery", timeout: Self.startup)
            let publisher = try await cluster.publisher(
                "secure", rate: 100, name: "publisher",
                environment: keys.client("clients/publisher").merging(["HERALD_AUTHORIZED_KEYS": keys.clients]) { $1 })

            try await subscriber.waitForMessage(timeout: Self.startup, "a first message straight from the publisher")
            try await stranger.waitForLine(containing: "connected to publisher", timeout: .seconds(10))
            try await Task.sleep(for: .seconds(1))
            #expect(stranger.messages.isEmpty, "the publisher refuses a key its own list lacks")
            let record = try await leaderRecord(cluster)
            let brokerPair = try keys.pair("broker")
            #expect(record.curveKey == brokerPair.publicKey)

            // The stranger, admitted by the brokers, cannot claim the publisher's endpoint for its own key
            // (subscribers would then expect the wrong key there).
            let strangerKeys = try keys.pair("stranger")
            let client = try HostileClient(
                endpoint: record.requestEndpoint, keys: strangerKeys, serverKey: brokerPair.publicKey)
            defer { client.close() }
            client.send(ControlFrame.encode(.lookup, DiscoveryQuery(topics: ["secure"])))
            let reply = try #require(client.waitForReply(.lookup, timeout: .seconds(5)))
            let discovered = try #require(
                reply.withUnsafeBytes { try? ControlFrame.decode(DiscoveryReply.self, from: $0).get() })
            let real = try #require(discovered.publishers.first)
            #expect(
                real.curveKey == (try keys.pair("clients/publisher")).publicKey, "the leader names the publisher's key")
            let squatter = PublisherRegistration(
                publisher: PublisherID(curveKey: strangerKeys.publicKey), endpoint: real.endpoint, topics: ["secure"],
                curveKey: strangerKeys.publicKey)
            client.send(ControlFrame.encode(.register, squatter))
            let refused = try #require(refusal(client.waitForReply(.refused, timeout: .seconds(5))))
            #expect(refused.reason == .notOwner && refused.detail.contains("another key"), "\(refused)")
            #expect(publisher.isRunning && broker.isRunning)
            print(
                "[security direct] subscriber received \(subscriber.messages.count), stranger \(stranger.messages.count)"
            )
        }
    }

    @Test(
        "ZooKeeper credentials: a cluster's znodes belong to its identity; other identities read but cannot change them, and get a clear error"
    )
    func zooKeeperACLs() async throws {
        try await withCluster(mode: "broker") { cluster in
            let credentials = ["HERALD_ZOOKEEPER_AUTH": "herald:s3cret"]
            // Started first without credentials, then with them: the open znodes are closed.
            let open = try await cluster.broker("open")
            try await open.waitForLine(containing: "elected leader; serving", timeout: Self.startup)
            open.kill(SIGTERM)
            #expect(try await open.waitForExit(timeout: .seconds(10)) == 0)
            let broker = try await cluster.broker("b1", environment: credentials)
            try await broker.waitForLine(containing: "elected leader; serving", timeout: Self.startup)

            let layout = try ClusterLayout(cluster: cluster.name)
            try await withSession(cluster.server) { zk in
                let data = try await zk.get(layout.leaderPath).data
                let record = try #require(LeaderRecord(decoding: data))
                #expect(record.broker == "b1", "anyone may read where the leader is")
                for (path, change) in [
                    (layout.leaderPath, "overwrite the leader record"), (layout.root, "add a znode"),
                    (layout.electionPath, "add a candidate"),
                ] {
                    let error = await #expect(throws: ZooKeeperError.self, "\(change)") {
                        if path == layout.leaderPath {
                            try await zk.set(path, data: Array(#"{"broker":"evil"}"#.utf8))
                        } else {
                            try await zk.create(path + "/evil")
                        }
                    }
                    #expect(error?.code == .noAuth, "\(change): \(String(describing: error))")
                }
            }

            for (label, extra) in [
                ("no credentials", [String: String]()), ("wrong password", ["HERALD_ZOOKEEPER_AUTH": "herald:wrong"]),
            ] {
                let intruder = try await cluster.broker("intruder", environment: extra)
                let code = try await intruder.waitForExit(timeout: .seconds(15))
                _ = try await intruder.waitFor("the end of the output", timeout: .seconds(5)) {
                    intruder.stdoutEnded ? true : nil
                }
                let stderr = intruder.stderrLines.joined(separator: "\n")
                #expect(code != 0, "\(label): exit code \(code)")
                #expect(stderr.contains("--zookeeper-auth") && stderr.contains("error"), "\(label):\n\(stderr)")
                #expect(!stderr.contains("s3cret") && !stderr.contains("wrong"), "no password in the logs")
            }
            #expect(broker.isRunning)

            // Clients only read: they need no credentials.
            let subscriber = try await cluster.subscriber(["acl"])
            try await subscriber.waitForLine(containing: "attached to leader", timeout: Self.startup)
            let publisher = try await cluster.publisher("acl", rate: 100)
            try await subscriber.waitForMessage(timeout: Self.startup, "a message in a cluster with ACLs")
            publisher.kill(SIGINT)
            _ = try await publisher.waitForExit(timeout: .seconds(10))
        }
    }

    @Test("Authorization by topic: a key publishes and subscribes only where its line in the list allows")
    func topicsByKey() async throws {
        let keys = try await Keys()
        defer { keys.remove() }
        let list = keys.directory + "/list"
        try FileManager.default.createDirectory(atPath: list, withIntermediateDirectories: true)
        let publisherKey = try keys.pair("clients/publisher").publicKey
        let subscriberKey = try keys.pair("clients/subscriber").publicKey
        let strangerKey = try keys.pair("stranger").publicKey
        try "\(publisherKey) publish sensors/*   # the lab's sensors\n".write(
            toFile: list + "/publisher.pub", atomically: true, encoding: .utf8)
        try "\(subscriberKey) subscribe sensors/*\n\(subscriberKey) subscribe weather\n".write(
            toFile: list + "/subscriber.pub", atomically: true, encoding: .utf8)
        try "\(strangerKey) subscribe weather\n".write(
            toFile: list + "/stranger.pub", atomically: true, encoding: .utf8)
        try await withCluster(mode: "broker") { cluster in
            let broker = try await cluster.broker("b1", environment: keys.server("broker", authorizing: list))
            try await broker.waitForLine(containing: "elected leader; serving", timeout: Self.startup)
            let subscriber = try await cluster.subscriber(
                ["sensors/lab1", "weather"], name: "subscriber", environment: keys.client("clients/subscriber"))
            let stranger = try await cluster.subscriber(
                ["sensors/lab1"], name: "stranger", environment: keys.client("stranger"))
            try await subscriber.waitForLine(containing: "attached to leader", timeout: Self.startup)
            let allowed = try await cluster.publisher(
                "sensors/lab1", rate: 100, name: "publisher", environment: keys.client("clients/publisher"))
            let forbidden = try await cluster.publisher(
                "weather", rate: 100, name: "forbidden publisher", environment: keys.client("clients/publisher"))

            try await subscriber.waitForMessage(timeout: Self.startup, "a message on a granted topic")
            try await stranger.waitForLine(containing: "may not subscribe to 'sensors/lab1'", timeout: .seconds(10))
            try await forbidden.waitForLine(containing: "may not publish on 'weather'", timeout: .seconds(10))
            try await Task.sleep(for: .seconds(1))
            #expect(stranger.messages.isEmpty)
            #expect(subscriber.messages.allSatisfy { $0.topic == "sensors/lab1" }, "nothing on weather was accepted")
            #expect(allowed.isRunning && broker.isRunning)
            // With the brokers' own key, which brokers admit.
            let status = try await cluster.waitForStatus(
                "the refusals counted", timeout: .seconds(10),
                arguments: ["--key-file", keys.directory + "/broker.key"]
            ) { ($0.leaderStatus?.refused?["forbidden"] ?? 0) >= 2 }
            print("[security topics] refused: \(status.leaderStatus?.refused ?? [:])")
        }
    }

    @Test("The list of keys: a key alone may do everything, a role and patterns restrict it, lines add up")
    func keyListLines() throws {
        let (a, b, c) = (try ZMQCurveKeyPair.generate(), try ZMQCurveKeyPair.generate(), try ZMQCurveKeyPair.generate())
        var keys: [String: KeyPermissions] = [:]
        for line in [
            "# a comment", "not-a-key publish x", "\(a.publicKey)", "\(b.publicKey) publish sensors/* alerts  # two",
            "\(b.publicKey) subscribe *", "\(c.publicKey) all news", "\(c.publicKey)   alice's laptop",
        ] {
            AuthorizedKeys.parse(Substring(line), into: &keys)
        }
        #expect(keys.count == 3)
        #expect(keys[a.publicKey] == .all)
        let restricted = try #require(keys[b.publicKey])
        #expect(restricted.publish.allows("sensors/lab1/temp") && restricted.publish.allows("alerts"))
        #expect(
            !restricted.publish.allows("sensors") && !restricted.publish.allows("alerts2")
                && !restricted.publish.allows("#"))
        #expect(restricted.subscribe.allows("anything"))
        #expect(keys[c.publicKey] == .all, "a word that is no role is a label: the key may do everything")
    }

    // MARK: Helpers

    private func leaderRecord(_ cluster: HeraldCluster) async throws -> LeaderRecord {
        let layout = try ClusterLayout(cluster: cluster.name)
        return try await withSession(cluster.server) { zk in
            let data = try await zk.get(layout.leaderPath).data
            return try #require(LeaderRecord(decoding: data))
        }
    }

    private func refusal(_ reply: [UInt8]?) -> Refusal? {
        reply.flatMap { bytes in bytes.withUnsafeBytes { try? ControlFrame.decode(Refusal.self, from: $0).get() } }
    }
}
