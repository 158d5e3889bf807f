import Foundation
import Kernels
import Testing
import TestSupport

@testable import Training

/// Every backward op against central differences of its f64 twin (`ReferenceTraining`), and every f32
/// forward against that twin. The scalar differentiated is Σ y·g for a random g (so dL/dy = g).
extension TrainingSuites {
@Suite struct OpGradientTests {
    @Test func rmsNorm() {
        var rng = SplitMix64(seed: 1)
        let rows = 3, width = 16, eps: Float = 1e-5
        var x = randomValues(rows * width, &rng, scale: 2)
        var w = (0..<width).map { _ in 1 + 0.3 * rng.float() }
        let g = randomValues(rows * width, &rng).f64
        var y = [Float](repeating: 0, count: rows * width), rstd = [Float](repeating: 0, count: rows)
        var dx = [Float](repeating: 0, count: rows * width)
        var gf = g.f32
        withPointers(&x) { xp in withPointers(&w) { wp in withPointers(&y) { yp in withPointers(&rstd) { rp in
            TrainingOps.rmsNormForward(xp, weight: wp, eps: eps, out: yp, rstd: rp, rows: rows, width: width)
            withPointers(&gf) { gp in withPointers(&dx) { dp in
                TrainingOps.rmsNormBackward(gp, x: xp, weight: wp, rstd: rp, dx: dp, rows: rows, width: width)
            } }
        } } } }
        let ref = { (x: [Double]) in ReferenceTraining.rmsNorm(x, weight: w.f64, eps: Double(eps), rows: rows, width: width) }
        #expect(maxAbsDiff(y, ref(x.f64).f32) < 1e-5)
        expectGradient(dx, numericGradient(x.f64) { project(ref($0), g) }, "rmsNorm dx")
    }

    @Test(arguments: [RopePairing.halves, .adjacent]) func rope(pairing: RopePairing) {
        var rng = SplitMix64(seed: 2)
        let rows = 5, heads = 3, headDim = 8, ld = heads * headDim + 4, half = headDim / 2
        let positions = [0, 1, 2, 7, 300]
        let invFreq = (0..<half).map { Float(1.0 / pow(10000.0, Double(2 * $0) / Double(headDim))) }
        let x = randomValues(rows * ld, &rng)
        let g = randomValues(rows * ld, &rng).f64
        var cos = [Float](repeating: 0, count: rows * half), sin = cos
        positions.map(Int32.init).withUnsafeBufferPointer { p in
            invFreq.withUnsafeBufferPointer { f in
                cos.withUnsafeMutableBufferPointer { c in sin.withUnsafeMutableBufferPointer { s in
                    Kernels.ropeTables(positions: p, inverseFrequencies: f, cos: c.baseAddress!, sin: s.baseAddress!)
                } }
            }
        }
        var negSin = sin.map { -$0 }
        var y = x
        withPointers(&y) { Kernels.applyRope($0, ldx: ld, tokens: rows, heads: heads, headDim: headDim, cos: cos, sin: sin, pairing: pairing) }
        // The backward of the rotation on g; the padding columns of each row are not rotated (gradient g there).
        var dx = g.f32
        withPointers(&dx) { d in withPointers(&negSin) { ns in
            TrainingOps.ropeBackward(d, ldx: ld, tokens: rows, heads: heads, headDim: headDim, cos: cos, negSin: ns, pairing: pairing)
        } }
        let ref = { (x: [Double]) in
            ReferenceTraining.rope(x, rows: rows, ld: ld, heads: heads, headDim: headDim, positions: positions,
                                   inverseFrequencies: invFreq, halves: pairing == .halves)
        }
        #expect(maxAbsDiff(y, ref(x.f64).f32) < 1e-5)
        expectGradient(dx, numericGradient(x.f64) { project(ref($0), g) }, "rope dx (\(pairing))")
    }

    @Test func swiglu() {
        var rng = SplitMix64(seed: 3)
        let tokens = 4, f = 12
        var gu = randomValues(tokens * 2 * f, &rng, scale: 4)
        let g = randomValues(tokens * f, &rng).f64
        var act = [Float](repeating: 0, count: tokens * f), dgu = [Float](repeating: 0, count: tokens * 2 * f)
        var gf = g.f32
        withPointers(&gu) { p in
            withPointers(&act) { TrainingOps.swigluForward(p, act: $0, tokens: tokens, width: f) }
            withPointers(&gf) { gp in withPointers(&dgu) { TrainingOps.swigluBackward(gp, gateUp: p, dGateUp: $0, tokens: tokens, width: f) } }
        }
        let ref = { (x: [Double]) in ReferenceTraining.swiglu(x, tokens: tokens, width: f) }
        #expect(maxAbsDiff(act, ref(gu.f64).f32) < 1e-5)
        expectGradient(dgu, numericGradient(gu.f64) { project(ref($0), g) }, "swiglu d[gate|up]")
    }

    /// Attention's (sequence, KV head) groups split over threads (`slots`, what training uses once OpenBLAS
    /// is capped at one thread) give the serial run's bits: probabilities, output, dQ and the dK, dV sums
    /// over each group's heads — 2 sequences × 3 KV heads × 2 query heads each over 1, 2, 3 and 8 slots.
    @Test func attentionSplitOverThreadsMatchesSerial() {
        var rng = SplitMix64(seed: 21)
        let s = TrainingOps.AttentionShape(batch: 2, length: 7, heads: 6, kvHeads: 3, headDim: 8, rowBlock: 3)
        let n = s.batch * s.length, qDim = s.heads * s.headDim, kvDim = s.kvHeads * s.headDim, ld = qDim + 2 * kvDim
        var qkv = randomValues(n * ld, &rng, scale: 1.5), g = randomValues(n * qDim, &rng)
        func run(_ slots: Int) -> [[Float]] {
            var probs = [Float](repeating: .nan, count: s.probsCount), out = [Float](repeating: .nan, count: n * qDim)
            var dqkv = [Float](repeating: .nan, count: n * ld), scratch = [Float](repeating: .nan, count: slots * s.length * s.length)
            withPointers(&qkv) { p in withPointers(&probs) { pr in
                withPointers(&out) {
                    TrainingOps.attentionForward(q: p, k: p + qDim, v: p + qDim + kvDim, ld: ld, shape: s, probs: pr, out: $0, ldo: qDim,
                                                 slots: slots)
                }
                withPointers(&g) { gp in withPointers(&dqkv) { d in withPointers(&scratch) { sc in
                    TrainingOps.attentionBackward(dOut: gp, ldo: qDim, q: p, k: p + qDim, v: p + qDim + kvDim, ld: ld, probs: pr, shape: s,
                                                  dq: d, dk: d + qDim, dv: d + qDim + kvDim, scratch: sc, slots: slots)
                } } }
            } }
            return [probs, out, dqkv]
        }
        let serial = run(1)
        #expect(!serial.joined().contains { $0.isNaN })
        for slots in [2, 3, 8] {
            let split = run(slots)
            for (name, (a, b)) in zip(["probabilities", "output", "dqkv"], zip(serial, split)) {
                #expect(a.map(\.bitPattern) == b.map(\.bitPattern), "\(slots) slots: \(name) differ")
            }
        }
    }

    /// GQA (4 query heads on 2 KV heads), two sequences, q/k/v as column blocks of one row as the model lays
    /// them out; causal products in one block of rows, and in blocks of 2 and 1 rows (the last one partial).
    @Test(arguments: [5, 2, 1]) func causalAttention(rowBlock: Int) {
        var rng = SplitMix64(seed: 4)
        let s = TrainingOps.AttentionShape(batch: 2, length: 5, heads: 4, kvHeads: 2, headDim: 8, rowBlock: rowBlock)
        let n = s.batch * s.length, qDim = s.heads * s.headDim, kvDim = s.kvHeads * s.headDim, ld = qDim + 2 * kvDim
        var qkv = randomValues(n * ld, &rng, scale: 1.5)
        let g = randomValues(n * qDim, &rng).f64
        var probs = [Float](repeating: 0, count: s.probsCount), out = [Float](repeating: 0, count: n * qDim)
        var dqkv = [Float](repeating: .nan, count: n * ld), scratch = [Float](repeating: 0, count: s.length * s.length)
        var gf = g.f32
        withPointers(&qkv) { p in withPointers(&probs) { pr in
            withPointers(&out) { TrainingOps.attentionForward(q: p, k: p + qDim, v: p + qDim + kvDim, ld: ld, shape: s, probs: pr, out: $0, ldo: qDim) }
            withPointers(&gf) { gp in withPointers(&dqkv) { d in withPointers(&scratch) { sc in
                TrainingOps.attentionBackward(dOut: gp, ldo: qDim, q: p, k: p + qDim, v: p + qDim + kvDim, ld: ld, probs: pr, shape: s,
                                              dq: d, dk: d + qDim, dv: d + qDim + kvDim, scratch: sc)
            } } }
        } }
        func split(_ x: [Double]) -> (q: [Double], k: [Double], v: [Double]) {
            var q: [Double] = [], k: [Double] = [], v: [Double] = []
            for t in 0..<n {
                q += x[(t * ld)..<(t * ld + qDim)]
                k += x[(t * ld + qDim)..<(t * ld + qDim + kvDim)]
                v += x[(t * ld + qDim + kvDim)..<((t + 1) * ld)]
            }
            return (q, k, v)
        }
        let ref = { (x: [Double]) -> [Double] in
            let (q, k, v) = split(x)
            return ReferenceTraining.attention(q: q, k: k, v: v, batch: s.batch, length: s.length, heads: s.heads, kvHeads: s.kvHeads, headDim: s.headDim)
        }
        #expect(maxAbsDiff(out, ref(qkv.f64).f32) < 1e-5)
        expectGradient(dqkv, numericGradient(qkv.f64) { project(ref($0), g) }, "attention d[q|k|v] (row blocks of \(rowBlock))")
        // A position never sees a later one: the probabilities above the diagonal are exactly zero.
        #expect((0..<s.length).allSatisfy { i in ((i + 1)..<s.length).allSatisfy { probs[i * s.length + $0] == 0 } })
    }

    @Test func crossEntropy() {
        var rng = SplitMix64(seed: 5)
        let rows = 4, vocab = 11
        var logits = randomValues(rows * vocab, &rng, scale: 3)
        let labels: [Int32] = [3, 0, 10, 7]
        let x = logits.f64
        let loss = labels.withUnsafeBufferPointer { l in withPointers(&logits) { TrainingOps.crossEntropy($0, labels: l.baseAddress!, rows: rows, vocab: vocab) } }
        let ref = { (z: [Double]) in ReferenceTraining.crossEntropy(z, labels: labels.map(Int.init), vocab: vocab) }
        #expect(abs(loss - ref(x)) < 1e-6)
        expectGradient(logits, numericGradient(x, ref), "cross-entropy dlogits")
    }

    @Test func frozenLinear() {
        var rng = SplitMix64(seed: 6)
        let tokens = 3, out = 7, inF = 10
        var x = randomValues(tokens * inF, &rng), w = randomValues(out * inF, &rng)
        let g = randomValues(tokens * out, &rng).f64
        var y = [Float](repeating: 0, count: tokens * out), dx = [Float](repeating: 0, count: tokens * inF), gf = g.f32
        withPointers(&x) { xp in withPointers(&w) { wp in
            withPointers(&y) { TrainingOps.linearForward(xp, ldx: inF, weight: wp, out: out, in: inF, tokens: tokens, $0, ldy: out) }
            withPointers(&gf) { gp in withPointers(&dx) { TrainingOps.linearBackward(gp, ldy: out, weight: wp, out: out, in: inF, tokens: tokens, $0, ldx: inF) } }
        } }
        let ref = { (x: [Double]) in ReferenceTraining.linear(x, weight: w.f64, out: out, in: inF, tokens: tokens) }
        #expect(maxAbsDiff(y, ref(x.f64).f32) < 1e-5)
        expectGradient(dx, numericGradient(x.f64) { project(ref($0), g) }, "linear dx")
    }

    /// y = scale·B·A·x, with strided rows (ldx, ldy wider than the matrices) as in the fused q|k|v rows.
    @Test func loraPath() {
        var rng = SplitMix64(seed: 7)
        let tokens = 5, out = 6, inF = 16, rank = 3, scale: Float = 2.5, ldx = inF + 3, ldy = out + 2
        var xs = randomValues(tokens * ldx, &rng), a = randomValues(rank * inF, &rng), b = randomValues(out * rank, &rng)
        let g = randomValues(tokens * out, &rng).f64
        var gy = [Float](repeating: 0, count: tokens * ldy)
        for t in 0..<tokens { for o in 0..<out { gy[t * ldy + o] = Float(g[t * out + o]) } }
        var y = [Float](repeating: 0, count: tokens * ldy), u = [Float](repeating: 0, count: tokens * rank), du = u
        var gradA = [Float](repeating: 0, count: rank * inF), gradB = [Float](repeating: 0, count: out * rank)
        var dx = [Float](repeating: 0, count: tokens * ldx)
        withPointers(&xs) { xp in withPointers(&a) { ap in withPointers(&b) { bp in withPointers(&u) { up in
            withPointers(&y) { TrainingOps.loraForward(xp, ldx: ldx, a: ap, b: bp, rank: rank, out: out, in: inF, scale: scale, tokens: tokens, u: up, $0, ldy: ldy) }
            withPointers(&gy) { gp in withPointers(&gradA) { ga in withPointers(&gradB) { gb in withPointers(&du) { dp in withPointers(&dx) { dxp in
                TrainingOps.loraBackward(gp, ldy: ldy, x: xp, ldx: ldx, a: ap, b: bp, u: up, rank: rank, out: out, in: inF, scale: scale,
                                         tokens: tokens, gradA: ga, gradB: gb, du: dp, dx: dxp)
            } } } } }
        } } } }
        let packed = (0..<tokens).flatMap { t in xs[(t * ldx)..<(t * ldx + inF)] }
        func f(_ x: [Double], _ a: [Double], _ b: [Double]) -> Double {
            project(ReferenceTraining.lora(x, a: a, b: b, rank: rank, out: out, in: inF, scale: Double(scale), tokens: tokens), g)
        }
        let yPacked = (0..<tokens).flatMap { t in y[(t * ldy)..<(t * ldy + out)] }
        #expect(maxAbsDiff(yPacked, ReferenceTraining.lora(packed.f64, a: a.f64, b: b.f64, rank: rank, out: out, in: inF,
                                                           scale: Double(scale), tokens: tokens).f32) < 1e-5)
        let dxPacked = (0..<tokens).flatMap { t in dx[(t * ldx)..<(t * ldx + inF)] }
        expectGradient(dxPacked, numericGradient(packed.f64) { f($0, a.f64, b.f64) }, "lora dx")
        expectGradient(gradA, numericGradient(a.f64) { f(packed.f64, $0, b.f64) }, "lora dA")
        expectGradient(gradB, numericGradient(b.f64) { f(packed.f64, a.f64, $0) }, "lora dB")
        // Padding columns of x's rows get no gradient.
        #expect((0..<tokens).allSatisfy { t in (inF..<ldx).allSatisfy { dx[t * ldx + $0] == 0 } })
    }
}
}
