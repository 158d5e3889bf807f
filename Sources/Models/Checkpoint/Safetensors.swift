import Foundation
import Kernels
import Tokenizers

/// One tensor of a safetensors file.
public struct SafetensorsTensorInfo: Sendable, Equatable {
    public let name: String
    public let dtype: DType
    /// Row-major shape, outermost first (PyTorch order: a Linear weight is [out, in]).
    public let shape: [Int]
    /// Absolute byte offset in the file.
    public let offset: Int
    public let byteCount: Int
}

/// A safetensors file, memory-mapped; the JSON header and every tensor's byte range are validated on open.
public final class SafetensorsFile: @unchecked Sendable {
    public let file: MappedFile
    public let tensors: [String: SafetensorsTensorInfo]

    public convenience init(path: String) throws {
        try self.init(file: MappedFile(path: path))
    }

    public init(file: MappedFile) throws {
        self.file = file
        var r = ByteReader(file)
        let headerLength = try r.read(UInt64.self, "header length")
        guard headerLength <= UInt64(r.remaining), headerLength <= 100 << 20 else {
            throw r.error("header length \(headerLength) exceeds the file (\(file.count) bytes) or 100 MB")
        }
        let header = try r.bytes(Int(headerLength), "header")
        let dataStart = r.offset
        let dataSize = file.count - dataStart
        guard let json = try? JSONSerialization.jsonObject(with: Data(header)), let entries = json as? [String: Any] else {
            throw r.error("header is not a JSON object")
        }
        var tensors: [String: SafetensorsTensorInfo] = [:]
        for (name, value) in entries where name != "__metadata__" {
            guard let entry = value as? [String: Any], let dtypeName = entry["dtype"] as? String,
                  let shape = entry["shape"] as? [Any], let offsets = entry["data_offsets"] as? [Any], offsets.count == 2 else {
                throw r.error("header entry must have dtype, shape and data_offsets [begin, end]", tensor: name)
            }
            let dtype: DType
            switch dtypeName {
            case "F32": dtype = .f32
            case "F16": dtype = .f16
            case "BF16": dtype = .bf16
            default: throw r.error("unsupported dtype \(dtypeName) (supported: F32, F16, BF16)", tensor: name)
            }
            let dims = shape.compactMap(Self.integer)
            guard dims.count == shape.count, dims.count <= 8, dims.allSatisfy({ $0 >= 0 && $0 <= 1 << 32 }) else {
                throw r.error("invalid shape \(shape)", tensor: name)
            }
            guard let begin = Self.integer(offsets[0]), let end = Self.integer(offsets[1]), begin >= 0, end >= begin else {
                throw r.error("invalid data_offsets \(offsets)", tensor: name)
            }
            guard end <= dataSize else {
                throw r.error("data_offsets [\(begin), \(end)] run past the end of the data (\(dataSize) bytes)", tensor: name)
            }
            var elements = 1
            for d in dims {
                let (p, o) = elements.multipliedReportingOverflow(by: d)
                guard !o, p <= 1 << 40 else { throw r.error("shape \(dims) is too large", tensor: name) }
                elements = p
            }
            guard elements * dtype.blockBytes == end - begin else {
                throw r.error("shape \(dims) × \(dtypeName) is \(elements * dtype.blockBytes) bytes but data_offsets span \(end - begin)", tensor: name)
            }
            tensors[name] = SafetensorsTensorInfo(name: name, dtype: dtype, shape: dims, offset: dataStart + begin, byteCount: end - begin)
        }
        let sorted = tensors.values.sorted { ($0.offset, $0.name) < ($1.offset, $1.name) }
        for (a, b) in zip(sorted, sorted.dropFirst()) where a.offset + a.byteCount > b.offset {
            throw r.error("data overlaps tensor '\(a.name)'", tensor: b.name)
        }
        self.tensors = tensors
    }

    /// JSONSerialization returns booleans as NSNumber too; they have the `char` type code.
    static func isJSONBool(_ n: NSNumber) -> Bool { String(cString: n.objCType) == "c" }

    static func integer(_ v: Any) -> Int? {
        if let n = v as? NSNumber, !isJSONBool(n) {
            let d = n.doubleValue
            guard d == d.rounded(), abs(d) < 1e15 else { return nil }
            return n.intValue
        }
        return nil
    }
}

/// A Hugging Face model directory: config.json and model.safetensors, or model.safetensors.index.json
/// with shards. F16/BF16 tensors are upcast exactly to f32 when read.
public final class HFCheckpoint: ModelCheckpoint, @unchecked Sendable {
    public let path: String
    public let config: ModelConfig
    public var metadata: (any MetadataSource)? { nil }
    private let files: [SafetensorsFile]
    private let location: [String: (file: Int, info: SafetensorsTensorInfo)]

    public init(directory: String) throws {
        path = directory
        let dir = URL(fileURLWithPath: directory)
        let configPath = dir.appendingPathComponent("config.json").path
        guard let configData = FileManager.default.contents(atPath: configPath) else {
            throw CheckpointError(file: configPath, problem: "missing (a Hugging Face model directory needs config.json)")
        }
        config = try Self.parseConfig(configData, file: configPath)

        // Shards: the index's weight_map, or the single model.safetensors.
        var shardNames = ["model.safetensors"]
        let indexPath = dir.appendingPathComponent("model.safetensors.index.json").path
        if let indexData = FileManager.default.contents(atPath: indexPath) {
            guard let index = try? JSONSerialization.jsonObject(with: indexData) as? [String: Any],
                  let map = index["weight_map"] as? [String: String] else {
                throw CheckpointError(file: indexPath, problem: "not a JSON object with a weight_map of tensor name → file")
            }
            shardNames = Array(Set(map.values)).sorted()
            for name in shardNames where name.isEmpty || name.contains("/") || name.hasPrefix(".") {
                throw CheckpointError(file: indexPath, problem: "shard name '\(name)' must be a plain file name inside the model directory")
            }
        }
        var files: [SafetensorsFile] = []
        var location: [String: (file: Int, info: SafetensorsTensorInfo)] = [:]
        for name in shardNames {
            let f = try SafetensorsFile(path: dir.appendingPathComponent(name).path)
            for (tensor, info) in f.tensors {
                guard location[tensor] == nil else {
                    throw CheckpointError(file: f.file.path, tensor: tensor, problem: "also present in another shard")
                }
                location[tensor] = (files.count, info)
            }
            files.append(f)
        }
        self.files = files
        self.location = location

        for (t, shape) in LlamaTensor.expected(config) {
            guard let (fi, info) = location[t.hfName] else {
                throw CheckpointError(file: directory, tensor: t.hfName, problem: "required tensor is missing")
            }
            guard info.shape == shape else {
                throw CheckpointError(file: files[fi].file.path, tensor: t.hfName, problem: "shape \(info.shape), expected \(shape)")
            }
        }
        for (t, shape) in LlamaTensor.optional(config) {
            guard let (fi, info) = location[t.hfName] else { continue }
            guard info.shape == shape else {
                throw CheckpointError(file: files[fi].file.path, tensor: t.hfName, problem: "shape \(info.shape), expected \(shape)")
            }
        }
    }

    public func matrix(_ tensor: LlamaTensor) throws -> WeightMatrix? {
        guard let (fi, info) = location[tensor.hfName] else { return nil }
        let file = files[fi].file
        guard info.shape.count == 2 else { throw CheckpointError(file: file.path, tensor: info.name, problem: "is not 2-D") }
        let rows = info.shape[0], cols = info.shape[1]
        if info.dtype == .f32 && info.offset % 4 == 0 {
            return WeightMatrix(dtype: .f32, rows: rows, cols: cols,
                                storage: Buffer(borrowing: file.base, byteCount: file.count, owner: file), offset: info.offset)
        }
        let buffer = Buffer(floats: rows * cols)
        Kernels.dequantize(info.dtype, file.base + info.offset, count: rows * cols, into: buffer.floats)
        return WeightMatrix(dtype: .f32, rows: rows, cols: cols, storage: buffer)
    }

    public func vector(_ tensor: LlamaTensor) throws -> [Float]? {
        guard let (fi, info) = location[tensor.hfName] else { return nil }
        let file = files[fi].file
        guard info.shape.count == 1 else { throw CheckpointError(file: file.path, tensor: info.name, problem: "is not 1-D") }
        return floatValues(file.base + info.offset, dtype: info.dtype, count: info.shape[0])
    }

    public func ropeFrequencyFactors() throws -> [Float]? { nil }

    /// Reads config.json (transformers 4.x form, or 5.x with `rope_parameters`).
    static func parseConfig(_ data: Data, file: String) throws -> ModelConfig {
        func fail(_ problem: String) -> CheckpointError { CheckpointError(file: file, problem: problem) }
        guard let json = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else { throw fail("not a JSON object") }
        func int(_ key: String, in dict: [String: Any]? = nil) throws -> Int? {
            guard let v = (dict ?? json)[key], !(v is NSNull) else { return nil }
            guard let i = SafetensorsFile.integer(v) else { throw fail("\(key) must be an integer, got \(v)") }
            return i
        }
        func double(_ key: String, in dict: [String: Any]? = nil) throws -> Double? {
            guard let v = (dict ?? json)[key], !(v is NSNull) else { return nil }
            guard let n = v as? NSNumber, !SafetensorsFile.isJSONBool(n) else { throw fail("\(key) must be a number, got \(v)") }
            return n.doubleValue
        }
        func required(_ key: String) throws -> Int {
            guard let v = try int(key) else { throw fail("missing \(key)") }
            return v
        }
        let typeName = (json["model_type"] as? String)
            ?? ((json["architectures"] as? [String])?.first.map { $0.replacingOccurrences(of: "ForCausalLM", with: "").lowercased() })
        guard let typeName else { throw fail("missing model_type") }
        guard let arch = Architecture(rawValue: typeName) else {
            throw fail("unsupported architecture '\(typeName)' (supported: llama, mistral, qwen2)")
        }
        let hidden = try required("hidden_size")
        let heads = try required("num_attention_heads")
        guard heads > 0 else { throw fail("num_attention_heads is \(heads)") }
        let headDim = try int("head_dim") ?? hidden / heads
        if try int("head_dim") == nil && hidden % heads != 0 {
            throw fail("hidden_size \(hidden) is not a multiple of num_attention_heads \(heads)")
        }
        let ropeParams = json["rope_parameters"] as? [String: Any]
        let scalingDict = (json["rope_scaling"] as? [String: Any]) ?? ropeParams
        var scaling = RopeScaling.none
        if let s = scalingDict {
            let type = (s["rope_type"] as? String) ?? (s["type"] as? String) ?? "default"
            switch type {
            case "default": break
            case "linear":
                guard let f = try double("factor", in: s) else { throw fail("rope_scaling linear needs factor") }
                scaling = .linear(factor: f)
            case "llama3":
                guard let f = try double("factor", in: s), let low = try double("low_freq_factor", in: s),
                      let high = try double("high_freq_factor", in: s),
                      let original = try int("original_max_position_embeddings", in: s) else {
                    throw fail("rope_scaling llama3 needs factor, low_freq_factor, high_freq_factor, original_max_position_embeddings")
                }
                scaling = .llama3(factor: f, lowFreqFactor: low, highFreqFactor: high, originalMaxPositionEmbeddings: original)
            default:
                throw fail("unsupported rope_scaling type '\(type)' (supported: linear, llama3)")
            }
        }
        // Mistral's sliding-window attention equals full attention up to the window: serve contexts up to
        // there, so results are never silently wrong beyond it.
        var maxPositions = try int("max_position_embeddings") ?? 2048
        if let window = try int("sliding_window"), window > 0, (json["use_sliding_window"] as? Bool) ?? true {
            maxPositions = min(maxPositions, window)
        }
        var eos: [Int] = []
        if let e = json["eos_token_id"] {
            if let i = SafetensorsFile.integer(e) { eos = [i] } else if let a = e as? [Any] { eos = a.compactMap(SafetensorsFile.integer) }
        }
        let config = ModelConfig(
            architecture: arch,
            hiddenSize: hidden,
            intermediateSize: try required("intermediate_size"),
            numLayers: try required("num_hidden_layers"),
            numHeads: heads,
            numKVHeads: try int("num_key_value_heads") ?? heads,
            headDim: headDim,
            vocabSize: try required("vocab_size"),
            rmsNormEps: Float(try double("rms_norm_eps") ?? 1e-6),
            ropeTheta: try double("rope_theta") ?? double("rope_theta", in: ropeParams ?? [:]) ?? 10000,
            ropeScaling: scaling,
            ropeStyle: .halves,
            maxPositionEmbeddings: maxPositions,
            tieWordEmbeddings: (json["tie_word_embeddings"] as? Bool) ?? false,
            attentionBias: arch == .qwen2 || ((json["attention_bias"] as? Bool) ?? false),
            bosTokenID: try int("bos_token_id"),
            eosTokenIDs: eos)
        try config.validate(file: file)
        return config
    }
}
