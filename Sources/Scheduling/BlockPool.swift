/// The KV-cache block pool as integers (vLLM's block manager): block ids, reference counts and a free
/// list. The floats live in `Kernels.PagedKVStorage`; this type only decides which block holds what.
public struct BlockPool: Sendable {
    public let blockSize: Int
    public private(set) var refCounts: [Int32]
    private var free: [Int32]

    public init(numBlocks: Int, blockSize: Int) {
        precondition(numBlocks > 0 && blockSize > 0)
        self.blockSize = blockSize
        refCounts = [Int32](repeating: 0, count: numBlocks)
        // Lowest ids first out of the free list.
        free = (0..<Int32(numBlocks)).reversed()
    }

    public var numBlocks: Int { refCounts.count }
    public var freeCount: Int { free.count }
    public var usedCount: Int { numBlocks - free.count }

    /// Blocks needed to hold `tokens` positions.
    public func blocksNeeded(tokens: Int) -> Int { (tokens + blockSize - 1) / blockSize }

    /// Takes `count` free blocks (reference count 1), or nil (taking none) if too few are free.
    public mutating func allocate(_ count: Int) -> [Int32]? {
        guard count <= free.count else { return nil }
        var out: [Int32] = []
        out.reserveCapacity(count)
        for _ in 0..<count {
            let id = free.removeLast()
            refCounts[Int(id)] = 1
            out.append(id)
        }
        return out
    }

    /// Grows `table` so it covers `tokens` positions; false (table unchanged) if blocks ran out.
    public mutating func ensureCapacity(_ table: inout [Int32], tokens: Int) -> Bool {
        let missing = blocksNeeded(tokens: tokens) - table.count
        guard missing > 0 else { return true }
        guard let blocks = allocate(missing) else { return false }
        table.append(contentsOf: blocks)
        return true
    }

    /// Adds a reference to a block in use (prefix sharing, forks).
    public mutating func retain(_ id: Int32) {
        precondition(refCounts[Int(id)] > 0, "retain of a free block \(id)")
        refCounts[Int(id)] += 1
    }

    /// Drops one reference to each block; blocks whose count reaches zero return to the free list.
    public mutating func release(_ ids: [Int32]) {
        for id in ids {
            precondition(refCounts[Int(id)] > 0, "double free of block \(id)")
            refCounts[Int(id)] -= 1
            if refCounts[Int(id)] == 0 { free.append(id) }
        }
    }
}
