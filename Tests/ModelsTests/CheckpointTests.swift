import Foundation
import Kernels
import Testing
import TestSupport

@testable import Models

enum CheckpointFixtures {
    static let models = FixtureFiles.models

    static func gguf(_ model: String, _ variant: String) -> String { FixtureFiles.checkpoint(model: model, variant: variant) }
    static func hf(_ model: String) -> String { FixtureFiles.checkpoint(model: model, variant: "hf") }

    /// All values of a matrix as f32 (dequantized when quantized).
    static func values(_ m: WeightMatrix) -> [Float] {
        var out = [Float](repeating: 0, count: m.rows * m.cols)
        out.withUnsafeMutableBufferPointer { p in
            for r in 0..<m.rows {
                Kernels.dequantizeRow(m, row: r, into: p.baseAddress! + r * m.cols)
            }
        }
        return out
    }
}

/// The readers on the committed fixtures (Tests/Fixtures/README.md lists what each holds).
@Suite struct CheckpointTests {
    static let ggufVariants = [("tiny-llama", "F32"), ("tiny-llama", "F16"), ("tiny-llama", "Q8_0"), ("tiny-llama", "Q4_0"),
                               ("tiny-llama", "Q4_1"), ("tiny-qwen2", "F32"), ("tiny-qwen2", "Q8_0"), ("tiny-llama3", "F32")]

    static func expectedConfig(_ model: String, hf: Bool) -> ModelConfig {
        switch model {
        case "tiny-llama":
            return ModelConfig(architecture: .llama, hiddenSize: 64, intermediateSize: 128, numLayers: 2, numHeads: 4, numKVHeads: 2,
                               headDim: 16, vocabSize: 320, rmsNormEps: 1e-5, ropeTheta: 1e4, ropeScaling: .none,
                               ropeStyle: hf ? .halves : .adjacentPairs, maxPositionEmbeddings: 256, tieWordEmbeddings: true,
                               attentionBias: false, bosTokenID: nil, eosTokenIDs: [])
        case "tiny-qwen2":
            return ModelConfig(architecture: .qwen2, hiddenSize: 64, intermediateSize: 96, numLayers: 2, numHeads: 4, numKVHeads: 1,
                               headDim: 16, vocabSize: 300, rmsNormEps: 1e-6, ropeTheta: 1e6, ropeScaling: .none, ropeStyle: .halves,
                               maxPositionEmbeddings: 256, tieWordEmbeddings: false, attentionBias: true, bosTokenID: nil, eosTokenIDs: [])
        default:
            return ModelConfig(architecture: .llama, hiddenSize: 64, intermediateSize: 128, numLayers: 2, numHeads: 4, numKVHeads: 4,
                               headDim: 16, vocabSize: 256, rmsNormEps: 1e-5, ropeTheta: 5e5,
                               ropeScaling: hf ? .llama3(factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 64) : .none,
                               ropeStyle: hf ? .halves : .adjacentPairs, maxPositionEmbeddings: 256, tieWordEmbeddings: false,
                               attentionBias: false, bosTokenID: nil, eosTokenIDs: [])
        }
    }

    /// The fields the fixtures pin down (token ids and context length come from files we do not control).
    static func shape(_ c: ModelConfig) -> [String] {
        ["\(c.architecture)", "\(c.hiddenSize)", "\(c.intermediateSize)", "\(c.numLayers)", "\(c.numHeads)", "\(c.numKVHeads)",
         "\(c.headDim)", "\(c.vocabSize)", "\(c.rmsNormEps)", "\(c.ropeTheta)", "\(c.ropeScaling)", "\(c.ropeStyle)",
         "\(c.tieWordEmbeddings)", "\(c.attentionBias)"]
    }

    @Test(arguments: ggufVariants.map { "\($0.0)/\($0.1)" } + ["tiny-llama/hf", "tiny-qwen2/hf", "tiny-llama3/hf"])
    func configsOfTheFixtures(_ name: String) throws {
        let parts = name.split(separator: "/").map(String.init)
        let isHF = parts[1] == "hf"
        let ckpt = try openCheckpoint(path: isHF ? CheckpointFixtures.hf(parts[0]) : CheckpointFixtures.gguf(parts[0], parts[1]))
        #expect(Self.shape(ckpt.config) == Self.shape(Self.expectedConfig(parts[0], hf: isHF)))
        #expect((ckpt.metadata == nil) == isHF)
        #expect(try ckpt.matrix(.output) == nil || !ckpt.config.tieWordEmbeddings)
        #expect(try (ckpt.vector(.qBias(1)) != nil) == ckpt.config.attentionBias)
    }

    @Test func ggufTensorTypesFollowLlamaQuantize() throws {
        let q41 = try GGUFFile(path: CheckpointFixtures.gguf("tiny-llama", "Q4_1"))
        #expect(q41.version == 3)
        #expect(q41.tensorInfo(named: "token_embd.weight")?.dtype == .q8_0)
        #expect(q41.tensorInfo(named: "blk.1.ffn_down.weight")?.dtype == .q4_1)
        #expect(q41.tensorInfo(named: "blk.1.ffn_down.weight")?.shape == [128, 64])
        #expect(q41.tensorInfo(named: "output_norm.weight")?.dtype == .f32)
        #expect(q41.string("general.architecture") == "llama")
        #expect(q41.int("llama.block_count") == 2)
        #expect(q41.strings("tokenizer.ggml.tokens")?.count == 320)
    }

    @Test func llama3RopeFrequencyDivisors() throws {
        let ckpt = try openCheckpoint(path: CheckpointFixtures.gguf("tiny-llama3", "F32"))
        let f = try #require(try ckpt.ropeFrequencyFactors())
        let want: [Float] = [1, 2.44226, 8, 8, 8, 8, 8, 8]
        #expect(f.count == 8)
        for (a, b) in zip(f, want) { #expect(abs(a - b) < 1e-4) }
        #expect(try openCheckpoint(path: CheckpointFixtures.hf("tiny-llama3")).ropeFrequencyFactors() == nil)
    }

    /// GGUF F32 tensors that the converter does not permute equal the safetensors ones exactly; F16 and Q8_0
    /// dequantize to within their rounding of them.
    @Test func ggufAndSafetensorsHoldTheSameWeights() throws {
        let hf = try openCheckpoint(path: CheckpointFixtures.hf("tiny-llama"))
        let tensors: [LlamaTensor] = [.tokenEmbedding, .down(0), .gate(1), .up(0), .v(1), .o(0)]
        for (variant, tolerance) in [("F32", Float(0)), ("F16", 2e-3), ("Q8_0", 0.02)] {
            let g = try openCheckpoint(path: CheckpointFixtures.gguf("tiny-llama", variant))
            for t in tensors {
                let a = CheckpointFixtures.values(try #require(try g.matrix(t)))
                let b = CheckpointFixtures.values(try #require(try hf.matrix(t)))
                var err: Float = 0
                for i in a.indices { err = max(err, abs(a[i] - b[i])) }
                #expect(err <= tolerance, "\(variant) \(t): max |Δ| = \(err)")
            }
            #expect(try g.vector(.attnNorm(1)) == hf.vector(.attnNorm(1)))
        }
        // Qwen2: nothing is permuted; the BF16 safetensors upcast exactly equals the GGUF F32 converted from it.
        let qhf = try openCheckpoint(path: CheckpointFixtures.hf("tiny-qwen2"))
        let qgg = try openCheckpoint(path: CheckpointFixtures.gguf("tiny-qwen2", "F32"))
        for t: LlamaTensor in [.q(0), .k(1), .down(1), .output] {
            #expect(CheckpointFixtures.values(try #require(try qhf.matrix(t))) == CheckpointFixtures.values(try #require(try qgg.matrix(t))), "\(t)")
        }
        #expect(try qhf.vector(.qBias(0)) == qgg.vector(.qBias(0)))
    }

    /// Where the default model is looked for: $XDG_CACHE_HOME/dlora when set and not empty, else ~/.cache/dlora.
    @Test func defaultModelPath() {
        let home = NSHomeDirectory()
        #expect(DefaultModel.path(environment: [:]) == home + "/.cache/dlora/SmolLM2-135M-Instruct.Q4_1.gguf")
        #expect(DefaultModel.path(environment: ["XDG_CACHE_HOME": ""]) == home + "/.cache/dlora/SmolLM2-135M-Instruct.Q4_1.gguf")
        #expect(DefaultModel.path(environment: ["XDG_CACHE_HOME": "/srv/cache"]) == "/srv/cache/dlora/SmolLM2-135M-Instruct.Q4_1.gguf")
        #expect(DefaultModel.Missing(path: "/x").description == "the default model is not at /x (run scripts/fetch-model.sh)")
    }

    /// The default model (the test command fetches it; absent, this fails naming scripts/fetch-model.sh).
    @Test func smolLM2() throws {
        let path = try DefaultModel.require()
        let ckpt = try openCheckpoint(path: path)
        let c = ckpt.config
        #expect([c.numLayers, c.hiddenSize, c.numHeads, c.numKVHeads, c.headDim, c.intermediateSize, c.vocabSize] == [30, 576, 9, 3, 64, 1536, 49152] as [Int])
        #expect(c.ropeTheta == 100000 && c.tieWordEmbeddings && c.ropeStyle == .adjacentPairs && c.maxPositionEmbeddings == 8192)
        #expect(try ckpt.matrix(.tokenEmbedding)?.dtype == .q8_0)
        #expect(try ckpt.matrix(.q(29))?.dtype == .q4_1)
    }

    /// Mistral-style sliding windows cap the served context (attention beyond the window would differ).
    @Test func slidingWindowCapsTheContext() throws {
        let src = URL(fileURLWithPath: CheckpointFixtures.hf("tiny-llama"))
        var json = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: src.appendingPathComponent("config.json"))) as? [String: Any])
        json["model_type"] = "mistral"
        json["sliding_window"] = 100
        let c = try HFCheckpoint.parseConfig(JSONSerialization.data(withJSONObject: json), file: "config.json")
        #expect(c.architecture == .mistral && c.maxPositionEmbeddings == 100)
        json["sliding_window"] = NSNull()
        #expect(try HFCheckpoint.parseConfig(JSONSerialization.data(withJSONObject: json), file: "config.json").maxPositionEmbeddings == 256)
    }

    /// Which configs slide, as transformers reads them (checked there: MistralConfig, Qwen2Config.layer_types): Mistral
    /// without the key slides over 4096 (its default) and ignores use_sliding_window; Qwen2 slides only with
    /// use_sliding_window, on the layers from max_window_layers (default 28) or those layer_types names; Llama never.
    @Test func whichConfigsSlide() throws {
        let src = URL(fileURLWithPath: CheckpointFixtures.hf("tiny-llama"))
        let base = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: src.appendingPathComponent("config.json"))) as? [String: Any])
        func limit(_ changes: [String: Any], positions: Int = 100_000) throws -> (Int, Int?) {
            var json = base
            json["max_position_embeddings"] = positions
            json.removeValue(forKey: "sliding_window")
            for (k, v) in changes { json[k] = v }
            let c = try HFCheckpoint.parseConfig(JSONSerialization.data(withJSONObject: json), file: "config.json")
            return (c.maxPositionEmbeddings, c.slidingWindowCap)
        }
        #expect(try limit(["model_type": "mistral"]) == (4096, 4096))
        #expect(try limit(["model_type": "mistral", "sliding_window": 64, "use_sliding_window": false]) == (64, 64))
        #expect(try limit(["model_type": "mistral", "sliding_window": 64], positions: 32) == (32, nil))
        #expect(try limit(["model_type": "llama", "sliding_window": 64]) == (100_000, nil))
        // Qwen2: the tiny model has 2 layers.
        #expect(try limit(["model_type": "qwen2", "sliding_window": 64]) == (100_000, nil))
        #expect(try limit(["model_type": "qwen2", "sliding_window": 64, "use_sliding_window": true]) == (100_000, nil))  // from layer 28
        #expect(try limit(["model_type": "qwen2", "sliding_window": 64, "use_sliding_window": true, "max_window_layers": 1]) == (64, 64))
        #expect(try limit(["model_type": "qwen2", "sliding_window": 64, "use_sliding_window": true, "max_window_layers": 1,
                           "layer_types": ["full_attention", "full_attention"]]) == (100_000, nil))
        #expect(try limit(["model_type": "qwen2", "sliding_window": 64, "use_sliding_window": true,
                           "layer_types": ["full_attention", "sliding_attention"]]) == (64, 64))
        #expect(try limit(["model_type": "qwen2", "use_sliding_window": true, "max_window_layers": 0]) == (4096, 4096))
    }
}
