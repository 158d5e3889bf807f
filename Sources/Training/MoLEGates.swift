import Foundation
import Kernels
import Models

// MoLE (Wu, Huang & Wei, ICLR 2024; shared/PAPERS.md): N frozen LoRA experts, a learnable gate per block that
// weighs their outputs from the block's input, a learnable temperature, and a balance loss that keeps every
// expert in use. These are the gate's ops, forward and backward; B = sequences, N = experts, H = the gate
// input's width.
//
// Gate input, a choice of ours (the released code flattens a fixed-length input, which variable-length text
// does not have): each token's own normalised block input, so the gate is causal and needs no state
// (docs/design/mole-serving.md). The ops below take rows grouped in runs of `length` sharing one gate row;
// the model uses runs of one.

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

/// MoLE in the training model: N frozen LoRA experts (each a `LoRAParameters`, any targets) mixed in every
/// adapted projection by a gate computed per token from the normalised input where the gate sits
/// (`MoLEGranularity`: per block from its attention input; per sub-layer from the attention and the MLP inputs;
/// one for the network from block 0's attention input; per adapted projection from the projection's own input),
/// g[t] = softmax(xn[t]·W_uᵀ / τ_u):
///
///     y[t] += Σᵢ g[t, i] · sᵢ · Bᵢ·Aᵢ·x[t]
///
/// (A per-token gate, not MoLE's per-sequence one: it is causal, length-independent and needs no state, so
/// serving computes it inside chunked prefill and batched decode exactly as here; docs/design/mole-serving.md.)
/// Only the gates (W_u, τ_u) train; the loss adds λ · (−log Πᵢ qᵢ), qᵢ = expert i's mean gate weight over
/// every gate unit in use and real token. Hooks called by `LoRATrainingModel` (forward and backward of each block).
public final class MoLEMixture: @unchecked Sendable {
    public let config: ModelConfig
    public let experts: [LoRAParameters]
    public let granularity: MoLEGranularity
    /// Per gate unit: W (N × its input width; empty for a matrix unit no expert adapts) and its gradient; the
    /// temperature τ and its gradient.
    public let gateWeights: [Buffer]
    public let gateGradients: [Buffer]
    /// Per gate unit τ and dL/dτ, in buffers so the optimiser updates them with the weights.
    public let temperatureValues: Buffer
    public let temperatureGradientValues: Buffer
    public var balanceWeight: Float
    /// The optimiser may not take τ below this (a softmax at τ ≤ 0 is undefined or inverted).
    public static let minimumTemperature: Float = 0.05

    /// Gate units (W, τ pairs), and which are in use (every one but a matrix unit no expert adapts).
    public var units: Int { gateWeights.count }
    public let inUse: [Bool]
    /// Per gate unit, the width of its input (`MoLEGranularity.inputWidth`).
    public let widths: [Int]
    public var temperatures: [Float] { Array(UnsafeBufferPointer(start: temperatureValues.floats, count: units)) }
    public var temperatureGradients: [Float] { Array(UnsafeBufferPointer(start: temperatureGradientValues.floats, count: units)) }

    private var batch = 0, length = 0, lengths: [Int] = []
    /// Per gate unit, one row per token (B·T × N): ε = xn·Wᵀ, the gates, dL/dgates.
    private var logits: [Buffer] = [], gates: [Buffer] = [], dGates: [Buffer] = []
    /// u = x·Aᵢᵀ per layer, per (target, expert).
    private var u: [[Buffer?]] = []
    private var du = Buffer(floats: 0), gateScratch = Buffer(floats: 0)

    /// Gate weights uniform in ±`gateScale`/√H (0: every expert weighs 1/N at the start), τ = `temperature`.
    public init(config: ModelConfig, experts: [LoRAParameters], granularity: MoLEGranularity = .block, balanceWeight: Float,
                temperature: Float = 1, gateScale: Float = 0, seed: UInt64 = 0) {
        precondition(!experts.isEmpty && experts.allSatisfy { $0.config == config })
        precondition(temperature > 0)
        self.config = config
        self.experts = experts
        self.granularity = granularity
        self.balanceWeight = balanceWeight
        let n = experts.count, units = granularity.units(layers: config.numLayers)
        inUse = granularity.unitsInUse(layers: config.numLayers) { l, t in experts.contains { $0.module(layer: l, target: t) != nil } }
        widths = (0..<units).map { granularity.inputWidth(unit: $0, config: config) }
        var rng = SeededGenerator(seed: seed)
        gateWeights = (0..<units).map { [inUse, widths] u in
            let count = inUse[u] ? n * widths[u] : 0
            let w = Buffer(floats: count)
            for i in 0..<count { w.floats[i] = rng.symmetric() * gateScale / Float(widths[u]).squareRoot() }
            return w
        }
        gateGradients = (0..<units).map { [inUse, widths] u in Buffer(floats: inUse[u] ? n * widths[u] : 0) }
        temperatureValues = Buffer(floats: units)
        temperatureValues.floats.update(repeating: temperature, count: units)
        temperatureGradientValues = Buffer(floats: units)
    }

    /// After an optimiser step: τ back to at least `minimumTemperature`.
    public func clampTemperatures() {
        for u in 0..<units { temperatureValues.floats[u] = max(temperatureValues.floats[u], Self.minimumTemperature) }
    }

    var n: Int { experts.count }

    public func zeroGradients() {
        for (u, g) in gateGradients.enumerated() where inUse[u] { g.floats.update(repeating: 0, count: n * widths[u]) }
        temperatureGradientValues.floats.update(repeating: 0, count: units)
    }

    /// The real tokens' rows of the last batch (padding excluded), in order.
    private var realRows: [Int] { (0..<batch).flatMap { b in (0..<lengths[b]).map { b * length + $0 } } }

    /// Gate values of the last forward, gate unit u (block granularity: unit l is block l): one row of N per
    /// real token (padding excluded); none for a unit not in use.
    public func gateValues(unit u: Int) -> [Float] {
        guard inUse[u] else { return [] }
        return realRows.flatMap { r in (0..<n).map { gates[u].floats[r * n + $0] } }
    }

    /// Those of the unit that weighs block l's first adapted projection (q, k, v, o, gate, up, down in order).
    public func gateValues(layer l: Int) -> [Float] {
        let unit = LoRATarget.allCases.lazy.map { self.granularity.unit(layer: l, target: $0) }.first { self.inUse[$0] }
        return unit.map { gateValues(unit: $0) } ?? []
    }

    func reserve(batch b: Int, length t: Int, lengths: [Int]) {
        self.lengths = lengths
        guard b != batch || t != length else { return }
        batch = b
        length = t
        let c = config, rows = b * t
        logits = inUse.map { Buffer(floats: $0 ? rows * n : 0) }
        gates = inUse.map { Buffer(floats: $0 ? rows * n : 0) }
        dGates = inUse.map { Buffer(floats: $0 ? rows * n : 0) }
        var maxRank = 0
        u = (0..<c.numLayers).map { l in
            LoRATarget.allCases.flatMap { t in
                experts.map { e -> Buffer? in
                    guard let m = e.module(layer: l, target: t) else { return nil }
                    maxRank = max(maxRank, m.rank)
                    return Buffer(floats: rows * m.rank)
                }
            }
        }
        du = Buffer(floats: rows * maxRank)
        gateScratch = Buffer(floats: rows * n)
    }

    /// The gates that sit at block l's attention input (`mlp` false: xn = the first RMSNorm's output) or MLP
    /// input (`mlp` true: the second's), one row per token (xn: B·T × H); nothing when no gate sits there.
    func gateForward(layer l: Int, mlp: Bool = false, xn: UnsafePointer<Float>) {
        guard let u = granularity.unit(layer: l, mlp: mlp) else { return }
        gateForward(unit: u, z: xn)
    }

    /// Unit u's gates from its input z (B·T × the unit's width).
    private func gateForward(unit u: Int, z: UnsafePointer<Float>) {
        MoLEOps.gateForward(z, weight: gateWeights[u].floats, temperature: temperatureValues.floats[u], rows: batch * length,
                            experts: n, width: widths[u], logits: logits[u].floats, gates: gates[u].floats)
    }

    /// The experts' paths of target t in block l, each weighted per token by its gate, added to y (at matrix
    /// granularity the gate is computed here first, from x).
    func mixtureForward(layer l: Int, target t: LoRATarget, x: UnsafePointer<Float>, ldx: Int, y: UnsafeMutablePointer<Float>, ldy: Int) {
        let unit = granularity.unit(layer: l, target: t)
        guard inUse[unit] else { return }
        if granularity == .matrix {
            precondition(ldx == widths[unit], "a matrix gate's input must be contiguous")
            gateForward(unit: unit, z: x)
        }
        let rows = batch * length, g = gates[unit].floats
        for (i, e) in experts.enumerated() {
            guard let m = e.module(layer: l, target: t), let ui = u[l][t.rawValue * n + i] else { continue }
            let r = m.rank
            Kernels.gemm(transB: true, m: rows, n: r, k: m.inFeatures, x, lda: ldx, m.a.floats, ldb: m.inFeatures, ui.floats, ldc: r)
            // v = u scaled per row by its token's gate, then y += s·v·Bᵀ.
            for row in 0..<rows {
                let w = g[row * n + i]
                for j in 0..<r { du.floats[row * r + j] = ui.floats[row * r + j] * w }
            }
            Kernels.gemm(transB: true, m: rows, n: m.outFeatures, k: r, alpha: e.scale, du.floats, lda: r, m.b.floats, ldb: r,
                         beta: 1, y, ldc: ldy)
        }
    }

    /// dGates[t, i] += dy[t]·Eᵢ[t] = (s·dy·Bᵢ)[t]·u[t];  dx += g·(s·dy·Bᵢ)·Aᵢ (at matrix granularity, then the
    /// gate's own backward, its input's gradient added to dx).
    func mixtureBackward(layer l: Int, target t: LoRATarget, dy: UnsafePointer<Float>, ldy: Int, x: UnsafePointer<Float>, ldx: Int,
                         dx: UnsafeMutablePointer<Float>) {
        let unit = granularity.unit(layer: l, target: t)
        guard inUse[unit] else { return }
        defer { if granularity == .matrix { gateBackward(unit: unit, z: x, dz: dx) } }
        let rows = batch * length, g = gates[unit].floats, dg = dGates[unit].floats
        for (i, e) in experts.enumerated() {
            guard let m = e.module(layer: l, target: t), let ui = u[l][t.rawValue * n + i] else { continue }
            let r = m.rank
            Kernels.gemm(m: rows, n: r, k: m.outFeatures, alpha: e.scale, dy, lda: ldy, m.b.floats, ldb: r, du.floats, ldc: r)
            for row in 0..<rows {
                let d = du.floats + row * r, uu = ui.floats + row * r
                var dot: Float = 0
                for j in 0..<r { dot += d[j] * uu[j] }
                dg[row * n + i] += dot
                let w = g[row * n + i]
                for j in 0..<r { d[j] *= w }
            }
            Kernels.gemm(m: rows, n: m.inFeatures, k: r, du.floats, lda: r, m.a.floats, ldb: m.inFeatures, beta: 1, dx, ldc: ldx)
        }
    }

    /// The backward of the gate that sits at block l's attention (or MLP) input: dW_u, dτ_u, and the gate input's
    /// gradient, added to dxn (the gradient of that normalised input xn). Called after every target the gate
    /// weighs has run its backward (for the network's gate: at block 0, last). Padding rows carry no gradient.
    func gateBackward(layer l: Int, mlp: Bool = false, xn: UnsafePointer<Float>, dxn: UnsafeMutablePointer<Float>) {
        guard let u = granularity.unit(layer: l, mlp: mlp) else { return }
        gateBackward(unit: u, z: xn, dz: dxn)
    }

    /// Unit u's backward from its input z: dW_u, dτ_u, and z's gradient added to dz (both B·T × the unit's width).
    private func gateBackward(unit u: Int, z: UnsafePointer<Float>, dz: UnsafeMutablePointer<Float>) {
        for b in 0..<batch where lengths[b] < length {
            (dGates[u].floats + (b * length + lengths[b]) * n).update(repeating: 0, count: (length - lengths[b]) * n)
        }
        temperatureGradientValues.floats[u] += MoLEOps.gateBackward(dGates[u].floats, z: z, weight: gateWeights[u].floats,
                                                        temperature: temperatureValues.floats[u], rows: batch * length, experts: n,
                                                        width: widths[u], logits: logits[u].floats, gates: gates[u].floats,
                                                        gradWeight: gateGradients[u].floats, dz: dz, scratch: gateScratch.floats)
    }

    /// λ · (−Σᵢ log qᵢ) over every gate unit's gates of the last forward (real tokens only); with `addingGradient`,
    /// the gate gradients start from this loss's (dGates are reset first).
    func balanceLoss(addingGradient: Bool = false) -> Double {
        let real = realRows
        let rows = Double(inUse.filter { $0 }.count * real.count)
        var q = [Double](repeating: 0, count: n)
        for (u, g) in gates.enumerated() where inUse[u] { for r in real { for i in 0..<n { q[i] += Double(g.floats[r * n + i]) } } }
        for i in 0..<n { q[i] /= rows }
        if addingGradient {
            for (u, dg) in dGates.enumerated() where inUse[u] {
                dg.floats.update(repeating: 0, count: batch * length * n)
                for r in real { for i in 0..<n { dg.floats[r * n + i] = Float(-Double(balanceWeight) / (rows * q[i])) } }
            }
        }
        return Double(balanceWeight) * q.reduce(0) { $0 - Foundation.log($1) }
    }
}
