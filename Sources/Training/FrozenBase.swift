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
