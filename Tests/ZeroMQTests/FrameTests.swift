import Foundation
import Testing
import ZeroMQ

@Suite("Frames: the allocation-free data path")
struct FrameTests {
    let context: ZMQContext

    init() throws {
        context = try ZMQContext()
    }

    private func pipe(_ name: String) throws -> (push: ZMQSocket, pull: ZMQSocket) {
        let pull = try ZMQSocket(context: context, type: .pull)
        try pull.bind("inproc://\(name)")
        let push = try ZMQSocket(context: context, type: .push)
        try push.connect("inproc://\(name)")
        return (push, pull)
    }

    @Test func aSentFrameArrivesIntactAndLeavesTheSenderEmpty() throws {
        let (push, pull) = try pipe("frame-round-trip")
        for size in [0, 1, 33, 34, 100_000] {
            let bytes = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 31) }
            var frame = try ZMQFrame(bytes)
            let count = frame.count
            #expect(count == size)
            try push.send(&frame)
            let taken = frame.isEmpty
            #expect(taken, "libzmq took the content")
            var received = ZMQFrame()
            let more = try pull.receive(into: &received)
            #expect(!more)
            let content = received.bytes
            #expect(content == bytes, "size \(size)")
        }
    }

    @Test func aSharedFrameOutlivesTheOriginalBeingSentAndReleased() throws {
        let (push, pull) = try pipe("frame-share")
        for size in [10, 1000] {
            let bytes = [UInt8](repeating: 0x5A, count: size)
            var original = try ZMQFrame(bytes)
            let kept = try original.share()
            try push.send(&original)
            var received = ZMQFrame()
            _ = try pull.receive(into: &received)
            received.clear()
            let content = kept.bytes
            #expect(content == bytes, "the shared copy still reads the content (size \(size))")
        }
    }

    @Test func framesOfAMultipartMessageReportWhetherMoreFollow() throws {
        let (push, pull) = try pipe("frame-more")
        var one = try ZMQFrame([1])
        var two = try ZMQFrame([2, 2])
        var three = try ZMQFrame([3, 3, 3])
        try push.send(&one, more: true)
        try push.send(&two, more: true)
        try push.send(&three)
        var nine = try ZMQFrame([9])
        try push.send(&nine)

        var frame = ZMQFrame()
        #expect(try pull.receive(into: &frame) == true)
        let first = frame.bytes
        #expect(first == [1])
        #expect(pull.discardRemainingFrames() == 2, "the rest of the message is dropped")
        #expect(try pull.receive(into: &frame) == false)
        let next = frame.bytes
        #expect(next == [9], "the next message starts cleanly")
    }

    @Test func aFailedSendLeavesTheFrameWithItsContent() throws {
        let push = try ZMQSocket(context: context, type: .push)
        // Queue only to completed connections, and nobody listens: the send cannot go anywhere.
        try push.set(.immediate(true))
        try push.connect("tcp://127.0.0.1:1")
        var frame = try ZMQFrame([1, 2, 3])
        #expect(throws: ZMQError.self) { try push.send(&frame, dontWait: true) }
        let kept = frame.bytes
        #expect(kept == [1, 2, 3])
    }

    @Test func aPeerSendingMoreThanTheMaximumMessageSizeIsCutOff() throws {
        let pull = try ZMQSocket(context: context, type: .pull)
        try pull.set(.maximumMessageSize(1024))
        try pull.set(.receiveTimeout(.milliseconds(500)))
        let endpoint = try pull.bind("tcp://127.0.0.1:*")
        let push = try ZMQSocket(context: context, type: .push)
        try push.connect(endpoint)
        try push.send(ZMQMessage([UInt8](repeating: 1, count: 2048)))
        var frame = ZMQFrame()
        #expect(throws: ZMQError.self, "the oversized message is never delivered") {
            _ = try pull.receive(into: &frame)
        }
    }
}
