import ArgumentParser
import FoundationEssentials
import Herald

#if canImport(Glibc)
    import Glibc
#endif

/// `herald keygen`: a CURVE key pair for a broker or a client.
struct KeygenCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keygen",
        abstract: "Write a CURVE key pair: NAME.key (secret, mode 0600) and NAME.pub (public), in Z85 text.")

    @Option(help: "Where to write, as DIR/NAME: the files are DIR/NAME.key and DIR/NAME.pub.")
    var output: String

    @Flag(help: "Replace existing files.")
    var force = false

    func run() throws {
        do {
            let written = try CurveKeyFiles.write(to: output, replacing: force)
            print("wrote \(written.secretKeyPath) and \(written.publicKeyPath)")
            print("public key: \(written.publicKey)")
        } catch {
            throw ValidationError(error.message)
        }
    }
}
