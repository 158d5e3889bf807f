/// The fixed multiplicative (Fibonacci) hash of `IntTable` and `IntMap`: the key times 2⁶⁴/φ, its top 32 bits.
@inline(__always)
func intHash(_ key: Int) -> Int {
    Int(truncatingIfNeeded: (UInt64(bitPattern: Int64(key)) &* 0x9E37_79B9_7F4A_7C15) >> 32)
}

/// A small open-addressing hash table from Int keys to Int values, with a fixed multiplicative hash: the
/// policies' per-iteration sets and counts over the queue (adapters, request ids) without Swift's seeded SipHash
/// per element. `keys` lists the keys in insertion order.
///
/// `removeAll()` empties it in O(1) and keeps its storage, so the policies' tables (`PolicyScratch`, one set per
/// thread) are refilled every iteration without allocating: an entry holds a key only while its stamp equals the
/// table's generation, and emptying the table starts a new generation. Key, value and stamp share one entry (one
/// array, so one uniqueness check and one cache line per write).
struct IntTable {
    private struct Entry {
        var key: Int
        var value: Int
        var stamp: UInt32
    }
    private var entries: [Entry]
    private var generation: UInt32 = 1
    private var mask: Int
    private var keyStore: [Int] = []
    /// Keys held.
    private(set) var count = 0

    init(capacity: Int = 8) {
        var n = 16
        while n < capacity * 2 { n <<= 1 }
        entries = [Entry](repeating: Entry(key: 0, value: 0, stamp: 0), count: n)
        mask = n - 1
    }

    var isEmpty: Bool { count == 0 }
    /// Keys in insertion order.
    var keys: ArraySlice<Int> { keyStore[0..<count] }

    /// Empties the table, keeping its storage.
    mutating func removeAll() {
        guard count > 0 else { return }
        count = 0
        if generation == .max {
            for i in entries.indices { entries[i].stamp = 0 }
            generation = 1
        } else {
            generation += 1
        }
    }

    /// The entry holding `key`, or the free entry where it would go.
    private func bucket(_ key: Int) -> Int {
        var i = intHash(key) & mask
        while entries[i].stamp == generation && entries[i].key != key { i = (i + 1) & mask }
        return i
    }

    private func holds(_ b: Int, _ key: Int) -> Bool { entries[b].stamp == generation && entries[b].key == key }

    func contains(_ key: Int) -> Bool { holds(bucket(key), key) }

    /// The key's value; 0 when absent.
    subscript(key: Int) -> Int {
        let b = bucket(key)
        return holds(b, key) ? entries[b].value : 0
    }

    /// Adds `delta` to the key's value, inserting the key (at 0) first if absent.
    mutating func add(_ key: Int, _ delta: Int = 0) {
        var b = bucket(key)
        if holds(b, key) {
            entries[b].value += delta
            return
        }
        if (count + 1) * 2 > entries.count {
            grow()
            b = bucket(key)
        }
        entries[b] = Entry(key: key, value: delta, stamp: generation)
        if count < keyStore.count { keyStore[count] = key } else { keyStore.append(key) }
        count += 1
    }

    /// Sets the key's value (inserting the key if absent).
    mutating func set(_ key: Int, _ value: Int) { add(key, value &- self[key]) }

    private mutating func grow() {
        let old = keys.map { ($0, self[$0]) }
        let n = entries.count * 2
        entries = [Entry](repeating: Entry(key: 0, value: 0, stamp: 0), count: n)
        generation = 1
        mask = n - 1
        for (k, v) in old { entries[bucket(k)] = Entry(key: k, value: v, stamp: generation) }
    }
}
