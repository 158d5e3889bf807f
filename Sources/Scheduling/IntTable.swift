/// A small open-addressing hash table from Int keys to Int values, with a fixed multiplicative hash: the
/// policies' per-iteration sets and counts over the queue (adapters, request ids) without Swift's seeded SipHash
/// per element. `keys` lists the keys in insertion order. `Int.min` cannot be a key.
struct IntTable {
    private static let empty = Int.min
    private var slots: [Int]
    private var values: [Int]
    private var mask: Int
    /// Keys in insertion order.
    private(set) var keys: [Int] = []

    init(capacity: Int = 8) {
        var n = 16
        while n < capacity * 2 { n <<= 1 }
        slots = [Int](repeating: Self.empty, count: n)
        values = [Int](repeating: 0, count: n)
        mask = n - 1
    }

    var count: Int { keys.count }
    var isEmpty: Bool { keys.isEmpty }

    private func bucket(_ key: Int) -> Int {
        var i = Int(truncatingIfNeeded: (UInt64(bitPattern: Int64(key)) &* 0x9E37_79B9_7F4A_7C15) >> 33) & mask
        while slots[i] != Self.empty && slots[i] != key { i = (i + 1) & mask }
        return i
    }

    func contains(_ key: Int) -> Bool { slots[bucket(key)] == key }

    /// The key's value; 0 when absent.
    subscript(key: Int) -> Int {
        let b = bucket(key)
        return slots[b] == key ? values[b] : 0
    }

    /// Adds `delta` to the key's value, inserting the key (at 0) first if absent.
    mutating func add(_ key: Int, _ delta: Int = 0) {
        precondition(key != Self.empty)
        var b = bucket(key)
        if slots[b] != key {
            if (keys.count + 1) * 2 > slots.count {
                grow()
                b = bucket(key)
            }
            slots[b] = key
            values[b] = 0
            keys.append(key)
        }
        values[b] += delta
    }

    /// Sets the key's value (inserting the key if absent).
    mutating func set(_ key: Int, _ value: Int) { add(key, value &- self[key]) }

    private mutating func grow() {
        let old = keys.map { ($0, self[$0]) }
        let n = slots.count * 2
        slots = [Int](repeating: Self.empty, count: n)
        values = [Int](repeating: 0, count: n)
        mask = n - 1
        for (k, v) in old {
            let b = bucket(k)
            slots[b] = k
            values[b] = v
        }
    }
}
