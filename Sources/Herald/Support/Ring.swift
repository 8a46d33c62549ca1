/// A first-in first-out ring of noncopyable elements (frames and what a broker keeps with them), growing by
/// doubling and never shrinking: once it has held its working set, appending and removing allocate nothing.
///
/// Elements are numbered from 0 in append order; ``firstIndex`` is the number of the oldest one kept, so an
/// index stays valid for as long as its element is kept, whatever is removed before it.
struct Ring<Element: ~Copyable>: ~Copyable {
    private var storage: UnsafeMutablePointer<Element>
    private var capacity: Int
    private var head = 0
    /// How many elements are kept.
    private(set) var count = 0
    /// The number of the oldest element kept.
    private(set) var firstIndex: UInt64 = 0

    init(initialCapacity: Int = 16) {
        capacity = max(1, initialCapacity)
        storage = .allocate(capacity: capacity)
    }

    deinit {
        for offset in 0..<count { (storage + (head + offset) % capacity).deinitialize(count: 1) }
        storage.deallocate()
    }

    var isEmpty: Bool { count == 0 }

    /// One past the number of the newest element: the number the next appended element gets.
    var endIndex: UInt64 { firstIndex + UInt64(count) }

    /// Appends an element after the newest.
    mutating func append(_ element: consuming Element) {
        if count == capacity { grow() }
        (storage + (head + count) % capacity).initialize(to: element)
        count += 1
    }

    /// Removes and returns the oldest element.
    mutating func removeFirst() -> Element? {
        guard count > 0 else { return nil }
        let element = (storage + head).move()
        head = (head + 1) % capacity
        count -= 1
        firstIndex += 1
        return element
    }

    /// Lends the element numbered `index` to `body`.
    /// - Returns: what `body` returns, or `nil` when that element is not (or no longer) kept.
    func withElement<R>(at index: UInt64, _ body: (borrowing Element) -> R) -> R? {
        guard index >= firstIndex, index < endIndex else { return nil }
        return body((storage + (head + Int(index - firstIndex)) % capacity).pointee)
    }

    /// Lends the element numbered `index` to `body` for changing it.
    /// - Returns: what `body` returns, or `nil` when that element is not kept.
    mutating func updateElement<R: ~Copyable>(at index: UInt64, _ body: (inout Element) -> R?) -> R? {
        guard index >= firstIndex, index < endIndex else { return nil }
        return body(&(storage + (head + Int(index - firstIndex)) % capacity).pointee)
    }

    private mutating func grow() {
        let newCapacity = capacity * 2
        let newStorage = UnsafeMutablePointer<Element>.allocate(capacity: newCapacity)
        for offset in 0..<count {
            (newStorage + offset).initialize(to: (storage + (head + offset) % capacity).move())
        }
        storage.deallocate()
        storage = newStorage
        capacity = newCapacity
        head = 0
    }
}
