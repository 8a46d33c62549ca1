import Foundation
import Testing
import ZeroMQ

/// The error a test raises when an operation it waits for does not finish.
struct TimedOut: Error, CustomStringConvertible {
    let what: String
    var description: String { "timed out: \(what)" }
}

/// Runs `body`, failing if it has not finished within `limit`; a hang becomes a test failure, not a stuck run.
func within<T: Sendable>(
    _ limit: Duration, _ what: String, _ body: @escaping @Sendable () async throws -> T
) async throws -> T {
    try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try? await Task.sleep(for: limit)
            return nil
        }
        guard let first = try await group.next(), let value = first else {
            group.cancelAll()
            throw TimedOut(what: what)
        }
        group.cancelAll()
        return value
    }
}

/// Receives on a blocking socket with a receive timeout, so a missing message fails instead of hanging.
func receive(_ socket: ZMQSocket, timeout: Duration = .seconds(5)) throws -> ZMQMessage {
    try socket.set(.receiveTimeout(timeout))
    return try socket.receive()
}
