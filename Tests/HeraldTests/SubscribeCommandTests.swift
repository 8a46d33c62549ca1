import ChildProcesses
import Foundation
import Herald
import Synchronization
import Testing

// `herald subscribe` as its users see it: what it does when the reader of its output goes away.
@Suite("herald subscribe", .serialized)
struct SubscribeCommandTests {
    static let startup: Duration = .seconds(15)

    @Test("A subscriber whose reader goes away (| head) stops printing and exits 0 with its summary, not by SIGPIPE")
    func aClosedPipeEndsTheSubscriberCleanly() async throws {
        try await withCluster(mode: "broker") { cluster in
            _ = try await cluster.broker("b1")
            _ = try await cluster.waitForLeader(timeout: Self.startup)
            let publisher = try await cluster.start(
                "publisher", ["publish", "--topic", "piped", "--rate", "500", "--count", "20000", "--size", "16"])
            let lines = Mutex((stdout: [String](), stderr: [String]()))
            let pipeline = try await ChildProcess.start(
                name: "subscribe | head", executable: "/bin/bash",
                arguments: [
                    "-c",
                    #""$HERALD" subscribe --topic piped | head -n 3; echo "subscribe exited ${PIPESTATUS[0]}" >&2"#,
                ],
                environment: cluster.environment.merging(["HERALD": try heraldExecutable().path]) { _, new in new },
                standardOutput: .lines { bytes in lines.withLock { $0.stdout.append(String(decoding: bytes, as: UTF8.self)) } },
                standardError: .lines { bytes in lines.withLock { $0.stderr.append(String(decoding: bytes, as: UTF8.self)) } },
                ownProcessGroup: true)
            // Whatever the outcome, no `herald subscribe` of the pipeline outlives the test.
            defer { kill(-pipeline.processID, SIGKILL) }
            let exit = await pipeline.waitForExit(timeout: .seconds(30))
            let (stdout, stderr) = lines.withLock { ($0.stdout, $0.stderr) }
            let stderrTail = stderr.suffix(15).joined(separator: "\n")
            #expect(exit == 0, "pipeline still running or failed:\n\(stderrTail)")
            #expect(stdout.count == 3)
            #expect(stderr.contains("subscribe exited 0"), "\(stderrTail)")
            // The summary counts what was printed: the three lines head took, and any the pipe held when it closed.
            let summary = stderr.lazy.compactMap(SubscriptionSummary.init(line:)).first
            #expect((summary?.received ?? 0) >= 3, "\(stderrTail)")
            #expect(summary?.lost == 0)
            publisher.kill(SIGTERM)
        }
    }
}
