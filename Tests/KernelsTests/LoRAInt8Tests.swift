import Foundation
import Testing
import TestSupport
@testable import Kernels

/// Int8 and int4 adapters (Q8_0 or Q4_0 A and B, `AdapterPrecision.int8` and `.int4`) through `Kernels.LoRABatch` (lora.c):
/// - the kernel equals a twin written here from the specification bit for bit — the shrink as `matmulInt8Reference`
///   computes it from A's checkpoint bytes (matmul_q8.c's portable twin), the gates, and the expand with u quantized
///   per block of 16 rank indices (du = max|u| / 127, qu = round-half-even(u · (1 / du))), exact integer sums against
///   B's codes (each output's 16 values of a block quantized as ggml's Q8_0 or Q4_0, by `quantized16` below), then per block
///   acc = fma(d · du, Σ, acc) and y + s · acc — for decode pieces, split segments and long (prefill) ones, on both
///   schedules (many segments split over the pool; few segments with threaded products), so a token's result does
///   not depend on its batch;
/// - B's layout holds exactly those values d·q (`unpack`);
/// - and the result lies within the quantization's own bound of a float64 LoRA on the unquantized factors: A, B, the
///   activations and u move by at most half a step of their blocks, plus f32 rounding.
@Suite(.serialized, .enabled(if: Kernels.hasInt8Dot)) struct LoRAInt8Tests {
    typealias Rng = SplitMix64

    struct Adapter {
        var a: [Float], b: [Float], rank: Int, paddedRank: Int
        var dtype: DType
        var aMatrix: WeightMatrix, expand: Kernels.LoRAExpandMatrix
        var operands: Kernels.LoRAOperands { Kernels.LoRAOperands(a: aMatrix, b: expand) }
        /// B's codes and f16 scales per output and block of 16 rank indices, from the specification (not from lora.c).
        var bCodes: [Int8], bScales: [Float]
        /// A (paddedRank × in) and B (out × paddedRank) as held: the values d·q.
        var heldA: [Float] {
            ReferenceOps.dequantize(dtype, aMatrix.data, count: aMatrix.rows * aMatrix.cols)
        }
        var heldB: [Float] {
            var v = [Float](repeating: .nan, count: expand.rows * expand.cols)
            v.withUnsafeMutableBufferPointer { expand.unpack(into: $0.baseAddress!) }
            return v
        }
    }

    /// Random factors with spread (a few large values), A rank × in and B out × rank, held as `dtype` (Q8_0 or Q4_0).
    static func adapter(rank: Int, inFeatures: Int, outFeatures: Int, dtype: DType, rng: inout Rng) -> Adapter {
        let padded = (rank + 15) / 16 * 16
        var a = rng.floats(rank * inFeatures).map { $0 * 0.1 }
        for i in stride(from: 0, to: a.count, by: 29) { a[i] *= 7 }
        var b = rng.floats(outFeatures * rank)
        for i in stride(from: 0, to: b.count, by: 23) { b[i] *= 5 }
        var aPadded = [Float](repeating: 0, count: padded * inFeatures)
        aPadded.replaceSubrange(0..<a.count, with: a)
        var bPadded = [Float](repeating: 0, count: outFeatures * padded)
        for o in 0..<outFeatures { bPadded.replaceSubrange((o * padded)..<(o * padded + rank), with: b[(o * rank)..<((o + 1) * rank)]) }
        let aBytes = ReferenceOps.quantize(aPadded, to: dtype)
        let aBuffer = Buffer(byteCount: aBytes.count)
        aBytes.withUnsafeBytes { aBuffer.base.copyMemory(from: $0.baseAddress!, byteCount: aBytes.count) }
        let aq = WeightMatrix(dtype: dtype, rows: padded, cols: inFeatures, storage: aBuffer)
        let bBuffer = Buffer(floats: bPadded.count)
        bBuffer.floats.update(from: bPadded, count: bPadded.count)
        let expand = Kernels.LoRAExpandMatrix(WeightMatrix(dtype: .f32, rows: outFeatures, cols: padded, storage: bBuffer), quantizedTo: dtype)
        var codes = [Int8](), scales = [Float]()
        for o in 0..<outFeatures {
            for j0 in stride(from: 0, to: padded, by: 16) {
                let (d, q) = quantized16(Array(bPadded[(o * padded + j0)..<(o * padded + j0 + 16)]), dtype)
                codes += q
                scales.append(d)
            }
        }
        return Adapter(a: a, b: b, rank: rank, paddedRank: padded, dtype: dtype, aMatrix: aq.withInt8(Kernels.PackedInt8(aq)), expand: expand,
                       bCodes: codes, bScales: scales)
    }

    /// 16 values as ggml quantizes a Q8_0 block: d = max|v| / 127, q = round-half-away(v / d) (with the f32 d), the
    /// scale then rounded to f16. Q4_0: m the value of largest magnitude (the first such), d = m / −8,
    /// q = min(15, ⌊v · (1 / d) + 8.5⌋) − 8.
    static func quantized16(_ v: [Float], _ dtype: DType) -> (Float, [Int8]) {
        if dtype == .q4_0 {
            var m: Float = 0
            for x in v where abs(x) > abs(m) { m = x }
            let d = m / -8, id: Float = d != 0 ? 1 / d : 0
            let q = v.map { Int8(min(15, Int(($0 * id + 8.5).rounded(.down))) - 8) }
            return (ReferenceOps.f16ToFloat(ReferenceOps.floatToF16(d)), q)
        }
        let amax = v.map { abs($0) }.max()!
        let d = amax / 127, id: Float = d != 0 ? 1 / d : 0
        let q = v.map { Int8(($0 * id).rounded(.toNearestOrAwayFromZero)) }
        return (ReferenceOps.f16ToFloat(ReferenceOps.floatToF16(d)), q)
    }

    /// A token's u quantized per block of 16 as the activations of `matmulInt8` are: (du, qu) per block.
    static func quantizedU(_ u: [Float]) -> [(Float, [Int32])] {
        stride(from: 0, to: u.count, by: 16).map { j0 in
            let x = Array(u[j0..<(j0 + 16)])
            let amax = x.map { abs($0) }.max()!
            if !amax.isFinite { return (.nan, [Int32](repeating: 0, count: 16)) }
            if amax < 1e-30 { return (0, [Int32](repeating: 0, count: 16)) }
            let d = amax / 127, id = 1 / d
            return (d, x.map { Int32(max(-127, min(127, ($0 * id).rounded(.toNearestOrEven)))) })
        }
    }

    struct Gating { var gates: [[Float]]; var columns: [Int32] }

    static func run(_ adapters: [Adapter], _ segments: [(Int, Range<Int>, Float)], x: [Float], ldx: Int, y: [Float], ldy: Int,
                    inFeatures: Int, outFeatures: Int, threads: Int, gating: [Int: Gating]) -> [Float] {
        let before = Kernels.threadCount
        Kernels.setThreads(threads)
        defer { Kernels.setThreads(before) }
        let batch = Kernels.LoRABatch()
        batch.reset(inFeatures: inFeatures, outFeatures: outFeatures)
        let ldg = 5
        let gateRows = gating.mapValues { g in (g.gates.flatMap { $0 + [Float](repeating: .nan, count: ldg - $0.count) }, g.columns) }
        var out = y
        func append(_ k: Int) {
            guard k < segments.count else { return batch.apply(x, ldx: ldx, into: &out, ldy: ldy) }
            let (i, tokens, scale) = segments[k]
            guard let (g, c) = gateRows[k] else {
                batch.append(adapters[i].operands, tokens: tokens, scale: scale)
                return append(k + 1)
            }
            g.withUnsafeBufferPointer { gp in
                c.withUnsafeBufferPointer { cp in
                    batch.append(adapters[i].operands, tokens: tokens, scale: scale, gates: gp.baseAddress!, ldg: ldg, columns: cp.baseAddress!)
                    append(k + 1)
                }
            }
        }
        append(0)
        return out
    }

    /// The twin: per token, the shrink by matmul_q8.c's portable twin (from A's checkpoint bytes), the gates, the expand
    /// in the lanes' order over B's held values, then y + s·p rounded apart.
    static func twin(_ adapters: [Adapter], _ segments: [(Int, Range<Int>, Float)], x: [Float], ldx: Int, y: [Float], ldy: Int,
                     inFeatures: Int, outFeatures: Int, gating: [Int: Gating]) -> [Float] {
        var out = y
        for (k, (i, tokens, scale)) in segments.enumerated() {
            let ad = adapters[i], blocks = ad.paddedRank / 16
            for t in tokens {
                var u = [Float](repeating: .nan, count: ad.paddedRank)
                x.withUnsafeBufferPointer { xp in
                    Kernels.matmulInt8Reference(ad.aMatrix, xp.baseAddress! + t * ldx, ldx: ldx, ntok: 1, &u, ldy: ad.paddedRank)
                }
                if let g = gating[k] {
                    for j in 0..<ad.paddedRank {
                        let e = Int(g.columns[j])
                        u[j] = e >= 0 ? u[j] * g.gates[t - tokens.lowerBound][e] : 0
                    }
                }
                let qu = quantizedU(u)
                for o in 0..<outFeatures {
                    var acc: Float = 0
                    for b in 0..<blocks {
                        var isum: Int32 = 0
                        for i in 0..<16 { isum += Int32(ad.bCodes[(o * blocks + b) * 16 + i]) * qu[b].1[i] }
                        acc = acc.addingProduct(ad.bScales[o * blocks + b] * qu[b].0, Float(isum))
                    }
                    out[t * ldy + o] = out[t * ldy + o] + scale * acc
                }
            }
        }
        return out
    }

    static func check(_ adapters: [Adapter], _ segments: [(Int, Range<Int>, Float)], tokens: Int, inFeatures: Int, outFeatures: Int,
                      rng: inout Rng, gating: [Int: Gating] = [:]) {
        let ldx = inFeatures + 32, ldy = outFeatures + 3
        var x = rng.floats(tokens * ldx)
        for i in stride(from: 0, to: x.count, by: 17) { x[i] *= 8 }
        let y = rng.floats(tokens * ldy)
        let serial = run(adapters, segments, x: x, ldx: ldx, y: y, ldy: ldy, inFeatures: inFeatures, outFeatures: outFeatures,
                         threads: 2 * segments.count + 1, gating: gating)
        let split = run(adapters, segments, x: x, ldx: ldx, y: y, ldy: ldy, inFeatures: inFeatures, outFeatures: outFeatures,
                        threads: max(1, segments.count / 2), gating: gating)
        func differing(_ u: [Float], _ v: [Float]) -> Int { zip(u, v).filter { $0.bitPattern != $1.bitPattern }.count }
        #expect(differing(serial, split) == 0, "the two schedules differ")
        let ref = twin(adapters, segments, x: x, ldx: ldx, y: y, ldy: ldy, inFeatures: inFeatures, outFeatures: outFeatures, gating: gating)
        #expect(differing(serial, ref) == 0, "values differing from the twin")

        // The specification's bound against float64 on the unquantized factors.
        var worst = 0.0
        for (k, (i, range, scale)) in segments.enumerated() {
            let ad = adapters[i], ha = ad.heldA, hb = ad.heldB
            for t in range {
                let xt = Array(x[(t * ldx)..<(t * ldx + inFeatures)])
                // Per block: the activations' step dx.
                let dx = stride(from: 0, to: inFeatures, by: 32).map { b in Double(xt[b..<(b + 32)].map { abs($0) }.max()!) / 127 }
                var u = [Double](repeating: 0, count: ad.rank), du = [Double](repeating: 0, count: ad.rank)
                for j in 0..<ad.rank {
                    for kk in 0..<inFeatures {
                        let av = Double(ad.a[j * inFeatures + kk]), xv = Double(xt[kk])
                        let ea = abs(Double(ha[j * inFeatures + kk]) - av), ex = dx[kk / 32] / 2
                        u[j] += av * xv
                        du[j] += ea * abs(xv) + (abs(av) + ea) * ex + 1e-6 * abs(av * xv)
                    }
                    if let g = gating[k] {
                        let e = Int(g.columns[j]), w = e >= 0 ? Double(g.gates[t - range.lowerBound][e]) : 0
                        u[j] *= w
                        du[j] *= w
                    }
                }
                // u's own quantization before the expand: half a step of its block of 16, the step from |u| + its error.
                var uStep = [Double](repeating: 0, count: ad.rank)
                for j0 in stride(from: 0, to: ad.rank, by: 16) {
                    let top = (j0..<min(j0 + 16, ad.rank)).map { abs(u[$0]) + du[$0] }.max()!
                    for j in j0..<min(j0 + 16, ad.rank) { uStep[j] = top / 127 / 2 }
                }
                for o in 0..<outFeatures {
                    var yv = Double(y[t * ldy + o]), bound = 1e-6 * abs(yv)
                    for j in 0..<ad.rank {
                        let bv = Double(ad.b[o * ad.rank + j]), eb = abs(Double(hb[o * ad.paddedRank + j]) - bv)
                        yv += Double(scale) * bv * u[j]
                        bound += abs(Double(scale)) * (eb * abs(u[j]) + (abs(bv) + eb) * (du[j] + uStep[j]) + 1e-6 * abs(bv * u[j]))
                    }
                    worst = max(worst, abs(Double(serial[t * ldy + o]) - yv) / max(bound, 1e-30))
                }
            }
        }
        #expect(worst <= 1, "error \(worst) × the quantization bound")
        // What no segment covers is untouched.
        let covered = Set(segments.flatMap { Array($0.1) })
        for t in 0..<tokens where !covered.contains(t) {
            #expect(serial[(t * ldy)..<((t + 1) * ldy)] == y[(t * ldy)..<((t + 1) * ldy)])
        }
        for t in 0..<tokens { #expect(serial[(t * ldy + outFeatures)..<((t + 1) * ldy)] == y[(t * ldy + outFeatures)..<((t + 1) * ldy)]) }
    }

    /// Decode-sized segments of 1–8 tokens (pieces of up to 4 on the grouped path), a long one (the threaded shrink),
    /// ranks 1–64, shapes off the 32-output groups and with odd block counts (96 inputs: 3 blocks, padded to 4).
    /// The instruction-set paths the int8 adapters' kernels run on here: the machine's best, and AVX-VNNI on the AVX2 path
    /// where the CPU has it beside AVX-512 VNNI.
    static let paths: [Int] = Kernels.simdLevel == 2 && Kernels.cpuHasAVXVNNI ? [2, 1] : [Kernels.simdLevel]

    /// Runs `body` on `level` (`paths`), checking that it has the int8 kernels it names.
    static func on(_ level: Int, _ body: () -> Void) {
        Kernels.withSIMDLimit(level) {
            #expect(Kernels.hasInt8Dot && (level == 2) == (Kernels.simdLevel == 2) && (level == 1) == Kernels.avxVNNIActive,
                    "path \(level): not the int8 kernels it names")
            body()
        }
    }

    /// The adapters' types: int8 and int4.
    static let dtypes: [DType] = [.q8_0, .q4_0]

    @Test(arguments: paths, dtypes) func kernelEqualsTwinOnEveryPath(level: Int, dtype: DType) { Self.on(level) {
        var rng = Rng(seed: 8800)
        for (inFeatures, outFeatures) in [(576, 192), (1536, 576), (96, 200), (64, 7)] {
            let ranks = [1, 8, 16, 24, 64, 16, 16]
            let adapters = ranks.map { Self.adapter(rank: $0, inFeatures: inFeatures, outFeatures: outFeatures, dtype: dtype, rng: &rng) }
            var segments: [(Int, Range<Int>, Float)] = []
            var t = 0
            for (i, count) in [1, 2, 4, 5, 1, 3, 8, 1, 12, 1].enumerated() {
                segments.append((i % adapters.count, t..<(t + count), [1, 0.5, -2][i % 3]))
                t += count + (i % 4 == 3 ? 1 : 0)
            }
            Self.check(adapters, segments, tokens: t, inFeatures: inFeatures, outFeatures: outFeatures, rng: &rng)
        }
    } }

    /// MoLE: gated segments (three experts stacked in a rank-24 adapter) between plain ones.
    @Test(arguments: paths, dtypes) func gatedSegments(level: Int, dtype: DType) { Self.on(level) {
        var rng = Rng(seed: 8810)
        let inFeatures = 128, outFeatures = 40
        let adapters = [24, 8].map { Self.adapter(rank: $0, inFeatures: inFeatures, outFeatures: outFeatures, dtype: dtype, rng: &rng) }
        let columns: [Int32] = Array(repeating: 0, count: 8) + Array(repeating: 1, count: 10) + Array(repeating: 2, count: 6)
            + Array(repeating: -1, count: 8)
        func gates(_ n: Int) -> [[Float]] {
            (0..<n).map { _ in
                let e = rng.floats(3).map { Float(Foundation.exp(Double($0))) }
                let sum = e.reduce(0, +)
                return e.map { $0 / sum }
            }
        }
        let segments: [(Int, Range<Int>, Float)] = [(1, 0..<2, 1), (0, 2..<7, 0.5), (1, 7..<8, 2), (0, 8..<9, 1), (0, 10..<22, 1)]
        let gating = [1: Gating(gates: gates(5), columns: columns), 3: Gating(gates: gates(1), columns: columns),
                      4: Gating(gates: gates(12), columns: columns)]
        Self.check(adapters, segments, tokens: 22, inFeatures: inFeatures, outFeatures: outFeatures, rng: &rng, gating: gating)
    } }

    /// B's Q8_0 (Q4_0) layout holds, for every output and block of 16 rank indices, exactly the values d·q of that block
    /// quantized as ggml's Q8_0 (Q4_0) (`quantized16`; the padding's zeros included), in 18 (10) bytes per 16 values of
    /// groups of 16 outputs.
    @Test(arguments: dtypes) func expandLayoutHoldsTheBlocks(dtype: DType) {
        var rng = Rng(seed: 8820)
        for (out, rank) in [(1, 16), (7, 16), (16, 16), (33, 32), (200, 48)] {
            let ad = Self.adapter(rank: rank, inFeatures: 32, outFeatures: out, dtype: dtype, rng: &rng)
            let blocks = ad.paddedRank / 16
            #expect(ad.expand.byteCount == (out + 15) / 16 * blocks * (dtype == .q4_0 ? 160 : 288) && ad.expand.dtype == dtype)
            let held = ad.heldB
            var differing = 0
            for o in 0..<out {
                for j in 0..<ad.paddedRank {
                    let expected = ad.bScales[o * blocks + j / 16] * Float(ad.bCodes[(o * blocks + j / 16) * 16 + j % 16])
                    if held[o * ad.paddedRank + j].bitPattern != expected.bitPattern { differing += 1 }
                }
            }
            #expect(differing == 0, "\(differing) values of \(out)×\(rank)")
        }
    }
}
