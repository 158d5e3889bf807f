import Foundation

/// A problem with a model configuration's values, naming the field at fault; `CheckpointError` adds the file.
struct ModelConfigProblem: Error {
    let problem: String
    init(_ problem: String) { self.problem = problem }
}

/// Hugging Face `config.json` (transformers 4.x form, or 5.x with `rope_parameters`), decoded by its own
/// key names. The values are untrusted: every one is type-checked here with a message that names the key,
/// and the result is validated (`ModelConfig.validate`) before `init(from:)` returns.
extension ModelConfig: Decodable {
    enum CodingKeys: String, CodingKey {
        case modelType = "model_type"
        case architectures
        case hiddenSize = "hidden_size"
        case intermediateSize = "intermediate_size"
        case numHiddenLayers = "num_hidden_layers"
        case numAttentionHeads = "num_attention_heads"
        case numKeyValueHeads = "num_key_value_heads"
        case headDim = "head_dim"
        case vocabSize = "vocab_size"
        case rmsNormEps = "rms_norm_eps"
        case ropeTheta = "rope_theta"
        case ropeScaling = "rope_scaling"
        case ropeParameters = "rope_parameters"
        case maxPositionEmbeddings = "max_position_embeddings"
        case slidingWindow = "sliding_window"
        case useSlidingWindow = "use_sliding_window"
        case maxWindowLayers = "max_window_layers"
        case layerTypes = "layer_types"
        case tieWordEmbeddings = "tie_word_embeddings"
        case attentionBias = "attention_bias"
        case bosTokenID = "bos_token_id"
        case eosTokenID = "eos_token_id"
        case hiddenAct = "hidden_act"
        case mlpBias = "mlp_bias"
    }

    /// `rope_scaling` (4.x) or `rope_parameters` (5.x, which also carries `rope_theta`).
    enum RopeKeys: String, CodingKey {
        case ropeType = "rope_type"
        case type
        case factor
        case lowFreqFactor = "low_freq_factor"
        case highFreqFactor = "high_freq_factor"
        case originalMaxPositionEmbeddings = "original_max_position_embeddings"
        case ropeTheta = "rope_theta"
    }

    public init(from decoder: any Decoder) throws {
        let json = try decoder.container(keyedBy: CodingKeys.self)
        func required(_ key: CodingKeys) throws -> Int {
            guard let v = try Self.int(json, key) else { throw ModelConfigProblem("missing \(key.stringValue)") }
            return v
        }
        let typeName = (try? json.decodeIfPresent(String.self, forKey: .modelType))
            ?? (try? json.decodeIfPresent([String].self, forKey: .architectures))?.first
                .map { $0.replacingOccurrences(of: "ForCausalLM", with: "").lowercased() }
        guard let typeName else { throw ModelConfigProblem("missing model_type") }
        guard let arch = Architecture(rawValue: typeName) else {
            throw ModelConfigProblem("unsupported architecture '\(typeName)' (supported: llama, mistral, qwen2)")
        }
        // The MLP this engine computes: SwiGLU (SiLU) without biases. Another activation or biased projections would
        // load and run as that MLP, giving wrong numbers without a word, so they are refused.
        if let act = try? json.decodeIfPresent(String.self, forKey: .hiddenAct) {
            guard act == "silu" || act == "swish" else { throw ModelConfigProblem("unsupported hidden_act '\(act.prefix(64))' (supported: silu)") }
        } else if json.contains(.hiddenAct), !((try? json.decodeNil(forKey: .hiddenAct)) ?? false) {
            throw ModelConfigProblem("hidden_act must be a string")
        }
        if (try? json.decodeIfPresent(Bool.self, forKey: .mlpBias)) == true {
            throw ModelConfigProblem("mlp_bias true is not supported (the MLP's projections have no biases here)")
        }
        let hidden = try required(.hiddenSize)
        let heads = try required(.numAttentionHeads)
        guard heads > 0 else { throw ModelConfigProblem("num_attention_heads is \(heads)") }
        let explicitHeadDim = try Self.int(json, .headDim)
        if explicitHeadDim == nil && hidden % heads != 0 {
            throw ModelConfigProblem("hidden_size \(hidden) is not a multiple of num_attention_heads \(heads)")
        }
        let ropeParameters = try? json.nestedContainer(keyedBy: RopeKeys.self, forKey: .ropeParameters)
        var scaling = RopeScaling.none
        if let s = (try? json.nestedContainer(keyedBy: RopeKeys.self, forKey: .ropeScaling)) ?? ropeParameters {
            let type = (try? s.decodeIfPresent(String.self, forKey: .ropeType)) ?? (try? s.decodeIfPresent(String.self, forKey: .type)) ?? "default"
            switch type {
            case "default": break
            case "linear":
                guard let f = try Self.double(s, .factor) else { throw ModelConfigProblem("rope_scaling linear needs factor") }
                scaling = .linear(factor: f)
            case "llama3":
                guard let f = try Self.double(s, .factor), let low = try Self.double(s, .lowFreqFactor),
                      let high = try Self.double(s, .highFreqFactor),
                      let original = try Self.int(s, .originalMaxPositionEmbeddings) else {
                    throw ModelConfigProblem("rope_scaling llama3 needs factor, low_freq_factor, high_freq_factor, original_max_position_embeddings")
                }
                scaling = .llama3(factor: f, lowFreqFactor: low, highFreqFactor: high, originalMaxPositionEmbeddings: original)
            default:
                throw ModelConfigProblem("unsupported rope_scaling type '\(type)' (supported: linear, llama3)")
            }
        }
        // Sliding-window attention equals full attention up to the window: serve contexts up to there, so results are
        // never silently wrong beyond it. Which layers slide is transformers' reading of the config:
        // - Mistral: every layer, with `sliding_window` (4096 when the key is absent, none when null);
        // - Qwen2: only with `use_sliding_window` (default false), the layers from `max_window_layers` (default 28) on, or
        //   those `layer_types` names "sliding_attention" (a model whose sliding layers start past its last has none);
        // - Llama: none.
        var maxPositions = try Self.int(json, .maxPositionEmbeddings) ?? 2048
        let layers = try required(.numHiddenLayers)
        var window: Int?
        switch arch {
        case .mistral:
            window = json.contains(.slidingWindow) ? try Self.int(json, .slidingWindow) : 4096
        case .qwen2:
            if (try? json.decodeIfPresent(Bool.self, forKey: .useSlidingWindow)) ?? false {
                let w = json.contains(.slidingWindow) ? try Self.int(json, .slidingWindow) : 4096
                let sliding: Bool
                if let types = try? json.decodeIfPresent([String].self, forKey: .layerTypes) {
                    sliding = types.contains("sliding_attention")
                } else {
                    sliding = (try Self.int(json, .maxWindowLayers) ?? 28) < layers
                }
                window = sliding ? w : nil
            }
        case .llama:
            window = nil
        }
        var cappedBy: Int?
        if let window, window > 0, window < maxPositions {
            maxPositions = window
            cappedBy = window
        }
        // One id or a list of ids (entries that are not integers are ignored, as transformers does).
        var eos: [Int] = []
        if let e = try json.decodeIfPresent(JSONScalar.self, forKey: .eosTokenID) {
            if let i = e.integer {
                eos = [i]
            } else if let list = try? json.decode([JSONScalar].self, forKey: .eosTokenID) {
                eos = list.compactMap(\.integer)
            }
        }
        self.init(
            architecture: arch,
            hiddenSize: hidden,
            intermediateSize: try required(.intermediateSize),
            numLayers: layers,
            numHeads: heads,
            numKVHeads: try Self.int(json, .numKeyValueHeads) ?? heads,
            headDim: explicitHeadDim ?? hidden / heads,
            vocabSize: try required(.vocabSize),
            rmsNormEps: Float(try Self.double(json, .rmsNormEps) ?? 1e-6),
            ropeTheta: try Self.double(json, .ropeTheta) ?? ropeParameters.flatMap { try Self.double($0, .ropeTheta) } ?? 10000,
            ropeScaling: scaling,
            ropeStyle: .halves,
            maxPositionEmbeddings: maxPositions,
            tieWordEmbeddings: (try? json.decodeIfPresent(Bool.self, forKey: .tieWordEmbeddings)) ?? false,
            attentionBias: arch == .qwen2 || ((try? json.decodeIfPresent(Bool.self, forKey: .attentionBias)) ?? false),
            bosTokenID: try Self.int(json, .bosTokenID),
            eosTokenIDs: eos)
        slidingWindowCap = cappedBy
        try validateValues()
    }

    /// The integer at `key`, nil when absent or null. JSON has one number type: an integral value below
    /// 10^15 is accepted (4096.0 too), anything else is an error naming the key.
    static func int<K: CodingKey>(_ c: KeyedDecodingContainer<K>, _ key: K) throws -> Int? {
        guard let v = try c.decodeIfPresent(JSONScalar.self, forKey: key) else { return nil }
        guard let i = v.integer else { throw ModelConfigProblem("\(key.stringValue) must be an integer, got \(v)") }
        return i
    }

    /// The number at `key`, nil when absent or null; a string, boolean, array or object is an error naming the key.
    static func double<K: CodingKey>(_ c: KeyedDecodingContainer<K>, _ key: K) throws -> Double? {
        guard let v = try c.decodeIfPresent(JSONScalar.self, forKey: key) else { return nil }
        guard case .number(let d) = v else { throw ModelConfigProblem("\(key.stringValue) must be a number, got \(v)") }
        return d
    }
}

/// Any JSON value, decoded as what it is so that a wrong type becomes a message naming the key instead of
/// a `DecodingError` (booleans are not numbers: JSONDecoder reads `true` only as a Bool).
enum JSONScalar: Decodable, CustomStringConvertible {
    case null
    case bool(Bool)
    case number(Double)
    case string(String)
    case array
    case object

    init(from decoder: any Decoder) throws {
        if (try? decoder.unkeyedContainer()) != nil {
            self = .array
            return
        }
        if (try? decoder.container(keyedBy: AnyKey.self)) != nil {
            self = .object
            return
        }
        let c = try decoder.singleValueContainer()
        if c.decodeNil() {
            self = .null
        } else if let b = try? c.decode(Bool.self) {
            self = .bool(b)
        } else if let d = try? c.decode(Double.self) {
            self = .number(d)
        } else {
            self = .string(try c.decode(String.self))
        }
    }

    /// The value as an integer when it is an integral number of magnitude below 10^15.
    var integer: Int? {
        guard case .number(let d) = self, d == d.rounded(), abs(d) < 1e15 else { return nil }
        return Int(d)
    }

    var description: String {
        switch self {
        case .null: "null"
        case .bool(let b): "\(b)"
        case .number(let d): d == d.rounded() && abs(d) < 1e15 ? "\(Int(d))" : "\(d)"
        case .string(let s): "\"\(s)\""
        case .array: "an array"
        case .object: "an object"
        }
    }

    private struct AnyKey: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }
}
