import Foundation
import Kernels
import Models

/// The base model's weights for training: every matrix dequantized once to dense f32 (quantized and
/// half-precision checkpoints included), frozen. Q/K rows keep the checkpoint's layout, and RoPE pairs
/// dimensions the way the engine does for that layout (`ModelConfig.ropeStyle`), so an adapter trained
/// here applies to the engine's model as is.
public final class FrozenBase: @unchecked Sendable {
    public let config: ModelConfig
    public let checkpointPath: String
    /// RoPE inverse frequencies (headDim / 2), scaling applied, as the engine computes them.
    public let inverseFrequencies: [Float]

    /// One decoder block's frozen weights, matrices row-major (out × in).
    public struct Layer: @unchecked Sendable {
        public let attnNorm: Buffer      // (H)
        public let ffnNorm: Buffer       // (H)
        public let qkv: Buffer           // (nH·D + 2·nKV·D, H): Wq, Wk, Wv stacked
        public let qkvBias: Buffer?      // (nH·D + 2·nKV·D) when the model has Q/K/V biases
        public let o: Buffer             // (H, nH·D)
        public let oBias: Buffer?        // (H) when the output projection has a bias (ModelConfig.outputBias)
        public let gateUp: Buffer        // (2F, H): Wgate, Wup stacked
        public let down: Buffer          // (H, F)
    }

    public let layers: [Layer]
    public let embedding: Buffer         // (V, H)
    /// The lm_head: the embedding's own buffer when the model ties them.
    public let output: Buffer            // (V, H)
    public let outputNorm: Buffer        // (H)

    public convenience init(path: String) throws {
        try self.init(checkpoint: openCheckpoint(path: path))
    }

    public init(checkpoint: any ModelCheckpoint) throws {
        let c = checkpoint.config
        config = c
        checkpointPath = checkpoint.path
        inverseFrequencies = LlamaModel.inverseFrequencies(config: c, ggufFactors: try checkpoint.ropeFrequencyFactors())
        func dense(_ tensors: [LlamaTensor], rows: [Int], cols: Int) throws -> Buffer {
            let out = Buffer(floats: rows.reduce(0, +) * cols)
            var at = 0
            for (t, r) in zip(tensors, rows) {
                guard let m = try checkpoint.matrix(t) else {
                    throw CheckpointError(file: checkpoint.path, tensor: t.description, problem: "required tensor is missing")
                }
                guard m.rows == r, m.cols == cols else {
                    throw CheckpointError(file: checkpoint.path, tensor: t.description, problem: "is \(m.rows)x\(m.cols), expected \(r)x\(cols)")
                }
                Kernels.dequantize(m, into: out.floats + at)
                at += r * cols
            }
            return out
        }
        func vector(_ tensors: [LlamaTensor], counts: [Int]) throws -> Buffer {
            let out = Buffer(floats: counts.reduce(0, +))
            var at = 0
            for (t, n) in zip(tensors, counts) {
                guard let v = try checkpoint.vector(t) else {
                    throw CheckpointError(file: checkpoint.path, tensor: t.description, problem: "required tensor is missing")
                }
                guard v.count == n else {
                    throw CheckpointError(file: checkpoint.path, tensor: t.description, problem: "has \(v.count) values, expected \(n)")
                }
                v.withUnsafeBufferPointer { (out.floats + at).update(from: $0.baseAddress!, count: n) }
                at += n
            }
            return out
        }
        let h = c.hiddenSize, f = c.intermediateSize
        let qDim = c.numHeads * c.headDim, kvDim = c.numKVHeads * c.headDim
        layers = try (0..<c.numLayers).map { i in
            Layer(attnNorm: try vector([.attnNorm(i)], counts: [h]),
                  ffnNorm: try vector([.ffnNorm(i)], counts: [h]),
                  qkv: try dense([.q(i), .k(i), .v(i)], rows: [qDim, kvDim, kvDim], cols: h),
                  qkvBias: c.attentionBias ? try vector([.qBias(i), .kBias(i), .vBias(i)], counts: [qDim, kvDim, kvDim]) : nil,
                  o: try dense([.o(i)], rows: [h], cols: qDim),
                  oBias: c.outputBias ? try vector([.oBias(i)], counts: [h]) : nil,
                  gateUp: try dense([.gate(i), .up(i)], rows: [f, f], cols: h),
                  down: try dense([.down(i)], rows: [h], cols: f))
        }
        embedding = try dense([.tokenEmbedding], rows: [c.vocabSize], cols: h)
        // As the engine: a checkpoint's lm_head when it has one, else the tied embedding.
        if try checkpoint.matrix(.output) != nil {
            output = try dense([.output], rows: [c.vocabSize], cols: h)
        } else {
            output = embedding
        }
        outputNorm = try vector([.outputNorm], counts: [h])
    }

    /// A frozen matrix W (out × in) rounded to bf16 and packed twice: as Wᵀ for the forward product (y = x·Wᵀ)
    /// and as W for the input gradient (dx = dy·W).
    public struct BF16Pair: Sendable {
        public let forward: Kernels.PackedBF16
        public let backward: Kernels.PackedBF16

        init(_ w: Buffer, out: Int, in: Int) {
            forward = Kernels.PackedBF16(w.floats, ld: `in`, transposed: true, k: `in`, n: out)
            backward = Kernels.PackedBF16(w.floats, ld: `in`, transposed: false, k: out, n: `in`)
        }

        var byteCount: Int { forward.byteCount + backward.byteCount }
    }

    /// One block's products in bf16.
    public struct LayerBF16: Sendable {
        public let qkv: BF16Pair
        public let o: BF16Pair
        public let gateUp: BF16Pair
        public let down: BF16Pair
    }

    /// The frozen products' bf16 copies once `useBF16Products()` made them (nil: every product in f32).
    public private(set) var bf16Layers: [LayerBF16]?
    public private(set) var bf16Output: BF16Pair?

    /// Runs every frozen product (the projections and the vocabulary product, forward and input gradient)
    /// in bf16 with f32 sums from here on, as torch's bf16 autocast runs a linear layer: the weights are
    /// rounded to bf16 once (two packed copies, 4 bytes per weight), the activations per product. The LoRA
    /// path, attention, norms and the loss stay f32, and so do the gradients and the optimizer. Returns the
    /// bytes the copies take, or nil (nothing changes) where the CPU lacks AVX-512 BF16: there the bf16
    /// products would run on a portable loop far slower than f32 OpenBLAS.
    @discardableResult
    public func useBF16Products() -> Int? {
        guard Kernels.hasBF16Dot else { return nil }
        if bf16Layers == nil {
            let c = config, h = c.hiddenSize, f = c.intermediateSize
            let qDim = c.numHeads * c.headDim, kvDim = c.numKVHeads * c.headDim
            bf16Layers = layers.map { w in
                LayerBF16(qkv: BF16Pair(w.qkv, out: qDim + 2 * kvDim, in: h), o: BF16Pair(w.o, out: h, in: qDim),
                          gateUp: BF16Pair(w.gateUp, out: 2 * f, in: h), down: BF16Pair(w.down, out: h, in: f))
            }
            bf16Output = BF16Pair(output, out: c.vocabSize, in: h)
        }
        return (bf16Layers ?? []).reduce(bf16Output?.byteCount ?? 0) { $0 + $1.qkv.byteCount + $1.o.byteCount + $1.gateUp.byteCount + $1.down.byteCount }
    }

    /// Bytes the f32 weights of a model with `config` take (what `init` allocates).
    public static func bytes(config c: ModelConfig) -> Int {
        let h = c.hiddenSize, f = c.intermediateSize
        let qDim = c.numHeads * c.headDim, kvDim = c.numKVHeads * c.headDim
        let perLayer = 2 * h + (qDim + 2 * kvDim) * (h + (c.attentionBias ? 1 : 0)) + h * qDim + 3 * f * h
        return 4 * (c.numLayers * perLayer + (c.tieWordEmbeddings ? 1 : 2) * c.vocabSize * h + h)
    }

    /// How the engine pairs RoPE dimensions for this checkpoint.
    public var ropePairing: RopePairing { config.ropeStyle == .halves ? .halves : .adjacent }
}
