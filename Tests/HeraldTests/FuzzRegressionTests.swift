import Foundation
import Testing

@_spi(Drivers) @testable import Herald

/// Replays the fuzzers' seeds and past findings (Fuzz/corpus, Fuzz/regressions) through the same drivers the
/// fuzz targets run, so that what a fuzzer once broke stays fixed without running libFuzzer.
@Suite("Fuzz regressions")
struct FuzzRegressionTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()

    static func inputs(_ target: String) -> [URL] {
        ["corpus", "regressions"].flatMap { folder in
            let directory = root.appendingPathComponent("Fuzz/\(folder)/\(target)")
            let names = (try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []
            return names.filter { !$0.hasPrefix(".") }.sorted().map { directory.appendingPathComponent($0) }
        }
    }

    @Test(arguments: ["broker", "subscriber", "records"])
    func everyStoredInputRunsCleanly(target: String) throws {
        let driver: (UnsafeRawBufferPointer) -> Void =
            switch target {
            case "broker": BrokerFuzzing.run
            case "subscriber": SubscriberFuzzing.run
            default: RecordFuzzing.run
            }
        let inputs = Self.inputs(target)
        #expect(!inputs.isEmpty, "the repository keeps seeds for \(target)")
        for input in inputs {
            let bytes = try Data(contentsOf: input)
            bytes.withUnsafeBytes { driver($0) }
        }
    }

    @Test func randomProgramsRunCleanlyThroughEveryDriver() {
        // A quick stand-in for the fuzzer when it is not run: a few thousand random programs.
        var generator = SystemRandomNumberGenerator()
        for round in 0..<3000 {
            let bytes = (0..<(round % 400)).map { _ in UInt8.random(in: .min ... .max, using: &generator) }
            bytes.withUnsafeBytes {
                BrokerFuzzing.run($0)
                SubscriberFuzzing.run($0)
                RecordFuzzing.run($0)
            }
        }
    }
}
