import TestSupport
import Testing
import ZooKeeper

/// Behaviours that need no server.
@Suite("ZooKeeperSession without a server")
struct ZooKeeperSessionOfflineTests {
    @Test(arguments: [
        "", "127.0.0.1", "127.0.0.1:notaport", "127.0.0.1:0", "127.0.0.1:2181,", "127.0.0.1:2181/chroot/",
    ])
    func invalidConnectionStringIsRejectedWithATypedError(_ connectionString: String) throws {
        let error = #expect(throws: ZooKeeperError.self) {
            _ = try ZooKeeperSession(
                configuration: ZooKeeperConfiguration(connectionString: connectionString),
                logger: testLogger()
            )
        }
        #expect(error?.code == .badArguments)
        #expect(error?.description.contains("connection string") == true)
    }

    @Test func operationsAfterCloseThrowSessionClosed() async throws {
        // Port 1 on loopback: nothing listens, the session just keeps connecting.
        let zk = try ZooKeeperSession(
            configuration: ZooKeeperConfiguration(connectionString: "127.0.0.1:1"),
            logger: testLogger()
        )
        #expect(zk.state == .connecting)
        await zk.close()
        await zk.close()
        #expect(zk.state == .closed)
        let error = await #expect(throws: ZooKeeperError.self) { try await zk.create("/x") }
        #expect(error?.code == .sessionClosed)
        let watchError = await #expect(throws: ZooKeeperError.self) { try await zk.existsWatching("/x") }
        #expect(watchError?.code == .sessionClosed)
        let waitError = await #expect(throws: ZooKeeperError.self) {
            try await zk.waitUntilConnected(timeout: .seconds(1))
        }
        #expect(waitError?.code == .sessionClosed)
    }

    @Test func waitUntilConnectedTimesOutWhenNothingListens() async throws {
        let zk = try ZooKeeperSession(
            configuration: ZooKeeperConfiguration(connectionString: "127.0.0.1:1"),
            logger: testLogger()
        )
        let error = await #expect(throws: ZooKeeperError.self) {
            try await zk.waitUntilConnected(timeout: .milliseconds(300))
        }
        #expect(error?.code == .timedOut)
        await zk.close()
    }

    @Test func errorDescriptionSaysWhatToDoNext() {
        let error = ZooKeeperError(code: .connectionLoss, path: "/a", connectionString: "zk1:2181")
        #expect(error.description.contains("ZooKeeper at zk1:2181 is unreachable"))
        #expect(error.description.contains("retry the operation"))
        #expect(error.code.returnCode == -4)
        #expect(error.libraryMessage == "connection loss")
    }
}
