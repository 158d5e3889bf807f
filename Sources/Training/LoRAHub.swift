import Foundation
import Models

/// Separable CMA-ES (Ros & Hansen, "A simple modification in CMA-ES achieving linear time and space complexity",
/// PPSN 2008): the covariance is kept diagonal, which suits the few (≤ 64) box-bounded weights LoRAHub searches
/// and needs no eigendecomposition. Minimises `f` from `mean` with step `sigma`; candidates are clipped to
/// `bounds`. Deterministic for a seed.
public struct SepCMAES {
    public let dimension: Int
    public let lambda: Int
    public private(set) var mean: [Double]
    public private(set) var sigma: Double
    public private(set) var best: (x: [Double], f: Double)
    public private(set) var evaluations = 0
    let bounds: ClosedRange<Double>
    private var c: [Double], ps: [Double], pc: [Double]
    private let weights: [Double], mueff: Double, cs: Double, ds: Double, cc: Double, c1: Double, cmu: Double, chiN: Double
    private var generation = 0
    private var rng: SeededGenerator

    public init(mean: [Double], sigma: Double, bounds: ClosedRange<Double>, seed: UInt64, lambda: Int? = nil) {
        precondition(!mean.isEmpty && sigma > 0)
        let n = mean.count
        dimension = n
        self.lambda = max(4, lambda ?? 4 + Int(3 * Foundation.log(Double(n))))
        let mu = self.lambda / 2
        var w = (0..<mu).map { Foundation.log(Double(mu) + 0.5) - Foundation.log(Double($0 + 1)) }
        let sum = w.reduce(0, +)
        w = w.map { $0 / sum }
        weights = w
        mueff = 1 / w.reduce(0) { $0 + $1 * $1 }
        let nd = Double(n)
        cs = (mueff + 2) / (nd + mueff + 5)
        ds = 1 + 2 * max(0, ((mueff - 1) / (nd + 1)).squareRoot() - 1) + cs
        cc = 4 / (nd + 4)
        // The separable variant's learning rates: the full ones × (n + 2) / 3 (Ros & Hansen 2008).
        let c1full = 2 / ((nd + 1.3) * (nd + 1.3) + mueff)
        let cmufull = min(1 - c1full, 2 * (mueff - 2 + 1 / mueff) / ((nd + 2) * (nd + 2) + mueff))
        c1 = min(1, c1full * (nd + 2) / 3)
        cmu = min(1 - c1, cmufull * (nd + 2) / 3)
        chiN = nd.squareRoot() * (1 - 1 / (4 * nd) + 1 / (21 * nd * nd))
        self.mean = mean.map { min(max($0, bounds.lowerBound), bounds.upperBound) }
        self.sigma = sigma
        self.bounds = bounds
        c = [Double](repeating: 1, count: n)
        ps = [Double](repeating: 0, count: n)
        pc = [Double](repeating: 0, count: n)
        best = (self.mean, .infinity)
        rng = SeededGenerator(seed: seed)
    }

    /// A standard normal draw (Box–Muller).
    private mutating func normal() -> Double {
        let u1 = max(Double(rng.next() >> 11) * 0x1p-53, 1e-300), u2 = Double(rng.next() >> 11) * 0x1p-53
        return (-2 * Foundation.log(u1)).squareRoot() * Foundation.cos(2 * Double.pi * u2)
    }

    /// One generation: λ candidates evaluated by `f` (at most `budget` evaluations left; a partial generation
    /// only updates `best`). Returns the number of evaluations made.
    @discardableResult
    public mutating func step(budget: Int = .max, _ f: ([Double]) throws -> Double) rethrows -> Int {
        let n = dimension
        var samples: [(x: [Double], y: [Double], f: Double)] = []
        for _ in 0..<min(lambda, max(0, budget)) {
            var x = [Double](repeating: 0, count: n), y = x
            for i in 0..<n {
                let xi = min(max(mean[i] + sigma * c[i].squareRoot() * normal(), bounds.lowerBound), bounds.upperBound)
                x[i] = xi
                y[i] = (xi - mean[i]) / sigma  // the step actually taken (after clipping)
            }
            let fx = try f(x)
            evaluations += 1
            if fx < best.f { best = (x, fx) }
            samples.append((x, y, fx))
        }
        guard samples.count == lambda else { return samples.count }
        samples.sort { $0.f < $1.f }
        generation += 1
        var yw = [Double](repeating: 0, count: n)
        for (k, w) in weights.enumerated() { for i in 0..<n { yw[i] += w * samples[k].y[i] } }
        for i in 0..<n { mean[i] = min(max(mean[i] + sigma * yw[i], bounds.lowerBound), bounds.upperBound) }
        let a = (cs * (2 - cs) * mueff).squareRoot()
        for i in 0..<n { ps[i] = (1 - cs) * ps[i] + a * yw[i] / c[i].squareRoot() }
        let psNorm = ps.reduce(0) { $0 + $1 * $1 }.squareRoot()
        let hs: Double = psNorm / (1 - Foundation.pow(1 - cs, Double(2 * generation))).squareRoot() < (1.4 + 2 / Double(n + 1)) * chiN ? 1 : 0
        let b = (cc * (2 - cc) * mueff).squareRoot()
        for i in 0..<n { pc[i] = (1 - cc) * pc[i] + hs * b * yw[i] }
        for i in 0..<n {
            var rankMu = 0.0
            for (k, w) in weights.enumerated() { rankMu += w * samples[k].y[i] * samples[k].y[i] }
            c[i] = (1 - c1 - cmu) * c[i] + c1 * (pc[i] * pc[i] + (1 - hs) * cc * (2 - cc) * c[i]) + cmu * rankMu
            c[i] = max(c[i], 1e-20)
        }
        sigma *= Foundation.exp((cs / ds) * (psNorm / chiN - 1))
        sigma = min(sigma, bounds.upperBound - bounds.lowerBound)
        return samples.count
    }
}

/// LoRAHub (Huang et al., "LoraHub: Efficient Cross-Task Generalization via Dynamic LoRA Composition", 2023):
/// a gradient-free search of one weight per expert LoRA on a few examples of a new task. The composed adapter
/// is A = Σᵢ wᵢ·Aᵢ, B = Σᵢ wᵢ·sᵢ·Bᵢ (each expert's scaling sᵢ folded into its B, composed scaling 1), module by
/// module (an expert without a module contributes zeros) — LoRAHub's element-wise composition of the LoRA
/// matrices, so the experts must share their rank. The objective is the few-shot loss + `l1` · Σᵢ |wᵢ|, searched
/// by separable CMA-ES in [−1.5, 1.5] from w = 0, as LoRAHub's defaults (its search runs nevergrad's optimiser).
/// The composition is bilinear in w (ΔW = Σᵢⱼ wᵢwⱼ·sᵢ·Bᵢ·Aⱼ): one expert's weight acts as its square, so the
/// search may as well land on −w as on w, and cross terms couple experts that adapt the same module.
public final class LoRAHub {
    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    public let experts: [LoRAParameters]
    /// The composition the last `compose` wrote (the search leaves the best one in it).
    public let composed: LoRAParameters
    public let model: LoRATrainingModel
    public var l1: Double

    public init(base: FrozenBase, experts: [LoRAParameters], l1: Double = 0.05) throws {
        guard experts.count >= 1 else { throw Failure(description: "LoRAHub needs at least one expert") }
        let rank = experts[0].rank
        guard experts.allSatisfy({ $0.rank == rank }) else {
            throw Failure(description: "LoRAHub composes the experts' A and B matrices element by element: they must share one rank (got \(experts.map(\.rank)))")
        }
        let targets = LoRATarget.allCases.filter { t in experts.contains { $0.targets.contains(t) } }
        self.experts = experts
        self.l1 = l1
        composed = LoRAParameters(config: base.config, rank: rank, alpha: Double(rank), targets: targets, seed: 0)
        model = LoRATrainingModel(base: base, lora: composed)
    }

    /// Writes the composition for weights `w` into `composed`.
    public func compose(_ w: [Double]) {
        precondition(w.count == experts.count)
        for (l, layer) in composed.modules.enumerated() {
            for case let m? in layer {
                m.a.floats.update(repeating: 0, count: m.aCount)
                m.b.floats.update(repeating: 0, count: m.bCount)
                for (i, e) in experts.enumerated() {
                    guard let em = e.module(layer: l, target: m.target) else { continue }
                    let wa = Float(w[i]), wb = Float(w[i]) * e.scale
                    for k in 0..<m.aCount { m.a.floats[k] += wa * em.a.floats[k] }
                    for k in 0..<m.bCount { m.b.floats[k] += wb * em.b.floats[k] }
                }
            }
        }
    }

    /// The objective at `w`: the batch's mean loss under the composition, plus the L1 term.
    public func objective(_ w: [Double], batch: TrainingBatch) -> (loss: Double, total: Double) {
        compose(w)
        let loss = model.loss(batch)
        return (loss, loss + l1 * w.reduce(0) { $0 + abs($1) })
    }

    /// Searches with at most `evaluations` objective evaluations; leaves the best weights composed in `composed`.
    public func search(batch: TrainingBatch, evaluations: Int = 40, seed: UInt64 = 0,
                       report: (_ evaluation: Int, _ best: [Double], _ bestObjective: Double) -> Void = { _, _, _ in })
        -> (weights: [Double], loss: Double, objective: Double) {
        var es = SepCMAES(mean: [Double](repeating: 0, count: experts.count), sigma: 0.5, bounds: -1.5...1.5, seed: seed)
        // The loss part of the best objective, kept under the same strict improvement rule as `es.best`.
        var best = (total: Double.infinity, loss: Double.nan)
        while es.evaluations < evaluations {
            es.step(budget: evaluations - es.evaluations) { w in
                let o = objective(w, batch: batch)
                if o.total < best.total { best = (o.total, o.loss) }
                return o.total
            }
            report(es.evaluations, es.best.x, es.best.f)
        }
        compose(es.best.x)
        return (es.best.x, best.loss, es.best.f)
    }
}
