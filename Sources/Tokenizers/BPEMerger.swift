import Foundation

/// Pair merges by priority: `(left, right) → (rank, merged)`; lower rank merges first.
///
/// HF tokenizer.json and GGUF `gpt2` vocabularies give merges as an ordered list (rank = position). GGUF `llama`
/// (SentencePiece) vocabularies give none: a pair merges when their concatenation is a token, and the token with
/// the highest score wins (`llm_tokenizer_spm` in llama.cpp, `bpe_model.cc` in sentencepiece). Both become a
/// table of ranks here; equal scores share a rank, and ties go to the leftmost pair as in both references.
struct MergeTable: Sendable {
    private var table: [UInt64: UInt64] = [:]

    var count: Int { table.count }

    init() {}

    /// Adds a merge unless the pair already has one (the first, highest-priority entry wins, like HF).
    mutating func add(left: Int32, right: Int32, rank: Int32, merged: Int32) {
        let key = UInt64(UInt32(bitPattern: left)) << 32 | UInt64(UInt32(bitPattern: right))
        if table[key] == nil {
            table[key] = UInt64(UInt32(bitPattern: rank)) << 32 | UInt64(UInt32(bitPattern: merged))
        }
    }

    @inline(__always)
    func lookup(_ left: Int32, _ right: Int32) -> (rank: Int32, merged: Int32)? {
        let key = UInt64(UInt32(bitPattern: left)) << 32 | UInt64(UInt32(bitPattern: right))
        guard let v = table[key] else { return nil }
        return (Int32(truncatingIfNeeded: v >> 32), Int32(truncatingIfNeeded: v & 0xFFFF_FFFF))
    }
}

/// Working memory for merging one word; reused across words so that merging allocates nothing in steady state.
struct BPEScratch {
    fileprivate var prev: [Int32] = []
    fileprivate var next: [Int32] = []
    fileprivate var heap: [UInt64] = []     // (rank << 32 | position), min-heap
    fileprivate var heapMerged: [Int32] = []  // merged id for each heap entry, parallel to `heap`
}

extension MergeTable {
    /// Merges `symbols` in place: repeatedly applies the lowest-rank merge among adjacent pairs, leftmost first.
    ///
    /// Symbols live in a linked list over the original positions; candidate pairs wait in a binary heap keyed by
    /// (rank, left position). A popped pair is applied only if both ends are still adjacent and still form the
    /// same pair — stale entries are skipped, as in HF `Word::merge_all`. O(n log n) per word.
    func merge(_ symbols: inout [Int32], scratch s: inout BPEScratch) {
        let n = symbols.count
        guard n > 1 else { return }
        s.prev.removeAll(keepingCapacity: true)
        s.next.removeAll(keepingCapacity: true)
        s.heap.removeAll(keepingCapacity: true)
        s.heapMerged.removeAll(keepingCapacity: true)
        for i in 0..<n {
            s.prev.append(Int32(i - 1))
            s.next.append(i + 1 < n ? Int32(i + 1) : -1)
        }
        for i in 0..<(n - 1) {
            if let m = lookup(symbols[i], symbols[i + 1]) { push(&s, rank: m.rank, position: Int32(i), merged: m.merged) }
        }
        while let (key, merged) = pop(&s) {
            let rank = Int32(truncatingIfNeeded: key >> 32)
            let i = Int(Int32(truncatingIfNeeded: key & 0xFFFF_FFFF))
            guard symbols[i] >= 0 else { continue }
            let j = Int(s.next[i])
            guard j >= 0, let m = lookup(symbols[i], symbols[j]), m.rank == rank, m.merged == merged else { continue }
            symbols[i] = merged
            symbols[j] = -1
            let after = s.next[j]
            s.next[i] = after
            if after >= 0 { s.prev[Int(after)] = Int32(i) }
            let before = Int(s.prev[i])
            if before >= 0, let m = lookup(symbols[before], merged) {
                push(&s, rank: m.rank, position: Int32(before), merged: m.merged)
            }
            if after >= 0, let m = lookup(merged, symbols[Int(after)]) {
                push(&s, rank: m.rank, position: Int32(i), merged: m.merged)
            }
        }
        var w = 0
        for r in 0..<n where symbols[r] >= 0 {
            symbols[w] = symbols[r]
            w += 1
        }
        symbols.removeLast(n - w)
    }

    private func push(_ s: inout BPEScratch, rank: Int32, position: Int32, merged: Int32) {
        s.heap.append(UInt64(UInt32(bitPattern: rank)) << 32 | UInt64(UInt32(bitPattern: position)))
        s.heapMerged.append(merged)
        var k = s.heap.count - 1
        while k > 0 {
            let parent = (k - 1) / 2
            guard s.heap[k] < s.heap[parent] else { break }
            s.heap.swapAt(k, parent)
            s.heapMerged.swapAt(k, parent)
            k = parent
        }
    }

    private func pop(_ s: inout BPEScratch) -> (UInt64, Int32)? {
        guard let top = s.heap.first else { return nil }
        let merged = s.heapMerged[0]
        let last = s.heap.removeLast()
        let lastMerged = s.heapMerged.removeLast()
        if !s.heap.isEmpty {
            s.heap[0] = last
            s.heapMerged[0] = lastMerged
            var k = 0
            let n = s.heap.count
            while true {
                let l = 2 * k + 1
                let r = l + 1
                var m = k
                if l < n && s.heap[l] < s.heap[m] { m = l }
                if r < n && s.heap[r] < s.heap[m] { m = r }
                if m == k { break }
                s.heap.swapAt(k, m)
                s.heapMerged.swapAt(k, m)
                k = m
            }
        }
        return (top, merged)
    }
}

/// A bounded cache from a piece's bytes to its token ids, shared by all callers of one tokenizer.
/// When full it is emptied, which keeps the bound without bookkeeping per entry (HF uses the same capacity and
/// simply stops inserting).
final class WordCache: @unchecked Sendable {
    private let lock = NSLock()
    private var entries: [[UInt8]: [Int32]] = [:]
    let capacity: Int
    /// Pieces longer than this are not cached (long runs are rare and would crowd the cache).
    let maxKeyLength = 48

    init(capacity: Int = 10_000) { self.capacity = capacity }

    func get(_ key: [UInt8]) -> [Int32]? {
        lock.lock()
        defer { lock.unlock() }
        return entries[key]
    }

    func put(_ key: [UInt8], _ ids: [Int32]) {
        guard key.count <= maxKeyLength else { return }
        lock.lock()
        defer { lock.unlock() }
        if entries.count >= capacity { entries.removeAll(keepingCapacity: true) }
        entries[key] = ids
    }
}
