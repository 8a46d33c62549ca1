import Foundation
import TestSupport
import Testing

@testable import Herald

/// A data frame for `topic`, as a publisher encodes it.
func dataFrame(topic: Topic, header: MessageHeader, payload: [UInt8]) -> [UInt8] {
    DataLayout.frame(key: topic.key, header: header, payload: payload)
}

@Suite("Wire format and input validation")
struct WireFormatTests {
    @Test func aDataFrameRoundTripsInOneFrame() throws {
        let header = MessageHeader(publisher: PublisherID(), sequence: 0x0102_0304_0506_0708, sentAt: 1_700_000_000_123_456_789)
        let frame = dataFrame(topic: "weather", header: header, payload: [1, 2, 3])
        #expect(frame.count == 2 + 7 + 1 + WireFormat.headerSize + 3)
        let layout = try frame.withUnsafeBytes { try DataLayout.decode($0).get() }
        #expect(layout.header == header)
        #expect(Array(frame[layout.topic]) == Array("weather".utf8))
        #expect(Array(frame[layout.payload]) == [1, 2, 3])
        #expect(Array(frame[layout.topicKey]) == Topic("weather").key)
    }

    @Test func topicKeysMatchWholeNamesOnly() {
        // ZeroMQ filters by prefix; the terminating zero byte makes "weather" not a prefix of "weatherX".
        let weather: Topic = "weather"
        let weatherX: Topic = "weatherX"
        #expect(!weatherX.key.starts(with: weather.key))
        #expect(weather.key.starts(with: [WireFormat.version, WireFormat.Kind.data.rawValue]))
    }

    static let header: [UInt8] = Array(repeating: 0xAB, count: 16) + [0, 0, 0, 0, 0, 0, 0, 1] + Array(repeating: 0, count: 8)

    @Test(arguments: [
        ([], WireFormat.DecodeFailure.truncated),
        ([0], .truncated),
        ([2], .versionMismatch),
        ([1], .versionMismatch),
        ([5], .versionMismatch),
        ([3, 1] + Array("t".utf8) + [0] + header, .versionMismatch),
        ([0x74, 0x00, 0x00], .unknownKind),
        ([2, 99], .unknownKind),
        ([2, 1, 0] + header, .badTopic),
        ([2, 1] + Array("t".utf8), .truncated),
        ([2, 1] + Array(repeating: UInt8(ascii: "t"), count: 300) + [0] + header, .badTopic),
        ([2, 1] + Array("t".utf8) + [0] + header.prefix(20), .truncated),
        ([2, 1] + Array("t".utf8) + [0] + header.prefix(16) + Array(repeating: 0, count: 16), .badSequence),
    ] as [([UInt8], WireFormat.DecodeFailure)])
    func malformedDataFramesAreRejectedWithAReason(_ frame: [UInt8], _ reason: WireFormat.DecodeFailure) {
        let result = frame.withUnsafeBytes { DataLayout.decode($0) }
        #expect(throws: reason) { try result.get() }
    }

    @Test func aVersionOneRequestIsRecognised() {
        // Version 1 began every client message with a one-byte frame holding its kind.
        for kind: UInt8 in 1...7 { #expect([kind].withUnsafeBytes { WireFormat.foreignVersion(of: $0) } == 1) }
        #expect([UInt8(0)].withUnsafeBytes { WireFormat.foreignVersion(of: $0) } == nil)
    }

    @Test func controlFramesRoundTripAndRefuseGarbage() throws {
        let request = SubscribeRequest(topics: ["a", "b"], window: 1 << 20, history: 5, resume: nil, since: nil)
        let frame = ControlFrame.encode(.subscribe, request)
        #expect(Array(frame.prefix(2)) == [WireFormat.version, WireFormat.Kind.subscribe.rawValue])
        #expect(try frame.withUnsafeBytes { try ControlFrame.decode(SubscribeRequest.self, from: $0).get() } == request)
        let garbage: [UInt8] = [2, 6] + Array("{not json".utf8)
        #expect(throws: WireFormat.DecodeFailure.badBody) {
            try garbage.withUnsafeBytes { try ControlFrame.decode(SubscribeRequest.self, from: $0).get() }
        }
        let count = ControlFrame.count(.credit, 0x0102_0304_0506_0708)
        #expect(try count.withUnsafeBytes { try ControlFrame.decodeCount($0).get() } == 0x0102_0304_0506_0708)
        #expect(throws: WireFormat.DecodeFailure.truncated) {
            try [UInt8](count.prefix(9)).withUnsafeBytes { try ControlFrame.decodeCount($0).get() }
        }
    }

    @Test func aSubscribeRequestWithTooManyStreamsToResumeShrinksToWhatALeaderAccepts() throws {
        // 30,000 invented publishers on one topic: about 1.6 MB of resume entries, over the 1 MiB limit.
        var streams: [String: UInt64] = [:]
        for number in 0..<30_000 { streams[PublisherID(high: UInt64(number), low: 1).description] = UInt64(number) + 1 }
        let request = SubscribeRequest(topics: ["t"], window: 1 << 20, history: nil, resume: ["t": streams], since: 7)
        #expect(ControlFrame.encode(.subscribe, request).count > WireFormat.maximumControlBody + 2)

        let frame = request.encodedWithinLimit()
        #expect(frame.count <= WireFormat.maximumControlBody + 2)
        let decoded = try frame.withUnsafeBytes { try ControlFrame.decode(SubscribeRequest.self, from: $0).get() }
        let kept = try #require(decoded.resume?["t"])
        #expect(kept.count >= 7_500, "shrinks by halves, no further than needed")
        #expect(kept.allSatisfy { streams[$0.key] == $0.value }, "what is kept is unchanged")
        #expect(decoded.since == 7)
        // A request that fits is sent as it is.
        let small = SubscribeRequest(topics: ["t"], window: 1 << 20, history: nil, resume: ["t": ["x": 1]], since: 7)
        #expect(small.encodedWithinLimit() == ControlFrame.encode(.subscribe, small))
    }

    @Test func publisherIdentitiesRoundTripThroughTextAndJSON() throws {
        let publisher = PublisherID()
        #expect(PublisherID(publisher.description) == publisher)
        #expect(PublisherID(uuid: publisher.uuid) == publisher)
        let encoded = try JSONEncoder().encode([publisher])
        #expect(try JSONDecoder().decode([PublisherID].self, from: encoded) == [publisher])
        #expect(PublisherID("not a uuid") == nil)
    }

    @Test(arguments: ["", String(repeating: "x", count: Topic.maximumLength + 1), "bad\u{0}topic", "tab\there", "new\nline"])
    func invalidTopicNamesAreRefusedWithAReason(_ name: String) {
        #expect(throws: HeraldConfigurationError.self) { try Topic(name) }
        #expect(Array(name.utf8).withUnsafeBytes { Topic(validating: $0) } == nil)
    }

    @Test(arguments: ["weather", "a/b/c", "métro", String(repeating: "x", count: Topic.maximumLength)])
    func validTopicNamesAreAccepted(_ name: String) throws {
        #expect(try Topic(name).name == name)
        #expect(Array(name.utf8).withUnsafeBytes { Topic(validating: $0) }?.name == name)
    }

    @Test func invalidUTF8IsNotATopic() {
        #expect([UInt8]([0x61, 0xFF, 0x62]).withUnsafeBytes { Topic(validating: $0) } == nil)
    }

    @Test func leaderRecordsRoundTripThroughJSONAndVersionOneRecordsAreRecognised() throws {
        let record = LeaderRecord(
            broker: "b1", mode: .direct, requestEndpoint: "tcp://h:1", subscriberEndpoint: "tcp://h:2", epoch: 7 << 20 | 2)
        #expect(LeaderRecord(decoding: record.encoded()) == record)
        #expect(record.speaksThisVersion)
        #expect(LeaderRecord(decoding: Array("not json".utf8)) == nil)
        let versionOne = #"{"broker":"b1","mode":"broker","requestEndpoint":"tcp://h:1","subscriberEndpoint":"tcp://h:2"}"#
        let old = try #require(LeaderRecord(decoding: Array(versionOne.utf8)))
        #expect(old.protocolVersion == 1)
        #expect(!old.speaksThisVersion)
        #expect(LeaderRecord(decoding: [UInt8](repeating: 0x20, count: LeaderRecord.maximumEncodedSize + 1)) == nil)
    }

    @Test func advertisedEndpointsNameAReachableHost() {
        #expect(NetworkAddress.advertised("tcp://0.0.0.0:5555", bindHost: "0.0.0.0", advertiseHost: "broker-1") == "tcp://broker-1:5555")
        #expect(NetworkAddress.advertised("tcp://127.0.0.1:41000", bindHost: "127.0.0.1", advertiseHost: nil) == "tcp://127.0.0.1:41000")
        #expect(!NetworkAddress.advertised("tcp://0.0.0.0:5555", bindHost: "0.0.0.0", advertiseHost: nil).contains("0.0.0.0"))
    }
}

@Suite("Data structures of the data path")
struct DataStructureTests {
    @Test func aRingKeepsItsNumberingWhileItGrowsAndDrops() {
        var ring = Ring<Int>(initialCapacity: 2)
        for value in 0..<10 { ring.append(value) }
        #expect(ring.count == 10)
        #expect(ring.firstIndex == 0 && ring.endIndex == 10)
        for _ in 0..<4 { _ = ring.removeFirst() }
        #expect(ring.firstIndex == 4)
        #expect(ring.withElement(at: 3) { $0 } == nil, "dropped")
        #expect(ring.withElement(at: 4) { $0 } == 4)
        #expect(ring.withElement(at: 9) { $0 } == 9)
        #expect(ring.withElement(at: 10) { $0 } == nil, "not yet appended")
        for value in 10..<20 { ring.append(value) }
        #expect((4..<20).allSatisfy { index in ring.withElement(at: UInt64(index)) { $0 } == index })
    }

    @Test func aNameIndexFindsNamesByTheirBytes() {
        var index = NameIndex()
        let names = (0..<100).map { "topic-\($0)" }
        for name in names { Array(name.utf8).withUnsafeBytes { _ = index.insert($0) } }
        for (number, name) in names.enumerated() {
            #expect(Array(name.utf8).withUnsafeBytes { index.find($0) } == number)
        }
        #expect(Array("topic-100".utf8).withUnsafeBytes { index.find($0) } == nil)
        #expect(Array("".utf8).withUnsafeBytes { index.find($0) } == nil)
    }

    @Test func routingIDsAreKeptInlineAndLongOnesRefused() throws {
        let bytes: [UInt8] = [0, 1, 2, 3, 4]
        let id = try #require(bytes.withUnsafeBytes { RoutingID($0) })
        #expect(id.withUnsafeBytes { Array($0) } == bytes)
        #expect(bytes.withUnsafeBytes { RoutingID($0) } == id)
        #expect([UInt8](repeating: 1, count: 33).withUnsafeBytes { RoutingID($0) } == nil)
        #expect([UInt8]().withUnsafeBytes { RoutingID($0) } == nil)
    }

    @Test func theRetentionBufferWrapsDropsTheOldestAndReadsBackInOrder() {
        var buffer = RetentionBuffer(capacity: 256)
        var dropped: [RetentionBuffer.Position] = []
        var positions: [RetentionBuffer.Position] = []
        for value in 0..<20 {
            let size = 10 + value % 7
            positions.append(
                buffer.append(size: size, now: UInt64(value), dropping: { dropped.append($0) }) {
                    $0.initializeMemory(as: UInt8.self, repeating: UInt8(value))
                })
        }
        #expect(!dropped.isEmpty, "a 256-byte buffer cannot hold 20 entries")
        #expect(dropped == Array(positions.prefix(dropped.count)), "the oldest go first")
        #expect(buffer.count == 20 - dropped.count)
        var position = buffer.start
        var values: [UInt8] = []
        while let (bytes, next) = buffer.frame(at: position) {
            #expect(Set(bytes).count == 1)
            values.append(bytes[0])
            position = next
        }
        #expect(values == (UInt8(dropped.count)..<20).map { $0 })
        #expect(buffer.oldestPublishedAt == UInt64(dropped.count))
        #expect(buffer.endNumber == 20)
    }
}
