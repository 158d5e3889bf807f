/// The scheduler's resident adapters in eviction order — least recently used first, the lower key among equal
/// last uses — as a min-heap with lazy deletion. Touching an adapter pushes a new entry under a new stamp; an
/// entry counts only while its stamp is the adapter's current one (the scheduler keeps it in its adapter
/// state and clears it on eviction), so stale entries are skipped when popped and dropped by `rebuild`.
/// `Scheduler.makeRoom` pops idle adapters from it instead of sorting every resident adapter on each call: a
/// replica keeps every adapter it served resident until memory runs short, so that sort grew with the run.
struct AdapterLRU: Sendable, Equatable {
    struct Entry: Sendable, Equatable, HeapOrdered {
        let lastUse: Int
        let key: Int
        let stamp: Int

        func before(_ other: Entry) -> Bool {
            lastUse != other.lastUse ? lastUse < other.lastUse : key < other.key
        }
    }

    private var heap = MinHeap<Entry>()
    private var nextStamp = 0

    /// Entries held, stale ones included.
    var count: Int { heap.count }

    /// Adds an entry for `key` last used at `lastUse` and returns its stamp.
    mutating func push(key: Int, lastUse: Int) -> Int {
        let stamp = nextStamp
        nextStamp += 1
        heap.push(Entry(lastUse: lastUse, key: key, stamp: stamp))
        return stamp
    }

    /// Puts back an entry taken by `popFirst`.
    mutating func push(_ entry: Entry) { heap.push(entry) }

    /// The first entry in eviction order (possibly stale), removed.
    mutating func popFirst() -> Entry? { heap.popFirst() }

    /// Keeps only `current`, the entries still in force.
    mutating func rebuild(_ current: [Entry]) {
        heap.removeAll()
        for entry in current { heap.push(entry) }
    }
}
