import Foundation
import Kernels
import Models
import Testing
import TestSupport

@testable import Training

/// The whole block and the whole model against central differences of the f64 reference model, on the
/// tiny fixtures: tiny-llama (GQA 4/2, tied embeddings) as a Hugging Face directory (rotate-half RoPE) and
/// as a llama.cpp GGUF (Q/K rows permuted, adjacent-pair RoPE), tiny-qwen2 (GQA 4/1, Q/K/V biases, untied), tiny-llama-bias
/// (Q/K/V and O biases).
extension TrainingSuites {
@Suite struct ModelGradientTests {
    static let fixtures: [(String, String)] = [("tiny-llama", "hf"), ("tiny-llama", "F32"), ("tiny-qwen2", "hf"), ("tiny-llama-bias", "hf")]

    static func base(_ model: String, _ variant: String) throws -> FrozenBase {
        try FrozenBase(path: FixtureFiles.checkpoint(model: model, variant: variant))
    }

    /// Block 0 with LoRA on all seven projections: dL/dx and dL/dA, dL/dB for L = Σ block(x)·g.
    @Test(arguments: fixtures) func block(model: String, variant: String) throws {
        let base = try Self.base(model, variant)
        let c = base.config, h = c.hiddenSize
        let lora = LoRAParameters(config: c, rank: 4, alpha: 8, targets: LoRATarget.allCases, seed: 11, bScale: 0.3)
        let m = LoRATrainingModel(base: base, lora: lora)
        let batch = 2, length = 5, n = batch * length
        var rng = SplitMix64(seed: 12)
        let x = randomValues(n * h, &rng, scale: 1)
        let g = randomValues(n * h, &rng).f64

        m.ws.reserve(batch: batch, length: length, targets: lora.targets)
        m.ws.blocks[0].x.floats.update(from: x, count: n * h)
        m.ropeTables(batch: batch, length: length)
        let out = Buffer(floats: n * h)
        m.blockForward(0, batch: batch, length: length, out: out.floats)
        lora.zeroGradients()
        for i in 0..<(n * h) { m.ws.dx.floats[i] = Float(g[i]) }
        m.blockBackward(0, batch: batch, length: length)
        let dx = Array(UnsafeBufferPointer(start: m.ws.dx.floats, count: n * h))

        let refModel = ReferenceTraining.Model(base)
        let adapter = ReferenceTraining.Adapter(lora)
        let refOut = ReferenceTraining.block(x.f64, layer: 0, model: refModel, adapter: adapter, batch: batch, length: length)
        #expect(maxAbsDiff(Array(UnsafeBufferPointer(start: out.floats, count: n * h)), refOut.f32) < 1e-4)

        let xs = sampleIndices(n * h, count: 40, &rng)
        let numericX = numericGradient(x.f64, indices: xs) {
            project(ReferenceTraining.block($0, layer: 0, model: refModel, adapter: adapter, batch: batch, length: length), g)
        }
        expectGradient(xs.map { dx[$0] }, numericX, "\(model)/\(variant) block dx")
        for t in LoRATarget.allCases {
            let module = try #require(lora.module(layer: 0, target: t))
            for which in ["A", "B"] {
                let values = (which == "A" ? module.aValues : module.bValues).f64
                let analytic = which == "A" ? module.gradAValues : module.gradBValues
                let idx = sampleIndices(values.count, count: 12, &rng)
                let numeric = numericGradient(values, indices: idx) { v in
                    var a = adapter
                    if which == "A" { a.modules[0][t]!.a = v } else { a.modules[0][t]!.b = v }
                    return project(ReferenceTraining.block(x.f64, layer: 0, model: refModel, adapter: a, batch: batch, length: length), g)
                }
                expectGradient(idx.map { analytic[$0] }, numeric, "\(model)/\(variant) block d\(which) \(t)")
            }
        }
    }

    /// The mean cross-entropy of a padded batch (prompt and padding positions unlabelled) through every
    /// layer: loss against the reference, and dL/dA, dL/dB of every module against central differences.
    @Test(arguments: fixtures) func wholeModel(model: String, variant: String) throws {
        let base = try Self.base(model, variant)
        let c = base.config
        let lora = LoRAParameters(config: c, rank: 2, alpha: 4, targets: [.q, .k, .v, .o, .down], seed: 21, bScale: 0.3)
        let m = LoRATrainingModel(base: base, lora: lora)
        var rng = SplitMix64(seed: 22)
        let examples = [TrainingExample(tokens: (0..<6).map { _ in rng.int(0..<c.vocabSize) }, completionStart: 2),
                        TrainingExample(tokens: (0..<4).map { _ in rng.int(0..<c.vocabSize) }, completionStart: 1)]
        let batch = TrainingData.batch(examples)
        #expect(batch.labeledCount == 4 + 3)
        lora.zeroGradients()
        let loss = m.lossAndGradients(batch)
        #expect(abs(m.loss(batch) - loss) < 1e-6)

        let refModel = ReferenceTraining.Model(base)
        let adapter = ReferenceTraining.Adapter(lora)
        let refLoss = ReferenceTraining.loss(model: refModel, adapter: adapter, batch: batch)
        #expect(abs(loss - refLoss) < 1e-4 * max(1, abs(refLoss)), "loss \(loss) vs reference \(refLoss)")

        for (li, layer) in lora.modules.enumerated() {
            for module in layer.compactMap({ $0 }) {
                for which in ["A", "B"] {
                    let values = (which == "A" ? module.aValues : module.bValues).f64
                    let analytic = which == "A" ? module.gradAValues : module.gradBValues
                    let idx = sampleIndices(values.count, count: 4, &rng)
                    let numeric = numericGradient(values, indices: idx) { v in
                        var a = adapter
                        if which == "A" { a.modules[li][module.target]!.a = v } else { a.modules[li][module.target]!.b = v }
                        return ReferenceTraining.loss(model: refModel, adapter: a, batch: batch)
                    }
                    expectGradient(idx.map { analytic[$0] }, numeric, rtol: 2e-3, "\(model)/\(variant) layer \(li) d\(which) \(module.target)")
                }
            }
        }
    }

    /// MoLE through the whole model: three frozen experts (different targets) mixed by per-block gates with a
    /// temperature (per token, from each token's normalised block input), a padded batch (padding rows carry no
    /// gradient and stay out of the balance loss) and the balance loss: loss against the f64 reference, and dL/dW, dL/dτ of every block's gate against central differences.
    @Test(arguments: [("hf", MoLEGranularity.block), ("F32", .block), ("hf", .layer), ("F32", .network), ("hf", .matrix)])
    func moleGates(variant: String, granularity: MoLEGranularity) throws {
        let model = "tiny-llama"
        let base = try Self.base(model, variant)
        let c = base.config
        let experts = [[LoRATarget.q, .v], [.o, .down], [.q, .k, .gate, .up]].enumerated().map { i, targets in
            LoRAParameters(config: c, rank: 2 + i, alpha: 4, targets: targets, seed: 40 + UInt64(i), bScale: 0.4)
        }
        let mole = MoLEMixture(config: c, experts: experts, granularity: granularity, balanceWeight: 0.5, temperature: 0.7,
                               gateScale: 1.5, seed: 44)
        let none = LoRAParameters(config: c, rank: 1, alpha: 1, targets: [], seed: 0)
        let m = LoRATrainingModel(base: base, lora: none, mole: mole)
        var rng = SplitMix64(seed: 45)
        let batch = TrainingData.batch([TrainingExample(tokens: (0..<6).map { _ in rng.int(0..<c.vocabSize) }, completionStart: 2),
                                        TrainingExample(tokens: (0..<4).map { _ in rng.int(0..<c.vocabSize) }, completionStart: 1)])
        #expect(batch.lengths == [6, 4])
        mole.zeroGradients()
        let loss = m.lossAndGradients(batch)
        let gates = mole.gateValues(layer: 0)
        #expect(gates.max()! < 0.9, "gates \(gates): one expert takes everything, the check would be weak")

        let refModel = ReferenceTraining.Model(base)
        let adapter = ReferenceTraining.Adapter(none)
        let ref = ReferenceTraining.MoLE(mole)
        let refLoss = ReferenceTraining.loss(model: refModel, adapter: adapter, batch: batch, mole: ref)
        #expect(abs(loss - refLoss) < 1e-4 * max(1, abs(refLoss)), "loss \(loss) vs reference \(refLoss)")
        #expect(abs(m.loss(batch) - loss) < 1e-6)

        #expect(mole.units == granularity.units(layers: c.numLayers))
        for l in 0..<mole.units {
            let w = ref.weights[l]
            let idx = sampleIndices(w.count, count: granularity == .matrix ? 6 : 16, &rng)
            let numeric = numericGradient(w, indices: idx) { v in
                var r = ref
                r.weights[l] = v
                return ReferenceTraining.loss(model: refModel, adapter: adapter, batch: batch, mole: r)
            }
            let analytic = Array(UnsafeBufferPointer(start: mole.gateGradients[l].floats, count: w.count))
            expectGradient(idx.map { analytic[$0] }, numeric, rtol: 2e-3, "\(model)/\(variant) \(granularity) MoLE dW unit \(l)")
            let numericTau = numericGradient([ref.temperatures[l]]) { v in
                var r = ref
                r.temperatures[l] = v[0]
                return ReferenceTraining.loss(model: refModel, adapter: adapter, batch: batch, mole: r)
            }
            expectGradient([mole.temperatureGradients[l]], numericTau, rtol: 2e-3, "\(model)/\(variant) \(granularity) MoLE dτ unit \(l)")
        }
    }
}
}
