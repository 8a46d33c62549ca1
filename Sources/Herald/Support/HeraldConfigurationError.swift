/// Invalid input from the user (a command-line option, a configuration value), with a message that says
/// what is wrong and how to fix it.
public struct HeraldConfigurationError: Error, Sendable, Equatable, CustomStringConvertible {
    /// What is wrong and what to do about it, ready to show to the user.
    public let message: String

    /// The message.
    public var description: String { message }

    /// Creates an error.
    ///
    /// - Parameter message: What is wrong and what to do about it, as one or two sentences for the user.
    public init(_ message: String) {
        self.message = message
    }
}
