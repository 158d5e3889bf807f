/// A hash map from Int keys to values with a fixed multiplicative hash and linear probing: the scheduler's maps by
/// request id and adapter key. `Dictionary` hashes each key with a seeded SipHash and keeps keys, values and
/// occupancy in three regions, so a lookup into a map gone cold (a simulation steps 1,000 schedulers in turn) cost
/// three cache misses and a hash; here a key and its value share one entry. Iteration follows the table, the same
/// in every process. Deletion shifts later entries of the probe run back (no tombstones), so lookups stay short.
struct IntMap<Value>: Sequence {
    private typealias Entry = IntMapEntry<Value>
    private var entries: [Entry] = []
    private var mask = -1
    private(set) var count = 0

    init() {}

    var isEmpty: Bool { count == 0 }

    private func home(_ key: Int) -> Int { intHash(key) & mask }

    /// The entry holding `key`, or nil.
    private func find(_ key: Int) -> Int? {
        guard count > 0 else { return nil }
        var i = home(key)
        while entries[i].used {
            if entries[i].key == key { return i }
            i = (i + 1) & mask
        }
        return nil
    }

    subscript(key: Int) -> Value? {
        get { find(key).flatMap { entries[$0].value } }
        set {
            if let newValue { insert(key, newValue) } else { removeValue(forKey: key) }
        }
    }

    private mutating func insert(_ key: Int, _ value: Value) {
        if let i = find(key) {
            entries[i].value = value
            return
        }
        if (count + 1) * 2 > entries.count { grow() }
        var i = home(key)
        while entries[i].used { i = (i + 1) & mask }
        entries[i] = Entry(key: key, value: value)
        count += 1
    }

    @discardableResult
    mutating func removeValue(forKey key: Int) -> Value? {
        guard var hole = find(key) else { return nil }
        let old = entries[hole].value
        // Backward shift: an entry later in the run moves into the hole unless its home lies cyclically in (hole, j].
        var j = hole
        while true {
            j = (j + 1) & mask
            guard entries[j].used else { break }
            let h = home(entries[j].key)
            let stays = hole <= j ? (hole < h && h <= j) : (hole < h || h <= j)
            if !stays {
                entries[hole] = entries[j]
                hole = j
            }
        }
        entries[hole] = Entry(key: 0, value: nil)
        count -= 1
        return old
    }

    private mutating func grow() {
        let old = entries
        let n = Swift.max(16, entries.count * 2)
        entries = Array(repeating: Entry(key: 0, value: nil), count: n)
        mask = n - 1
        count = 0
        for e in old where e.used { insert(e.key, e.value!) }
    }

    var keys: [Int] { entries.compactMap { $0.used ? $0.key : nil } }

    struct Iterator: IteratorProtocol {
        fileprivate let entries: [IntMapEntry<Value>]
        fileprivate var i = 0
        mutating func next() -> (key: Int, value: Value)? {
            while i < entries.count {
                defer { i += 1 }
                if entries[i].used { return (entries[i].key, entries[i].value!) }
            }
            return nil
        }
    }

    func makeIterator() -> Iterator { Iterator(entries: entries) }
}

/// One key and its value (nil: a free entry).
struct IntMapEntry<Value> {
    var key: Int
    var value: Value?
    var used: Bool { value != nil }
}

extension IntMap: Sendable where Value: Sendable {}
extension IntMapEntry: Sendable where Value: Sendable {}
