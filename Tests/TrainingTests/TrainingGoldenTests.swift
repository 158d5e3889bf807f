import Adapters
import Foundation
import Kernels
import Models
import Testing
import TestSupport

@testable import Training

/// Against torch + PEFT (tools/gen_training_goldens.py, committed in Tests/Fixtures/training/): the loss and
/// every LoRA gradient of one padded batch on tiny-llama, K AdamW steps, and an adapter written by
/// `dlora train lora` as PEFT itself loads it.
extension TrainingSuites {
@Suite struct TrainingGoldenTests {
    struct Goldens: Decodable {
        struct Module: Decodable {
            var layer: Int
            var target: String
            var a, b, gradA, gradB, finalA, finalB: [Float]
        }
        struct AdamWSettings: Decodable { var lr: Float; var weightDecay: Float; var steps: Int }
        var rank: Int
        var alpha: Double
        var tokens: [[Int]]
        var completionStarts: [Int]
        var loss: Double
        var modules: [Module]
        var adamw: AdamWSettings
        var lossesBeforeStep: [Double]
        var finalLoss: Double
    }

    static let root = FixtureFiles.root.appendingPathComponent("training")

    static func largest(_ v: [Float]) -> Float { v.reduce(0) { max($0, abs($1)) } }

    /// Tolerances: both sides compute in f32 with different summation orders (BLAS blocking, torch's
    /// kernels). Measured: loss 2e-8 relative, gradients 4e-6 of each matrix's largest, parameters after 5
    /// AdamW steps 2e-6 absolute. Allowed: 1e-5 of the loss, 1e-4 of each matrix's largest gradient, 1e-4
    /// for the parameters, 1e-4 relative for the losses along the way — room for rounding and nothing else
    /// (a wrong or missing term is an O(1) relative error).
    @Test func lossGradientsAndAdamWMatchTorch() throws {
        let g = try FixtureFiles.decodeGolden(Goldens.self, at: Self.root.appendingPathComponent("goldens.json"))
        let base = try FrozenBase(path: FixtureFiles.checkpoint(model: "tiny-llama", variant: "hf"))
        let lora = LoRAParameters(config: base.config, rank: g.rank, alpha: g.alpha, targets: LoRATarget.allCases, seed: 0)
        #expect(lora.all.count == g.modules.count)
        for (m, gm) in zip(lora.all, g.modules) {
            #expect(m.target.peftName == gm.target)
            m.a.floats.update(from: gm.a, count: m.aCount)
            m.b.floats.update(from: gm.b, count: m.bCount)
        }
        let batch = TrainingData.batch(zip(g.tokens, g.completionStarts).map { TrainingExample(tokens: $0, completionStart: $1) })
        let model = LoRATrainingModel(base: base, lora: lora)
        lora.zeroGradients()
        let loss = model.lossAndGradients(batch)
        #expect(abs(loss - g.loss) <= 1e-5 * g.loss, "loss \(loss) vs torch \(g.loss)")
        for (m, gm) in zip(lora.all, g.modules) {
            #expect(maxAbsDiff(m.gradAValues, gm.gradA) <= 1e-4 * Self.largest(gm.gradA), "dA layer \(gm.layer) \(gm.target)")
            #expect(maxAbsDiff(m.gradBValues, gm.gradB) <= 1e-4 * Self.largest(gm.gradB), "dB layer \(gm.layer) \(gm.target)")
        }

        // K AdamW steps from the same start (torch.optim.AdamW defaults: betas 0.9/0.999, eps 1e-8).
        for (m, gm) in zip(lora.all, g.modules) {
            m.a.floats.update(from: gm.a, count: m.aCount)
            m.b.floats.update(from: gm.b, count: m.bCount)
        }
        let opt = AdamW(configuration: AdamWConfiguration(learningRate: g.adamw.lr, weightDecay: g.adamw.weightDecay), lora: lora)
        for (step, expected) in g.lossesBeforeStep.enumerated() {
            lora.zeroGradients()
            let l = model.lossAndGradients(batch)
            #expect(abs(l - expected) <= 1e-4 * expected, "step \(step + 1): loss \(l) vs torch \(expected)")
            opt.update()
        }
        let final = model.loss(batch)
        #expect(abs(final - g.finalLoss) <= 1e-4 * max(g.finalLoss, 1), "final loss \(final) vs torch \(g.finalLoss)")
        var worst: Float = 0
        for (m, gm) in zip(lora.all, g.modules) {
            worst = max(worst, maxAbsDiff(m.aValues, gm.finalA), maxAbsDiff(m.bValues, gm.finalB))
        }
        #expect(worst <= 1e-4, "final parameters differ from torch's by up to \(worst) (lr \(g.adamw.lr), \(g.adamw.steps) steps)")
    }

    struct PEFTLogits: Decodable {
        var prompts: [[Int]]
        var logits: [[[Float]]]
        var maxAbsDiffFromBase: Float
    }

    /// The adapter `dlora train lora` wrote (committed) gives, in our engine on the GGUF base it was trained
    /// on and on the Hugging Face base, the logits PEFT computes with it. Measured max |Δ| 3e-5 on logits of
    /// magnitude ~10–30 (f32 rounding); allowed 2e-4.
    @Test(arguments: ["F32", "hf"]) func adapterFromTrainLoRAReproducesPEFT(variant: String) throws {
        let dir = Self.root.appendingPathComponent("peft-roundtrip")
        let peft = try FixtureFiles.decodeGolden(PEFTLogits.self, at: dir.appendingPathComponent("peft_logits.json"))
        #expect(peft.maxAbsDiffFromBase > 1, "the adapter must change PEFT's logits for the check to mean anything")
        let model = try LlamaModel(checkpoint: openCheckpoint(path: FixtureFiles.checkpoint(model: "tiny-llama", variant: variant)))
        let adapter = try AdapterLoader.load(path: dir.appendingPathComponent("adapter").path, base: model.config)
        for (prompt, expected) in zip(peft.prompts, peft.logits) {
            let ours = PEFTExportTests.engineLogits(model, prompt, adapter: adapter)
            #expect(maxAbsDiff(ours, expected) < 2e-4, "\(variant) prompt \(prompt): max |Δ| \(maxAbsDiff(ours, expected))")
        }
    }
}
}
