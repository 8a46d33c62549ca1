import Foundation
import TestSupport
import Testing

@testable import Herald

@Suite("Wire format and input validation")
struct WireFormatTests {
    @Test func dataFramesRoundTrip() throws {
        let header = MessageHeader(publisher: PublisherID(), sequence: 0x0102_0304_0506_0708, sentAt: 1_700_000_000_123_456_789)
        let frames = DataFrames(topic: "weather", header: header, payload: [1, 2, 3]).frames
        let decoded = try #require(DataFrames(frames: frames[...]))
        #expect(decoded.topic == "weather")
        #expect(decoded.header == header)
        #expect(decoded.payload == [1, 2, 3])
    }

    @Test func topicKeysMatchWholeNamesOnly() {
        // ZeroMQ filters by prefix; the terminating zero byte makes "weather" not a prefix of "weatherX".
        let weather: Topic = "weather"
        let weatherX: Topic = "weatherX"
        #expect(!weatherX.key.starts(with: weather.key))
    }

    @Test(arguments: [
        [[UInt8]](), [[0]], [Array("t".utf8)], [Array("t".utf8) + [0], [1, 2], []],
        [Array("t".utf8) + [0], Array(repeating: 9, count: MessageHeader.encodedSize), []],
        [[0x74, 0x00, 0x00], Array(repeating: 1, count: MessageHeader.encodedSize), []],
    ])
    func malformedFramesAreRejected(_ frames: [[UInt8]]) {
        #expect(DataFrames(frames: frames[...]) == nil)
    }

    @Test(arguments: ["", String(repeating: "x", count: Topic.maximumLength + 1), "bad\u{0}topic", "tab\there", "new\nline"])
    func invalidTopicNamesAreRefusedWithAReason(_ name: String) {
        #expect(throws: HeraldConfigurationError.self) { try Topic(name) }
    }

    @Test(arguments: ["weather", "a/b/c", "métro", String(repeating: "x", count: Topic.maximumLength)])
    func validTopicNamesAreAccepted(_ name: String) throws {
        #expect(try Topic(name).name == name)
    }

    @Test func leaderRecordsRoundTripThroughJSON() throws {
        let record = LeaderRecord(broker: "b1", mode: .direct, requestEndpoint: "tcp://h:1", subscriberEndpoint: "tcp://h:2")
        #expect(LeaderRecord(decoding: record.encoded()) == record)
        #expect(LeaderRecord(decoding: Array("not json".utf8)) == nil)
    }

    @Test func advertisedEndpointsNameAReachableHost() {
        #expect(NetworkAddress.advertised("tcp://0.0.0.0:5555", bindHost: "0.0.0.0", advertiseHost: "broker-1") == "tcp://broker-1:5555")
        #expect(NetworkAddress.advertised("tcp://127.0.0.1:41000", bindHost: "127.0.0.1", advertiseHost: nil) == "tcp://127.0.0.1:41000")
        #expect(!NetworkAddress.advertised("tcp://0.0.0.0:5555", bindHost: "0.0.0.0", advertiseHost: nil).contains("0.0.0.0"))
    }

    @Test func ringKeepsTheNewestElements() {
        var ring = Ring<Int>(capacity: 3)
        for value in 1...5 { ring.append(value) }
        #expect(ring.elements == [3, 4, 5])
        ring.resize(to: 2)
        #expect(ring.elements == [4, 5])
        ring.resize(to: 4)
        ring.append(6)
        #expect(ring.elements == [4, 5, 6])
    }
}
