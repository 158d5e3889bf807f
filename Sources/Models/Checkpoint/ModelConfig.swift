import Foundation
import Kernels
import Tokenizers

/// How RoPE pairs the dimensions of a head.
public enum RopeStyle: Sendable, Equatable {
    /// Pairs (x[2i], x[2i+1]): GGUF Llama checkpoints, whose Q/K rows llama.cpp's converter permuted.
    case adjacentPairs
    /// Pairs (x[i], x[i + d/2]) ("rotate half"): Hugging Face checkpoints, and GGUF Qwen2.
    case halves
}

public enum RopeScaling: Sendable, Equatable {
    case none
    case linear(factor: Double)
    case llama3(factor: Double, lowFreqFactor: Double, highFreqFactor: Double, originalMaxPositionEmbeddings: Int)
}

public enum Architecture: String, Sendable, CaseIterable {
    case llama, mistral, qwen2
}

/// The hyper-parameters of a Llama-family decoder, from config.json or GGUF metadata.
public struct ModelConfig: Sendable, Equatable {
    public var architecture: Architecture
    public var hiddenSize: Int
    public var intermediateSize: Int
    public var numLayers: Int
    public var numHeads: Int
    public var numKVHeads: Int
    public var headDim: Int
    public var vocabSize: Int
    public var rmsNormEps: Float
    public var ropeTheta: Double
    public var ropeScaling: RopeScaling
    public var ropeStyle: RopeStyle
    public var maxPositionEmbeddings: Int
    public var tieWordEmbeddings: Bool
    /// Q/K/V projections carry biases (Qwen2 always; Llama when `attention_bias`).
    public var attentionBias: Bool
    /// The output projection carries a bias too: Llama's `attention_bias` puts one on all four projections (Qwen2's
    /// and Mistral's o_proj have none; transformers ignores one a checkpoint carries there).
    public var outputBias: Bool { attentionBias && architecture == .llama }
    public var bosTokenID: Int?
    public var eosTokenIDs: [Int]
    /// The sliding window that capped `maxPositionEmbeddings` (the model attends over a window that short; this engine
    /// attends over the whole context, which is the same up to the window), nil when none did.
    public var slidingWindowCap: Int? = nil

    /// Checks that the numbers are usable together; the error names `file` and the offending value.
    public func validate(file: String) throws {
        do {
            try validateValues()
        } catch let e as ModelConfigProblem {
            throw CheckpointError(file: file, problem: e.problem)
        }
    }

    /// `validate` without a file name (config.json decoding calls it from `init(from:)`).
    func validateValues() throws {
        func fail(_ problem: String) -> ModelConfigProblem { ModelConfigProblem(problem) }
        let limits: [(String, Int, Int)] = [
            ("hidden size", hiddenSize, 1 << 17), ("intermediate size", intermediateSize, 1 << 19),
            ("layer count", numLayers, 4096), ("attention head count", numHeads, 4096),
            ("KV head count", numKVHeads, 4096), ("head dimension", headDim, 4096),
            ("vocabulary size", vocabSize, 1 << 22), ("context length", maxPositionEmbeddings, 1 << 24),
        ]
        for (name, value, limit) in limits where value < 1 || value > limit {
            throw fail("\(name) \(value) is out of range (1...\(limit))")
        }
        guard numHeads % numKVHeads == 0 else {
            throw fail("attention head count \(numHeads) is not a multiple of the KV head count \(numKVHeads)")
        }
        guard headDim % 2 == 0 else { throw fail("head dimension \(headDim) must be even for RoPE") }
        guard rmsNormEps.isFinite, rmsNormEps > 0, rmsNormEps < 1 else { throw fail("RMSNorm epsilon \(rmsNormEps) is out of range") }
        guard ropeTheta.isFinite, ropeTheta > 1 else { throw fail("RoPE base \(ropeTheta) is out of range") }
        switch ropeScaling {
        case .none: break
        case .linear(let f):
            guard f.isFinite, f > 0 else { throw fail("RoPE linear scaling factor \(f) is out of range") }
        case .llama3(let f, let low, let high, let original):
            guard f.isFinite, f > 0, low.isFinite, low > 0, high.isFinite, high > low, original > 0 else {
                throw fail("llama3 RoPE scaling (factor \(f), low \(low), high \(high), original \(original)) is inconsistent")
            }
        }
        if let bosTokenID, bosTokenID < 0 || bosTokenID >= vocabSize { throw fail("BOS token id \(bosTokenID) is outside the vocabulary") }
    }
}

/// The tensors of a Llama-family checkpoint, independent of how a format names them.
public enum LlamaTensor: Hashable, Sendable, CustomStringConvertible {
    case tokenEmbedding, outputNorm, output
    case attnNorm(Int), q(Int), k(Int), v(Int), o(Int), qBias(Int), kBias(Int), vBias(Int), oBias(Int)
    case ffnNorm(Int), gate(Int), up(Int), down(Int)

    /// The GGUF name (llama.cpp's convention).
    public var ggufName: String {
        switch self {
        case .tokenEmbedding: "token_embd.weight"
        case .outputNorm: "output_norm.weight"
        case .output: "output.weight"
        case .attnNorm(let i): "blk.\(i).attn_norm.weight"
        case .q(let i): "blk.\(i).attn_q.weight"
        case .k(let i): "blk.\(i).attn_k.weight"
        case .v(let i): "blk.\(i).attn_v.weight"
        case .o(let i): "blk.\(i).attn_output.weight"
        case .qBias(let i): "blk.\(i).attn_q.bias"
        case .kBias(let i): "blk.\(i).attn_k.bias"
        case .vBias(let i): "blk.\(i).attn_v.bias"
        case .oBias(let i): "blk.\(i).attn_output.bias"
        case .ffnNorm(let i): "blk.\(i).ffn_norm.weight"
        case .gate(let i): "blk.\(i).ffn_gate.weight"
        case .up(let i): "blk.\(i).ffn_up.weight"
        case .down(let i): "blk.\(i).ffn_down.weight"
        }
    }

    /// The Hugging Face name.
    public var hfName: String {
        switch self {
        case .tokenEmbedding: "model.embed_tokens.weight"
        case .outputNorm: "model.norm.weight"
        case .output: "lm_head.weight"
        case .attnNorm(let i): "model.layers.\(i).input_layernorm.weight"
        case .q(let i): "model.layers.\(i).self_attn.q_proj.weight"
        case .k(let i): "model.layers.\(i).self_attn.k_proj.weight"
        case .v(let i): "model.layers.\(i).self_attn.v_proj.weight"
        case .o(let i): "model.layers.\(i).self_attn.o_proj.weight"
        case .qBias(let i): "model.layers.\(i).self_attn.q_proj.bias"
        case .kBias(let i): "model.layers.\(i).self_attn.k_proj.bias"
        case .vBias(let i): "model.layers.\(i).self_attn.v_proj.bias"
        case .oBias(let i): "model.layers.\(i).self_attn.o_proj.bias"
        case .ffnNorm(let i): "model.layers.\(i).post_attention_layernorm.weight"
        case .gate(let i): "model.layers.\(i).mlp.gate_proj.weight"
        case .up(let i): "model.layers.\(i).mlp.up_proj.weight"
        case .down(let i): "model.layers.\(i).mlp.down_proj.weight"
        }
    }

    public var description: String { ggufName }

    /// Every tensor a model with `config` must have, with its shape as [rows (out), cols (in)] or [n].
    static func expected(_ c: ModelConfig) -> [(LlamaTensor, [Int])] {
        let q = c.numHeads * c.headDim, kv = c.numKVHeads * c.headDim, h = c.hiddenSize, f = c.intermediateSize
        var out: [(LlamaTensor, [Int])] = [(.tokenEmbedding, [c.vocabSize, h]), (.outputNorm, [h])]
        if !c.tieWordEmbeddings { out.append((.output, [c.vocabSize, h])) }
        for i in 0..<c.numLayers {
            out += [(.attnNorm(i), [h]), (.q(i), [q, h]), (.k(i), [kv, h]), (.v(i), [kv, h]), (.o(i), [h, q]),
                    (.ffnNorm(i), [h]), (.gate(i), [f, h]), (.up(i), [f, h]), (.down(i), [h, f])]
            if c.attentionBias { out += [(.qBias(i), [q]), (.kBias(i), [kv]), (.vBias(i), [kv])] }
            if c.outputBias { out.append((.oBias(i), [h])) }
        }
        return out
    }

    /// Tensors a model with `config` may carry without using them (the lm_head of a tied model, Q/K/V biases
    /// the config does not declare), with the shape they must have if present, so a caller that reads them
    /// anyway never sees an unchecked shape.
    static func optional(_ c: ModelConfig) -> [(LlamaTensor, [Int])] {
        let q = c.numHeads * c.headDim, kv = c.numKVHeads * c.headDim
        var out: [(LlamaTensor, [Int])] = []
        if c.tieWordEmbeddings { out.append((.output, [c.vocabSize, c.hiddenSize])) }
        if !c.attentionBias {
            for i in 0..<c.numLayers { out += [(.qBias(i), [q]), (.kBias(i), [kv]), (.vBias(i), [kv])] }
        }
        if !c.outputBias {
            for i in 0..<c.numLayers { out.append((.oBias(i), [c.hiddenSize])) }
        }
        return out
    }
}

/// A loaded, validated checkpoint of a Llama-family model.
public protocol ModelCheckpoint: AnyObject, Sendable {
    var path: String { get }
    var config: ModelConfig { get }
    /// GGUF metadata (the tokenizer reads it); nil for a Hugging Face directory.
    var metadata: (any MetadataSource)? { get }
    /// A 2-D tensor (rows = output features); nil when the checkpoint does not have it (`.output` when
    /// tied, biases when there are none).
    func matrix(_ tensor: LlamaTensor) throws -> WeightMatrix?
    /// A 1-D tensor (norm weights, biases) as f32 values; nil when absent.
    func vector(_ tensor: LlamaTensor) throws -> [Float]?
    /// llama.cpp's `rope_freqs.weight` (head_dim/2 per-frequency divisors) when the GGUF has it.
    func ropeFrequencyFactors() throws -> [Float]?
}

/// Opens a checkpoint: a `.gguf` file, or a Hugging Face directory (config.json + safetensors).
/// Everything is validated before it returns: a bad file gives a `CheckpointError`, never a crash.
public func openCheckpoint(path: String) throws -> any ModelCheckpoint {
    var isDirectory: ObjCBool = false
    guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
        throw CheckpointError(file: path, problem: "no such file or directory")
    }
    if isDirectory.boolValue { return try HFCheckpoint(directory: path) }
    return try GGUFCheckpoint(path: path)
}

/// Converts a 1-D tensor's raw values (F32, F16 or BF16) to f32.
func floatValues(_ data: UnsafeRawPointer, dtype: DType, count: Int) -> [Float] {
    [Float](unsafeUninitializedCapacity: count) { buffer, initialized in
        if count > 0 { Kernels.dequantize(dtype, data, count: count, into: buffer.baseAddress!) }
        initialized = count
    }
}
