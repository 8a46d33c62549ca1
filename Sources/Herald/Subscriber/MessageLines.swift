#if canImport(Glibc)
import Glibc
#endif

/// How a subscriber's messages are written as text: one line each, plain or JSON, into a buffer that is
/// written out once per batch. The same format is read back by ``MessageLine``.
///
/// JSON lines have the keys `latency_us`, `payload` (or `payload_base64`), `publisher`, `sent_at_ns`, `seq`,
/// `size` and `topic`, in that order, and are written by hand: a general encoder costs more than the message.
public struct MessageLineEncoder: Sendable {
    /// How the payload appears in a line.
    public enum PayloadStyle: String, Sendable, CaseIterable {
        /// As text when it is valid UTF-8, else base64 (`payload_base64`).
        case auto
        /// As text; bytes that are not UTF-8 become U+FFFD.
        case text
        /// Always base64, under `payload_base64`.
        case base64
        /// Left out; `size` still tells its length.
        case none
    }

    /// Whether lines are JSON objects.
    public var json: Bool
    /// How payloads appear.
    public var payload: PayloadStyle
    /// Plain lines show at most this many payload bytes.
    public static let plainPayloadPrefix = 60

    /// Creates an encoder.
    /// - Parameters:
    ///   - json: JSON objects rather than plain lines.
    ///   - payload: how payloads appear.
    public init(json: Bool, payload: PayloadStyle = .auto) {
        self.json = json
        self.payload = payload
    }

    /// Appends one line, with its newline, to `output`.
    /// - Parameters:
    ///   - message: the message.
    ///   - output: the buffer.
    public func append(_ message: ReceivedMessage, to output: inout [UInt8]) {
        if json { appendJSON(message, to: &output) } else { appendPlain(message, to: &output) }
        output.append(UInt8(ascii: "\n"))
    }

    private func appendPlain(_ message: ReceivedMessage, to output: inout [UInt8]) {
        // Copied from the name's own storage in one go, not byte by byte through its UTF-8 view.
        var name = message.topic.name
        name.withUTF8 { output.append(contentsOf: $0) }
        appendLiteral(" publisher=", to: &output)
        message.header.publisher.appendText(to: &output, short: true)
        appendLiteral(" seq=", to: &output)
        appendDecimal(message.header.sequence, to: &output)
        appendLiteral(" latency_ms=", to: &output)
        let microseconds = ReceivedMessage.nanoseconds(from: message.header.sentAt, to: message.receivedAt) / 1000
        if microseconds < 0 { output.append(UInt8(ascii: "-")) }
        let magnitude = microseconds.magnitude
        appendDecimal(magnitude / 1000, to: &output)
        output.append(UInt8(ascii: "."))
        let fraction = magnitude % 1000
        if fraction < 100 { output.append(UInt8(ascii: "0")) }
        if fraction < 10 { output.append(UInt8(ascii: "0")) }
        appendDecimal(fraction, to: &output)
        if payload != .none {
            output.append(UInt8(ascii: " "))
            for byte in message.payload.prefix(Self.plainPayloadPrefix) {
                output.append(byte >= 0x20 && byte < 0x7F ? byte : UInt8(ascii: "."))
            }
        }
    }

    private func appendJSON(_ message: ReceivedMessage, to output: inout [UInt8]) {
        appendLiteral(#"{"latency_us":"#, to: &output)
        appendSigned(ReceivedMessage.nanoseconds(from: message.header.sentAt, to: message.receivedAt) / 1000, to: &output)
        switch payload {
        case .auto:
            // Text when it is valid UTF-8 (checked while copying), else base64.
            let start = output.count
            appendLiteral(#","payload":""#, to: &output)
            if appendText(message.payload, to: &output, repairing: false) {
                output.append(UInt8(ascii: "\""))
            } else {
                output.removeSubrange(start...)
                appendLiteral(#","payload_base64":""#, to: &output)
                appendBase64(message.payload, to: &output)
                output.append(UInt8(ascii: "\""))
            }
        case .text:
            appendLiteral(#","payload":""#, to: &output)
            _ = appendText(message.payload, to: &output, repairing: true)
            output.append(UInt8(ascii: "\""))
        case .base64:
            appendLiteral(#","payload_base64":""#, to: &output)
            appendBase64(message.payload, to: &output)
            output.append(UInt8(ascii: "\""))
        case .none:
            break
        }
        appendLiteral(#","publisher":""#, to: &output)
        message.header.publisher.appendText(to: &output)
        appendLiteral(#"","sent_at_ns":"#, to: &output)
        appendDecimal(message.header.sentAt, to: &output)
        appendLiteral(#","seq":"#, to: &output)
        appendDecimal(message.header.sequence, to: &output)
        appendLiteral(#","size":"#, to: &output)
        appendDecimal(UInt64(message.payload.count), to: &output)
        appendLiteral(#","topic":""#, to: &output)
        // A topic name's bytes are lent, not copied: a copy would be an allocation per line.
        var name = message.topic.name
        name.withUTF8 { appendEscaped($0, to: &output) }
        appendLiteral(#""}"#, to: &output)
    }

    private func appendSigned(_ value: Int64, to output: inout [UInt8]) {
        if value < 0 { output.append(UInt8(ascii: "-")) }
        appendDecimal(value.magnitude, to: &output)
    }

    private func appendDecimal(_ value: UInt64, to output: inout [UInt8]) {
        // Appended from a typed buffer: a slice of raw bytes would be copied through the generic, byte-by-byte path.
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 20) { digits in
            var start = 20
            var rest = value
            repeat {
                start -= 1
                digits[start] = UInt8(ascii: "0") + UInt8(truncatingIfNeeded: rest % 10)
                rest /= 10
            } while rest > 0
            output.append(contentsOf: UnsafeBufferPointer(rebasing: digits[start...]))
        }
    }

    /// Appends literal text with one copy; a `String`'s bytes would go through its UTF-8 view. Through
    /// `withUTF8Buffer`, which also serves a one-character literal (stored as a scalar, without `utf8Start`).
    private func appendLiteral(_ text: StaticString, to output: inout [UInt8]) {
        text.withUTF8Buffer { output.append(contentsOf: $0) }
    }

    /// Appends a payload as the inside of a JSON string. Printable ASCII, the usual payload, is copied in one go;
    /// the rest is escaped where JSON needs it.
    /// - Returns: `false` when the payload is not valid UTF-8 and `repairing` is off (nothing useful was written);
    ///   with `repairing`, invalid bytes become U+FFFD.
    private func appendText(_ bytes: ArraySlice<UInt8>, to output: inout [UInt8], repairing: Bool) -> Bool {
        let plain = bytes.withUnsafeBufferPointer { buffer -> Bool in
            guard Self.isPlainText(UnsafeRawBufferPointer(buffer)) else { return false }
            output.append(contentsOf: buffer)
            return true
        }
        if plain { return true }
        if bytes.contains(where: { $0 >= 0x80 }) {
            let valid = bytes.withUnsafeBytes { String(validating: $0, as: UTF8.self) != nil }
            if !valid {
                guard repairing else { return false }
                Array(String(decoding: bytes, as: UTF8.self).utf8).withUnsafeBufferPointer { appendEscaped($0, to: &output) }
                return true
            }
        }
        bytes.withUnsafeBufferPointer { appendEscaped($0, to: &output) }
        return true
    }

    /// Whether every byte is ASCII from 0x20 up, other than `"` and `\`, so that the bytes go into a JSON string
    /// as they are. Eight bytes at a time: a payload printed as text is usually long and plain, and a byte at a
    /// time cost a 16 KiB payload more than the rest of its line, its write included.
    static func isPlainText(_ bytes: UnsafeRawBufferPointer) -> Bool {
        let ones: UInt64 = 0x0101_0101_0101_0101
        let highBits: UInt64 = 0x8080_8080_8080_8080
        let quotes = ones &* UInt64(UInt8(ascii: "\""))
        let backslashes = ones &* UInt64(UInt8(ascii: "\\"))
        // (x - n·ones) & ~x & highBits is nonzero exactly when some byte of x is below n, for n ≤ 0x80 (a borrow
        // only reaches a byte above one that was below n); n = 1 finds a zero byte, and a byte equal to c is a
        // zero byte of x ^ c·ones. A byte of 0x80 or more shows in x & highBits.
        func hasByteBelow(_ n: UInt64, _ word: UInt64) -> Bool { (word &- ones &* n) & ~word & highBits != 0 }
        var offset = 0
        while offset + 8 <= bytes.count {
            let word = bytes.loadUnaligned(fromByteOffset: offset, as: UInt64.self)
            if word & highBits != 0 || hasByteBelow(0x20, word) || hasByteBelow(1, word ^ quotes)
                || hasByteBelow(1, word ^ backslashes)
            {
                return false
            }
            offset += 8
        }
        while offset < bytes.count {
            let byte = bytes[offset]
            if byte < 0x20 || byte >= 0x80 || byte == UInt8(ascii: "\"") || byte == UInt8(ascii: "\\") { return false }
            offset += 1
        }
        return true
    }

    /// Appends bytes as the inside of a JSON string: runs that need no escape are copied whole.
    private func appendEscaped(_ bytes: UnsafeBufferPointer<UInt8>, to output: inout [UInt8]) {
        var runStart = bytes.startIndex
        var index = bytes.startIndex
        while index < bytes.endIndex {
            let byte = bytes[index]
            if byte >= 0x20 && byte != UInt8(ascii: "\"") && byte != UInt8(ascii: "\\") {
                index += 1
                continue
            }
            output.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[runStart..<index]))
            switch byte {
            case UInt8(ascii: "\""): appendLiteral(#"\""#, to: &output)
            case UInt8(ascii: "\\"): appendLiteral(#"\\"#, to: &output)
            case UInt8(ascii: "\n"): appendLiteral(#"\n"#, to: &output)
            case UInt8(ascii: "\r"): appendLiteral(#"\r"#, to: &output)
            case UInt8(ascii: "\t"): appendLiteral(#"\t"#, to: &output)
            default:
                appendLiteral(#"\u00"#, to: &output)
                output.append(UInt8(lowercaseHexDigit: byte >> 4))
                output.append(UInt8(lowercaseHexDigit: byte))
            }
            index += 1
            runStart = index
        }
        output.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[runStart..<index]))
    }

    private static let base64Alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)

    private func appendBase64(_ bytes: ArraySlice<UInt8>, to output: inout [UInt8]) {
        var index = bytes.startIndex
        while index + 3 <= bytes.endIndex {
            let value = UInt32(bytes[index]) << 16 | UInt32(bytes[index + 1]) << 8 | UInt32(bytes[index + 2])
            for shift in [18, 12, 6, 0] { output.append(Self.base64Alphabet[Int((value >> UInt32(shift)) & 0x3F)]) }
            index += 3
        }
        let remaining = bytes.endIndex - index
        guard remaining > 0 else { return }
        let value = UInt32(bytes[index]) << 16 | (remaining == 2 ? UInt32(bytes[index + 1]) << 8 : 0)
        output.append(Self.base64Alphabet[Int((value >> 18) & 0x3F)])
        output.append(Self.base64Alphabet[Int((value >> 12) & 0x3F)])
        output.append(remaining == 2 ? Self.base64Alphabet[Int((value >> 6) & 0x3F)] : UInt8(ascii: "="))
        output.append(UInt8(ascii: "="))
    }
}

/// Writes buffered output to a file descriptor: one `write` per batch, however many lines it holds.
public struct DescriptorWriter: Sendable {
    /// The descriptor.
    public let descriptor: Int32

    /// Creates a writer.
    /// - Parameter descriptor: for example `STDOUT_FILENO`.
    public init(descriptor: Int32) { self.descriptor = descriptor }

    /// Writes all of `bytes`, retrying after signals and partial writes.
    /// - Returns: `false` when the descriptor no longer takes output (a closed pipe, say).
    @discardableResult
    public func write(_ bytes: [UInt8]) -> Bool {
        bytes.withUnsafeBytes { buffer in
            var offset = 0
            while offset < buffer.count {
                let written = Glibc.write(descriptor, buffer.baseAddress! + offset, buffer.count - offset)
                if written < 0 {
                    if errno == EINTR { continue }
                    return false
                }
                offset += written
            }
            return true
        }
    }
}

/// One JSON line of ``MessageLineEncoder``, read back without a JSON decoder: a line may carry a large
/// payload, and readers (benchmarks, tests, scripts) need only the small fields around it.
///
/// `latency_us` comes before the payload; every other field comes after it, so those are found from the end
/// of the line, and a payload that happens to contain the text of a key cannot be mistaken for it.
public struct MessageLine: Sendable, Equatable {
    /// The topic.
    public var topic: String
    /// The publisher's identity, as text.
    public var publisher: String
    /// The sequence number.
    public var sequence: UInt64
    /// When the publisher sent it, in nanoseconds since the Unix epoch.
    public var sentAt: UInt64
    /// The latency the subscriber measured, in microseconds.
    public var latencyMicroseconds: Int64
    /// The payload's size in bytes.
    public var size: Int

    /// Parses a line; `nil` for anything that is not a message line.
    /// - Parameter line: the line's bytes, without its newline.
    public init?(_ line: ArraySlice<UInt8>) {
        guard let latency = Self.number(after: Self.latencyKey, in: line, fromEnd: false),
            let sequence = Self.number(after: Self.sequenceKey, in: line, fromEnd: true), !sequence.negative,
            let sentAt = Self.number(after: Self.sentAtKey, in: line, fromEnd: true), !sentAt.negative,
            let size = Self.number(after: Self.sizeKey, in: line, fromEnd: true), !size.negative,
            let topic = Self.string(after: Self.topicKey, in: line),
            let publisher = Self.string(after: Self.publisherKey, in: line)
        else { return nil }
        self.topic = topic
        self.publisher = publisher
        self.sequence = sequence.magnitude
        self.sentAt = sentAt.magnitude
        let magnitude = Int64(clamping: latency.magnitude)
        self.latencyMicroseconds = latency.negative ? -magnitude : magnitude
        self.size = Int(clamping: size.magnitude)
    }

    /// Parses a line given as text.
    /// - Parameter line: the line, without its newline.
    public init?(_ line: String) { self.init(Array(line.utf8)[...]) }

    private static let latencyKey = Array("\"latency_us\":".utf8)
    private static let sequenceKey = Array(",\"seq\":".utf8)
    private static let sentAtKey = Array(",\"sent_at_ns\":".utf8)
    private static let sizeKey = Array(",\"size\":".utf8)
    private static let topicKey = Array(",\"topic\":\"".utf8)
    private static let publisherKey = Array(",\"publisher\":\"".utf8)

    /// Where `key` ends in `line`, searching from the start or (past a long payload) from the end.
    private static func end(of key: [UInt8], in line: ArraySlice<UInt8>, fromEnd: Bool) -> Int? {
        guard line.count >= key.count else { return nil }
        let first = line.startIndex
        let last = line.endIndex - key.count
        var start = fromEnd ? last : first
        while fromEnd ? start >= first : start <= last {
            if line[start] == key[0], line[start..<(start + key.count)].elementsEqual(key) { return start + key.count }
            start += fromEnd ? -1 : 1
        }
        return nil
    }

    /// The number after `key`, as a sign and a magnitude; a number beyond 64 bits saturates.
    private static func number(
        after key: [UInt8], in line: ArraySlice<UInt8>, fromEnd: Bool
    ) -> (negative: Bool, magnitude: UInt64)? {
        guard var index = end(of: key, in: line, fromEnd: fromEnd) else { return nil }
        var negative = false
        if index < line.endIndex, line[index] == UInt8(ascii: "-") {
            negative = true
            index += 1
        }
        var value: UInt64 = 0
        var digits = 0
        while index < line.endIndex, line[index] >= 48, line[index] <= 57 {
            let (times, overflow1) = value.multipliedReportingOverflow(by: 10)
            let (sum, overflow2) = times.addingReportingOverflow(UInt64(line[index] - 48))
            value = overflow1 || overflow2 ? .max : sum
            index += 1
            digits += 1
        }
        guard digits > 0 else { return nil }
        return (negative, value)
    }

    /// The string after `key`, searched from the end, with the escapes a topic name may need undone.
    private static func string(after key: [UInt8], in line: ArraySlice<UInt8>) -> String? {
        guard var index = end(of: key, in: line, fromEnd: true) else { return nil }
        var bytes: [UInt8] = []
        while index < line.endIndex {
            let byte = line[index]
            if byte == UInt8(ascii: "\"") { return String(decoding: bytes, as: UTF8.self) }
            if byte == UInt8(ascii: "\\"), index + 1 < line.endIndex {
                index += 1
                bytes.append(line[index] == UInt8(ascii: "n") ? UInt8(ascii: "\n") : line[index])
            } else {
                bytes.append(byte)
            }
            index += 1
        }
        return nil
    }
}

/// The line `herald subscribe` writes to standard error when it stops:
/// `herald subscribe: received N, lost L, duplicates D, reordered R (from P publishers)`.
/// One type writes it and reads it back, for the benchmark, the tests and scripts.
public struct SubscriptionSummary: Sendable, Equatable, CustomStringConvertible {
    /// Messages printed, each once and in order.
    public var received: Int
    /// Messages the sequencer counted as lost; saturates at 2^64 - 1 when a sender forges sequence numbers.
    public var lost: UInt64
    /// Duplicates dropped.
    public var duplicates: UInt64
    /// Messages that arrived out of order and were put back in order.
    public var reordered: UInt64
    /// Publishers heard from.
    public var publishers: Int

    /// - Parameters: see the properties.
    public init(received: Int, lost: UInt64, duplicates: UInt64, reordered: UInt64, publishers: Int) {
        self.received = received
        self.lost = lost
        self.duplicates = duplicates
        self.reordered = reordered
        self.publishers = publishers
    }

    private static let prefix = "herald subscribe: received "

    /// Parses the summary line, also inside a longer line; `nil` for any other line.
    public init?(line: some StringProtocol) {
        guard let start = line.firstRange(of: Self.prefix) else { return nil }
        let numbers = line[start.upperBound...].split(whereSeparator: { !$0.isNumber }).compactMap { UInt64($0) }
        guard numbers.count == 5 else { return nil }
        received = Int(clamping: numbers[0])
        lost = numbers[1]
        duplicates = numbers[2]
        reordered = numbers[3]
        publishers = Int(clamping: numbers[4])
    }

    /// The line, with its newline.
    public var line: String { "herald subscribe: \(description)\n" }

    /// The counts, as the line shows them.
    public var description: String {
        "received \(received), lost \(lost), duplicates \(duplicates), reordered \(reordered) (from \(publishers) publishers)"
    }
}
