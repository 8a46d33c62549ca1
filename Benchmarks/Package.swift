// swift-tools-version:6.1
// Micro-benchmarks of Herald's hot paths, with package-benchmark: time and, through its malloc interposer,
// allocations per message. A package of its own, so that Herald never depends on benchmark code.
import PackageDescription

import struct Foundation.URL

// A path dependency is named after its directory, which is wherever the repository was cloned.
let herald = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().lastPathComponent

let package = Package(
    name: "HeraldBenchmarks",
    dependencies: [
        .package(url: "https://github.com/ordo-one/benchmark.git", from: "1.38.1", traits: ["MallocInterposer"]),
        .package(path: ".."),
    ],
    targets: [
        .executableTarget(
            name: "HotPaths",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "Herald", package: herald),
            ],
            path: "Benchmarks/HotPaths",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        )
    ],
    swiftLanguageModes: [.v6]
)
