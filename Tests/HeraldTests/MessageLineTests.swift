import Foundation
import Testing

@testable import Herald

@Suite("Message lines: what herald subscribe prints, and reading it back")
struct MessageLineTests {
    let publisher = PublisherID()

    func message(_ payload: [UInt8], topic: Topic = "weather", sequence: UInt64 = 7) -> ReceivedMessage {
        ReceivedMessage(
            topic: topic, header: MessageHeader(publisher: publisher, sequence: sequence, sentAt: 1_000_000),
            payload: payload[...], receivedAt: 1_250_000)
    }

    func line(_ message: ReceivedMessage, json: Bool = true, payload: MessageLineEncoder.PayloadStyle = .auto) -> String {
        var output: [UInt8] = []
        MessageLineEncoder(json: json, payload: payload).append(message, to: &output)
        #expect(output.last == UInt8(ascii: "\n"))
        return String(decoding: output.dropLast(), as: UTF8.self)
    }

    func object(_ line: String) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
    }

    @Test(arguments: ["sunny", "", "a \"quoted\" \\ back\\slash", "line\nbreak\ttab\u{1}", "métro 東京"])
    func textPayloadsArePrintedAsValidJSONStrings(_ text: String) throws {
        let fields = try object(line(message(Array(text.utf8))))
        #expect(fields["payload"] as? String == text)
        #expect(fields["payload_base64"] == nil)
        #expect(fields["seq"] as? Int == 7)
        #expect(fields["latency_us"] as? Int == 250)
        #expect(fields["publisher"] as? String == publisher.description)
        #expect(fields["topic"] as? String == "weather")
        #expect(fields["size"] as? Int == text.utf8.count)
    }

    @Test func theWordAtATimeScanFindsEveryByteThatNeedsAnEscapeWhereverItIs() {
        func plainByteByByte(_ bytes: some Collection<UInt8>) -> Bool {
            bytes.allSatisfy { $0 >= 0x20 && $0 < 0x80 && $0 != UInt8(ascii: "\"") && $0 != UInt8(ascii: "\\") }
        }
        // Every byte value at every place of a buffer one word and a few bytes long, read from every alignment.
        var buffer = Array(repeating: UInt8(ascii: "a"), count: 20)
        for start in 0..<4 {
            for place in start..<buffer.count {
                for value in UInt8.min...UInt8.max {
                    buffer[place] = value
                    let slice = buffer[start...]
                    let plain = slice.withUnsafeBytes { MessageLineEncoder.isPlainText($0) }
                    #expect(plain == plainByteByByte(slice), "byte \(value) at \(place), from \(start)")
                    buffer[place] = UInt8(ascii: "a")
                }
            }
        }
        // Bytes just around the bounds, mixed into one word.
        let edges: [UInt8] = [0x1F, 0x20, 0x21, 0x22, 0x23, 0x5B, 0x5C, 0x5D, 0x7F, 0x80, 0xFF, 0x00, 0x01]
        for first in edges {
            for second in edges {
                let word = [0x41, first, 0x42, 0x43, second, 0x44, 0x45, 0x46] as [UInt8]
                #expect(word.withUnsafeBytes { MessageLineEncoder.isPlainText($0) } == plainByteByByte(word))
            }
        }
    }

    @Test func bytesThatAreNotUTF8ArePrintedAsBase64() throws {
        let bytes: [UInt8] = [0xFF, 0x00, 0x41, 0xC3]
        let fields = try object(line(message(bytes)))
        #expect(fields["payload"] == nil)
        #expect(fields["payload_base64"] as? String == Data(bytes).base64EncodedString())
        let text = try object(line(message(bytes), payload: .text))
        #expect(text["payload"] as? String == String(decoding: bytes, as: UTF8.self), "repaired with U+FFFD")
        for count in 0..<5 {
            let bytes = Array(repeating: UInt8(0x9F), count: count)
            let base64 = try object(line(message(bytes), payload: .base64))
            #expect(base64["payload_base64"] as? String == Data(bytes).base64EncodedString())
        }
        let none = try object(line(message(bytes), payload: .none))
        #expect(none["payload"] == nil && none["payload_base64"] == nil && none["size"] as? Int == 4)
    }

    @Test func linesAreReadBackWithoutAJSONDecoder() throws {
        let tricky = Array(#"{"seq":99,"topic":"x","publisher":"y"}"#.utf8)
        let printed = line(message(tricky, topic: "a\"b", sequence: .max))
        let parsed = try #require(MessageLine(printed))
        #expect(parsed.sequence == .max)
        #expect(parsed.topic == "a\"b")
        #expect(parsed.publisher == publisher.description)
        #expect(parsed.sentAt == 1_000_000)
        #expect(parsed.latencyMicroseconds == 250)
        #expect(parsed.size == tricky.count)
        #expect(MessageLine("not a message line") == nil)
    }

    @Test func plainLinesShowAShortIdentityAndAPrintablePrefix() {
        let printed = line(message(Array("sunny\u{7}".utf8)), json: false)
        #expect(printed == "weather publisher=\(publisher.short) seq=7 latency_ms=0.250 sunny.")
    }

    @Test func publisherIdentitiesPrintAsLowerCaseUUIDs() {
        #expect(publisher.description == publisher.uuid.uuidString.lowercased())
        #expect(publisher.short == String(publisher.description.prefix(8)))
    }
}

@Suite("The subscriber's closing line and number formatting")
struct SummaryAndFormattingTests {
    @Test func theSummaryLineIsReadBackAsWritten() {
        let summary = SubscriptionSummary(
            received: 2026, lost: 869_558, duplicates: 3, reordered: 1, publishers: 2)
        #expect(summary.line == "herald subscribe: received 2026, lost 869558, duplicates 3, reordered 1 (from 2 publishers)\n")
        #expect(SubscriptionSummary(line: summary.line.dropLast()) == summary)
        #expect(SubscriptionSummary(line: "2026-11-30T21:00:00+0000 " + summary.line) == summary, "found inside a longer line")
        #expect(SubscriptionSummary(line: "herald subscribe: received 5, lost 0") == nil, "a cut line is not a summary")
    }

    @Test func decimalsAreRoundedToTheGivenPlaces() {
        #expect(1.5.decimal(2) == "1.50")
        #expect(0.04.decimal(1) == "0.0")
        #expect(0.05.decimal(1) == "0.1")
        #expect((-2.346).decimal(2) == "-2.35")
        #expect((-0.001).decimal(1) == "0.0", "no negative zero")
        #expect(1234567.0.decimal(0) == "1234567")
        #expect(Double.nan.decimal(1) == "nan")
    }

    @Test func whitespaceIsTrimmedAtBothEndsOnly() {
        #expect("  a b\t\n".trimmingWhitespace() == "a b")
        #expect(" \t ".trimmingWhitespace() == "")
        #expect("x".trimmingWhitespace() == "x")
    }
}
