import Logging
import ZeroMQ

/// Watches a client's connection to the leader for a refused CURVE handshake. libzmq reports a refusal only as a
/// socket event, and never connects again by itself: this says why, and when to make the connection anew, so
/// that a key admitted later is taken up without a restart.
///
/// Used by the one thread that owns the watched socket.
final class HandshakeWatch {
    /// How long after a refusal the connection is made again.
    static let retryInterval: Duration = .seconds(5)
    /// How often a refusal that persists is logged again.
    static let logInterval: Duration = .seconds(60)

    private var monitor: ZMQSocket?
    private var refusedAt: ContinuousClock.Instant?
    private var loggedAt: ContinuousClock.Instant?

    init() {}

    /// Watches `socket` from now on, instead of any earlier one.
    func watch(_ socket: ZMQSocket) {
        close()
        monitor = try? socket.monitor(.handshakeFailedAuthentication)
    }

    /// Stops watching.
    func close() {
        monitor?.close()
        monitor = nil
        refusedAt = nil
    }

    /// Reads what happened; logs a refusal.
    /// - Returns: whether the connection should be made again now.
    func shouldReconnect(now: ContinuousClock.Instant, publicKey: String, leader: String, logger: Logger) -> Bool {
        while let event = monitor?.receiveEvent() {
            guard event.event == .handshakeFailedAuthentication else { continue }
            refusedAt = now
            if loggedAt.map({ now - $0 >= Self.logInterval }) ?? true {
                loggedAt = now
                logger.error(
                    "leader \(leader) refused this process's CURVE key: add its public key to the brokers' --authorized-keys; trying again every \(Self.retryInterval)",
                    metadata: [
                        "public_key": "\(publicKey)", "zap_status": "\(event.value)", "endpoint": "\(event.endpoint)",
                    ])
            }
        }
        guard let refusedAt, now - refusedAt >= Self.retryInterval else { return false }
        self.refusedAt = nil
        return true
    }
}
