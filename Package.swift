// swift-tools-version:6.1
import PackageDescription

let package = Package(
    name: "Herald",
    products: [
        .library(name: "ZeroMQ", targets: ["ZeroMQ"]),
        .library(name: "ZooKeeper", targets: ["ZooKeeper"]),
        .library(name: "LocalZooKeeper", targets: ["LocalZooKeeper"]),
        .library(name: "Herald", targets: ["Herald"]),
        .executable(name: "herald", targets: ["herald"]),
        .executable(name: "herald-zmq-baseline", targets: ["ZMQBaseline"]),
        .executable(name: "herald-fuzz", targets: ["HeraldFuzz"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-collections.git", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.81.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        // No traits: its FullFoundation one would link Foundation, and its ICU data, into every Herald process.
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1", traits: []),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift.git", from: "0.2.0"),
        // No traits: the Foundation one would only add `Data` conveniences.
        .package(url: "https://github.com/apple/swift-subprocess.git", from: "1.0.2", traits: []),
    ],
    targets: [
        // C shims: system libraries from Debian, reached through a module map and a tiny header each.
        .systemLibrary(
            name: "CZeroMQ",
            providers: [.apt(["libzmq3-dev"])]
        ),
        .systemLibrary(
            name: "CZooKeeper",
            providers: [.apt(["libzookeeper-mt-dev"])]
        ),

        // Dedicated pthreads for socket owner loops and blocking C calls, without Foundation's `Thread`.
        .target(name: "OSThreads", dependencies: ["COSThreads"]),
        .target(name: "COSThreads"),

        // Thin safe Swift wrappers: the only modules that touch a C pointer or a C type.
        .target(
            name: "ZeroMQ",
            dependencies: ["CZeroMQ", "OSThreads", .product(name: "DequeModule", package: "swift-collections")]
        ),
        .target(
            name: "ZooKeeper",
            dependencies: [
                "CZooKeeper",
                "OSThreads",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),

        // Starts a private ZooKeeper server from Debian's `zookeeper` package (tests, `herald demo`).
        .target(
            name: "LocalZooKeeper",
            dependencies: ["ChildProcesses", .product(name: "Logging", package: "swift-log")]
        ),
        // Starts child processes and reads their output line by line: `herald demo`, `herald bench`, the tests.
        .target(
            name: "ChildProcesses",
            dependencies: [.product(name: "Subprocess", package: "swift-subprocess")]
        ),


        // The Herald core: wire protocol, leader election, broker, publisher and subscriber.
        .target(
            name: "Herald",
            dependencies: [
                "OSThreads",
                "ZeroMQ",
                "ZooKeeper",
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),

        // The HTTP surface of every Herald process: health, readiness and Prometheus metrics.
        .target(
            name: "HeraldHTTP",
            dependencies: [
                "Herald",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),

        // `herald bench`: real broker, publisher and subscriber processes against the raw ZeroMQ baseline.
        .target(
            name: "HeraldBench",
            dependencies: [
                "ChildProcesses", "Herald", "LocalZooKeeper", "ZeroMQ", "ZooKeeper",
                .product(name: "Histogram", package: "hdrhistogram-swift"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),

        // `herald demo`: a local cluster of real processes and two failovers, narrated.
        .target(
            name: "HeraldDemo",
            dependencies: [
                "ChildProcesses", "Herald", "LocalZooKeeper", "ZooKeeper",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),

        // The `herald` command: thin subcommands that wire the modules together.
        .executableTarget(
            name: "herald",
            dependencies: [
                "Herald",
                "HeraldBench",
                "HeraldDemo",
                "HeraldHTTP",
                "LocalZooKeeper",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),

        // The raw ZeroMQ baseline of `herald bench`: libzmq called straight from C, so Herald's figures are
        // ratios to what the same machine does with no Swift and no Herald in the way.
        .executableTarget(
            name: "ZMQBaseline",
            linkerSettings: [.linkedLibrary("zmq")]
        ),

        // The fuzz targets: a libFuzzer binary when scripts/fuzz builds it with -D FUZZING, a replayer of inputs
        // otherwise. The drivers themselves live in Herald (SPI), next to the code they reach.
        .executableTarget(
            name: "HeraldFuzz",
            dependencies: ["Herald", "CHeraldFuzz"]
        ),
        .target(name: "CHeraldFuzz"),

        // Helpers the test targets share: private ZooKeeper servers, deadlines, a quiet logger.
        .target(
            name: "TestSupport",
            dependencies: ["LocalZooKeeper", "ZooKeeper", .product(name: "Logging", package: "swift-log")]
        ),

        .testTarget(
            name: "ZeroMQTests",
            dependencies: ["ZeroMQ", "TestSupport"]
        ),
        .testTarget(
            name: "OSThreadsTests",
            dependencies: ["OSThreads", "COSThreads"]
        ),
        .testTarget(
            name: "ChildProcessesTests",
            dependencies: ["ChildProcesses"]
        ),
        .testTarget(
            name: "ZooKeeperTests",
            dependencies: ["ZooKeeper", "LocalZooKeeper", "TestSupport"]
        ),
        .testTarget(
            name: "HeraldTests",
            dependencies: ["ChildProcesses", "Herald", "ZooKeeper", "ZeroMQ", "LocalZooKeeper", "TestSupport"]
        ),
        .testTarget(
            name: "HeraldBenchTests",
            dependencies: ["HeraldBench"]
        ),
        .testTarget(
            name: "HeraldHTTPTests",
            dependencies: [
                "HeraldHTTP", "Herald",
                .product(name: "HummingbirdTesting", package: "hummingbird"),
                .product(name: "Metrics", package: "swift-metrics"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
