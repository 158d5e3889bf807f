import CKernels
import Foundation
import Testing
@testable import Kernels

/// Parity of the C kernels in ops.c and attention.c against their Swift reference twins.
@Suite struct OpsParityTests {
    struct Rng {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        mutating func float() -> Float { Float(next() >> 40) / Float(1 << 24) * 2 - 1 }
        mutating func floats(_ n: Int) -> [Float] { (0..<n).map { _ in float() } }
        mutating func int(_ range: Range<Int>) -> Int { range.lowerBound + Int(next() % UInt64(range.count)) }
    }

    static func maxRelError(_ a: [Float], _ b: [Float]) -> Float {
        let scale = max(b.map { abs($0) }.max() ?? 1, 1e-6)
        return zip(a, b).map { abs($0 - $1) }.max()! / scale
    }

    @Test func rmsnormMatchesReference() {
        var rng = Rng(state: 1)
        for n in [1, 7, 64, 576, 1000] {
            let ntok = 3
            let x = rng.floats(n * ntok).map { $0 * 5 }
            let w = rng.floats(n)
            var out = [Float](repeating: 0, count: n * ntok)
            dl_rmsnorm(x, w, &out, Int64(n), Int64(ntok), 1e-5)
            for t in 0..<ntok {
                let ref = ReferenceOps.rmsnorm(Array(x[t * n..<(t + 1) * n]), weight: w, eps: 1e-5)
                #expect(Self.maxRelError(Array(out[t * n..<(t + 1) * n]), ref) < 1e-6)
            }
        }
    }

    @Test func siluMulMatchesReference() {
        var rng = Rng(state: 2)
        let n = 96, ntok = 4
        let gu = rng.floats(2 * n * ntok).map { $0 * 8 }
        var out = [Float](repeating: 0, count: n * ntok)
        gu.withUnsafeBufferPointer { p in
            dl_silu_mul(p.baseAddress!, p.baseAddress! + n, Int64(2 * n), &out, Int64(n), Int64(ntok))
        }
        for t in 0..<ntok {
            for i in 0..<n {
                let ref = ReferenceOps.silu(gu[t * 2 * n + i]) * gu[t * 2 * n + n + i]
                #expect(abs(out[t * n + i] - ref) <= 1e-6 * max(1, abs(ref)))
            }
        }
    }

    @Test(arguments: [false, true]) func ropeMatchesReference(neox: Bool) {
        var rng = Rng(state: neox ? 3 : 4)
        let heads = 3, headDim = 16, half = headDim / 2, ntok = 5
        let invFreq = (0..<half).map { Float(1 / pow(10000.0, Double(2 * $0) / Double(headDim))) }
        let positions: [Int32] = [0, 1, 17, 255, 4000]
        var x = rng.floats(ntok * heads * headDim)
        let original = x
        var cosT = [Float](repeating: 0, count: ntok * half), sinT = cosT
        dl_rope_table(positions, Int64(ntok), invFreq, Int64(half), &cosT, &sinT)
        dl_rope_apply(&x, Int64(heads * headDim), Int64(ntok), Int64(heads), Int64(headDim), cosT, sinT, neox ? 1 : 0)
        for t in 0..<ntok {
            var ref = Array(original[t * heads * headDim..<(t + 1) * heads * headDim])
            ReferenceOps.rope(&ref, heads: heads, headDim: headDim, position: Int(positions[t]), invFreq: invFreq, neox: neox)
            #expect(Self.maxRelError(Array(x[t * heads * headDim..<(t + 1) * heads * headDim]), ref) < 1e-6)
        }
    }

    /// The two RoPE layouts are the same rotation up to llama.cpp's Q/K row permutation.
    @Test func ropeLayoutsAgreeUnderPermutation() {
        var rng = Rng(state: 5)
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
    @Test(arguments: [(4, 2, 16, 4), (9, 3, 64, 16), (4, 4, 32, 1)])
    func pagedAttentionMatchesReference(shape: (Int, Int, Int, Int)) {
        let (nHead, nKV, headDim, blockSize) = shape
        var rng = Rng(state: UInt64(nHead * 100 + blockSize))
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
                var slot = Int64(tables[s][p / blockSize]) * Int64(blockSize) + Int64(p % blockSize)
                dl_kv_write(storage.keys(layer: 0), storage.values(layer: 0), &slot, 1, Int64(row), keys[s][p], Int64(row), values[s][p], Int64(row))
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
        dl_kv_write(storage.keys(layer: 0), storage.values(layer: 0), slots, Int64(ntok), Int64(row), kNew, Int64(row), vNew, Int64(row))
        var out = [Float](repeating: 0, count: ntok * nHead * headDim)
        dl_attention(q, Int64(nHead * headDim), Int64(ntok), positions, flatTables, offsets, Int64(blockSize),
                     storage.keys(layer: 0), storage.values(layer: 0), Int64(nHead), Int64(nKV), Int64(headDim),
                     1 / Float(headDim).squareRoot(), &out, Int64(nHead * headDim))
        for t in 0..<ntok {
            let got = Array(out[t * nHead * headDim..<(t + 1) * nHead * headDim])
            #expect(Self.maxRelError(got, refs[t]) < 1e-5, "token \(t)")
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
