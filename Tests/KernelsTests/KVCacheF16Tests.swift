import CKernels
import Foundation
import Testing
import TestSupport
@testable import Kernels

/// The f16 KV cache: what it stores (Swift's own Float16 conversion, round to nearest even, after clamping to
/// ±65504, is the reference), that attention over it gives exactly the bits of attention over an f32 cache
/// holding the same rounded values on every instruction-set path and attention path (grouped heads, split long
/// contexts, per-head), and that its blocks copy out and in as f32 values and as raw bytes.
@Suite struct KVCacheF16Tests {
    typealias Rng = SplitMix64

    /// The reference rounding: clamp to f16's largest finite value, then Float16's round to nearest even.
    static func rounded(_ x: Float) -> Float {
        x.isNaN ? x : Float(Float16(min(max(x, -65504), 65504)))
    }

    /// Values that exercise the conversion: ordinary ones, ties and near-ties of f16's last bit, subnormals
    /// and values below f16's smallest subnormal, the largest finite value and beyond, infinities.
    static func awkwardValues(_ rng: inout Rng, count: Int) -> [Float] {
        let specials: [Float] = [0, -0.0, 1, -1, 65504, 65519, 65520, 1e6, -1e6, .infinity, -.infinity,
                                 6.0e-8, 5.96e-8, 2.98e-8, 3.0e-8, 1e-10, -6.1e-5, 6.1035156e-5,
                                 1 + 1.0 / 2048, 1 + 3.0 / 2048, 1 + 1.0 / 4096, -(2 + 1.0 / 1024)]
        return (0..<count).map { i in
            if i % 5 == 0 { return specials[(i / 5) % specials.count] }
            let r = rng.floats(1)[0]
            return i % 5 == 1 ? r * 1e-5 : (i % 5 == 2 ? r * 70000 : r * 4)
        }
    }

    @Test func writeRoundsToNearestEvenAndClamps() {
        var rng = Rng(seed: 61)
        let storage = PagedKVStorage(numLayers: 1, numBlocks: 4, blockSize: 4, numKVHeads: 3, headDim: 24, dtype: .f16)
        let row = storage.rowFloats, ld = row + 5
        let slots: [Int64] = [9, 0, 15, 4, 7]
        // Rows of 72 values: 4 full AVX-512 vectors and a tail of 8, so the vector paths and the scalar tail both store.
        let k = Self.awkwardValues(&rng, count: slots.count * ld), v = Self.awkwardValues(&rng, count: slots.count * ld).map { -$0 }
        for level in 0...Kernels.simdLevel {
            Kernels.withSIMDLimit(level) {
                slots.withUnsafeBufferPointer { Kernels.writeKV(storage, layer: 0, slots: $0, keys: k, ldk: ld, values: v, ldv: ld) }
            }
            for (t, s) in slots.enumerated() {
                for i in 0..<row {
                    let gotK = storage.value(layer: 0, key: true, index: Int(s) * row + i)
                    let gotV = storage.value(layer: 0, key: false, index: Int(s) * row + i)
                    #expect(gotK.bitPattern == Self.rounded(k[t * ld + i]).bitPattern, "path \(level) K \(k[t * ld + i]) -> \(gotK)")
                    #expect(gotV.bitPattern == Self.rounded(v[t * ld + i]).bitPattern, "path \(level) V \(v[t * ld + i]) -> \(gotV)")
                }
            }
        }
        // NaN stays NaN.
        let nanRow = [Float](repeating: .nan, count: row)
        [Int64(1)].withUnsafeBufferPointer { Kernels.writeKV(storage, layer: 0, slots: $0, keys: nanRow, ldk: row, values: nanRow, ldv: row) }
        #expect((0..<row).allSatisfy { storage.value(layer: 0, key: true, index: row + $0).isNaN })
    }

    /// One batch (a prefill chunk, short and long decodes: grouped, split and per-head paths) against an f16
    /// cache and against an f32 cache given the rounded values: identical bits on every SIMD path.
    @Test(arguments: [(9, 3, 64, 16), (4, 2, 128, 16), (12, 1, 64, 8), (4, 2, 24, 4), (2, 1, 8, 1)])
    func attentionEqualsF32CacheOfRoundedValues(shape: (Int, Int, Int, Int)) {
        let (nHead, nKV, headDim, blockSize) = shape
        var rng = Rng(seed: UInt64(62 + headDim + nHead))
        let row = nKV * headDim
        let sequences: [(cached: Int, fresh: Int)] = headDim == 64 && blockSize == 16 ? [(1300, 1), (30, 6), (200, 1)] : [(100, 1), (30, 6), (3, 1)]
        let blocksNeeded = sequences.map { ($0.cached + $0.fresh + blockSize - 1) / blockSize }
        let numBlocks = blocksNeeded.reduce(0, +) + 3
        let half = PagedKVStorage(numLayers: 1, numBlocks: numBlocks, blockSize: blockSize, numKVHeads: nKV, headDim: headDim, dtype: .f16)
        let full = PagedKVStorage(numLayers: 1, numBlocks: numBlocks, blockSize: blockSize, numKVHeads: nKV, headDim: headDim)
        var free = Array(0..<numBlocks).shuffled(using: &rng)
        var slots: [Int64] = [], positions: [Int32] = [], offsets: [Int64] = [], tables: [Int32] = [], q: [Float] = []
        for (s, seq) in sequences.enumerated() {
            let table = (0..<blocksNeeded[s]).map { _ in Int32(free.removeLast()) }, offset = Int64(tables.count)
            tables += table
            for p in 0..<(seq.cached + seq.fresh) {
                let slot = Int64(table[p / blockSize]) * Int64(blockSize) + Int64(p % blockSize)
                let k = rng.floats(row).map { $0 * 3 }, v = rng.floats(row).map { $0 * 3 }
                [slot].withUnsafeBufferPointer {
                    Kernels.writeKV(half, layer: 0, slots: $0, keys: k, ldk: row, values: v, ldv: row)
                    Kernels.writeKV(full, layer: 0, slots: $0, keys: k.map(Self.rounded), ldk: row, values: v.map(Self.rounded), ldv: row)
                }
                if p >= seq.cached {
                    slots.append(slot)
                    positions.append(Int32(p))
                    offsets.append(offset)
                    q += rng.floats(nHead * headDim)
                }
            }
        }
        for level in 0...Kernels.simdLevel {
            let (a, b) = Kernels.withSIMDLimit(level) {
                (OpsParityTests.attention(q, heads: nHead, positions: positions, slots: slots, offsets: offsets, tables: tables, kv: half, layer: 0),
                 OpsParityTests.attention(q, heads: nHead, positions: positions, slots: slots, offsets: offsets, tables: tables, kv: full, layer: 0))
            }
            #expect(a.map(\.bitPattern) == b.map(\.bitPattern), "SIMD path \(level): f16 cache != f32 cache of the rounded values")
            #expect(!a.contains { !$0.isFinite })
        }
    }

    /// Blocks out and in: as f32 values (exact for an f16 cache's own values; rounded like a write when they
    /// come from elsewhere) and as raw bytes (half the bytes of an f32 cache's block).
    @Test func blocksCopyOutAndInAsValuesAndBytes() {
        var rng = Rng(seed: 63)
        let storage = PagedKVStorage(numLayers: 2, numBlocks: 5, blockSize: 4, numKVHeads: 2, headDim: 16, dtype: .f16)
        #expect(storage.bytesPerBlock == PagedKVStorage.bytesPerBlock(numLayers: 2, blockSize: 4, numKVHeads: 2, headDim: 16) / 2)
        let perBlock = storage.blockFloats * 2 * storage.numLayers
        let source = Self.awkwardValues(&rng, count: perBlock)
        storage.copyIn(block: 3, from: source)
        var out = [Float](repeating: .nan, count: perBlock)
        storage.copyOut(block: 3, to: &out)
        #expect(out.map(\.bitPattern) == source.map { Self.rounded($0).bitPattern })
        // Values order: layer 0 K, layer 0 V, layer 1 K, layer 1 V.
        let f = storage.blockFloats
        #expect(storage.value(layer: 1, key: false, index: 3 * f + 5).bitPattern == Self.rounded(source[3 * f + 5]).bitPattern)
        // Raw bytes: block 3 to block 0, then read back as values.
        var raw = [UInt8](repeating: 0, count: storage.bytesPerBlock)
        raw.withUnsafeMutableBytes { storage.copyOutRaw(block: 3, to: $0.baseAddress!) }
        raw.withUnsafeBytes { storage.copyInRaw(block: 0, from: $0.baseAddress!) }
        var again = [Float](repeating: .nan, count: perBlock), fromRaw = again
        storage.copyOut(block: 0, to: &again)
        raw.withUnsafeBytes { storage.floats(fromRaw: $0.baseAddress!, count: perBlock, into: &fromRaw) }
        #expect(again.map(\.bitPattern) == out.map(\.bitPattern))
        #expect(fromRaw.map(\.bitPattern) == out.map(\.bitPattern))
        // Blocks 1, 2 and 4 untouched.
        for b in [1, 2, 4] {
            for layer in 0..<2 { #expect((0..<f).allSatisfy { storage.value(layer: layer, key: true, index: b * f + $0) == 0 }) }
        }
    }
}
