import Adapters
import Foundation
import Models
import TestSupport
import Testing
import Tokenizers
@testable import Training

extension TrainingSuites {
/// LoRAHub: the separable CMA-ES on a function with a known minimum, the composition's arithmetic, the search
/// picking the expert trained on the few-shot task, and `dlora train lorahub` writing an adapter the engine
/// loads with the composed matrices.
@Suite struct LoRAHubTests {
    /// A separable ellipsoid in 6-D, minimum inside the bounds: found to 1e-3 within 1,500 evaluations,
    /// deterministically for a seed; a minimum outside the bounds ends on the bound.
    @Test func sepCMAESFindsTheMinimum() {
        let target = [0.7, -1.2, 0.1, 1.4, -0.5, 0.0]
        func f(_ x: [Double]) -> Double { x.indices.reduce(0) { $0 + Double($1 + 1) * (x[$1] - target[$1]) * (x[$1] - target[$1]) } }
        func run(seed: UInt64) -> SepCMAES {
            var es = SepCMAES(mean: [Double](repeating: 0, count: 6), sigma: 0.5, bounds: -1.5...1.5, seed: seed)
            while es.evaluations < 1500 { es.step(budget: 1500 - es.evaluations, f) }
            return es
        }
        let es = run(seed: 3)
        #expect(zip(es.best.x, target).allSatisfy { abs($0 - $1) < 1e-3 }, "\(es.best)")
        #expect(run(seed: 3).best.x == es.best.x)
        var edge = SepCMAES(mean: [0, 0], sigma: 0.5, bounds: -1.5...1.5, seed: 1)
        while edge.evaluations < 600 { edge.step { x in (x[0] - 3) * (x[0] - 3) + x[1] * x[1] } }
        #expect(abs(edge.best.x[0] - 1.5) < 1e-6 && abs(edge.best.x[1]) < 1e-2, "\(edge.best)")
    }

    static func colors() throws -> (TrainingData, FrozenBase, String) {
        let path = FixtureFiles.checkpoint(model: "tiny-llama", variant: "F32")
        let checkpoint = try openCheckpoint(path: path)
        let tokenizer = try Tokenizer(metadata: try #require(checkpoint.metadata))
        let words = ["red", "blue", "green", "gold", "gray", "pink", "teal", "navy"]
        let lines = words.enumerated().map { #"{"prompt": "color \#($0.offset):", "completion": " \#($0.element)"}"# }
        let data = try TrainingData(jsonl: Data(lines.joined(separator: "\n").utf8), file: "colors.jsonl", tokenizer: tokenizer, maxLength: 32)
        return (data, try FrozenBase(path: path), path)
    }

    /// compose(w) is A = Σ wᵢAᵢ, B = Σ wᵢsᵢBᵢ per module (zeros where an expert lacks the module); the search
    /// over an expert trained on the task and a random one (same rank) puts its weight on the trained one and
    /// gets the few-shot loss far below the base model's (40 evaluations, as LoRAHub: not to the optimum).
    @Test func searchPicksTheExpertTrainedOnTheTask() throws {
        let (data, base, _) = try Self.colors()
        let trainer = LoRATrainer(base: base, data: data, configuration: LoRATrainingConfiguration(
            targets: [.q, .v], rank: 4, alpha: 8, steps: 60, batchSize: 8, maxLength: 32, seed: 1,
            optimizer: AdamWConfiguration(learningRate: 3e-2)))
        trainer.run()
        let random = LoRAParameters(config: base.config, rank: 4, alpha: 4, targets: [.q, .k], seed: 9, bScale: 0.3)
        let hub = try LoRAHub(base: base, experts: [trainer.lora, random])
        hub.compose([0.5, -2])
        let q = try #require(hub.composed.module(layer: 1, target: .q)), v = try #require(hub.composed.module(layer: 1, target: .v))
        let k = try #require(hub.composed.module(layer: 1, target: .k))
        let tq = try #require(trainer.lora.module(layer: 1, target: .q)), rq = try #require(random.module(layer: 1, target: .q))
        let tv = try #require(trainer.lora.module(layer: 1, target: .v)), rk = try #require(random.module(layer: 1, target: .k))
        for i in [0, 7, q.aCount - 1] { #expect(abs(q.a.floats[i] - (0.5 * tq.a.floats[i] - 2 * rq.a.floats[i])) < 1e-6) }
        for i in [0, 5, q.bCount - 1] { #expect(abs(q.b.floats[i] - (0.5 * 2 * tq.b.floats[i] - 2 * 1 * rq.b.floats[i])) < 1e-6) }
        for i in [0, v.bCount - 1] { #expect(abs(v.b.floats[i] - 0.5 * 2 * tv.b.floats[i]) < 1e-6) }
        for i in [0, k.aCount - 1] { #expect(abs(k.a.floats[i] - (-2) * rk.a.floats[i]) < 1e-6) }
        #expect(hub.composed.scale == 1)

        let batch = TrainingData.batch(Array(data.examples.prefix(5)))
        let baseLoss = hub.objective([0, 0], batch: batch).loss
        let trainedLoss = hub.objective([1, 0], batch: batch).loss
        #expect(trainedLoss < 0.2 * baseLoss, "trained expert \(trainedLoss) vs base \(baseLoss)")
        let result = hub.search(batch: batch, evaluations: 40, seed: 2)
        // With one expert dominant, ΔW ≈ w²·s·B·A: the sign of its weight does not matter.
        #expect(abs(result.weights[0]) > 0.5 && abs(result.weights[1]) < 0.5, "\(result.weights)")
        #expect(result.loss < 0.1 * baseLoss, "search \(result.loss) vs the base model's \(baseLoss)")
        #expect(abs(hub.objective(result.weights, batch: batch).total - result.objective) < 1e-9)

        let other = LoRAParameters(config: base.config, rank: 2, alpha: 4, targets: [.q], seed: 3)
        #expect(throws: LoRAHub.Failure.self) { try LoRAHub(base: base, experts: [trainer.lora, other]) }
    }

    /// `dlora train lorahub` on two adapters written as PEFT directories: lorahub.json records the weights, and
    /// the written adapter loads in the engine with A = Σ wᵢAᵢ, scaling 1; mixed ranks are refused in one line.
    @Test func trainLoRAHubCommand() async throws {
        let exe = try #require(BuiltExecutables.dlora, "build the dlora executable first (swift build --build-tests)")
        let (data, base, model) = try Self.colors()
        let dir = try TemporaryDirectory()
        let trainer = LoRATrainer(base: base, data: data, configuration: LoRATrainingConfiguration(
            targets: [.q, .v], rank: 4, alpha: 8, steps: 40, batchSize: 8, maxLength: 32, seed: 1,
            optimizer: AdamWConfiguration(learningRate: 3e-2)))
        trainer.run()
        try PEFTAdapterWriter.write(trainer.lora, to: dir.path("experts/colors"), baseModelName: model)
        try PEFTAdapterWriter.write(LoRAParameters(config: base.config, rank: 4, alpha: 4, targets: [.q, .v], seed: 5, bScale: 0.2),
                                    to: dir.path("experts/noise"), baseModelName: model)
        try PEFTAdapterWriter.write(LoRAParameters(config: base.config, rank: 2, alpha: 4, targets: [.q], seed: 6, bScale: 0.2),
                                    to: dir.path("experts/small"), baseModelName: model)
        let few = (0..<4).map { #"{"prompt": "color \#($0):", "completion": " \#(["red", "blue", "green", "gold"][$0])"}"# }
        try Data(few.joined(separator: "\n").utf8).write(to: dir.file("few.jsonl"))
        func run(_ args: [String]) async throws -> CommandRun { try await runCommand(exe, args) }
        let common = ["train", "lorahub", "--model", model, "--adapter-root", dir.path("experts"), "--data", dir.path("few.jsonl")]
        let ok = try await run(common + ["--experts", "colors,noise", "--evaluations", "30", "--out", dir.path("hub")])
        #expect(ok.status == 0, "\(ok.stderr)")
        let summary = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: dir.file("hub/lorahub.json"))) as? [String: Any])
        let experts = try #require(summary["experts"] as? [[String: Any]])
        let w = experts.compactMap { $0["weight"] as? Double }
        #expect(experts.compactMap { $0["name"] as? String } == ["colors", "noise"] && w.count == 2)
        #expect(abs(w[0]) > 0.5, "\(w)")
        #expect((summary["loss"] as? Double ?? .infinity) < (summary["base_loss"] as? Double ?? 0))
        // The adapter as the engine loads it: the composition of the experts as loaded.
        let loaded = try AdapterLoader.load(path: dir.path("hub"), base: base.config)
        let composed = LoRAParameters(weights: loaded, config: base.config)
        let e0 = LoRAParameters(weights: try AdapterLoader.load(path: dir.path("experts/colors"), base: base.config), config: base.config)
        let e1 = LoRAParameters(weights: try AdapterLoader.load(path: dir.path("experts/noise"), base: base.config), config: base.config)
        #expect(abs(composed.scale - 1) < 1e-6)
        for (l, t) in [(0, LoRATarget.q), (1, .v)] {
            let m = try #require(composed.module(layer: l, target: t))
            let a0 = try #require(e0.module(layer: l, target: t)), a1 = try #require(e1.module(layer: l, target: t))
            for i in stride(from: 0, to: m.aCount, by: 7) {
                #expect(abs(m.a.floats[i] - Float(w[0]) * a0.a.floats[i] - Float(w[1]) * a1.a.floats[i]) < 1e-5)
            }
            for i in stride(from: 0, to: m.bCount, by: 5) {
                let expected = Float(w[0]) * e0.scale * a0.b.floats[i] + Float(w[1]) * e1.scale * a1.b.floats[i]
                #expect(abs(m.b.floats[i] - expected) < 1e-5)
            }
        }
        let mixed = try await run(common + ["--experts", "colors,small", "--out", dir.path("hub2")])
        #expect(mixed.status != 0)
        let lines = mixed.stderr.split(separator: "\n")
        #expect(lines.count == 1 && lines[0].contains("must share one rank"), "\(mixed.stderr)")
    }
}
}
