/// An element that orders itself for `MinHeap`: `before` is a strict weak order (ties broken inside the
/// element, e.g. by a sequence number, make the heap's order total and so its pops deterministic).
public protocol HeapOrdered {
    func before(_ other: Self) -> Bool
}

/// A binary min-heap over an array: the scheduler's adapter LRU and the simulator's event queue. Inlinable so
/// that a client module's heap of its own elements is specialised (its pushes and pops are on hot paths).
public struct MinHeap<Element: HeapOrdered> {
    @usableFromInline var storage: [Element] = []

    @inlinable public init() {}

    @inlinable public var count: Int { storage.count }
    @inlinable public var isEmpty: Bool { storage.isEmpty }
    /// The first element in order, left in place.
    @inlinable public var first: Element? { storage.first }

    @inlinable public mutating func push(_ element: Element) {
        storage.append(element)
        var child = storage.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            guard storage[child].before(storage[parent]) else { break }
            storage.swapAt(child, parent)
            child = parent
        }
    }

    /// The first element in order, removed.
    @inlinable public mutating func popFirst() -> Element? {
        guard let top = storage.first else { return nil }
        let last = storage.removeLast()
        if !storage.isEmpty {
            storage[0] = last
            var parent = 0
            while true {
                let left = 2 * parent + 1, right = left + 1
                var first = parent
                if left < storage.count && storage[left].before(storage[first]) { first = left }
                if right < storage.count && storage[right].before(storage[first]) { first = right }
                if first == parent { break }
                storage.swapAt(parent, first)
                parent = first
            }
        }
        return top
    }

    @inlinable public mutating func removeAll() { storage.removeAll(keepingCapacity: true) }
}

extension MinHeap: Sendable where Element: Sendable {}
extension MinHeap: Equatable where Element: Equatable {}
