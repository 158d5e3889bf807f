import Foundation
import Models

/// Plain f64 twins of the training ops and of the whole LoRA model's loss (STYLE.md: every fast kernel
/// has a reference twin). No BLAS, no workspaces, no in-place tricks: loops over `[Double]`, written from
/// the formulas. The gradient checks differentiate these numerically (central differences in f64) and
/// compare with the f32 backward passes.
public enum ReferenceTraining {
    /// y[t] = x[t] / √(mean(x[t]²) + eps) · w.
    public static func rmsNorm(_ x: [Double], weight: [Double], eps: Double, rows: Int, width: Int) -> [Double] {
        var y = [Double](repeating: 0, count: rows * width)
        for t in 0..<rows {
            var ss = 0.0
            for i in 0..<width { ss += x[t * width + i] * x[t * width + i] }
            let r = 1 / (ss / Double(width) + eps).squareRoot()
            for i in 0..<width { y[t * width + i] = x[t * width + i] * r * weight[i] }
        }
        return y
    }

    /// Rotates `heads` heads of each row (row stride `ld`) by angles position · invFreq[i] (the angle rounded
    /// to f32 as the engine's tables compute it); pairs (i, i + D/2) when `halves`, else (2i, 2i + 1).
    public static func rope(_ x: [Double], rows: Int, ld: Int, offset: Int = 0, heads: Int, headDim: Int, positions: [Int],
                            inverseFrequencies: [Float], halves: Bool) -> [Double] {
        var y = x
        let half = headDim / 2
        for t in 0..<rows {
            for h in 0..<heads {
                for i in 0..<half {
                    let angle = Double(Float(positions[t]) * inverseFrequencies[i])
                    let (c, s) = (Foundation.cos(angle), Foundation.sin(angle))
                    let a = t * ld + offset + h * headDim + (halves ? i : 2 * i)
                    let b = t * ld + offset + h * headDim + (halves ? i + half : 2 * i + 1)
                    y[a] = x[a] * c - x[b] * s
                    y[b] = x[b] * c + x[a] * s
                }
            }
        }
        return y
    }

    /// act = silu(g) · u from rows [g | u] of 2F.
    public static func swiglu(_ gateUp: [Double], tokens: Int, width f: Int) -> [Double] {
        var y = [Double](repeating: 0, count: tokens * f)
        for t in 0..<tokens {
            for i in 0..<f {
                let g = gateUp[t * 2 * f + i], u = gateUp[t * 2 * f + f + i]
                y[t * f + i] = g / (1 + Foundation.exp(-g)) * u
            }
        }
        return y
    }

    /// Causal GQA attention over `batch` sequences of `length` rows; q (rows × nH·D), k and v (rows × nKV·D).
    public static func attention(q: [Double], k: [Double], v: [Double], batch: Int, length: Int, heads: Int, kvHeads: Int,
                                 headDim d: Int) -> [Double] {
        let qDim = heads * d, kvDim = kvHeads * d, group = heads / kvHeads
        let scale = 1 / Double(d).squareRoot()
        var out = [Double](repeating: 0, count: batch * length * qDim)
        for b in 0..<batch {
            for h in 0..<heads {
                let kvh = h / group
                for i in 0..<length {
                    let qi = (b * length + i) * qDim + h * d
                    var scores = [Double](repeating: 0, count: i + 1)
                    for j in 0...i {
                        let kj = (b * length + j) * kvDim + kvh * d
                        var dot = 0.0
                        for e in 0..<d { dot += q[qi + e] * k[kj + e] }
                        scores[j] = dot * scale
                    }
                    let mx = scores.max()!
                    let exps = scores.map { Foundation.exp($0 - mx) }
                    let sum = exps.reduce(0, +)
                    for j in 0...i {
                        let vj = (b * length + j) * kvDim + kvh * d
                        for e in 0..<d { out[qi + e] += exps[j] / sum * v[vj + e] }
                    }
                }
            }
        }
        return out
    }

    /// Mean over rows with a label ≥ 0 of −log softmax(logits[r])[label].
    public static func crossEntropy(_ logits: [Double], labels: [Int], vocab: Int) -> Double {
        var total = 0.0, count = 0
        for (r, label) in labels.enumerated() where label >= 0 {
            let z = logits[(r * vocab)..<((r + 1) * vocab)]
            let mx = z.max()!
            let lse = mx + Foundation.log(z.reduce(0.0) { $0 + Foundation.exp($1 - mx) })
            total += lse - z[r * vocab + label]
            count += 1
        }
        return count == 0 ? 0 : total / Double(count)
    }

    /// y = x·Wᵀ with W (out × in).
    public static func linear(_ x: [Double], weight: [Double], out: Int, in n: Int, tokens: Int) -> [Double] {
        var y = [Double](repeating: 0, count: tokens * out)
        for t in 0..<tokens {
            for o in 0..<out {
                var acc = 0.0
                for i in 0..<n { acc += x[t * n + i] * weight[o * n + i] }
                y[t * out + o] = acc
            }
        }
        return y
    }

    /// scale · B·(A·x) per row: A (r × in), B (out × r).
    public static func lora(_ x: [Double], a: [Double], b: [Double], rank: Int, out: Int, in n: Int, scale: Double, tokens: Int) -> [Double] {
        let u = linear(x, weight: a, out: rank, in: n, tokens: tokens)
        return linear(u, weight: b, out: out, in: rank, tokens: tokens).map { $0 * scale }
    }

    // MARK: The whole model

    /// The base's weights in f64 (copied from a `FrozenBase`).
    public struct Model: Sendable {
        public struct Layer: Sendable {
            public var attnNorm, ffnNorm, q, k, v, o, gate, up, down: [Double]
            public var qkvBias: [Double]?
            public var oBias: [Double]?
        }
        public var config: ModelConfig
        public var layers: [Layer]
        public var embedding, output, outputNorm: [Double]
        public var inverseFrequencies: [Float]

        public init(_ base: FrozenBase) {
            let c = base.config
            config = c
            func values(_ p: UnsafeMutablePointer<Float>, _ n: Int) -> [Double] { (0..<n).map { Double(p[$0]) } }
            let h = c.hiddenSize, f = c.intermediateSize
            let qDim = c.numHeads * c.headDim, kvDim = c.numKVHeads * c.headDim
            layers = base.layers.map { w in
                Layer(attnNorm: values(w.attnNorm.floats, h), ffnNorm: values(w.ffnNorm.floats, h),
                      q: values(w.qkv.floats, qDim * h), k: values(w.qkv.floats + qDim * h, kvDim * h),
                      v: values(w.qkv.floats + (qDim + kvDim) * h, kvDim * h), o: values(w.o.floats, h * qDim),
                      gate: values(w.gateUp.floats, f * h), up: values(w.gateUp.floats + f * h, f * h), down: values(w.down.floats, h * f),
                      qkvBias: w.qkvBias.map { values($0.floats, qDim + 2 * kvDim) }, oBias: w.oBias.map { values($0.floats, h) })
            }
            embedding = values(base.embedding.floats, c.vocabSize * h)
            output = values(base.output.floats, c.vocabSize * h)
            outputNorm = values(base.outputNorm.floats, h)
            inverseFrequencies = base.inverseFrequencies
        }
    }

    /// An adapter in f64: per layer, target → (A r × in, B out × r).
    public struct Adapter: Sendable {
        public var rank: Int
        public var scale: Double
        public var modules: [[LoRATarget: (a: [Double], b: [Double])]]

        public init(_ p: LoRAParameters) {
            rank = p.rank
            scale = Double(p.scale)
            modules = p.modules.map { layer in
                var d: [LoRATarget: (a: [Double], b: [Double])] = [:]
                for m in layer.compactMap({ $0 }) { d[m.target] = (m.aValues.map(Double.init), m.bValues.map(Double.init)) }
                return d
            }
        }
    }

    /// MoLE in f64: frozen experts, per gate unit weights (N × the unit's input width; none for a unit not in use)
    /// and temperatures, the balance coefficient.
    public struct MoLE: Sendable {
        public var experts: [Adapter]
        public var granularity: MoLEGranularity
        /// Per gate unit.
        public var weights: [[Double]]
        public var temperatures: [Double]
        public var balanceWeight: Double

        public init(_ m: MoLEMixture) {
            experts = m.experts.map(Adapter.init)
            granularity = m.granularity
            weights = m.gateWeights.enumerated().map { u, b in
                (0..<(m.inUse[u] ? m.experts.count * m.widths[u] : 0)).map { Double(b.floats[$0]) }
            }
            temperatures = m.temperatures.map(Double.init)
            balanceWeight = Double(m.balanceWeight)
        }
    }

    /// A block's MoLE gates for one forward: the experts and gate rows (N values each, one per token), those from
    /// the attention input and (layer granularity) those from the MLP input.
    struct Mixture {
        var mole: MoLE
        var gates: [Double]
        var mlpGates: [Double]?
        func rows(for t: LoRATarget) -> [Double] { mole.granularity.usesMLPGates(t) ? mlpGates! : gates }
    }

    /// x·Wᵀ plus the adapter's path for (layer, target), if it has one, plus the gated experts' paths.
    static func project(_ x: [Double], _ w: [Double], _ t: LoRATarget, layer: Int, adapter: Adapter, config c: ModelConfig, tokens: Int,
                        mixture: Mixture? = nil) -> [Double] {
        let (out, n) = t.shape(c)
        var y = linear(x, weight: w, out: out, in: n, tokens: tokens)
        if let m = adapter.modules[layer][t] {
            let delta = lora(x, a: m.a, b: m.b, rank: adapter.rank, out: out, in: n, scale: adapter.scale, tokens: tokens)
            for i in y.indices { y[i] += delta[i] }
        }
        if let mix = mixture {
            let experts = mix.mole.experts.count
            for (e, expert) in mix.mole.experts.enumerated() {
                guard let m = expert.modules[layer][t] else { continue }
                let delta = lora(x, a: m.a, b: m.b, rank: expert.rank, out: out, in: n, scale: expert.scale, tokens: tokens)
                let gates = mix.rows(for: t)
                for row in 0..<tokens {
                    let g = gates[row * experts + e]
                    for o in 0..<out { y[row * out + o] += g * delta[row * out + o] }
                }
            }
        }
        return y
    }

    /// One block: h = x + attention(rmsNorm₁(x)); out = h + mlp(rmsNorm₂(h)).
    public static func block(_ x: [Double], layer l: Int, model: Model, adapter: Adapter, batch: Int, length: Int) -> [Double] {
        blockWithGates(x, layer: l, model: model, adapter: adapter, batch: batch, length: length).out
    }

    /// The block, with MoLE gates when given (per token, from the normalised input where each gate unit sits;
    /// the network's gates, computed in block 0, are passed to the later blocks); returns the real rows of the
    /// gates computed here (for the balance loss) and the gates used at the attention input.
    static func blockWithGates(_ x: [Double], layer l: Int, model: Model, adapter: Adapter, batch: Int, length: Int,
                               mole: MoLE? = nil, lengths: [Int]? = nil, networkGates: [Double]? = nil)
        -> (out: [Double], gates: [Double], attentionGates: [Double]?) {
        let c = model.config, w = model.layers[l], n = batch * length
        let h = c.hiddenSize, f = c.intermediateSize, eps = Double(c.rmsNormEps)
        let qDim = c.numHeads * c.headDim, kvDim = c.numKVHeads * c.headDim
        let positions = (0..<n).map { $0 % length }
        let halves = c.ropeStyle == .halves

        let xn1 = rmsNorm(x, weight: w.attnNorm, eps: eps, rows: n, width: h)
        var mixture: Mixture?
        var realGates: [Double] = []
        let lengths = lengths ?? Array(repeating: length, count: batch)
        /// The gate rows of unit u from its input z, with their real rows added to `realGates` (for the balance loss).
        func gates(unit u: Int, from z: [Double], mole: MoLE) -> [Double] {
            let experts = mole.experts.count
            let g = moleGates(z: z, weight: mole.weights[u], temperature: mole.temperatures[u], rows: n, experts: experts,
                              width: mole.granularity.inputWidth(unit: u, config: c))
            for b in 0..<batch { for t in 0..<lengths[b] { realGates += g[((b * length + t) * experts)..<((b * length + t + 1) * experts)] } }
            return g
        }
        if let mole, mole.granularity != .matrix {
            let attention = mole.granularity.attentionUnit(layer: l).map { gates(unit: $0, from: xn1, mole: mole) } ?? networkGates!
            mixture = Mixture(mole: mole, gates: attention, mlpGates: nil)
        }
        func project(_ x: [Double], _ w: [Double], _ t: LoRATarget) -> [Double] {
            if let mole, mole.granularity == .matrix {
                // m-MoLE: this projection's own gate, from its input (none when no expert adapts it).
                let u = mole.granularity.unit(layer: l, target: t)
                mixture = mole.weights[u].isEmpty ? nil : Mixture(mole: mole, gates: gates(unit: u, from: x, mole: mole), mlpGates: nil)
            }
            return Self.project(x, w, t, layer: l, adapter: adapter, config: c, tokens: n, mixture: mixture)
        }
        var q = project(xn1, w.q, .q)
        var k = project(xn1, w.k, .k)
        var v = project(xn1, w.v, .v)
        if let bias = w.qkvBias {
            for t in 0..<n {
                for i in 0..<qDim { q[t * qDim + i] += bias[i] }
                for i in 0..<kvDim { k[t * kvDim + i] += bias[qDim + i]; v[t * kvDim + i] += bias[qDim + kvDim + i] }
            }
        }
        q = rope(q, rows: n, ld: qDim, heads: c.numHeads, headDim: c.headDim, positions: positions,
                 inverseFrequencies: model.inverseFrequencies, halves: halves)
        k = rope(k, rows: n, ld: kvDim, heads: c.numKVHeads, headDim: c.headDim, positions: positions,
                 inverseFrequencies: model.inverseFrequencies, halves: halves)
        let a = attention(q: q, k: k, v: v, batch: batch, length: length, heads: c.numHeads, kvHeads: c.numKVHeads, headDim: c.headDim)
        var o = project(a, w.o, .o)
        if let bias = w.oBias {
            for t in 0..<n { for i in 0..<h { o[t * h + i] += bias[i] } }
        }
        let hid = zip(x, o).map { $0 + $1 }

        let xn2 = rmsNorm(hid, weight: w.ffnNorm, eps: eps, rows: n, width: h)
        if let mole, let u = mole.granularity.mlpUnit(layer: l) { mixture?.mlpGates = gates(unit: u, from: xn2, mole: mole) }
        let g = project(xn2, w.gate, .gate)
        let u = project(xn2, w.up, .up)
        var gu = [Double](repeating: 0, count: n * 2 * f)
        for t in 0..<n {
            for i in 0..<f { gu[t * 2 * f + i] = g[t * f + i]; gu[t * 2 * f + f + i] = u[t * f + i] }
        }
        let act = swiglu(gu, tokens: n, width: f)
        let d = project(act, w.down, .down)
        return (zip(hid, d).map { $0 + $1 }, realGates, mixture?.gates)
    }

    /// The mean cross-entropy of the batch's labelled positions.
    /// (With MoLE, plus λ · (−Σᵢ log qᵢ) over every block's gates.)
    public static func loss(model: Model, adapter: Adapter, batch: TrainingBatch, mole: MoLE? = nil) -> Double {
        let c = model.config, h = c.hiddenSize, n = batch.batch * batch.length
        var x = [Double](repeating: 0, count: n * h)
        for t in 0..<n {
            let id = Int(batch.tokens[t])
            for i in 0..<h { x[t * h + i] = model.embedding[id * h + i] }
        }
        var allGates: [Double] = []
        var networkGates: [Double]?
        for l in 0..<c.numLayers {
            let r = blockWithGates(x, layer: l, model: model, adapter: adapter, batch: batch.batch, length: batch.length,
                                   mole: mole, lengths: batch.lengths, networkGates: networkGates)
            x = r.out
            allGates += r.gates
            if mole?.granularity == .network && l == 0 { networkGates = r.attentionGates }
        }
        let xn = rmsNorm(x, weight: model.outputNorm, eps: Double(c.rmsNormEps), rows: n, width: h)
        let logits = linear(xn, weight: model.output, out: c.vocabSize, in: h, tokens: n)
        var loss = crossEntropy(logits, labels: batch.labels.map(Int.init), vocab: c.vocabSize)
        if let mole {
            let experts = mole.experts.count
            loss += mole.balanceWeight * moleBalanceLoss(gates: allGates, rows: allGates.count / experts, experts: experts)
        }
        return loss
    }
}
