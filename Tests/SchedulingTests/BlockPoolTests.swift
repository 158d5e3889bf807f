import Testing
@testable import Scheduling

@Suite struct BlockPoolTests {
    @Test func allocateAndReleaseConserveBlocks() {
        var pool = BlockPool(numBlocks: 10, blockSize: 4)
        var table: [Int32] = []
        #expect(pool.ensureCapacity(&table, tokens: 9))
        #expect(table.count == 3 && pool.freeCount == 7)
        #expect(pool.ensureCapacity(&table, tokens: 12))
        #expect(table.count == 3)
        #expect(!pool.ensureCapacity(&table, tokens: 100))
        #expect(table.count == 3 && pool.freeCount == 7, "a failed grow takes nothing")
        pool.retain(table[0])
        pool.release(table)
        #expect(pool.freeCount == 9 && pool.refCounts[Int(table[0])] == 1)
        pool.release([table[0]])
        #expect(pool.freeCount == 10 && pool.usedCount == 0)
    }

    @Test func randomChurnKeepsCountsConsistent() {
        var pool = BlockPool(numBlocks: 64, blockSize: 16)
        var tables: [[Int32]] = []
        var seed: UInt64 = 7
        func next() -> Int { seed = seed &* 6364136223846793005 &+ 1442695040888963407; return Int(seed >> 33) }
        for _ in 0..<2000 {
            if next() % 3 == 0, !tables.isEmpty {
                pool.release(tables.remove(at: next() % tables.count))
            } else {
                var t: [Int32] = []
                if pool.ensureCapacity(&t, tokens: next() % 100 + 1) { tables.append(t) }
            }
            let held = tables.reduce(0) { $0 + $1.count }
            #expect(held + pool.freeCount == pool.numBlocks)
            #expect(Set(tables.flatMap { $0 }).count == held, "no block handed out twice")
        }
    }
}
