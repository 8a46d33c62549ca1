import Foundation
import TestSupport
import Testing
import ZeroMQ

/// Receives on a blocking socket with a receive timeout, so a missing message fails instead of hanging.
func receive(_ socket: ZMQSocket, timeout: Duration = .seconds(5)) throws -> ZMQMessage {
    try socket.set(.receiveTimeout(timeout))
    return try socket.receive()
}
