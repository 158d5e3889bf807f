import Foundation
import Kernels

// MoLE (Wu, Huang & Wei, ICLR 2024; shared/PAPERS.md): N frozen LoRA experts, a learnable gate per block that
// weighs their outputs from the block's input, a learnable temperature, and a balance loss that keeps every
// expert in use. These are the gate's ops, forward and backward; B = sequences, N = experts, H = the gate
// input's width.
//
// Gate input, a choice of ours (the released code flattens a fixed-length input, which variable-length text
// does not have): z_b = the mean over sequence b's positions of the block's normalised input — independent
// of the length, one gate per block and sequence as in the released code.

public enum MoLEOps {
    /// g_b = softmax(z_b·Wᵀ / τ) for each of B rows: z (B × H), W (N × H), gates (B × N); logits (B × N) keeps ε = z·Wᵀ.
    public static func gateForward(_ z: UnsafePointer<Float>, weight: UnsafePointer<Float>, temperature tau: Float,
                                   rows: Int, experts n: Int, width h: Int,
                                   logits: UnsafeMutablePointer<Float>, gates: UnsafeMutablePointer<Float>) {
        Kernels.gemm(transB: true, m: rows, n: n, k: h, z, lda: h, weight, ldb: h, logits, ldc: n)
        for b in 0..<rows {
            let e = logits + b * n, g = gates + b * n
            var mx = -Float.infinity
            for i in 0..<n { mx = max(mx, e[i] / tau) }
            var sum: Float = 0
            for i in 0..<n {
                g[i] = Foundation.exp(e[i] / tau - mx)
                sum += g[i]
            }
            for i in 0..<n { g[i] /= sum }
        }
    }

    /// Given dL/dg: dL/da = g ⊙ (dg − Σ g·dg) with a = ε/τ; then dW += (dL/dε)ᵀ z, dτ += −Σ dL/da · ε / τ²,
    /// dz (if given) += (dL/dε)·W, where dL/dε = (dL/da) / τ. `scratch` holds B × N floats. Returns dL/dτ.
    @discardableResult
    public static func gateBackward(_ dGates: UnsafePointer<Float>, z: UnsafePointer<Float>, weight: UnsafePointer<Float>,
                                    temperature tau: Float, rows: Int, experts n: Int, width h: Int,
                                    logits: UnsafePointer<Float>, gates: UnsafePointer<Float>,
                                    gradWeight: UnsafeMutablePointer<Float>, dz: UnsafeMutablePointer<Float>?,
                                    scratch: UnsafeMutablePointer<Float>) -> Float {
        var dTau: Float = 0
        for b in 0..<rows {
            let g = gates + b * n, dg = dGates + b * n, e = logits + b * n, de = scratch + b * n
            var dot: Float = 0
            for i in 0..<n { dot += g[i] * dg[i] }
            for i in 0..<n {
                let da = g[i] * (dg[i] - dot)
                dTau -= da * e[i] / (tau * tau)
                de[i] = da / tau
            }
        }
        Kernels.gemm(transA: true, m: n, n: h, k: rows, scratch, lda: n, z, ldb: h, beta: 1, gradWeight, ldc: h)
        if let dz { Kernels.gemm(m: rows, n: h, k: n, scratch, lda: n, weight, ldb: h, beta: 1, dz, ldc: h) }
        return dTau
    }

    /// y[t] += Σ_i g[seq(t), i] · expert_i[t] over `batch` sequences of `length` rows: experts[i] is
    /// (B·T × width) with row stride `ld`, y has row stride `ldy`.
    public static func mixtureForward(experts: [UnsafePointer<Float>], ld: Int, gates: UnsafePointer<Float>, batch: Int, length: Int,
                                      width: Int, _ y: UnsafeMutablePointer<Float>, ldy: Int) {
        let n = experts.count
        for t in 0..<(batch * length) {
            let g = gates + (t / length) * n
            for (i, e) in experts.enumerated() {
                Kernels.addScaled(e + t * ld, ldx: ld, scale: g[i], into: y + t * ldy, ldy: ldy, width: width, tokens: 1)
            }
        }
    }

    /// The mixture's backward: dGates[b, i] += Σ_{t ∈ b} dy[t]·expert_i[t]; dExpert_i[t] = g[b, i]·dy[t] is
    /// left to the caller (it is a scaling of dy).
    public static func mixtureBackwardGates(_ dy: UnsafePointer<Float>, ldy: Int, experts: [UnsafePointer<Float>], ld: Int,
                                            batch: Int, length: Int, width: Int, dGates: UnsafeMutablePointer<Float>) {
        let n = experts.count
        for t in 0..<(batch * length) {
            let dg = dGates + (t / length) * n, d = dy + t * ldy
            for (i, e) in experts.enumerated() {
                let row = e + t * ld
                var dot: Float = 0
                for c in 0..<width { dot += d[c] * row[c] }
                dg[i] += dot
            }
        }
    }

    /// MoLE's gating balance loss, −log Π_i q_i = −Σ_i log q_i, where q_i is expert i's gate weight averaged
    /// over the `rows` gate rows given (every block and sequence). Adds its gradient, −1 / (rows · q_i), to
    /// dGates (times `weight`, the loss's coefficient) and returns weight · loss. Unlike MoLE's released
    /// code, whose balance loss is built from detached values, this one trains the gates.
    public static func balanceLoss(_ gates: UnsafePointer<Float>, rows: Int, experts n: Int, weight: Float,
                                   dGates: UnsafeMutablePointer<Float>) -> Double {
        precondition(rows > 0)
        var q = [Double](repeating: 0, count: n)
        for r in 0..<rows { for i in 0..<n { q[i] += Double(gates[r * n + i]) } }
        var loss = 0.0
        for i in 0..<n {
            q[i] /= Double(rows)
            loss -= Foundation.log(q[i])
        }
        for r in 0..<rows { for i in 0..<n { dGates[r * n + i] += Float(-Double(weight) / (Double(rows) * q[i])) } }
        return Double(weight) * loss
    }
}

extension ReferenceTraining {
    /// f64 twin of `MoLEOps.gateForward`: softmax(z·Wᵀ / τ) per row.
    public static func moleGates(z: [Double], weight: [Double], temperature tau: Double, rows: Int, experts n: Int, width h: Int) -> [Double] {
        var g = [Double](repeating: 0, count: rows * n)
        for b in 0..<rows {
            let a = (0..<n).map { i in (0..<h).reduce(0.0) { $0 + z[b * h + $1] * weight[i * h + $1] } / tau }
            let mx = a.max()!
            let e = a.map { Foundation.exp($0 - mx) }
            let s = e.reduce(0, +)
            for i in 0..<n { g[b * n + i] = e[i] / s }
        }
        return g
    }

    /// f64 twin of `MoLEOps.mixtureForward` (packed rows, y starting at zero).
    public static func moleMixture(experts: [[Double]], gates: [Double], batch: Int, length: Int, width: Int) -> [Double] {
        let n = experts.count
        var y = [Double](repeating: 0, count: batch * length * width)
        for t in 0..<(batch * length) {
            for i in 0..<n { for c in 0..<width { y[t * width + c] += gates[(t / length) * n + i] * experts[i][t * width + c] } }
        }
        return y
    }

    /// f64 twin of `MoLEOps.balanceLoss` (without the coefficient).
    public static func moleBalanceLoss(gates: [Double], rows: Int, experts n: Int) -> Double {
        (0..<n).reduce(0.0) { loss, i in
            loss - Foundation.log((0..<rows).reduce(0.0) { $0 + gates[$1 * n + i] } / Double(rows))
        }
    }
}
