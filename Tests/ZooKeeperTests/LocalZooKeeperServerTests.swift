import Foundation
import LocalZooKeeper
import TestSupport
import Testing
import ZooKeeper

@Suite("LocalZooKeeperServer")
struct LocalZooKeeperServerTests {
    @Test func serverProcessIsJavaItselfSoSignalsReachTheServer() async throws {
        try await withServer { server in
            let pid = try #require(server.processID)
            let command = try String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8)
            #expect(command.trimmingCharacters(in: .whitespacesAndNewlines) == "java")
        }
    }

    @Test func stopRemovesTheTemporaryDirectoryAndIsIdempotent() async throws {
        let server = try await LocalZooKeeperServer.start(logger: testLogger("LocalZooKeeper"))
        #expect(FileManager.default.fileExists(atPath: server.directory))
        let pid = try #require(server.processID)
        await server.stop()
        await server.stop()
        #expect(server.processID == nil)
        #expect(!FileManager.default.fileExists(atPath: server.directory))
        #expect(kill(pid, 0) == -1)
    }

    @Test func droppingASessionWithoutClosingItEndsTheSession() async throws {
        try await withServer { server in
            try await withSession(server) { observer in
                var owner: ZooKeeperSession? = try ZooKeeperSession(
                    configuration: ZooKeeperConfiguration(connectionString: server.connectionString),
                    logger: testLogger()
                )
                try await owner?.waitUntilConnected(timeout: .seconds(10))
                try await owner?.create("/abandoned", mode: .ephemeral)
                let (_, watch) = try await observer.existsWatching("/abandoned")
                owner = nil
                let event = try await within(.seconds(5), "deletion after deinit") { try await watch.event() }
                #expect(event.kind == .deleted)
            }
        }
    }
}

@Suite("LocalZooKeeperEnsemble")
struct LocalZooKeeperEnsembleTests {
    @Test func aSessionOutlivesTheLossOfTheMemberItIsConnectedTo() async throws {
        let ensemble = try await LocalZooKeeperEnsemble.start(logger: testLogger("LocalZooKeeper"))
        do {
            let session = try ZooKeeperSession(
                configuration: ZooKeeperConfiguration(connectionString: ensemble.connectionString, sessionTimeout: .seconds(4)),
                logger: testLogger())
            try await session.waitUntilConnected(timeout: .seconds(10))
            try await session.create("/survivor", data: [1], mode: .ephemeral)
            // Halt each member in turn: whichever the client uses, it moves to another and keeps its session.
            for member in ensemble.members {
                await member.halt()
                #expect(try await within(.seconds(15), "read after losing a member") {
                    while true {
                        if let data = try? await session.get("/survivor").data { return data }
                        try await Task.sleep(for: .milliseconds(100))
                    }
                } == [UInt8(1)])
                try await member.restart()
            }
            await session.close()
        } catch {
            await ensemble.stop()
            throw error
        }
        await ensemble.stop()
    }
}
