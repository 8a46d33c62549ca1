import Herald
import HeraldHTTP
import Logging

/// Every setting of every subcommand, with its environment variable and default: the whole configuration surface
/// in one place. The subcommands declare their flags with these help texts and read their values through them.
enum Settings {
    // MARK: Cluster, every subcommand that talks to one

    static let zookeeper = Setting.text(
        "HERALD_ZOOKEEPER", "ZooKeeper connection string, host:port[,host:port...][/chroot].",
        default: "127.0.0.1:2181")
    static let cluster = Setting.text(
        "HERALD_CLUSTER", "Cluster name; all of its state lives under /herald/<cluster> in ZooKeeper.",
        default: ClusterLayout.defaultCluster)
    static let sessionTimeout = Setting.duration(
        "HERALD_SESSION_TIMEOUT", "ZooKeeper session timeout in seconds: how long a killed process keeps its place.",
        default: .seconds(4), in: 1...60)
    static let zookeeperAuth = Setting.text(
        "HERALD_ZOOKEEPER_AUTH",
        "ZooKeeper digest credentials, user:password or @file: brokers create the cluster's znodes so that only this identity can change them.",
        default: nil)
    static let logLevel = Setting<Logger.Level>.choice(
        "HERALD_LOG_LEVEL", "Log level: trace, debug, info, notice, warning, error or critical.", default: .info,
        choices: "trace, debug, info, notice, warning, error or critical")

    // MARK: Listening: brokers and direct-mode publishers

    static let bindHost = Setting.text("HERALD_BIND_HOST", "Local address to listen on.", default: "0.0.0.0")
    static let advertiseHost = Setting.text(
        "HERALD_ADVERTISE_HOST", "Host name or address others use to reach this process, for NAT and containers.",
        default: nil, defaultText: "the bind address, or this host's first non-loopback IPv4 address")

    // MARK: CurveZMQ

    static let keyFile = Setting.text(
        "HERALD_KEY_FILE", "This process's CURVE secret key file, as `herald keygen` writes it; turns CurveZMQ on.",
        default: nil, defaultText: "none, in clear")
    static let authorizedKeys = Setting.text(
        "HERALD_AUTHORIZED_KEYS",
        "Brokers, and direct-mode publishers: a file of client public keys, one per line, or a directory of .pub files; only these may connect. Re-read when it changes.",
        default: nil)
    static let brokerPublicKey = Setting.text(
        "HERALD_BROKER_PUBLIC_KEY", "Clients: the brokers' CURVE public key, as Z85 text or @file.", default: nil)

    // MARK: HTTP: health, readiness and metrics

    static let httpPort = Setting<HTTPPort>(
        "HERALD_HTTP_PORT", "HTTP port for /healthz, /readyz and /metrics; 0 picks a free one, off (or -1) turns the server off.",
        default: .port(HealthServer.Configuration.defaultPort),
        expected: "a port in 0...65535, or off to turn the HTTP server off", parse: HTTPPort.init(text:))
    static let httpHost = Setting.text(
        "HERALD_HTTP_HOST", "Local address the HTTP server listens on.", default: HealthServer.Configuration.defaultHost)
    static let healthTimeout = Setting.duration(
        "HERALD_HEALTH_TIMEOUT", "Seconds to wait for the answer.", flag: "--timeout", default: .seconds(2),
        in: 0.001...60)

    // MARK: Broker

    static let mode = Setting<DisseminationMode>.choice(
        "HERALD_MODE", "Dissemination mode, fixed by the cluster's first broker: broker or direct.", default: .broker,
        choices: "broker or direct")
    static let requestPort = Setting.port(
        "HERALD_REQUEST_PORT", "Port for publishers and client requests; 0 picks a free one.",
        default: BrokerConfiguration.defaultRequestPort)
    static let subscriberPort = Setting.port(
        "HERALD_SUBSCRIBER_PORT", "Port for subscribers; 0 picks a free one.",
        default: BrokerConfiguration.defaultSubscriberPort)
    static let brokerID = Setting.text(
        "HERALD_BROKER_ID", "This broker's identity in the cluster.", default: nil,
        defaultText: "<host>-<pid>-<random>")
    static let group = Setting.text(
        "HERALD_GROUP", "The broker group: each group elects its own leader and serves the topics routed to it.",
        default: ClusterLayout.defaultGroup)
    static let brokerMaxMessageSize = Setting.integer(
        "HERALD_MAX_MESSAGE_SIZE", "Largest message a client may send, in bytes; larger ones cut the sender off.",
        default: BrokerConfiguration.defaultMaximumMessageSize, in: 1024...(1 << 30))
    static let logBytes = Setting.integer(
        "HERALD_LOG_BYTES", "Bytes of messages kept in all topics' logs, for recovery, history and slow subscribers.",
        default: BrokerConfiguration.defaultLogBytes, in: 0...(1 << 40))
    static let topicLogBytes = Setting.integer(
        "HERALD_TOPIC_LOG_BYTES", "Bytes of messages kept per topic.",
        default: BrokerConfiguration.defaultTopicLogBytes, in: 0...(1 << 40))
    static let publisherWindow = Setting.integer(
        "HERALD_PUBLISHER_WINDOW", "Bytes a publisher may send ahead of the broker's credit.",
        default: BrokerConfiguration.defaultPublisherWindow, in: 65_536...(1 << 30))
    static let stallTimeout = Setting.duration(
        "HERALD_STALL_TIMEOUT", "Seconds a subscriber that takes nothing may slow publishers before it is left behind.",
        default: BrokerConfiguration.defaultStallTimeout, in: 0.001...3600)
    static let maxTopics = Setting.integer(
        "HERALD_MAX_TOPICS", "Topics the broker holds at most; more are refused.",
        default: BrokerConfiguration.defaultMaximumTopics, in: 1...10_000_000)
    static let maxSubscriptions = Setting.integer(
        "HERALD_MAX_SUBSCRIPTIONS", "Topic subscriptions the broker holds at most, over all subscribers; more are refused.",
        default: BrokerConfiguration.defaultMaximumSubscriptions, in: 1...100_000_000)
    static let registrationBytes = Setting.integer(
        "HERALD_REGISTRATION_BYTES", "Bytes of publisher registrations (endpoints and topic lists) the broker holds at most.",
        default: BrokerConfiguration.defaultRegistrationBytes, in: 65_536...(1 << 40))

    // MARK: Publisher

    static let publishTopic = Setting.text("HERALD_TOPIC", "Topic to publish on.", default: nil)
    static let rate = Setting<Double>(
        "HERALD_RATE", "Messages per second; 0 sends as fast as possible.", default: 10,
        expected: "0 (as fast as possible) or a rate in 0.001...1000000000",
        parse: { Double($0) }, accepts: { $0 == 0 || (0.001...1e9).contains($0) })
    static let count = Setting.integer(
        "HERALD_COUNT", "Stop after this many messages.", default: nil, defaultText: "no limit", in: 1...Int.max)
    static let size = Setting.integer("HERALD_SIZE", "Payload size in bytes.", default: 64, in: 0...Int(Int32.max))
    static let maxPayload = Setting.integer(
        "HERALD_MAX_PAYLOAD", "Largest payload accepted, in bytes.",
        default: PublisherConfiguration.defaultMaximumPayloadSize, in: 1...Int(Int32.max))
    static let publisherPort = Setting.port(
        "HERALD_PUBLISHER_PORT", "Direct mode: port subscribers connect to; 0 picks a free one.", flag: "--port",
        default: PublisherConfiguration.defaultPort)
    static let historyOffered = Setting.integer(
        "HERALD_HISTORY", "Messages per topic brokers keep for late joiners (herald subscribe --history).",
        flag: "--history", default: 0, in: 0...BrokerConfiguration.defaultHistoryLimit)
    static let strength = Setting.integer(
        "HERALD_STRENGTH",
        "Ownership strength: subscribers deliver only the strongest live publisher of a topic among those with a strength; the next takes over within a second when it dies.",
        default: nil, defaultText: "none, shared", in: 0...Int(Int32.max))
    static let retentionBytes = Setting.integer(
        "HERALD_RETENTION_BYTES",
        "Broker mode: bytes kept for replay after a leader failover, allocated up front; half may wait for credit.",
        default: PublisherConfiguration.defaultRetentionBytes, in: 65_536...(1 << 34))
    static let retentionCount = Setting.integer(
        "HERALD_RETENTION_COUNT", "Broker mode: messages kept for replay after a leader failover.",
        default: PublisherConfiguration.defaultRetentionCount, in: 0...10_000_000)
    static let retentionAge = Setting.duration(
        "HERALD_RETENTION_AGE",
        "Broker mode: seconds a message is kept for replay; an outage longer than this loses older messages, and subscribers count them.",
        default: PublisherConfiguration.defaultRetentionAge, in: 0...3600)

    // MARK: Subscriber

    static let subscribeTopics = Setting<[String]>(
        "HERALD_TOPIC",
        "Topic to receive, or a pattern: '+' matches one level, a last '#' everything below (sensors/+/temp, sensors/#); repeat for several, or separate them with commas in the variable.",
        default: nil, expected: "topic names or patterns separated by commas",
        parse: { text in text.split(separator: ",").map { $0.trimmingWhitespace() }.filter { !$0.isEmpty } })
    static let history = Setting.integer(
        "HERALD_HISTORY", "Broker mode: first receive up to the last N messages of each topic the broker kept.",
        default: 0, in: 0...BrokerConfiguration.defaultHistoryLimit)
    static let json = Setting.flag(
        "HERALD_JSON", "Print one JSON object per message per line (topic, publisher, seq, latency_us, payload).")
    static let payload = Setting<MessageLineEncoder.PayloadStyle>.choice(
        "HERALD_PAYLOAD", "How payloads are printed: auto (text when UTF-8, else base64), text, base64 or none.",
        default: .auto, choices: "auto, text, base64 or none")
    static let window = Setting.integer(
        "HERALD_WINDOW", "Broker mode: bytes the leader may send ahead of this subscriber's acknowledgements.",
        default: SubscriberConfiguration.defaultWindow, in: 65_536...(1 << 30))
    static let bufferBytes = Setting.integer(
        "HERALD_BUFFER_BYTES",
        "Bytes of received messages waiting to be printed at most; past it the leader, then publishers, slow down.",
        default: SubscriberConfiguration.defaultBufferBytes, in: 65_536...(1 << 34))
    static let reorderBytes = Setting.integer(
        "HERALD_REORDER_BYTES", "Bytes of out-of-order messages held for reordering at most.",
        default: Sequencer.defaultHeldBytes, in: 0...(1 << 34))
    static let busyPoll = Setting.integer(
        "HERALD_BUSY_POLL_US",
        "Microseconds the socket thread checks for messages before sleeping: lower latency at high rates on a machine with a core to spare, at the price of that core.",
        default: 0, in: 0...Int(SubscriberConfiguration.maximumBusyPoll / .microseconds(1)))
    static let subscriberMaxMessageSize = Setting.integer(
        "HERALD_MAX_MESSAGE_SIZE", "Largest message accepted from a leader or publisher, in bytes.",
        default: BrokerConfiguration.defaultMaximumMessageSize, in: 1024...(1 << 30))

    // MARK: Status

    static let leaderTimeout = Setting.duration(
        "HERALD_LEADER_TIMEOUT",
        "Seconds to wait for the leader's own report; 0 asks only ZooKeeper. A crashed leader keeps its record until its session expires and answers nothing.",
        default: .seconds(1), in: 0...3600)
}

/// Where the HTTP server listens: a port, or nowhere.
enum HTTPPort: Sendable, Equatable, CustomStringConvertible {
    case port(Int)
    case off

    /// Words that turn the server off; `-1` too, for tools that can only pass numbers.
    static let disabledWords: Set<String> = ["off", "none", "disabled", "false", "no", "-1"]

    /// Parses `8080`, `0` or one of the words that turn the server off; `nil` for anything else.
    init?(text: String) {
        let word = text.trimmingWhitespace().lowercased()
        if Self.disabledWords.contains(word) {
            self = .off
        } else if let port = Int(word), (0...65535).contains(port) {
            self = .port(port)
        } else {
            return nil
        }
    }

    var description: String {
        switch self {
        case .port(let port): "\(port)"
        case .off: "off"
        }
    }
}
