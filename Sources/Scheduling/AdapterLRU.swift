/// The scheduler's resident adapters in eviction order — least recently used first, the lower key among equal
/// last uses — as a min-heap with lazy deletion. Touching an adapter pushes a new entry under a new stamp; an
/// entry counts only while its stamp is the adapter's current one (the scheduler keeps it in its adapter
/// state and clears it on eviction), so stale entries are skipped when popped and dropped by `rebuild`.
/// `Scheduler.makeRoom` pops idle adapters from it instead of sorting every resident adapter on each call: a
/// replica keeps every adapter it served resident until memory runs short, so that sort grew with the run.
struct AdapterLRU: Sendable, Equatable {
    struct Entry: Sendable, Equatable {
        let lastUse: Int
        let key: Int
        let stamp: Int

        func before(_ other: Entry) -> Bool {
            lastUse != other.lastUse ? lastUse < other.lastUse : key < other.key
        }
    }

    private var heap: [Entry] = []
    private var nextStamp = 0

    /// Entries held, stale ones included.
    var count: Int { heap.count }

    /// Adds an entry for `key` last used at `lastUse` and returns its stamp.
    mutating func push(key: Int, lastUse: Int) -> Int {
        let stamp = nextStamp
        nextStamp += 1
        push(Entry(lastUse: lastUse, key: key, stamp: stamp))
        return stamp
    }

    /// Puts back an entry taken by `popFirst`.
    mutating func push(_ entry: Entry) {
        heap.append(entry)
        var child = heap.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            guard heap[child].before(heap[parent]) else { break }
            heap.swapAt(child, parent)
            child = parent
        }
    }

    /// The first entry in eviction order (possibly stale), removed.
    mutating func popFirst() -> Entry? {
        guard let top = heap.first else { return nil }
        let last = heap.removeLast()
        if !heap.isEmpty {
            heap[0] = last
            var parent = 0
            while true {
                let left = 2 * parent + 1, right = left + 1
                var first = parent
                if left < heap.count && heap[left].before(heap[first]) { first = left }
                if right < heap.count && heap[right].before(heap[first]) { first = right }
                if first == parent { break }
                heap.swapAt(parent, first)
                parent = first
            }
        }
        return top
    }

    /// Keeps only `current`, the entries still in force.
    mutating func rebuild(_ current: [Entry]) {
        heap.removeAll(keepingCapacity: true)
        for entry in current { push(entry) }
    }
}
