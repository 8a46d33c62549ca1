/// A publisher's retained messages: encoded data frames, oldest first, in one buffer allocated up front and
/// bounded in bytes, in count and in age.
///
/// Each message is encoded once, straight into the buffer, and sent from there: to the leader now, and again
/// to the next leader after a failover. Positions are byte offsets that only grow (``Position``), so a cursor
/// into the buffer stays meaningful while older messages are dropped.
///
/// Layout: each entry is a 16-byte header (frame size, then the monotonic time it was published, in
/// nanoseconds) and the frame, padded to 8 bytes. An entry never wraps: when one does not fit before the end,
/// a zero size marks the rest as unused (or, with less than a header left, the rest is skipped implicitly).
struct RetentionBuffer: ~Copyable {
    typealias Position = UInt64

    private static let headerSize = 16
    private let storage: UnsafeMutableRawBufferPointer
    /// The oldest entry kept, and where the next one goes.
    private(set) var start: Position = 0
    private(set) var end: Position = 0
    /// Entries kept.
    private(set) var count = 0
    /// The number of the oldest entry kept: entries are numbered from 0 in append order.
    private(set) var startNumber: UInt64 = 0
    /// The number the next entry gets.
    var endNumber: UInt64 { startNumber + UInt64(count) }
    /// Bytes of frames kept (headers and padding not included).
    private(set) var frameBytes = 0

    /// The buffer's size in bytes.
    var capacity: Int { storage.count }

    /// Creates a buffer of `capacity` bytes (rounded up to a multiple of 8).
    init(capacity: Int) {
        let rounded = max(64, (capacity + 7) & ~7)
        storage = .allocate(byteCount: rounded, alignment: 8)
    }

    deinit { storage.deallocate() }

    /// The largest frame an entry can hold: half the buffer, so that any frame fits after dropping old ones.
    var largestFrame: Int { capacity / 2 - Self.headerSize }

    /// Bytes the buffer spends on a frame of `size` bytes.
    static func footprint(ofFrame size: Int) -> Int { headerSize + (size + 7) & ~7 }

    /// Appends a frame of `size` bytes, written in place by `encode`, dropping the oldest entries to make room.
    /// - Parameters:
    ///   - size: the frame's size; at most ``largestFrame``.
    ///   - now: the monotonic time in nanoseconds, for age limits.
    ///   - dropped: called with the position of each entry dropped to make room, oldest first.
    ///   - encode: writes the frame.
    /// - Returns: the new entry's position.
    mutating func append(
        size: Int, now: UInt64, dropping dropped: (Position) -> Void,
        encode: (UnsafeMutableRawBufferPointer) -> Void
    ) -> Position {
        precondition(size <= largestFrame, "the caller checks frame sizes against largestFrame")
        let footprint = Self.footprint(ofFrame: size)
        // Where the entry goes: here, or at the start of the buffer when it does not fit before the end.
        var position = end
        let offset = Int(position % UInt64(capacity))
        if capacity - offset < footprint {
            position += UInt64(capacity - offset)
        }
        let newEnd = position + UInt64(footprint)
        while count > 0, newEnd - start > UInt64(capacity) {
            dropped(start)
            removeFirst()
        }
        if count == 0 { start = position }
        // Mark the skipped tail so that a reader walking the buffer jumps to its start.
        if position != end, capacity - offset >= Self.headerSize {
            storage.storeBytes(of: UInt32(0), toByteOffset: offset, as: UInt32.self)
        }
        let at = Int(position % UInt64(capacity))
        storage.storeBytes(of: UInt32(size), toByteOffset: at, as: UInt32.self)
        storage.storeBytes(of: now, toByteOffset: at + 8, as: UInt64.self)
        encode(UnsafeMutableRawBufferPointer(rebasing: storage[(at + Self.headerSize)..<(at + Self.headerSize + size)]))
        end = newEnd
        count += 1
        frameBytes += size
        return position
    }

    /// Drops the oldest entry.
    mutating func removeFirst() {
        guard count > 0 else { return }
        let at = normalized(start)
        let size = Int(storage.load(fromByteOffset: Int(at % UInt64(capacity)), as: UInt32.self))
        start = at + UInt64(Self.footprint(ofFrame: size))
        count -= 1
        startNumber += 1
        frameBytes -= size
        if count == 0 { start = end }
    }

    /// When the oldest entry was published (monotonic nanoseconds), if there is one.
    var oldestPublishedAt: UInt64? {
        guard count > 0 else { return nil }
        return storage.load(fromByteOffset: Int(normalized(start) % UInt64(capacity)) + 8, as: UInt64.self)
    }

    /// The frame at `position` and the position after it, or `nil` at the end.
    func frame(at position: Position) -> (bytes: UnsafeRawBufferPointer, next: Position)? {
        guard position < end else { return nil }
        let at = normalized(position)
        guard at < end else { return nil }
        let offset = Int(at % UInt64(capacity))
        let size = Int(storage.load(fromByteOffset: offset, as: UInt32.self))
        let bytes = UnsafeRawBufferPointer(rebasing: storage[(offset + Self.headerSize)..<(offset + Self.headerSize + size)])
        return (bytes, at + UInt64(Self.footprint(ofFrame: size)))
    }

    /// `position`, or the start of the buffer's next lap when the tail from `position` on was skipped.
    private func normalized(_ position: Position) -> Position {
        let offset = Int(position % UInt64(capacity))
        let remaining = capacity - offset
        if remaining < Self.headerSize || storage.load(fromByteOffset: offset, as: UInt32.self) == 0 {
            return position + UInt64(remaining)
        }
        return position
    }
}
