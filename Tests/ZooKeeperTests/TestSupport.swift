import Foundation
import TestSupport
import Testing
import ZooKeeper

/// Waits until `stream` yields one of `wanted`, returning every state seen on the way.
func waitForState(
    _ wanted: SessionState...,
    in stream: AsyncStream<SessionState>,
    within limit: Duration
) async throws -> [SessionState] {
    try await within(limit, "state \(wanted)") {
        var seen: [SessionState] = []
        for await next in stream {
            seen.append(next)
            if wanted.contains(next) { return seen }
        }
        throw DeadlineExceeded(what: "state \(wanted) (stream ended after \(seen))", limit: limit)
    }
}

extension Array where Element == UInt8 {
    init(_ text: String) { self = Array(text.utf8) }
}
