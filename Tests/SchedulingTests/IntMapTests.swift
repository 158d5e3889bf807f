import Testing
import TestSupport
@testable import Scheduling

@Suite struct IntMapTests {
    /// Random inserts, overwrites, removals and lookups against a Dictionary: keys that collide in the low bits
    /// (multiples of a large power of two, so removals must shift runs that wrap around the table's end), negative
    /// keys, growth from empty, and removal of absent keys. After every step the counts agree; every 500 steps the
    /// whole contents (by iteration and by `keys`) do.
    @Test func matchesADictionary() {
        var rng = SplitMix64(seed: 21)
        var map = IntMap<Int>()
        var model: [Int: Int] = [:]
        for step in 0..<80_000 {
            let key: Int
            switch rng.next() % 4 {
            case 0: key = Int(rng.next() % 64) << 40
            case 1: key = -Int(rng.next() % 200) - 1
            default: key = Int(rng.next() % 400)
            }
            switch rng.next() % 10 {
            case 0...3:
                let v = Int(rng.next() % 1000)
                map[key] = v
                model[key] = v
            case 4...6:
                let removed = map.removeValue(forKey: key)
                #expect(removed == model.removeValue(forKey: key), "step \(step), key \(key)")
            case 7:
                map[key] = nil
                model[key] = nil
            default:
                #expect(map[key] == model[key], "step \(step), key \(key)")
            }
            #expect(map.count == model.count)
            if step % 500 == 0 {
                var seen: [Int: Int] = [:]
                for (k, v) in map { seen[k] = v }
                #expect(seen == model, "step \(step)")
                #expect(Set(map.keys) == Set(model.keys) && map.keys.count == model.count)
                for (k, v) in model { #expect(map[k] == v) }
            }
        }
    }

    /// Values are updated in place through the subscript (`map[k]!.field += 1`), and a value type's copy is
    /// independent of the map.
    @Test func updatesInPlaceAndCopiesAreValues() {
        var map = IntMap<[Int]>()
        map[7] = [1]
        map[7]!.append(2)
        let copy = map
        map[7]!.append(3)
        map[8] = []
        #expect(map[7] == [1, 2, 3] && copy[7] == [1, 2] && copy[8] == nil && map.count == 2 && copy.count == 1)
    }
}
