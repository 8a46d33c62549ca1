/// A multipart ZeroMQ message: one or more frames delivered atomically.
public struct ZMQMessage: Sendable, Hashable {
    /// The frames, in order.
    public var frames: [[UInt8]]

    /// Creates a message from frames.
    /// - Parameter frames: the frames, in order; a message sent must have at least one.
    public init(frames: [[UInt8]]) {
        self.frames = frames
    }

    /// Creates a message from frames given as variadic arguments.
    /// - Parameter frames: the frames, in order.
    public init(_ frames: [UInt8]...) {
        self.frames = frames
    }

    /// Creates a message whose frames are the UTF-8 bytes of strings.
    /// - Parameter strings: one string per frame.
    public init(strings: [String]) {
        self.frames = strings.map { Array($0.utf8) }
    }

    /// The frames decoded as UTF-8 text (invalid bytes are replaced), mostly for tests and logs.
    public var strings: [String] { frames.map { String(decoding: $0, as: UTF8.self) } }
}
