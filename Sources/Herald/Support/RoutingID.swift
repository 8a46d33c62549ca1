import ZeroMQ

/// The routing id a ROUTER socket gives a connected peer: how a broker tells its clients apart and addresses a
/// reply. Kept inline (up to 32 bytes), so that looking a client up per message allocates nothing.
///
/// libzmq makes 5-byte ids for peers that do not choose one; a peer may choose up to 255 bytes, and one that
/// chooses more than 32 is refused, since Herald's clients never choose.
struct RoutingID: Hashable, Sendable, CustomStringConvertible {
    static let maximumLength = 32

    private var length: UInt8
    private var words: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)

    /// The id in `bytes`, or `nil` when it is empty or longer than ``maximumLength``.
    init?(_ bytes: UnsafeRawBufferPointer) {
        guard !bytes.isEmpty, bytes.count <= Self.maximumLength else { return nil }
        length = UInt8(bytes.count)
        withUnsafeMutableBytes(of: &words) { $0.copyMemory(from: bytes) }
    }

    /// The id's bytes, lent to `body`.
    func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) -> R) -> R {
        Swift.withUnsafeBytes(of: words) { body(UnsafeRawBufferPointer(rebasing: $0.prefix(Int(length)))) }
    }

    /// A frame holding the id, to address a message through the ROUTER: small enough that libzmq keeps it
    /// inside the frame's handle, so making one allocates nothing.
    func frame() throws(ZMQError) -> ZMQFrame {
        let length = Int(length)
        return try Swift.withUnsafeBytes(of: words) { (bytes) throws(ZMQError) -> ZMQFrame in
            try ZMQFrame(copying: UnsafeRawBufferPointer(rebasing: bytes.prefix(length)))
        }
    }

    static func == (lhs: RoutingID, rhs: RoutingID) -> Bool {
        lhs.length == rhs.length && lhs.words == rhs.words
    }

    func hash(into hasher: inout Hasher) {
        hasher.combine(length)
        hasher.combine(words.0)
        hasher.combine(words.1)
        hasher.combine(words.2)
        hasher.combine(words.3)
    }

    var description: String { withUnsafeBytes { $0.map { String($0, radix: 16) }.joined() } }
}
