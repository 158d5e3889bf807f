import Foundation
import Kernels
import Models

/// The trainable LoRA matrices of one adapter, with their gradients: for every layer and target,
/// A (r × in) and B (out × r), in the base checkpoint's Q/K row layout. ΔW = scale · B·A, scale = alpha / r.
public final class LoRAParameters: @unchecked Sendable {
    public let config: ModelConfig
    public let rank: Int
    public let alpha: Double
    public let targets: [LoRATarget]
    public var scale: Float { Float(alpha / Double(rank)) }

    public final class Module: @unchecked Sendable {
        public let target: LoRATarget
        public let outFeatures: Int, inFeatures: Int, rank: Int
        public let a: Buffer, b: Buffer, gradA: Buffer, gradB: Buffer
        init(target: LoRATarget, out: Int, in: Int, rank: Int) {
            self.target = target
            outFeatures = out
            inFeatures = `in`
            self.rank = rank
            a = Buffer(floats: rank * `in`)
            b = Buffer(floats: out * rank)
            gradA = Buffer(floats: rank * `in`)
            gradB = Buffer(floats: out * rank)
        }
        public var aCount: Int { rank * inFeatures }
        public var bCount: Int { outFeatures * rank }
        public var aValues: [Float] { Array(UnsafeBufferPointer(start: a.floats, count: aCount)) }
        public var bValues: [Float] { Array(UnsafeBufferPointer(start: b.floats, count: bCount)) }
        public var gradAValues: [Float] { Array(UnsafeBufferPointer(start: gradA.floats, count: aCount)) }
        public var gradBValues: [Float] { Array(UnsafeBufferPointer(start: gradB.floats, count: bCount)) }
    }

    /// modules[layer][target.rawValue]
    public let modules: [[Module?]]

    /// PEFT's initialisation (`init_lora_weights=True`): A kaiming-uniform with a = √5, i.e. uniform in
    /// ±1/√in, and B zero, so training starts from the base model's outputs. `bScale` > 0 draws B uniform
    /// in ±bScale instead (tests: a zero B makes every gradient of A zero).
    public init(config: ModelConfig, rank: Int, alpha: Double, targets: [LoRATarget], seed: UInt64, bScale: Float = 0) {
        precondition(rank > 0)
        self.config = config
        self.rank = rank
        self.alpha = alpha
        self.targets = LoRATarget.allCases.filter(targets.contains)
        var rng = SeededGenerator(seed: seed)
        modules = (0..<config.numLayers).map { _ in
            LoRATarget.allCases.map { t -> Module? in
                guard targets.contains(t) else { return nil }
                let (out, inF) = t.shape(config)
                let m = Module(target: t, out: out, in: inF, rank: rank)
                let bound = 1 / Float(inF).squareRoot()
                for i in 0..<m.aCount { m.a.floats[i] = rng.symmetric() * bound }
                if bScale > 0 { for i in 0..<m.bCount { m.b.floats[i] = rng.symmetric() * bScale } }
                return m
            }
        }
    }

    /// An adapter as the engine loaded it (`AdapterLoader`: a PEFT directory or a GGUF LoRA, Q/K rows already
    /// in the base's layout): A and B widened to f32 with the loader's rank padding dropped, and alpha set so
    /// that alpha / r is the adapter's scaling (rsLoRA included). For MoLE experts, or to continue training.
    public convenience init(weights w: LoRAWeights, config: ModelConfig) {
        let all = w.modules.joined().compactMap { $0 }
        let rank = all.first?.rank ?? 1
        precondition(all.allSatisfy { $0.rank == rank }, "mixed ranks")
        precondition(w.modules.count == config.numLayers)
        let targets = LoRATarget.allCases.filter { t in w.modules.contains { $0[t.rawValue] != nil } }
        self.init(config: config, rank: rank, alpha: Double(w.scale) * Double(rank),
                  modules: w.modules.map { layer in
                      LoRATarget.allCases.map { t -> Module? in
                          guard let lm = layer[t.rawValue] else { return nil }
                          let m = Module(target: t, out: lm.outFeatures, in: lm.inFeatures, rank: rank)
                          let f = lm.unpaddedFactors
                          m.a.floats.update(from: f.a, count: rank * lm.inFeatures)
                          m.b.floats.update(from: f.b, count: lm.outFeatures * rank)
                          return m
                      }
                  }, targets: targets)
    }

    private init(config: ModelConfig, rank: Int, alpha: Double, modules: [[Module?]], targets: [LoRATarget]) {
        self.config = config
        self.rank = rank
        self.alpha = alpha
        self.targets = targets
        self.modules = modules
    }

    public func module(layer: Int, target: LoRATarget) -> Module? { modules[layer][target.rawValue] }

    /// Every module in a fixed order (layer, then target).
    public var all: [Module] { modules.joined().compactMap { $0 } }

    public var parameterCount: Int { all.reduce(0) { $0 + $1.aCount + $1.bCount } }

    public func zeroGradients() {
        for m in all {
            m.gradA.floats.update(repeating: 0, count: m.aCount)
            m.gradB.floats.update(repeating: 0, count: m.bCount)
        }
    }

    /// The adapter in the engine's compute form (same layout as the base: no permutation), for inference
    /// with the weights as they are in memory.
    public func engineWeights(name: String) -> LoRAWeights {
        let mods = modules.map { layer in
            layer.map { m -> LoRAModule? in
                guard let m else { return nil }
                return LoRAModule(rank: m.rank, inFeatures: m.inFeatures, outFeatures: m.outFeatures, a: m.a.floats, b: m.b.floats)
            }
        }
        return LoRAWeights(name: name, scale: scale, modules: mods)
    }
}
