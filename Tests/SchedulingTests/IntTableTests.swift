import Testing
import TestSupport
@testable import Scheduling

@Suite struct IntTableTests {
    /// Random adds, sets, lookups and whole-table clears against a Dictionary and an insertion-order list:
    /// colliding keys (multiples of a power of two), negative keys, growth past the initial capacity and many
    /// generations of `removeAll` (stale slots from an earlier generation must read as empty).
    @Test func matchesADictionaryThroughClearsAndGrowth() {
        var rng = SplitMix64(seed: 7)
        var table = IntTable(capacity: 2)
        var model: [Int: Int] = [:], order: [Int] = []
        for step in 0..<60_000 {
            let key: Int
            switch rng.next() % 4 {
            case 0: key = Int(rng.next() % 64) << 20          // collide in the low bits
            case 1: key = -Int(rng.next() % 300) - 1
            default: key = Int(rng.next() % 500)
            }
            switch rng.next() % 10 {
            case 0...4:
                let d = Int(rng.next() % 7) - 3
                table.add(key, d)
                if model[key] == nil { order.append(key) }
                model[key, default: 0] += d
            case 5:
                let v = Int(rng.next() % 100)
                table.set(key, v)
                if model[key] == nil { order.append(key) }
                model[key] = v
            case 6 where rng.next() % 40 == 0:
                table.removeAll()
                model = [:]
                order = []
            default:
                #expect(table.contains(key) == (model[key] != nil), "step \(step), key \(key)")
                #expect(table[key] == model[key] ?? 0, "step \(step), key \(key)")
            }
            if step % 997 == 0 {
                #expect(Array(table.keys) == order)
                #expect(table.count == model.count)
                for (k, v) in model { #expect(table[k] == v) }
            }
        }
    }

    @Test func removeAllEmptiesAndKeepsWorking() {
        var table = IntTable()
        for k in 0..<100 { table.add(k, k) }
        table.removeAll()
        #expect(table.isEmpty && table.keys.isEmpty)
        for k in 0..<100 { #expect(!table.contains(k) && table[k] == 0) }
        table.add(5, 2)
        table.add(5, 3)
        #expect(table[5] == 5 && Array(table.keys) == [5])
    }
}
