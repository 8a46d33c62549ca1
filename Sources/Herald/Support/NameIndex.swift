/// Finds names by their bytes, as they arrive in a frame, without making a `String`: the broker and the
/// subscriber look a topic up per message.
///
/// Open addressing over a power-of-two table, hashed with the standard library's per-process seeded hasher, so
/// that names a client chooses to collide do not degrade lookups. Names are never removed: the owner bounds
/// how many it adds.
struct NameIndex: Sendable {
    /// The names, by the number ``insert(_:)`` gave them.
    private(set) var names: [[UInt8]] = []
    private var slots: [Int32] = Array(repeating: -1, count: 16)

    var count: Int { names.count }

    /// The number of the name spelled by `bytes`, if it was inserted.
    func find(_ bytes: UnsafeRawBufferPointer) -> Int? {
        let mask = slots.count - 1
        var slot = Self.hash(bytes) & mask
        while true {
            let number = Int(slots[slot])
            if number < 0 { return nil }
            if names[number].withUnsafeBytes({ $0.elementsEqual(bytes) }) { return number }
            slot = (slot + 1) & mask
        }
    }

    /// Adds a name that is not in the index yet.
    /// - Returns: its number: the count of names before it.
    @discardableResult
    mutating func insert(_ bytes: UnsafeRawBufferPointer) -> Int {
        if (names.count + 1) * 2 > slots.count { grow() }
        let number = names.count
        names.append(Array(bytes))
        place(number)
        return number
    }

    private mutating func place(_ number: Int) {
        let mask = slots.count - 1
        var slot = names[number].withUnsafeBytes { Self.hash($0) } & mask
        while slots[slot] >= 0 { slot = (slot + 1) & mask }
        slots[slot] = Int32(number)
    }

    private mutating func grow() {
        slots = Array(repeating: -1, count: slots.count * 2)
        for number in names.indices { place(number) }
    }

    private static func hash(_ bytes: UnsafeRawBufferPointer) -> Int {
        var hasher = Hasher()
        hasher.combine(bytes: bytes)
        return hasher.finalize()
    }
}
