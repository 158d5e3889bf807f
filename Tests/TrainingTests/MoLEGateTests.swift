import Foundation
import Kernels
import Testing
import TestSupport

@testable import Training

/// MoLE's gate ops against central differences of their f64 twins: L = Σ mixture(experts, g(z; W, τ))·G
/// + λ·balance(g), differentiated with respect to the gate weights W, the temperature τ, the gate input z
/// and the experts' outputs.
extension TrainingSuites {
@Suite struct MoLEGateTests {
    @Test func gateMixtureAndBalanceGradients() {
        var rng = SplitMix64(seed: 31)
        let batch = 3, length = 4, n = 3, h = 8, width = 5, rows = batch * length
        let lambda: Float = 0.7
        var z = randomValues(batch * h, &rng), w = randomValues(n * h, &rng, scale: 0.8)
        let tau: Float = 0.8
        let expertValues = (0..<n).map { _ in randomValues(rows * width, &rng) }
        // Expert outputs in stable memory (pointers to them outlive any one closure).
        let experts = expertValues.map { v in
            let b = Buffer(floats: v.count)
            b.floats.update(from: v, count: v.count)
            return b
        }
        let ptrs = experts.map { UnsafePointer($0.floats) }
        let g = randomValues(rows * width, &rng).f64

        var logits = [Float](repeating: 0, count: batch * n), gates = logits, dGates = logits, scratch = logits
        var y = [Float](repeating: 0, count: rows * width), gf = g.f32
        var gradW = [Float](repeating: 0, count: n * h), dz = [Float](repeating: 0, count: batch * h)
        var loss = 0.0, dTau: Float = 0
        withPointers(&z) { zp in withPointers(&w) { wp in withPointers(&logits) { lp in withPointers(&gates) { gp in
            MoLEOps.gateForward(zp, weight: wp, temperature: tau, rows: batch, experts: n, width: h, logits: lp, gates: gp)
            withPointers(&y) { MoLEOps.mixtureForward(experts: ptrs, ld: width, gates: gp, batch: batch, length: length, width: width, $0, ldy: width) }
            withPointers(&dGates) { dg in
                withPointers(&gf) { MoLEOps.mixtureBackwardGates($0, ldy: width, experts: ptrs, ld: width, batch: batch, length: length, width: width, dGates: dg) }
                loss = zip(y, g).reduce(0) { $0 + Double($1.0) * $1.1 } + MoLEOps.balanceLoss(gp, rows: batch, experts: n, weight: lambda, dGates: dg)
                withPointers(&gradW) { gw in withPointers(&dz) { dzp in withPointers(&scratch) { sc in
                    dTau = MoLEOps.gateBackward(dg, z: zp, weight: wp, temperature: tau, rows: batch, experts: n, width: h,
                                                logits: lp, gates: gp, gradWeight: gw, dz: dzp, scratch: sc)
                } } }
            }
        } } } }

        func f(z: [Double], w: [Double], tau: Double, experts: [[Double]]) -> Double {
            let gates = ReferenceTraining.moleGates(z: z, weight: w, temperature: tau, rows: batch, experts: n, width: h)
            let y = ReferenceTraining.moleMixture(experts: experts, gates: gates, batch: batch, length: length, width: width)
            return project(y, g) + Double(lambda) * ReferenceTraining.moleBalanceLoss(gates: gates, rows: batch, experts: n)
        }
        let e64 = expertValues.map(\.f64)
        let refLoss = f(z: z.f64, w: w.f64, tau: Double(tau), experts: e64)
        #expect(abs(loss - refLoss) < 1e-4 * max(1, abs(refLoss)), "loss \(loss) vs \(refLoss)")
        expectGradient(gradW, numericGradient(w.f64) { f(z: z.f64, w: $0, tau: Double(tau), experts: e64) }, "MoLE dW")
        expectGradient(dz, numericGradient(z.f64) { f(z: $0, w: w.f64, tau: Double(tau), experts: e64) }, "MoLE dz")
        expectGradient([dTau], numericGradient([Double(tau)]) { f(z: z.f64, w: w.f64, tau: $0[0], experts: e64) }, "MoLE dτ")
        // Each expert's output gradient is its gate times dL/dy.
        for i in 0..<n {
            let analytic = (0..<(rows * width)).map { gates[($0 / width / length) * n + i] * gf[$0] }
            expectGradient(analytic, numericGradient(e64[i]) { e in
                var all = e64
                all[i] = e
                return f(z: z.f64, w: w.f64, tau: Double(tau), experts: all)
            }, "MoLE dExpert\(i)")
        }
    }

    /// The balance loss is smallest (N·log N) when every expert gets the same average weight, and its
    /// gradient pushes weight towards the neglected expert.
    @Test func balanceLossFavoursEvenUse() {
        let n = 3
        var even = [Float](repeating: 1 / 3, count: 2 * n), skewed: [Float] = [0.8, 0.15, 0.05, 0.7, 0.2, 0.1]
        var d1 = [Float](repeating: 0, count: 2 * n), d2 = d1
        let l1 = withPointers(&even) { g in withPointers(&d1) { MoLEOps.balanceLoss(g, rows: 2, experts: n, weight: 1, dGates: $0) } }
        let l2 = withPointers(&skewed) { g in withPointers(&d2) { MoLEOps.balanceLoss(g, rows: 2, experts: n, weight: 1, dGates: $0) } }
        #expect(abs(l1 - 3 * log(3.0)) < 1e-5)
        #expect(l2 > l1)
        #expect(d2[2] < d2[1] && d2[1] < d2[0])  // the least-used expert's gate has the most negative gradient
    }
}
}
