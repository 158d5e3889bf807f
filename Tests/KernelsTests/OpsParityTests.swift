import CKernels
import Foundation
import Testing
import TestSupport
@testable import Kernels

/// Parity of the C kernels in ops.c and attention.c, called through their typed faces in `Kernels`,
/// against their Swift reference twins (ReferenceOps). Tolerances, relative to the largest reference value:
/// RMSNorm, SiLU·mul and RoPE 1e-6 (a handful of f32 roundings against a double reference); attention 1e-5
/// (f32 dot products over head_dim and a softmax over up to ~100 positions, each ≲ 64 roundings of 6e-8);
/// the adds, the KV write and the RoPE tables exactly (the same f32 operations, or copies, or the same libm
/// calls in double).
@Suite struct OpsParityTests {
    typealias Rng = SplitMix64

    static func maxRelError(_ a: [Float], _ b: [Float]) -> Float {
        let scale = max(b.map { abs($0) }.max() ?? 1, 1e-6)
        return zip(a, b).map { abs($0 - $1) }.max()! / scale
    }

    /// On every instruction-set path, with widths that leave every tail of the vector paths' blocks of 16 and 8, and
    /// one batch large enough to be split over the threads.
    @Test func rmsnormMatchesReference() {
        var rng = Rng(seed: 1)
        for n in [1, 7, 8, 15, 16, 17, 24, 64, 576, 1000] {
            let ntok = n == 576 ? 37 : 3  // 37: over the kernel threads, in ranges of tokens
            let x = rng.floats(n * ntok).map { $0 * 5 }
            let w = rng.floats(n)
            for level in 0...Kernels.simdLevel {
                var out = [Float](repeating: .nan, count: n * ntok)
                Kernels.withSIMDLimit(level) { Kernels.rmsNorm(x, weight: w, into: &out, width: n, tokens: ntok, eps: 1e-5) }
                for t in 0..<ntok {
                    let ref = ReferenceOps.rmsnorm(Array(x[t * n..<(t + 1) * n]), weight: w, eps: 1e-5)
                    #expect(Self.maxRelError(Array(out[t * n..<(t + 1) * n]), ref) < 1e-6, "width \(n), SIMD path \(level)")
                }
            }
        }
    }

    /// On every instruction-set path, with rows whose length leaves a tail for the vector paths, gates out to ±200
    /// (where e^−g under- or overflows) and a NaN gate, which stays NaN.
    @Test func siluMulMatchesReference() {
        var rng = Rng(seed: 2)
        let n = 101, ntok = 21  // over the kernel threads, in ranges of tokens
        var gu = rng.floats(2 * n * ntok).map { $0 * 8 }
        for (i, g) in [Float(87), -87, 88.5, -88.5, 95, -95, 200, -200, 0, -0.0].enumerated() { gu[2 * n + 3 * i] = g }
        gu[3 * 2 * n + n - 1] = .nan  // token 3's last gate: in the vector paths' tail
        for level in 0...Kernels.simdLevel {
            var out = [Float](repeating: 0, count: n * ntok)
            Kernels.withSIMDLimit(level) {
                gu.withUnsafeBufferPointer { p in
                    Kernels.siluMul(gate: p.baseAddress!, up: p.baseAddress! + n, gateUpStride: 2 * n, into: &out, width: n, tokens: ntok)
                }
            }
            for t in 0..<ntok {
                for i in 0..<n {
                    let g = gu[t * 2 * n + i], ref = ReferenceOps.silu(g) * gu[t * 2 * n + n + i]
                    if g.isNaN {
                        #expect(out[t * n + i].isNaN, "SIMD path \(level): SiLU of NaN")
                    } else {
                        #expect(abs(out[t * n + i] - ref) <= 1e-6 * max(1, abs(ref)), "SIMD path \(level), gate \(g)")
                    }
                }
            }
        }
    }

    @Test(arguments: [false, true]) func ropeMatchesReference(neox: Bool) {
        var rng = Rng(seed: neox ? 3 : 4)
        let heads = 3, headDim = 16, half = headDim / 2, ntok = 5
        let invFreq = (0..<half).map { Float(1 / pow(10000.0, Double(2 * $0) / Double(headDim))) }
        let positions: [Int32] = [0, 1, 17, 255, 4000]
        var x = rng.floats(ntok * heads * headDim)
        let original = x
        var cosT = [Float](repeating: 0, count: ntok * half), sinT = cosT
        positions.withUnsafeBufferPointer { p in
            invFreq.withUnsafeBufferPointer { Kernels.ropeTables(positions: p, inverseFrequencies: $0, cos: &cosT, sin: &sinT) }
        }
        for t in 0..<ntok {
            let (c, s) = ReferenceOps.ropeTable(position: Int(positions[t]), invFreq: invFreq)
            #expect(Array(cosT[(t * half)..<((t + 1) * half)]) == c && Array(sinT[(t * half)..<((t + 1) * half)]) == s, "tables, token \(t)")
        }
        Kernels.applyRope(&x, ldx: heads * headDim, tokens: ntok, heads: heads, headDim: headDim, cos: cosT, sin: sinT,
                          pairing: neox ? .halves : .adjacent)
        for t in 0..<ntok {
            var ref = Array(original[t * heads * headDim..<(t + 1) * heads * headDim])
            ReferenceOps.rope(&ref, heads: heads, headDim: headDim, position: Int(positions[t]), invFreq: invFreq, neox: neox)
            #expect(Self.maxRelError(Array(x[t * heads * headDim..<(t + 1) * heads * headDim]), ref) < 1e-6)
        }
    }

    /// The two RoPE layouts are the same rotation up to llama.cpp's Q/K row permutation.
    @Test func ropeLayoutsAgreeUnderPermutation() {
        var rng = Rng(seed: 5)
        let headDim = 8, half = 4
        let invFreq: [Float] = [1, 0.1, 0.01, 0.001]
        let halves = rng.floats(headDim) // HF (rotate-half) layout
        var adjacent = [Float](repeating: 0, count: headDim)
        for i in 0..<half { adjacent[2 * i] = halves[i]; adjacent[2 * i + 1] = halves[i + half] }
        var a = halves, b = adjacent
        ReferenceOps.rope(&a, heads: 1, headDim: headDim, position: 9, invFreq: invFreq, neox: true)
        ReferenceOps.rope(&b, heads: 1, headDim: headDim, position: 9, invFreq: invFreq, neox: false)
        for i in 0..<half {
            #expect(abs(a[i] - b[2 * i]) < 1e-6 && abs(a[i + half] - b[2 * i + 1]) < 1e-6)
        }
    }

    /// Paged attention over scattered blocks, two sequences mixed in one flat batch (one prefill chunk
    /// continuing a cached prefix, one decode), against the naive reference.
    @Test(arguments: [(4, 2, 16, 4), (9, 3, 64, 16), (4, 4, 32, 1), (8, 2, 128, 16)])
    func pagedAttentionMatchesReference(shape: (Int, Int, Int, Int)) {
        let (nHead, nKV, headDim, blockSize) = shape
        var rng = Rng(seed: UInt64(nHead * 100 + blockSize))
        let row = nKV * headDim
        let storage = PagedKVStorage(numLayers: 1, numBlocks: 64, blockSize: blockSize, numKVHeads: nKV, headDim: headDim)
        // Sequence A: 37 cached positions + 5 new tokens; sequence B: 20 cached + 1 new.
        let lengths = [42, 21], fresh = [5, 1]
        var blockPool = Array((0..<storage.numBlocks).reversed()).shuffledDeterministically(&rng)
        var tables: [[Int32]] = []
        for len in lengths {
            let n = (len + blockSize - 1) / blockSize
            tables.append((0..<n).map { _ in Int32(blockPool.removeLast()) })
        }
        var keys: [[[Float]]] = [], values: [[[Float]]] = []
        for (s, len) in lengths.enumerated() {
            keys.append((0..<len).map { _ in rng.floats(row) })
            values.append((0..<len).map { _ in rng.floats(row) })
            // Write the cached prefix directly.
            let cached = len - fresh[s]
            for p in 0..<cached {
                let slot = [Int64(tables[s][p / blockSize]) * Int64(blockSize) + Int64(p % blockSize)]
                slot.withUnsafeBufferPointer {
                    Kernels.writeKV(storage, layer: 0, slots: $0, keys: keys[s][p], ldk: row, values: values[s][p], ldv: row)
                }
            }
        }
        // The flat batch: A's 5 new tokens then B's 1.
        var slots: [Int64] = [], positions: [Int32] = [], offsets: [Int64] = [], flatTables: [Int32] = []
        var kNew: [Float] = [], vNew: [Float] = [], q: [Float] = []
        var refs: [[Float]] = []
        for (s, len) in lengths.enumerated() {
            let offset = Int64(flatTables.count)
            flatTables += tables[s]
            for p in (len - fresh[s])..<len {
                slots.append(Int64(tables[s][p / blockSize]) * Int64(blockSize) + Int64(p % blockSize))
                positions.append(Int32(p))
                offsets.append(offset)
                kNew += keys[s][p]
                vNew += values[s][p]
                let query = rng.floats(nHead * headDim)
                q += query
                refs.append(ReferenceOps.attention(query: query, keys: keys[s], values: values[s], position: p,
                                                   nHead: nHead, nKV: nKV, headDim: headDim, scale: 1 / Float(headDim).squareRoot()))
            }
        }
        let ntok = slots.count
        slots.withUnsafeBufferPointer {
            Kernels.writeKV(storage, layer: 0, slots: $0, keys: kNew, ldk: row, values: vNew, ldv: row)
        }
        // On every instruction-set path this machine has.
        for level in 0...Kernels.simdLevel {
            let out = Kernels.withSIMDLimit(level) {
                Self.attention(q, heads: nHead, positions: positions, slots: slots, offsets: offsets, tables: flatTables,
                               kv: storage, layer: 0)
            }
            for t in 0..<ntok {
                let got = Array(out[t * nHead * headDim..<(t + 1) * nHead * headDim])
                #expect(Self.maxRelError(got, refs[t]) < 1e-5, "SIMD path \(level) token \(t)")
            }
        }
    }

    /// The softmax at its edges, on every instruction-set path: one decode per context length from 1 to 40 (the
    /// vector paths' tails of 16 and 8), queries scaled so that scores spread far past e^-87 (terms that flush to 0),
    /// and a NaN in one position's K row of one kv head, which makes exactly that kv head's query heads NaN (as expf
    /// keeps NaN; a vector exp that dropped NaN terms would hide the corrupt row and give finite values).
    @Test(arguments: KVCacheDType.allCases)
    func pagedAttentionSoftmaxEdges(dtype: KVCacheDType) {
        let (nHead, nKV, headDim, blockSize) = (6, 2, 64, 16)
        let row = nKV * headDim, group = nHead / nKV, width = nHead * headDim
        var rng = Rng(seed: 4242)
        for n in 1...40 {
            let storage = PagedKVStorage(numLayers: 1, numBlocks: 4, blockSize: blockSize, numKVHeads: nKV, headDim: headDim, dtype: dtype)
            let table: [Int32] = [3, 1, 0, 2]
            let keys = (0..<n).map { _ in rng.floats(row) }, values = (0..<n).map { _ in rng.floats(row) }
            for p in 0..<n {
                [Int64(table[p / blockSize]) * Int64(blockSize) + Int64(p % blockSize)].withUnsafeBufferPointer {
                    Kernels.writeKV(storage, layer: 0, slots: $0, keys: keys[p], ldk: row, values: values[p], ldv: row)
                }
            }
            let q = rng.floats(width).map { $0 * 60 }
            let slot = Int64(table[(n - 1) / blockSize]) * Int64(blockSize) + Int64((n - 1) % blockSize)
            let stored = (0..<n).map { p in
                (0..<row).map { storage.value(layer: 0, key: true, index: (Int(table[p / blockSize]) * blockSize + p % blockSize) * row + $0) }
            }
            let storedV = (0..<n).map { p in
                (0..<row).map { storage.value(layer: 0, key: false, index: (Int(table[p / blockSize]) * blockSize + p % blockSize) * row + $0) }
            }
            let ref = ReferenceOps.attention(query: q, keys: stored, values: storedV, position: n - 1, nHead: nHead, nKV: nKV,
                                             headDim: headDim, scale: 1 / Float(headDim).squareRoot())
            for level in 0...Kernels.simdLevel {
                let out = Kernels.withSIMDLimit(level) {
                    Self.attention(q, heads: nHead, positions: [Int32(n - 1)], slots: [slot], offsets: [0], tables: table, kv: storage, layer: 0)
                }
                #expect(Self.maxRelError(out, ref) < 1e-5, "n \(n), SIMD path \(level)")
            }
            // A NaN in kv head 1's K row at a position inside the context.
            let bad = (n * 7) % n
            var poisoned = keys[bad]
            poisoned[headDim + 5] = .nan
            [Int64(table[bad / blockSize]) * Int64(blockSize) + Int64(bad % blockSize)].withUnsafeBufferPointer {
                Kernels.writeKV(storage, layer: 0, slots: $0, keys: poisoned, ldk: row, values: values[bad], ldv: row)
            }
            for level in 0...Kernels.simdLevel {
                let out = Kernels.withSIMDLimit(level) {
                    Self.attention(q, heads: nHead, positions: [Int32(n - 1)], slots: [slot], offsets: [0], tables: table, kv: storage, layer: 0)
                }
                for h in 0..<nHead {
                    let head = out[(h * headDim)..<((h + 1) * headDim)]
                    if h / group == 1 {
                        #expect(head.allSatisfy { $0.isNaN }, "n \(n), SIMD path \(level), head \(h): a NaN K row must give NaN")
                    } else {
                        #expect(head.allSatisfy { $0.isFinite }, "n \(n), SIMD path \(level), head \(h)")
                    }
                }
            }
        }
    }

    /// Each token of a flat batch's attention output `out` against the double reference over its visible
    /// positions (1e-5), and against the same token computed alone, bit for bit.
    static func expectEachTokenMatchesReferenceAndAlone(_ out: [Float], q: [Float], heads nHead: Int, positions: [Int32],
                                                       slots: [Int64], offsets: [Int64], tables: [Int32],
                                                       kv storage: PagedKVStorage, layer: Int) {
        let headDim = storage.headDim, row = storage.rowFloats, width = nHead * headDim, blockSize = storage.blockSize
        // The values the cache holds (an f16 cache's, widened): the reference attends over what was stored.
        func stored(_ key: Bool, _ start: Int) -> [Float] { (start..<(start + row)).map { storage.value(layer: layer, key: key, index: $0) } }
        for t in 0..<positions.count {
            let table = Array(tables[Int(offsets[t])...])
            let visible = (0...Int(positions[t])).map { (Int(table[$0 / blockSize]) * blockSize + $0 % blockSize) * row }
            let ref = ReferenceOps.attention(query: Array(q[(t * width)..<((t + 1) * width)]),
                                             keys: visible.map { stored(true, $0) },
                                             values: visible.map { stored(false, $0) },
                                             position: Int(positions[t]), nHead: nHead, nKV: row / headDim, headDim: headDim,
                                             scale: 1 / Float(headDim).squareRoot())
            let got = Array(out[(t * width)..<((t + 1) * width)])
            #expect(Self.maxRelError(got, ref) < 1e-5, "token \(t) at \(positions[t])")
            let alone = Self.attention(Array(q[(t * width)..<((t + 1) * width)]), heads: nHead, positions: [positions[t]],
                                       slots: [slots[t]], offsets: [0], tables: table, kv: storage, layer: layer)
            #expect(alone == got, "token \(t): alone != batched")
        }
    }

    /// Runs `Kernels.pagedAttention` over a flat batch given as arrays; returns [tokens][heads · headDim].
    static func attention(_ q: [Float], heads: Int, positions: [Int32], slots: [Int64], offsets: [Int64], tables: [Int32],
                          kv: PagedKVStorage, layer: Int) -> [Float] {
        let width = heads * kv.headDim
        var out = [Float](repeating: .nan, count: positions.count * width)
        positions.withUnsafeBufferPointer { p in
            slots.withUnsafeBufferPointer { s in
                offsets.withUnsafeBufferPointer { o in
                    tables.withUnsafeBufferPointer { b in
                        Kernels.pagedAttention(query: q, ldq: width, heads: heads,
                                               layout: PagedBatchLayout(positions: p, slots: s, tableOffsets: o, blockTables: b),
                                               kv: kv, layer: layer, scale: 1 / Float(kv.headDim).squareRoot(), into: &out, ldo: width)
                    }
                }
            }
        }
        return out
    }

    /// Attention over a paged cache with several block tables at once: a prefill from position 0, a chunk
    /// continuing a prefix whose first blocks are *shared* with another sequence's table (prefix caching),
    /// a long decode, and a first-token decode, in one flat batch on layer 1 of a two-layer cache, with
    /// the blocks scattered. The batch is large enough to run over the kernel threads; each token is then
    /// recomputed alone (serially) and must agree bit for bit. For an f32 and an f16 cache.
    @Test(arguments: [(9, 3, 64, 16), (4, 1, 32, 4), (8, 8, 16, 1)], KVCacheDType.allCases)
    func pagedAttentionSeveralBlockTables(shape: (Int, Int, Int, Int), dtype: KVCacheDType) {
        let (nHead, nKV, headDim, blockSize) = shape
        var rng = Rng(seed: UInt64(7000 + nHead * 10 + blockSize))
        let row = nKV * headDim, layer = 1
        let storage = PagedKVStorage(numLayers: 2, numBlocks: 160, blockSize: blockSize, numKVHeads: nKV, headDim: headDim, dtype: dtype)
        var free = Array(0..<storage.numBlocks).shuffledDeterministically(&rng)
        func blocks(_ n: Int) -> [Int32] { (0..<n).map { _ in Int32(free.removeLast()) } }
        func blocksFor(_ length: Int) -> Int { (length + blockSize - 1) / blockSize }
        // (cached positions, new tokens, block table) per sequence.
        let shared = blocks(max(1, 24 / blockSize))
        let sharedLength = shared.count * blockSize
        var sequences: [(cached: Int, fresh: Int, table: [Int32])] = []
        sequences.append((0, 23, blocks(blocksFor(23))))
        sequences.append((sharedLength + 5, 7, shared + blocks(blocksFor(sharedLength + 12) - shared.count)))
        sequences.append((sharedLength + 1, 0, shared + blocks(blocksFor(sharedLength + 1) - shared.count))) // cached only
        sequences.append((60, 1, blocks(blocksFor(61))))
        sequences.append((0, 1, blocks(1)))
        func slot(_ table: [Int32], _ p: Int) -> Int64 { Int64(table[p / blockSize]) * Int64(blockSize) + Int64(p % blockSize) }
        // Cached positions hold random K/V (the shared blocks once, through the first table that has them).
        var written = Set<Int64>()
        for s in sequences {
            for p in 0..<s.cached where written.insert(slot(s.table, p)).inserted {
                [slot(s.table, p)].withUnsafeBufferPointer {
                    Kernels.writeKV(storage, layer: layer, slots: $0, keys: rng.floats(row), ldk: row, values: rng.floats(row), ldv: row)
                }
            }
        }
        var slots: [Int64] = [], positions: [Int32] = [], offsets: [Int64] = [], tables: [Int32] = []
        var kNew: [Float] = [], vNew: [Float] = [], q: [Float] = []
        for s in sequences where s.fresh > 0 {
            let offset = Int64(tables.count)
            tables += s.table
            for p in s.cached..<(s.cached + s.fresh) {
                slots.append(slot(s.table, p))
                positions.append(Int32(p))
                offsets.append(offset)
                kNew += rng.floats(row)
                vNew += rng.floats(row)
                q += rng.floats(nHead * headDim)
            }
        }
        slots.withUnsafeBufferPointer { Kernels.writeKV(storage, layer: layer, slots: $0, keys: kNew, ldk: row, values: vNew, ldv: row) }
        let out = Self.attention(q, heads: nHead, positions: positions, slots: slots, offsets: offsets, tables: tables, kv: storage, layer: layer)
        Self.expectEachTokenMatchesReferenceAndAlone(out, q: q, heads: nHead, positions: positions, slots: slots, offsets: offsets,
                                                     tables: tables, kv: storage, layer: layer)
        // Layer 0 was never touched.
        #expect((0..<(storage.numBlocks * storage.blockFloats)).allSatisfy { storage.value(layer: 0, key: true, index: $0) == 0 })
    }

    /// Long contexts, where the AVX-512 path cuts a token's positions into parts (past 1,024 positions) and
    /// merges their partial softmaxes: a 1,900-position decode (2 parts), a prefill chunk whose tokens cross
    /// from 1 part to 2 (positions 1,020-1,027), a 3,000-position decode (3 parts) and a short decode, in one
    /// batch with the blocks scattered. Each token against the double reference, alone against batched bit for
    /// bit, and one thread against two bit for bit. For an f32 and an f16 cache.
    @Test(arguments: KVCacheDType.allCases)
    func longContextsMatchReferenceAcrossParts(dtype: KVCacheDType) {
        let (nHead, nKV, headDim, blockSize) = (9, 3, 64, 16)
        var rng = Rng(seed: 4242)
        let row = nKV * headDim, layer = 0
        let storage = PagedKVStorage(numLayers: 1, numBlocks: 400, blockSize: blockSize, numKVHeads: nKV, headDim: headDim, dtype: dtype)
        var free = Array(0..<storage.numBlocks).shuffledDeterministically(&rng)
        func blocks(_ n: Int) -> [Int32] { (0..<n).map { _ in Int32(free.removeLast()) } }
        func slot(_ table: [Int32], _ p: Int) -> Int64 { Int64(table[p / blockSize]) * Int64(blockSize) + Int64(p % blockSize) }
        let sequences: [(cached: Int, fresh: Int)] = [(1899, 1), (1020, 8), (2999, 1), (10, 1)]
        let tablesBySequence = sequences.map { blocks(($0.cached + $0.fresh + blockSize - 1) / blockSize) }
        var slots: [Int64] = [], positions: [Int32] = [], offsets: [Int64] = [], tables: [Int32] = [], q: [Float] = []
        for (s, seq) in sequences.enumerated() {
            let table = tablesBySequence[s], offset = Int64(tables.count)
            tables += table
            for p in 0..<(seq.cached + seq.fresh) {
                [slot(table, p)].withUnsafeBufferPointer {
                    Kernels.writeKV(storage, layer: layer, slots: $0, keys: rng.floats(row), ldk: row, values: rng.floats(row), ldv: row)
                }
                if p >= seq.cached {
                    slots.append(slot(table, p))
                    positions.append(Int32(p))
                    offsets.append(offset)
                    q += rng.floats(nHead * headDim)
                }
            }
        }
        let before = dl_num_threads()
        dl_set_num_threads(1)
        let serial = Self.attention(q, heads: nHead, positions: positions, slots: slots, offsets: offsets, tables: tables, kv: storage, layer: layer)
        dl_set_num_threads(2)
        let out = Self.attention(q, heads: nHead, positions: positions, slots: slots, offsets: offsets, tables: tables, kv: storage, layer: layer)
        dl_set_num_threads(before)
        #expect(serial == out, "one thread != two threads")
        Self.expectEachTokenMatchesReferenceAndAlone(out, q: q, heads: nHead, positions: positions, slots: slots, offsets: offsets,
                                                     tables: tables, kv: storage, layer: layer)
    }

    /// With AVX-512 and head_dim 64 the heads that share a kv head run together (16 positions' scores summed by
    /// one transpose network); with AVX2 each head runs alone, one reduction per position. Both spell the same
    /// FMAs and the same lane tree, so they must agree bit for bit: decodes whose context ends inside, at and just
    /// past a 16-position block (1 to 300 positions), with an f32 and an f16 cache.
    @Test(arguments: KVCacheDType.allCases)
    func groupedHeadsMatchPerHeadPathBitForBit(dtype: KVCacheDType) throws {
        try #require(Kernels.simdLevel >= 2, "needs AVX-512 beside AVX2")
        let (nHead, nKV, headDim, blockSize) = (9, 3, 64, 16)
        var rng = Rng(seed: 5150)
        let row = nKV * headDim
        let lengths = [1, 15, 16, 17, 31, 48, 100, 300]
        let storage = PagedKVStorage(numLayers: 1, numBlocks: 64, blockSize: blockSize, numKVHeads: nKV, headDim: headDim, dtype: dtype)
        var free = Array(0..<storage.numBlocks).shuffledDeterministically(&rng)
        var slots: [Int64] = [], positions: [Int32] = [], offsets: [Int64] = [], tables: [Int32] = [], q: [Float] = []
        for len in lengths {
            let table = (0..<((len + blockSize - 1) / blockSize)).map { _ in Int32(free.removeLast()) }
            let offset = Int64(tables.count)
            tables += table
            for p in 0..<len {
                // Scores of either sign and a few large ones, so the max and the exponentials are exercised.
                let keys = rng.floats(row).map { $0 * (p % 7 == 0 ? 8 : 1) }
                let slot = Int64(table[p / blockSize]) * Int64(blockSize) + Int64(p % blockSize)
                [slot].withUnsafeBufferPointer {
                    Kernels.writeKV(storage, layer: 0, slots: $0, keys: keys, ldk: row, values: rng.floats(row), ldv: row)
                }
                if p == len - 1 {
                    slots.append(slot)
                    positions.append(Int32(p))
                    offsets.append(offset)
                    // Every third query large, so its softmax terms span f32's range (their double sum is then
                    // inexact, and its order shows).
                    q += rng.floats(nHead * headDim).map { $0 * (slots.count % 3 == 0 ? 40 : 1) }
                }
            }
        }
        let grouped = Kernels.withSIMDLimit(2) {
            Self.attention(q, heads: nHead, positions: positions, slots: slots, offsets: offsets, tables: tables, kv: storage, layer: 0)
        }
        let perHead = Kernels.withSIMDLimit(1) {
            Self.attention(q, heads: nHead, positions: positions, slots: slots, offsets: offsets, tables: tables, kv: storage, layer: 0)
        }
        for (t, len) in lengths.enumerated() {
            let width = nHead * headDim
            #expect(grouped[t * width..<(t + 1) * width].map(\.bitPattern) == perHead[t * width..<(t + 1) * width].map(\.bitPattern),
                    "\(len) positions")
        }
    }

    /// The KV write copies each token's rows (strided sources) to exactly its slots.
    @Test func kvWriteMatchesReference() {
        var rng = Rng(seed: 8)
        let storage = PagedKVStorage(numLayers: 1, numBlocks: 6, blockSize: 4, numKVHeads: 2, headDim: 8)
        let row = storage.rowFloats, ld = 3 * row
        let slots: [Int64] = [17, 2, 23, 0, 9]
        let k = rng.floats(slots.count * ld), v = rng.floats(slots.count * ld)
        slots.withUnsafeBufferPointer { Kernels.writeKV(storage, layer: 0, slots: $0, keys: k, ldk: ld, values: v, ldv: ld) }
        var refK = [Float](repeating: 0, count: storage.numBlocks * storage.blockFloats), refV = refK
        for (t, s) in slots.enumerated() {
            for i in 0..<row {
                refK[Int(s) * row + i] = k[t * ld + i]
                refV[Int(s) * row + i] = v[t * ld + i]
            }
        }
        #expect(Array(UnsafeBufferPointer(start: storage.keys(layer: 0), count: refK.count)) == refK)
        #expect(Array(UnsafeBufferPointer(start: storage.values(layer: 0), count: refV.count)) == refV)
    }

    @Test func addAndAddScaledMatchReference() {
        var rng = Rng(seed: 9)
        let n = 203
        let x = rng.floats(n).map { $0 * 3 }, y0 = rng.floats(n)
        var y = y0
        Kernels.add(x, into: &y, count: n)
        #expect(y.map(\.bitPattern) == ReferenceOps.add(y0, x).map(\.bitPattern))
        // Strided: 3 tokens of width 40 out of rows of 50 (x) and 45 (y); the gaps stay untouched.
        let width = 40, tokens = 3, ldx = 50, ldy = 45
        let xs = rng.floats(tokens * ldx), ys0 = rng.floats(tokens * ldy)
        var ys = ys0
        Kernels.addScaled(xs, ldx: ldx, scale: 0.37, into: &ys, ldy: ldy, width: width, tokens: tokens)
        var expected = ys0
        for t in 0..<tokens {
            let r = ReferenceOps.addScaled(Array(ys0[(t * ldy)..<(t * ldy + width)]), Array(xs[(t * ldx)..<(t * ldx + width)]), scale: 0.37)
            expected.replaceSubrange((t * ldy)..<(t * ldy + width), with: r)
        }
        #expect(ys.map(\.bitPattern) == expected.map(\.bitPattern))
    }

    /// The bandwidth probe's sum (64 chunks over the threads, AVX-512 f32 partial sums) against a double sum;
    /// tolerance 1e-5 of Σ|x|: each chunk accumulates in f32 over 16 lanes × 4 registers.
    @Test func streamSumMatchesReference() {
        var rng = Rng(seed: 10)
        for n in [0, 5, 64, 1000, 300_001] {
            let x = rng.floats(n)
            let magnitude = x.reduce(0.0) { $0 + Double(abs($1)) }
            for level in 0...Kernels.simdLevel {
                let got = Kernels.withSIMDLimit(level) { Kernels.streamSum(x, count: n) }
                #expect(abs(got - ReferenceOps.sum(x)) <= 1e-5 * magnitude, "n=\(n) SIMD path \(level)")
            }
        }
    }

    /// The log-softmax normaliser on every SIMD path against its twin (expf, double sums): relative 1e-6, with −∞
    /// entries, entries far below the shift (which count 0 on both), and lengths around the vector widths.
    @Test func sumExpMatchesReference() {
        var rng = Rng(seed: 12)
        for n in [0, 1, 7, 8, 15, 16, 17, 33, 1000, 49152] {
            var x = rng.floats(n).map { $0 * 20 - 5 }
            for i in stride(from: 3, to: n, by: 11) { x[i] = -.infinity }
            for i in stride(from: 5, to: n, by: 13) { x[i] = -200 }
            let m = x.max() ?? 0
            let want = Kernels.sumExpReference(x, count: n, shift: m)
            for level in 0...Kernels.simdLevel {
                let got = Kernels.withSIMDLimit(level) { Kernels.sumExp(x, count: n, shift: m) }
                #expect(abs(got - want) <= 1e-6 * max(want, 1e-30), "n=\(n) SIMD path \(level): \(got) vs \(want)")
            }
        }
        // Exactly 1 for a single entry at the shift, 0 for nothing but −∞.
        for level in 0...Kernels.simdLevel {
            Kernels.withSIMDLimit(level) {
                #expect(Kernels.sumExp([2.5], count: 1, shift: 2.5) == 1)
                #expect(Kernels.sumExp([-Float.infinity, -.infinity], count: 2, shift: 0) == 0)
            }
        }
    }

    @Test func kvBlocksCopyOutAndIn() {
        let storage = PagedKVStorage(numLayers: 2, numBlocks: 4, blockSize: 2, numKVHeads: 1, headDim: 4)
        for layer in 0..<2 {
            for i in 0..<(4 * storage.blockFloats) {
                storage.keys(layer: layer)[i] = Float(layer * 1000 + i)
                storage.values(layer: layer)[i] = -Float(layer * 1000 + i)
            }
        }
        var saved = [Float](repeating: 0, count: storage.blockFloats * 4)
        storage.copyOut(block: 2, to: &saved)
        storage.copyIn(block: 0, from: saved)
        for layer in 0..<2 {
            for i in 0..<storage.blockFloats {
                #expect(storage.keys(layer: layer)[i] == storage.keys(layer: layer)[2 * storage.blockFloats + i])
                #expect(storage.values(layer: layer)[i] == storage.values(layer: layer)[2 * storage.blockFloats + i])
            }
        }
    }
}

extension Array {
    func shuffledDeterministically(_ rng: inout OpsParityTests.Rng) -> [Element] {
        var a = self
        for i in stride(from: a.count - 1, to: 0, by: -1) { a.swapAt(i, rng.int(0..<(i + 1))) }
        return a
    }
}
