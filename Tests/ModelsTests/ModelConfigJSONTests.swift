import Foundation
import Testing

@testable import Models

/// config.json through `ModelConfig`'s Decodable conformance: untrusted values are type-checked and
/// validated, and every problem names the key (or the quantity) at fault.
@Suite struct ModelConfigJSONTests {
    static var base: [String: Any] { [
        "model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 320, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "max_position_embeddings": 256, "tie_word_embeddings": true,
        "bos_token_id": 1, "eos_token_id": 2,
    ] }

    static func parse(_ changes: [String: Any?] = [:]) throws -> ModelConfig {
        var json = base
        for (k, v) in changes { json[k] = v ?? nil }
        return try HFCheckpoint.parseConfig(JSONSerialization.data(withJSONObject: json), file: "config.json")
    }

    /// The problem text of a config that must be refused.
    static func problem(_ changes: [String: Any?]) -> String? {
        do {
            _ = try parse(changes)
            return nil
        } catch let e as CheckpointError {
            #expect(e.file == "config.json")
            return e.problem
        } catch {
            return "unexpected \(error)"
        }
    }

    @Test func decodesTheHuggingFaceNames() throws {
        let c = try Self.parse()
        #expect(c == ModelConfig(architecture: .llama, hiddenSize: 64, intermediateSize: 128, numLayers: 2, numHeads: 4, numKVHeads: 2,
                                 headDim: 16, vocabSize: 320, rmsNormEps: 1e-5, ropeTheta: 1e4, ropeScaling: .none, ropeStyle: .halves,
                                 maxPositionEmbeddings: 256, tieWordEmbeddings: true, attentionBias: false, bosTokenID: 1, eosTokenIDs: [2]))
        // Optional keys: defaults when absent or null; 4096.0 is an integer; architectures when model_type is missing.
        let d = try Self.parse(["model_type": nil, "architectures": ["Qwen2ForCausalLM"], "num_key_value_heads": NSNull(),
                                "max_position_embeddings": 4096.0, "eos_token_id": [2, 7, "x"], "head_dim": 32,
                                "rms_norm_eps": nil, "rope_theta": nil, "tie_word_embeddings": "yes"])
        #expect(d.architecture == .qwen2 && d.attentionBias && d.numKVHeads == 4 && d.headDim == 32)
        #expect(d.maxPositionEmbeddings == 4096 && d.eosTokenIDs == [2, 7] && d.rmsNormEps == 1e-6 && d.ropeTheta == 10000)
        #expect(!d.tieWordEmbeddings)
    }

    @Test func ropeScalingBothForms() throws {
        let llama3: [String: Any] = ["rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1, "high_freq_factor": 4,
                                     "original_max_position_embeddings": 8192]
        #expect(try Self.parse(["rope_scaling": llama3]).ropeScaling
                == .llama3(factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 8192))
        // transformers 5.x: rope_parameters carries the scaling and rope_theta.
        var parameters = llama3
        parameters["rope_theta"] = 500000.0
        let c = try Self.parse(["rope_scaling": nil, "rope_theta": nil, "rope_parameters": parameters])
        #expect(c.ropeTheta == 500000 && c.ropeScaling != .none)
        #expect(try Self.parse(["rope_scaling": ["type": "linear", "factor": 2]]).ropeScaling == .linear(factor: 2))
        #expect(try Self.parse(["rope_scaling": ["rope_type": "default"]]).ropeScaling == RopeScaling.none)
        #expect(Self.problem(["rope_scaling": ["rope_type": "yarn", "factor": 4]])?.contains("unsupported rope_scaling type 'yarn'") == true)
        #expect(Self.problem(["rope_scaling": ["rope_type": "linear"]])?.contains("rope_scaling linear needs factor") == true)
        #expect(Self.problem(["rope_scaling": ["rope_type": "linear", "factor": "2"]]) == #"factor must be a number, got "2""#)
        #expect(Self.problem(["rope_scaling": ["rope_type": "llama3", "factor": 8]])?.contains("llama3 needs") == true)
        #expect(Self.problem(["rope_scaling": ["rope_type": "linear", "factor": -1]])?.contains("linear scaling factor -1.0 is out of range") == true)
    }

    @Test func wrongTypesNameTheKey() {
        #expect(Self.problem(["hidden_size": "64"]) == #"hidden_size must be an integer, got "64""#)
        #expect(Self.problem(["num_hidden_layers": true]) == "num_hidden_layers must be an integer, got true")
        #expect(Self.problem(["vocab_size": 320.5]) == "vocab_size must be an integer, got 320.5")
        #expect(Self.problem(["intermediate_size": [128]]) == "intermediate_size must be an integer, got an array")
        #expect(Self.problem(["bos_token_id": ["id": 1]]) == "bos_token_id must be an integer, got an object")
        #expect(Self.problem(["rms_norm_eps": false]) == "rms_norm_eps must be a number, got false")
        #expect(Self.problem(["rope_theta": "10000"]) == #"rope_theta must be a number, got "10000""#)
        #expect(Self.problem(["max_position_embeddings": 1e300])?.hasPrefix("max_position_embeddings must be an integer") == true)
    }

    @Test func missingAndInconsistentValues() {
        #expect(Self.problem(["vocab_size": nil]) == "missing vocab_size")
        #expect(Self.problem(["intermediate_size": NSNull()]) == "missing intermediate_size")
        #expect(Self.problem(["model_type": nil]) == "missing model_type")
        #expect(Self.problem(["model_type": "gpt2"])?.contains("unsupported architecture 'gpt2'") == true)
        #expect(Self.problem(["num_attention_heads": 0]) == "num_attention_heads is 0")
        #expect(Self.problem(["hidden_size": 66]) == "hidden_size 66 is not a multiple of num_attention_heads 4")
        // Range checks of ModelConfig.validate run before init(from:) returns.
        #expect(Self.problem(["num_hidden_layers": 0]) == "layer count 0 is out of range (1...4096)")
        #expect(Self.problem(["vocab_size": 1 << 40]) == "vocabulary size 1099511627776 is out of range (1...4194304)")
        #expect(Self.problem(["num_key_value_heads": 3]) == "attention head count 4 is not a multiple of the KV head count 3")
        #expect(Self.problem(["rms_norm_eps": 2])?.contains("RMSNorm epsilon") == true)
        #expect(Self.problem(["bos_token_id": 320]) == "BOS token id 320 is outside the vocabulary")
        // An MLP this engine does not compute is refused, not run as SwiGLU.
        #expect(Self.problem(["hidden_act": "gelu"]) == "unsupported hidden_act 'gelu' (supported: silu)")
        #expect(Self.problem(["hidden_act": 3]) == "hidden_act must be a string")
        #expect(Self.problem(["mlp_bias": true])?.contains("mlp_bias") == true)
        #expect(Self.problem(["hidden_act": "silu", "mlp_bias": false]) == nil)
        #expect(Self.problem(["hidden_act": NSNull()]) == nil)
    }

    @Test func notAnObject() throws {
        for text in ["[1, 2]", "{ nope", "42", ""] {
            #expect(throws: CheckpointError(file: "config.json", problem: "not a JSON object")) {
                try HFCheckpoint.parseConfig(Data(text.utf8), file: "config.json")
            }
        }
    }
}
