// Herald's fuzz targets. Built by scripts/fuzz with `-sanitize=fuzzer,address -D FUZZING`, this is a libFuzzer
// binary: HERALD_FUZZ_TARGET (broker, subscriber or records) picks the driver. Built normally, it replays
// inputs instead: `herald-fuzz TARGET FILE...` runs each file through the driver once, to reproduce a finding
// without libFuzzer.

@_spi(Drivers) import Herald

#if FUZZING
import CHeraldFuzz
#endif

#if canImport(Glibc)
import Glibc
#endif

/// The drivers by name.
let drivers: [String: @Sendable (UnsafeRawBufferPointer) -> Void] = [
    "broker": BrokerFuzzing.run,
    "subscriber": SubscriberFuzzing.run,
    "records": RecordFuzzing.run,
]

/// Writes a line to standard error.
func complain(_ message: String) {
    let line = Array((message + "\n").utf8)
    _ = line.withUnsafeBytes { write(STDERR_FILENO, $0.baseAddress, $0.count) }
}

#if FUZZING
/// The driver this process fuzzes, chosen once from the environment.
let selected: @Sendable (UnsafeRawBufferPointer) -> Void = {
    let name = getenv("HERALD_FUZZ_TARGET").map { String(cString: $0) } ?? ""
    guard let driver = drivers[name] else {
        complain("set HERALD_FUZZ_TARGET to one of: \(drivers.keys.sorted().joined(separator: ", "))")
        exit(2)
    }
    return driver
}()

// SwiftPM calls an executable's entry point `<module>_main`; libFuzzer then runs from here.
@_cdecl("HeraldFuzz_main")
public func fuzzMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    var count = argc
    var arguments = argv
    return LLVMFuzzerRunDriver(&count, &arguments) { data, size in
        selected(UnsafeRawBufferPointer(start: data, count: size))
        return 0
    }
}
#else
@main
struct ReplayFuzzInputs {
    static func main() {
        let arguments = CommandLine.arguments.dropFirst()
        guard let name = arguments.first, let driver = drivers[name], arguments.count >= 2 else {
            complain("usage: herald-fuzz broker|subscriber|records FILE...")
            exit(2)
        }
        for path in arguments.dropFirst() {
            guard let file = fopen(path, "rb") else {
                complain("herald-fuzz: cannot open \(path)")
                exit(1)
            }
            var bytes: [UInt8] = []
            var chunk = [UInt8](repeating: 0, count: 65_536)
            while true {
                let count = fread(&chunk, 1, chunk.count, file)
                if count <= 0 { break }
                bytes += chunk[..<count]
            }
            fclose(file)
            bytes.withUnsafeBytes { driver($0) }
            print("\(path): ok")
        }
    }
}
#endif
