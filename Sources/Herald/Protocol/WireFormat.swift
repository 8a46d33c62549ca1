import FoundationEssentials
import ZeroMQ

#if canImport(Glibc)
    import Glibc
#endif

/// Herald's wire format, version 2: every message is a single ZeroMQ frame that starts with the version and
/// a kind byte.
///
/// A data message carries its topic, header and payload in that one frame:
///
/// ```
/// offset   size  field
/// 0        1     version (2)
/// 1        1     kind (1: data)
/// 2        n     topic, UTF-8, 1 to 255 bytes
/// 2+n      1     0, ending the topic
/// 3+n      16    publisher identity
/// 19+n     8     sequence number, big-endian, from 1
/// 27+n     8     send time, nanoseconds since the Unix epoch, big-endian
/// 35+n     ...   payload
/// ```
///
/// The first `3+n` bytes are the topic's key: a direct-mode subscriber subscribes to exactly that prefix, so
/// ZeroMQ's prefix filter matches whole topic names only, and the broker forwards the frame it received
/// without looking further than the header. Control messages are `version, kind, body`, where the body is JSON
/// (``ControlMessage``) or, for the two flow-control kinds, one big-endian 64-bit count.
///
/// A batch carries several data frames of one topic and one publisher, numbered one after the other, in one
/// frame: `version, kind (12)`, then for each message its data frame's length (32 bits, big-endian) and the
/// data frame itself (``DataRun``). A publisher sends one when messages wait for the connection, so that under
/// load libzmq, the kernel and the broker pay their per-frame costs once per batch, not once per message.
///
/// Version 1 sent several frames per message and began requests with a one-byte frame; a version 2 process
/// that meets one says that the versions differ instead of counting garbage.
enum WireFormat {
    /// The version this build speaks.
    static let version: UInt8 = 2
    /// Size of the header after the topic key: publisher, sequence number and send time.
    static let headerSize = 16 + 8 + 8
    /// Bytes a data frame adds to the topic name and the payload: version, kind, the topic's end and the header.
    static let dataOverhead = 3 + headerSize
    /// The largest control body accepted: control messages are small, a bigger one is garbage or an attack on
    /// the parser.
    static let maximumControlBody = 1 << 20

    /// The kinds of message, in the second byte.
    enum Kind: UInt8, Sendable, CaseIterable {
        /// A published message; from a publisher to the leader (broker mode), from a publisher to its
        /// subscribers (direct mode), and from the leader to its subscribers.
        case data = 1
        /// Publisher to leader, JSON ``PublisherRegistration``: on attaching, then every heartbeat interval.
        case register = 2
        /// Publisher to leader, JSON ``PublisherRegistration``: a clean stop.
        case unregister = 3
        /// Direct-mode subscriber to leader, JSON ``DiscoveryQuery``; the reply has the same kind, JSON
        /// ``DiscoveryReply``.
        case lookup = 4
        /// Anyone to leader, empty body; the reply has the same kind, JSON ``BrokerStatus``.
        case status = 5
        /// Subscriber to leader (broker mode), JSON ``SubscribeRequest``: on attaching, and to recover.
        case subscribe = 6
        /// Leader to subscriber, JSON ``SubscribeReply``.
        case subscribed = 7
        /// Leader to publisher, 8 bytes: how many data bytes the publisher may have sent on this connection
        /// in all (a cumulative limit, so that a lost grant is made good by the next one).
        case credit = 8
        /// Subscriber to leader, 8 bytes: how many data bytes it has taken from this connection in all;
        /// also its keep-alive.
        case consumed = 9
        /// Leader to client, JSON ``Refusal``: a request was refused, and why.
        case refused = 10
        /// Leader to subscriber (broker mode), JSON ``OwnershipReport``: who owns the exclusive topics it
        /// follows; sent when it subscribes and when an owner changes.
        case owners = 11
        /// Several data frames of one topic and publisher (``DataRun``): from a publisher to a leader that
        /// takes batches (``LeaderRecord/batchBytes``), and from the leader to subscribers that take one that
        /// large (``SubscribeRequest/batchBytes``).
        case batch = 12
        /// Leader to subscriber (broker mode), JSON ``SkippedNotice``: messages of a topic left the log before this
        /// subscriber was sent them; to subscribers that ask for it (``SubscribeRequest/skipNotices``).
        case skipped = 13
    }

    /// Why a frame could not be decoded; counted by reason on brokers and clients.
    enum DecodeFailure: String, Error, Sendable, CaseIterable {
        /// Shorter than its kind needs, or a body of the wrong size.
        case truncated
        /// A kind this version does not know, or one that the receiver never accepts.
        case unknownKind = "unknown_kind"
        /// A data frame whose topic is not a valid name or not ended.
        case badTopic = "bad_topic"
        /// A batch whose messages are not of one topic and one publisher, numbered one after the other.
        case badBatch = "bad_batch"
        /// Sequence number 0: numbering starts at 1.
        case badSequence = "bad_sequence"
        /// A JSON body that does not parse, has the wrong shape, or is larger than allowed.
        case badBody = "bad_body"
        /// A message of Herald's version 1 or of a version newer than this one.
        case versionMismatch = "version_mismatch"
        /// A message made of more frames than this version ever sends.
        case extraFrames = "extra_frames"
    }

    /// The version a frame that is not version 2 seems to be, for telling the user what to upgrade.
    static func foreignVersion(of frame: UnsafeRawBufferPointer) -> UInt8? {
        // Version 1 began every client message with a frame of just its kind (1 to 7).
        if frame.count == 1, (1...7).contains(frame[0]) { return 1 }
        if frame.count >= 2, frame[0] > version, frame[0] < 16 { return frame[0] }
        return nil
    }

    /// The kind of a version 2 frame.
    static func kind(of frame: UnsafeRawBufferPointer) -> Result<Kind, DecodeFailure> {
        guard frame.count >= 2 else {
            return .failure(foreignVersion(of: frame) != nil ? .versionMismatch : .truncated)
        }
        guard frame[0] == version else {
            return .failure(foreignVersion(of: frame) != nil ? .versionMismatch : .unknownKind)
        }
        guard let kind = Kind(rawValue: frame[1]) else { return .failure(.unknownKind) }
        return .success(kind)
    }
}

// MARK: - Data frames

/// Where the parts of a data frame are: offsets into its bytes, so that a decoded frame can be kept and read
/// again without copying it.
struct DataLayout: Sendable, Equatable {
    /// The topic name's bytes (without the ending zero).
    var topic: Range<Int>
    /// The header fields.
    var header: MessageHeader
    /// The payload's bytes.
    var payload: Range<Int>
    /// The topic key: version, kind, name and the ending zero.
    var topicKey: Range<Int> { 0..<(topic.upperBound + 1) }
    /// Where the header's sequence number is (after the publisher's 16 bytes), big-endian.
    var sequenceOffset: Int { topicKey.upperBound + 16 }

    /// Decodes a data frame's layout. The topic's bytes are only found, not checked: a receiver matches them
    /// against the names it knows, and checks a new name once (``Topic/init(validating:)``).
    static func decode(_ frame: UnsafeRawBufferPointer) -> Result<DataLayout, WireFormat.DecodeFailure> {
        switch WireFormat.kind(of: frame) {
        case .failure(let failure): return .failure(failure)
        case .success(.data): break
        case .success: return .failure(.unknownKind)
        }
        // The end of the topic: at most 255 bytes after the kind.
        let searchEnd = min(frame.count, 2 + Topic.maximumLength + 1)
        var end = 2
        while end < searchEnd, frame[end] != 0 { end += 1 }
        guard end > 2 else { return .failure(.badTopic) }
        guard end < searchEnd else { return .failure(searchEnd == frame.count ? .truncated : .badTopic) }
        let headerStart = end + 1
        guard frame.count >= headerStart + WireFormat.headerSize else { return .failure(.truncated) }
        let publisher = PublisherID(
            high: frame.loadBigEndianUInt64(at: headerStart), low: frame.loadBigEndianUInt64(at: headerStart + 8))
        let sequence = frame.loadBigEndianUInt64(at: headerStart + 16)
        guard sequence > 0 else { return .failure(.badSequence) }
        let sentAt = frame.loadBigEndianUInt64(at: headerStart + 24)
        return .success(
            DataLayout(
                topic: 2..<end,
                header: MessageHeader(publisher: publisher, sequence: sequence, sentAt: sentAt),
                payload: (headerStart + WireFormat.headerSize)..<frame.count))
    }

    /// A data frame as bytes, for the fuzzers and tests; `key` need not be a valid topic's.
    static func frame(key: [UInt8], header: MessageHeader, payload: [UInt8]) -> [UInt8] {
        var frame = [UInt8](repeating: 0, count: frameSize(keyCount: key.count, payloadCount: payload.count))
        frame.withUnsafeMutableBytes { destination in
            key.withUnsafeBytes { key in
                payload.withUnsafeBytes { encode(into: destination, key: key, header: header, payload: $0) }
            }
        }
        return frame
    }

    /// The size of a data frame for a topic key of `keyCount` bytes and a payload of `payloadCount` bytes.
    static func frameSize(keyCount: Int, payloadCount: Int) -> Int { keyCount + WireFormat.headerSize + payloadCount }

    /// Writes a data frame into `destination`, which must be exactly ``frameSize(keyCount:payloadCount:)``
    /// bytes long.
    static func encode(
        into destination: UnsafeMutableRawBufferPointer, key: UnsafeRawBufferPointer, header: MessageHeader,
        payload: UnsafeRawBufferPointer
    ) {
        var offset = 0
        func put(_ bytes: UnsafeRawBufferPointer) {
            guard let base = bytes.baseAddress, !bytes.isEmpty else { return }
            (destination.baseAddress! + offset).copyMemory(from: base, byteCount: bytes.count)
            offset += bytes.count
        }
        func put(_ value: UInt64) {
            destination.storeBytes(of: value.bigEndian, toByteOffset: offset, as: UInt64.self)
            offset += 8
        }
        put(key)
        put(header.publisher.high)
        put(header.publisher.low)
        put(header.sequence)
        put(header.sentAt)
        put(payload)
    }
}

/// The messages of one data or batch frame: one topic, one publisher and consecutive sequence numbers, so that
/// a broker keeps and forwards the frame as a unit and a subscriber's recovery can name any message in it.
struct DataRun: Sendable, Equatable {
    /// The topic name's bytes in the frame, without the ending zero (in a batch, those of its first message).
    var topic: Range<Int>
    var publisher: PublisherID
    var firstSequence: UInt64
    var lastSequence: UInt64
    /// The send time of the last message.
    var lastSentAt: UInt64
    /// How many messages the frame holds.
    var count: Int { Int(lastSequence - firstSequence) + 1 }

    /// The largest number of messages a publisher puts in one batch; a receiver accepts any number that fits.
    static let batchLimit = 1024
    /// Bytes a batch adds to its messages' data frames: version and kind, then each message's length.
    static func batchSize(ofFrames frames: Int, totalBytes: Int) -> Int { 2 + frames * 4 + totalBytes }

    /// Decodes a data frame (a run of one) or a batch, checking that a batch's messages share one topic and one
    /// publisher and are numbered one after the other.
    static func decode(_ frame: UnsafeRawBufferPointer) -> Result<DataRun, WireFormat.DecodeFailure> {
        switch WireFormat.kind(of: frame) {
        case .failure(let failure): return .failure(failure)
        case .success(.data):
            return DataLayout.decode(frame).map { layout in
                DataRun(
                    topic: layout.topic, publisher: layout.header.publisher, firstSequence: layout.header.sequence,
                    lastSequence: layout.header.sequence, lastSentAt: layout.header.sentAt)
            }
        case .success(.batch): break
        case .success: return .failure(.unknownKind)
        }
        var run: DataRun?
        var firstKey = 0..<0
        let failure = forEachMessage(inBatch: frame) { offset, message, layout in
            guard var current = run else {
                firstKey = (offset + layout.topicKey.lowerBound)..<(offset + layout.topicKey.upperBound)
                run = DataRun(
                    topic: (offset + layout.topic.lowerBound)..<(offset + layout.topic.upperBound),
                    publisher: layout.header.publisher, firstSequence: layout.header.sequence,
                    lastSequence: layout.header.sequence, lastSentAt: layout.header.sentAt)
                return true
            }
            guard layout.header.publisher == current.publisher, current.lastSequence < .max,
                layout.header.sequence == current.lastSequence + 1,
                message[layout.topicKey].elementsEqual(frame[firstKey])
            else { return false }
            current.lastSequence = layout.header.sequence
            current.lastSentAt = layout.header.sentAt
            run = current
            return true
        }
        if let failure { return .failure(failure) }
        guard let run else { return .failure(.truncated) }
        return .success(run)
    }

    /// Calls `body` with each data frame of a batch (its offset in the batch, its bytes and its layout) until
    /// `body` returns false, which makes the batch ``WireFormat/DecodeFailure/badBatch``.
    /// - Returns: why the batch is malformed, or `nil`.
    static func forEachMessage(
        inBatch frame: UnsafeRawBufferPointer,
        _ body: (_ offset: Int, _ message: UnsafeRawBufferPointer, _ layout: DataLayout) -> Bool
    ) -> WireFormat.DecodeFailure? {
        var failure: WireFormat.DecodeFailure?
        let walked = forEachFrame(inBatch: frame) { offset, message in
            switch DataLayout.decode(message) {
            case .failure(let decoding): failure = decoding
            case .success(let layout): if !body(offset, message, layout) { failure = .badBatch }
            }
            return failure == nil
        }
        return failure ?? walked
    }

    /// Calls `body` with each length-prefixed frame of a batch (its offset in the batch and its bytes), from the
    /// length at `start` on, reading only the lengths, until `body` returns false.
    /// - Returns: ``WireFormat/DecodeFailure/truncated`` when the batch holds no frame or its lengths run past its
    ///   end, otherwise `nil`.
    private static func forEachFrame(
        inBatch frame: UnsafeRawBufferPointer, from start: Int = 2,
        _ body: (_ offset: Int, _ message: UnsafeRawBufferPointer) -> Bool
    ) -> WireFormat.DecodeFailure? {
        var offset = start
        guard frame.count > 2 else { return .truncated }
        while offset < frame.count {
            guard frame.count - offset >= 4 else { return .truncated }
            let length = Int(UInt32(bigEndian: frame.loadUnaligned(fromByteOffset: offset, as: UInt32.self)))
            offset += 4
            guard length <= frame.count - offset else { return .truncated }
            if !body(offset, UnsafeRawBufferPointer(rebasing: frame[offset..<(offset + length)])) { return nil }
            offset += length
        }
        return nil
    }

    /// Writes a batch of `count` data frames of one topic and publisher, in order, each asked of `nextFrame`, into
    /// `destination`, which must be exactly ``batchSize(ofFrames:totalBytes:)`` bytes long.
    static func encodeBatch(
        into destination: UnsafeMutableRawBufferPointer, count: Int, _ nextFrame: () -> UnsafeRawBufferPointer
    ) {
        destination[0] = WireFormat.version
        destination[1] = WireFormat.Kind.batch.rawValue
        var offset = 2
        for _ in 0..<count {
            let frame = nextFrame()
            destination.storeBytes(of: UInt32(frame.count).bigEndian, toByteOffset: offset, as: UInt32.self)
            offset += 4
            if let base = frame.baseAddress, !frame.isEmpty {
                (destination.baseAddress! + offset).copyMemory(from: base, byteCount: frame.count)
            }
            offset += frame.count
        }
    }

    /// The sequence number of the first message of a valid data or batch frame that `isWanted`, if any.
    static func firstSequence(in frame: UnsafeRawBufferPointer, where isWanted: (MessageHeader) -> Bool) -> UInt64? {
        guard frame.count >= 2, frame[1] == WireFormat.Kind.batch.rawValue else {
            return (try? DataLayout.decode(frame).get()).flatMap { isWanted($0.header) ? $0.header.sequence : nil }
        }
        var found: UInt64?
        _ = forEachMessage(inBatch: frame) { _, _, layout in
            if isWanted(layout.header) { found = layout.header.sequence }
            return found == nil
        }
        return found
    }

    /// The messages of a valid batch from number `sequence` on that fit in a frame of `limit` bytes, and at least
    /// one: a batch again, or a data frame when one message goes (always, when `limit` is 0: a subscriber that takes
    /// no batch). `nil` when the batch holds no message `sequence` or libzmq cannot allocate the frame.
    ///
    /// `offset` is where the message numbered `sequence` starts, as the previous slice of the same batch returned
    /// it (0: unknown). With it, serving a large batch slice by slice reads each message's length once, not once per
    /// slice before it; a stale offset is noticed (the message there has another number) and the lengths are read.
    static func slice(
        of batch: UnsafeRawBufferPointer, from sequence: UInt64, offset: Int = 0, limit: Int
    ) -> Slice? {
        guard let first = batchFrameStart(in: batch, of: sequence, hint: offset) else { return nil }
        var end = first
        var count: UInt64 = 0
        var lastMessage = 0..<0
        _ = forEachFrame(inBatch: batch, from: first) { start, message in
            let size = 2 + (start + message.count - first)
            guard count == 0 || size <= limit else { return false }
            lastMessage = start..<(start + message.count)
            end = lastMessage.upperBound
            count += 1
            return true
        }
        guard count > 0 else { return nil }
        let frame: ZMQFrame?
        if count == 1 {
            frame = try? ZMQFrame(copying: UnsafeRawBufferPointer(rebasing: batch[lastMessage]))
        } else {
            frame = try? ZMQFrame(count: 2 + end - first) { destination in
                destination[0] = WireFormat.version
                destination[1] = WireFormat.Kind.batch.rawValue
                UnsafeMutableRawBufferPointer(rebasing: destination[2...])
                    .copyMemory(from: UnsafeRawBufferPointer(rebasing: batch[first..<end]))
            }
        }
        guard let frame else { return nil }
        return Slice(frame: frame, last: sequence + count - 1, nextOffset: end)
    }

    /// Part of a batch as a frame of its own: its messages up to number `last`, and where the next one starts.
    struct Slice: ~Copyable {
        var frame: ZMQFrame
        let last: UInt64
        let nextOffset: Int
    }

    /// Where the length of message number `sequence` starts in a valid batch: at `hint` when the message there has
    /// that number, otherwise found by reading the lengths before it.
    private static func batchFrameStart(in batch: UnsafeRawBufferPointer, of sequence: UInt64, hint: Int) -> Int? {
        if hint >= 2, batch.count - hint >= 4 {
            let length = Int(UInt32(bigEndian: batch.loadUnaligned(fromByteOffset: hint, as: UInt32.self)))
            if length <= batch.count - hint - 4,
                case .success(let layout) = DataLayout.decode(UnsafeRawBufferPointer(rebasing: batch[(hint + 4)..<(hint + 4 + length)])),
                layout.header.sequence == sequence
            {
                return hint
            }
        }
        var remaining: UInt64?
        var found: Int?
        _ = forEachFrame(inBatch: batch) { start, message in
            if remaining == nil {
                guard case .success(let layout) = DataLayout.decode(message), sequence >= layout.header.sequence
                else { return false }
                remaining = sequence - layout.header.sequence
            }
            guard remaining == 0 else {
                remaining! -= 1
                return true
            }
            found = start - 4
            return false
        }
        return found
    }

    /// A batch of `frames` as bytes, for the fuzzers and tests.
    static func batch(of frames: [[UInt8]]) -> [UInt8] {
        var bytes: [UInt8] = [WireFormat.version, WireFormat.Kind.batch.rawValue]
        for frame in frames {
            withUnsafeBytes(of: UInt32(frame.count).bigEndian) { bytes.append(contentsOf: $0) }
            bytes += frame
        }
        return bytes
    }
}

extension UnsafeRawBufferPointer {
    /// The big-endian 64-bit integer at `offset`, which may be unaligned.
    func loadBigEndianUInt64(at offset: Int) -> UInt64 {
        UInt64(bigEndian: loadUnaligned(fromByteOffset: offset, as: UInt64.self))
    }
}

// MARK: - Control frames

/// Encodes and decodes the bodies of control messages.
enum ControlFrame {
    /// `version, kind, JSON body`.
    static func encode<Body: Encodable>(_ kind: WireFormat.Kind, _ body: Body) -> [UInt8] {
        var bytes: [UInt8] = [WireFormat.version, kind.rawValue]
        bytes.append(contentsOf: (try? JSONEncoder.herald.encode(body)) ?? Data("{}".utf8))
        return bytes
    }

    /// `version, kind` and no body.
    static func empty(_ kind: WireFormat.Kind) -> [UInt8] { [WireFormat.version, kind.rawValue] }

    /// `version, kind, 64-bit count`, for credit and consumption.
    static func count(_ kind: WireFormat.Kind, _ value: UInt64) -> [UInt8] {
        var bytes: [UInt8] = [WireFormat.version, kind.rawValue]
        withUnsafeBytes(of: value.bigEndian) { bytes.append(contentsOf: $0) }
        return bytes
    }

    /// The JSON body of a control frame whose kind was already checked.
    static func decode<Body: Decodable>(
        _ type: Body.Type, from frame: UnsafeRawBufferPointer
    ) -> Result<Body, WireFormat.DecodeFailure> {
        guard frame.count >= 2 else { return .failure(.truncated) }
        guard frame.count - 2 <= WireFormat.maximumControlBody else { return .failure(.badBody) }
        guard let body = try? JSONDecoder().decode(type, from: Data(frame[2...])) else { return .failure(.badBody) }
        return .success(body)
    }

    /// A credit or consumption frame made in place: these go out once per window, and making them allocates
    /// nothing (libzmq keeps a frame this small inside its handle).
    static func countFrame(_ kind: WireFormat.Kind, _ value: UInt64) -> ZMQFrame? {
        try? ZMQFrame(count: 10) { bytes in
            bytes[0] = WireFormat.version
            bytes[1] = kind.rawValue
            bytes.storeBytes(of: value.bigEndian, toByteOffset: 2, as: UInt64.self)
        }
    }

    /// The count of a credit or consumption frame whose kind was already checked.
    static func decodeCount(_ frame: UnsafeRawBufferPointer) -> Result<UInt64, WireFormat.DecodeFailure> {
        guard frame.count == 10 else { return .failure(.truncated) }
        return .success(frame.loadBigEndianUInt64(at: 2))
    }
}

extension JSONEncoder {
    /// The encoder of every JSON control body: sorted keys, so equal values encode equally.
    static let herald: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return encoder
    }()
}
