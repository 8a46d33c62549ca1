/// A fixed-capacity buffer that keeps the most recent elements, for a broker's per-topic history.
struct Ring<Element> {
    private var storage: [Element] = []
    private var start = 0
    private(set) var capacity: Int

    init(capacity: Int) { self.capacity = max(0, capacity) }

    var count: Int { storage.count }

    /// Appends, dropping the oldest element when full.
    mutating func append(_ element: Element) {
        guard capacity > 0 else { return }
        if storage.count < capacity {
            storage.append(element)
        } else {
            storage[start] = element
            start = (start + 1) % capacity
        }
    }

    /// Changes the capacity, keeping the newest elements.
    mutating func resize(to newCapacity: Int) {
        guard newCapacity != capacity else { return }
        let kept = Array(elements.suffix(max(0, newCapacity)))
        storage = kept
        start = 0
        capacity = max(0, newCapacity)
    }

    /// The elements, oldest first.
    var elements: [Element] {
        Array(storage[start...] + storage[..<start])
    }
}
