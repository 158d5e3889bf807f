import Foundation
import Testing
import TestSupport
@testable import Kernels

/// dl_lora_apply through `Kernels.LoRABatch` against `ReferenceOps.loraApply` (double precision).
///
/// lora.c has two schedules: with at least 2 × threads segments it splits them over the pool in one
/// contiguous part per thread, balanced by cost (many small segments: 32 adapters in a batch of 32), otherwise it runs the segments one after another
/// and lets the two matmuls of each split over the pool (few large segments). Each is driven here by the
/// thread count, on the same inputs, and the two must agree bit for bit (the engine's batch invariance rests
/// on it). The weights are F32, F16 or BF16: each takes a different dequantization path in matmul_dq.c.
/// Segments of 1–3 tokens take lora.c's own grouped kernel (weights converted in registers, 16 rows' lane
/// trees summed together), larger ones dl_matmul_dq; every result must equal `ReferenceOps.loraApplyLanes`
/// (the same f32 operations in the same order) bit for bit, whichever path each segment took.
///
/// Tolerance: |y − ref| ≤ 1e-6 · (|y₀| + |s| · Σ_j |B_oj| · Σ_k |A_jk · x_k|), relative to magnitudes
/// because cancellation can make the result itself tiny. Both products sum in f32 over 16 lanes (≤ 36
/// additions per lane here, then a 4-level tree; unit roundoff 6e-8, so a worst case near 2.4e-6), the
/// shrunk vector is rounded to f32 once before the expand, and the scaled add rounds once more. Rounding
/// errors of random data mostly cancel: the largest seen on these seeds is 7e-8, so 1e-6 leaves 14× room
/// while still catching a scale off by 1e-5.
@Suite(.serialized) struct LoRAApplyTests {
    typealias Rng = OpsParityTests.Rng

    struct Adapter {
        var a: [Float], b: [Float], rank: Int, paddedRank: Int
        var aMatrix: WeightMatrix, bMatrix: WeightMatrix
    }

    /// Random A (rank × in) and B (out × rank) stored as `dtype`, rank zero-padded to a multiple of 16; the
    /// float values returned are the stored ones (rounded to the dtype), which the reference uses.
    static func adapter(rank: Int, inFeatures: Int, outFeatures: Int, dtype: DType, rng: inout Rng) -> Adapter {
        let padded = (rank + 15) / 16 * 16
        func stored(_ v: [Float]) -> [Float] {
            switch dtype {
            case .f16: v.map { ReferenceOps.f16ToFloat(ReferenceOps.floatToF16($0)) }
            case .bf16: v.map { ReferenceOps.bf16ToFloat(ReferenceOps.floatToBF16($0)) }
            default: v
            }
        }
        let a = stored(rng.floats(rank * inFeatures).map { $0 * 0.1 })
        let b = stored(rng.floats(outFeatures * rank))
        var aPadded = [Float](repeating: 0, count: padded * inFeatures)
        aPadded.replaceSubrange(0..<a.count, with: a)
        var bPadded = [Float](repeating: 0, count: outFeatures * padded)
        for o in 0..<outFeatures { bPadded.replaceSubrange((o * padded)..<(o * padded + rank), with: b[(o * rank)..<((o + 1) * rank)]) }
        func matrix(_ v: [Float], rows: Int, cols: Int) -> WeightMatrix {
            let bytes = ReferenceOps.quantize(v, to: dtype)
            let buffer = Buffer(byteCount: bytes.count)
            bytes.withUnsafeBytes { buffer.base.copyMemory(from: $0.baseAddress!, byteCount: bytes.count) }
            return WeightMatrix(dtype: dtype, rows: rows, cols: cols, storage: buffer)
        }
        return Adapter(a: a, b: b, rank: rank, paddedRank: padded,
                       aMatrix: matrix(aPadded, rows: padded, cols: inFeatures), bMatrix: matrix(bPadded, rows: outFeatures, cols: padded))
    }

    /// Applies `segments` (adapter index, tokens, scale) with `threads` kernel threads; y rows have a gap
    /// (ldy > out) that must stay untouched, x rows likewise (ldx > in).
    /// MoLE gating of one segment: per token a row of expert gates, and each padded rank column's expert.
    struct Gating {
        var gates: [[Float]]
        var columns: [Int32]
    }

    static func run(_ adapters: [Adapter], _ segments: [(Int, Range<Int>, Float)], x: [Float], ldx: Int, y: [Float], ldy: Int,
                    inFeatures: Int, outFeatures: Int, threads: Int, gating: [Int: Gating] = [:]) -> [Float] {
        let before = Kernels.threadCount
        Kernels.setThreads(threads)
        defer { Kernels.setThreads(before) }
        let batch = Kernels.LoRABatch()
        batch.reset(inFeatures: inFeatures, outFeatures: outFeatures)
        // Gate rows with a stride wider than the expert count (as the engine's workspace has).
        let ldg = (gating.values.map { $0.gates.first?.count ?? 0 }.max() ?? 0) + 3
        let gateBuffers = gating.mapValues { g in
            (g.gates.flatMap { $0 + [Float](repeating: .nan, count: ldg - $0.count) }, g.columns)
        }
        var out = y
        func applyAll() { batch.apply(x, ldx: ldx, into: &out, ldy: ldy) }
        func append(_ k: Int) {
            guard k < segments.count else { return applyAll() }
            let (i, tokens, scale) = segments[k]
            guard let (g, c) = gateBuffers[k] else {
                batch.append(a: adapters[i].aMatrix, b: adapters[i].bMatrix, tokens: tokens, scale: scale)
                return append(k + 1)
            }
            g.withUnsafeBufferPointer { gp in
                c.withUnsafeBufferPointer { cp in
                    batch.append(a: adapters[i].aMatrix, b: adapters[i].bMatrix, tokens: tokens, scale: scale,
                                 gates: gp.baseAddress!, ldg: ldg, columns: cp.baseAddress!)
                    append(k + 1)
                }
            }
        }
        append(0)
        return out
    }

    static func check(_ adapters: [Adapter], _ segments: [(Int, Range<Int>, Float)], tokens: Int, inFeatures: Int, outFeatures: Int,
                      rng: inout Rng, gating: [Int: Gating] = [:]) {
        let ldx = inFeatures + 16, ldy = outFeatures + 5
        let x = rng.floats(tokens * ldx), y = rng.floats(tokens * ldy)
        // Few segments on many threads: serial over segments, threaded matmuls. Many segments on 2 threads
        // (≥ 2 × 2): one segment per task.
        let serial = run(adapters, segments, x: x, ldx: ldx, y: y, ldy: ldy, inFeatures: inFeatures, outFeatures: outFeatures,
                         threads: 2 * segments.count + 1, gating: gating)
        let perSegment = run(adapters, segments, x: x, ldx: ldx, y: y, ldy: ldy, inFeatures: inFeatures, outFeatures: outFeatures,
                             threads: max(1, segments.count / 2), gating: gating)
        #expect(serial.map(\.bitPattern) == perSegment.map(\.bitPattern), "the two schedules differ")

        let packedX = (0..<tokens).flatMap { x[($0 * ldx)..<($0 * ldx + inFeatures)] }
        let packedY = (0..<tokens).flatMap { y[($0 * ldy)..<($0 * ldy + outFeatures)] }
        let runs = segments.enumerated().map { k, segment in
            let (i, tokens, scale) = segment
            return ReferenceOps.LoRARun(a: adapters[i].a, b: adapters[i].b, rank: adapters[i].rank, tokens: tokens, scale: scale,
                                        gates: gating[k]?.gates, columns: gating[k]?.columns)
        }
        let ref = ReferenceOps.loraApply(x: packedX, inFeatures: inFeatures, outFeatures: outFeatures, runs: runs, y: packedY)
        // The f32 twin in the kernels' summation order: the same bits, whichever path (the small-segment
        // kernel or dl_matmul_dq) each segment took.
        let lanes = ReferenceOps.loraApplyLanes(x: packedX, inFeatures: inFeatures, outFeatures: outFeatures, runs: runs,
                                                paddedRanks: segments.map { adapters[$0.0].paddedRank }, y: packedY)
        let unpacked = (0..<tokens).flatMap { serial[($0 * ldy)..<($0 * ldy + outFeatures)] }
        #expect(unpacked.map(\.bitPattern) == lanes.map(\.bitPattern), "differs from ReferenceOps.loraApplyLanes")
        // Every lower instruction-set path this machine has (AVX2, portable C) gives the same bits.
        for level in 0..<Kernels.simdLevel {
            let capped = Kernels.withSIMDLimit(level) {
                run(adapters, segments, x: x, ldx: ldx, y: y, ldy: ldy, inFeatures: inFeatures, outFeatures: outFeatures,
                    threads: max(1, segments.count / 2), gating: gating)
            }
            #expect(capped.map(\.bitPattern) == serial.map(\.bitPattern), "SIMD path \(level) differs from path \(Kernels.simdLevel)")
        }
        var worst = 0.0
        for t in 0..<tokens {
            let seg = segments.first { $0.1.contains(t) }
            // Σ_k |A_jk · x_k| per rank j (independent of the output row).
            var inner: [Double] = []
            if case let (i, _, _)? = seg {
                let ad = adapters[i]
                inner = (0..<ad.rank).map { j in
                    var sum = 0.0
                    for k in 0..<inFeatures { sum += abs(Double(ad.a[j * inFeatures + k]) * Double(packedX[t * inFeatures + k])) }
                    return sum
                }
            }
            for o in 0..<outFeatures {
                var magnitude = Double(abs(packedY[t * outFeatures + o]))
                if case let (i, _, scale)? = seg {
                    let ad = adapters[i]
                    for j in 0..<ad.rank { magnitude += abs(Double(scale)) * abs(Double(ad.b[o * ad.rank + j])) * inner[j] }
                }
                let err = abs(Double(serial[t * ldy + o]) - Double(ref[t * outFeatures + o]))
                worst = max(worst, err / max(magnitude, 1e-30))
            }
            // The gap after each row of y is untouched.
            #expect(serial[(t * ldy + outFeatures)..<((t + 1) * ldy)] == y[(t * ldy + outFeatures)..<((t + 1) * ldy)])
        }
        #expect(worst <= 1e-6, "worst error \(worst) of the magnitude")
    }

    /// Many small segments: 10 one- and two-token runs over 5 adapters of different ranks, some tokens with
    /// no adapter, one negative scale (as in an unmerged decode batch of many adapters).
    @Test(arguments: [DType.f32, .f16, .bf16]) func manySmallSegments(dtype: DType) {
        var rng = Rng(seed: 900 + UInt64(dtype.rawValue))
        let inFeatures = 64, outFeatures = 48
        let adapters = [1, 8, 16, 17, 32].map { Self.adapter(rank: $0, inFeatures: inFeatures, outFeatures: outFeatures, dtype: dtype, rng: &rng) }
        let segments: [(Int, Range<Int>, Float)] = [
            (0, 0..<1, 1), (1, 1..<3, 0.5), (2, 3..<4, 2), (3, 5..<6, 1), (4, 6..<8, -0.75),
            (0, 8..<9, 1), (2, 10..<11, 1), (1, 11..<12, 3), (3, 12..<14, 1), (4, 14..<15, 0.25),
        ]
        Self.check(adapters, segments, tokens: 16, inFeatures: inFeatures, outFeatures: outFeatures, rng: &rng)
    }

    /// Few large segments: two prefill-sized runs on SmolLM2-sized projections (576 → 1536), big enough for
    /// the matmuls themselves to split over the pool.
    @Test(arguments: [DType.f32, .f16, .bf16]) func fewLargeSegments(dtype: DType) {
        var rng = Rng(seed: 950 + UInt64(dtype.rawValue))
        let inFeatures = 576, outFeatures = 1536
        let adapters = [8, 16].map { Self.adapter(rank: $0, inFeatures: inFeatures, outFeatures: outFeatures, dtype: dtype, rng: &rng) }
        let segments: [(Int, Range<Int>, Float)] = [(0, 0..<37, 1), (1, 40..<75, 0.5)]
        Self.check(adapters, segments, tokens: 75, inFeatures: inFeatures, outFeatures: outFeatures, rng: &rng)
    }

    /// MoLE: a gated segment (three experts stacked in one rank-24 adapter, each rank column weighted per token
    /// by its expert's gate; padding columns by nothing) between plain ones, against the reference; the gates
    /// are not all equal, so a kernel that ignored them, or read another token's row, would miss by far more
    /// than the tolerance (checked: zeroing one expert's gates fails it).
    @Test(arguments: [DType.f32, .bf16]) func gatedSegments(dtype: DType) {
        var rng = Rng(seed: 970 + UInt64(dtype.rawValue))
        let inFeatures = 64, outFeatures = 40
        let adapters = [24, 8].map { Self.adapter(rank: $0, inFeatures: inFeatures, outFeatures: outFeatures, dtype: dtype, rng: &rng) }
        let columns: [Int32] = Array(repeating: 0, count: 8) + Array(repeating: 1, count: 10) + Array(repeating: 2, count: 6)
            + Array(repeating: -1, count: 8)
        let segments: [(Int, Range<Int>, Float)] = [(1, 0..<2, 1), (0, 2..<7, 0.5), (1, 7..<8, 2), (0, 8..<9, 1), (0, 10..<12, 1)]
        func gates(_ n: Int) -> [[Float]] {
            (0..<n).map { _ in
                let e = rng.floats(3).map { Float(Foundation.exp(Double($0))) }
                let sum = e.reduce(0, +)
                return e.map { $0 / sum }
            }
        }
        let gating = [1: Gating(gates: gates(5), columns: columns), 3: Gating(gates: gates(1), columns: columns),
                      4: Gating(gates: gates(2), columns: columns)]
        Self.check(adapters, segments, tokens: 12, inFeatures: inFeatures, outFeatures: outFeatures, rng: &rng, gating: gating)
    }

    /// Decode-sized segments (1–3 tokens take the small-segment kernel, 4 or more dl_matmul_dq) over random
    /// shapes: SmolLM2's projection sizes, an output count that is not a multiple of 16 (the kernel's 16-row
    /// blocks leave a tail), ranks up to 64, 12 distinct adapters, some tokens with none.
    @Test(arguments: [DType.f32, .f16, .bf16]) func decodeSegmentsRandomShapes(dtype: DType) {
        var rng = Rng(seed: 990 + UInt64(dtype.rawValue))
        for (inFeatures, outFeatures) in [(576, 192), (1536, 576), (64, 200), (16, 7)] {
            let ranks = (0..<12).map { [1, 8, 16, 24, 64][$0 % 5] }
            let adapters = ranks.map { Self.adapter(rank: $0, inFeatures: inFeatures, outFeatures: outFeatures, dtype: dtype, rng: &rng) }
            var segments: [(Int, Range<Int>, Float)] = []
            var t = 0
            for i in 0..<12 {
                let count = [1, 1, 2, 1, 3, 1, 5][i % 7]
                segments.append((i, t..<(t + count), [1, 0.5, -2][i % 3]))
                t += count + (i % 4 == 3 ? 1 : 0)
            }
            Self.check(adapters, segments, tokens: t, inFeatures: inFeatures, outFeatures: outFeatures, rng: &rng)
        }
    }

    /// An empty batch is a no-op.
    /// B's expand layout (dl_lora_b_pack) keeps every value where the kernels and `unpack` look for it: unpacking
    /// gives the row-major B back exactly, for output counts off the 32-output groups and every dtype, and the
    /// padding bytes are zero (dl_lora_b_bytes: groups of 32 outputs).
    @Test(arguments: [DType.f32, .f16, .bf16]) func expandLayoutRoundTrips(dtype: DType) {
        var rng = Rng(seed: 41)
        for (out, rank) in [(1, 16), (7, 16), (32, 16), (33, 32), (200, 48), (576, 16)] {
            let ad = Self.adapter(rank: rank, inFeatures: 16, outFeatures: out, dtype: dtype, rng: &rng)
            let packed = Kernels.LoRAExpandMatrix(ad.bMatrix)
            let element = dtype == .f32 ? 4 : 2
            #expect(packed.byteCount == (out + 31) / 32 * 32 * ad.paddedRank * element && packed.rows == out && packed.cols == ad.paddedRank)
            var back = [Float](repeating: .nan, count: out * ad.paddedRank)
            back.withUnsafeMutableBufferPointer { packed.unpack(into: $0.baseAddress!) }
            var expected = [Float](repeating: 0, count: out * ad.paddedRank)
            for o in 0..<out { for j in 0..<rank { expected[o * ad.paddedRank + j] = ad.b[o * rank + j] } }
            #expect(back.map(\.bitPattern) == expected.map(\.bitPattern), "\(dtype) \(out)×\(rank)")
            // The packed bytes hold exactly B's values (a permutation of them) and zeros.
            let bytes = UnsafeRawBufferPointer(start: packed.data, count: packed.byteCount)
            let nonzero = stride(from: 0, to: bytes.count, by: element).filter { i in (0..<element).contains { bytes[i + $0] != 0 } }.count
            #expect(nonzero == expected.filter { $0.bitPattern != 0 }.count, "\(dtype) \(out)×\(rank): padding")
        }
    }

    @Test func emptyBatchLeavesYUnchanged() {
        let batch = Kernels.LoRABatch()
        batch.reset(inFeatures: 16, outFeatures: 4)
        var y: [Float] = [1, 2, 3, 4]
        batch.apply([Float](repeating: 1, count: 16), ldx: 16, into: &y, ldy: 4)
        #expect(batch.isEmpty && y == [1, 2, 3, 4])
    }
}
