import Foundation
import Kernels
import Models

/// A problem with a LoRA adapter, naming the adapter, the tensor (when it is about one) and what is wrong.
public struct AdapterError: Error, CustomStringConvertible, Equatable, Sendable {
    public let adapter: String
    public let tensor: String?
    public let problem: String

    public init(adapter: String, tensor: String? = nil, problem: String) {
        self.adapter = adapter
        self.tensor = tensor
        self.problem = problem
    }

    public var description: String {
        if let tensor { return "adapter '\(adapter)': tensor '\(tensor)': \(problem)" }
        return "adapter '\(adapter)': \(problem)"
    }
}

/// Reads LoRA adapters — PEFT directories (adapter_config.json + adapter_model.safetensors) and llama.cpp
/// GGUF LoRA files — validates them against the base model and returns them compute-ready.
public enum AdapterLoader {
    /// Largest rank we accept (PEFT adapters in the wild use ≤ 256).
    public static let maxRank = 1024

    /// Loads the adapter at `path` for `base`. `name` is how errors and the registry call it.
    public static func load(path: String, name: String? = nil, base: ModelConfig) throws -> LoRAWeights {
        let name = name ?? URL(fileURLWithPath: path).lastPathComponent
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw AdapterError(adapter: name, problem: "no such file or directory: \(path)")
        }
        do {
            if isDirectory.boolValue { return try loadPEFT(directory: path, name: name, base: base) }
            if path.hasSuffix(".gguf") { return try loadGGUF(path: path, name: name, base: base) }
            throw AdapterError(adapter: name, problem: "unknown adapter format (expected a PEFT directory or a .gguf LoRA file)")
        } catch let e as CheckpointError {
            throw AdapterError(adapter: name, tensor: e.tensor, problem: "\((e.file as NSString).lastPathComponent): \(e.problem)")
        }
    }

    // MARK: PEFT

    static func loadPEFT(directory: String, name: String, base: ModelConfig) throws -> LoRAWeights {
        func fail(_ problem: String, tensor: String? = nil) -> AdapterError { AdapterError(adapter: name, tensor: tensor, problem: problem) }
        let dir = URL(fileURLWithPath: directory)
        let fm = FileManager.default
        guard let configData = fm.contents(atPath: dir.appendingPathComponent("adapter_config.json").path) else {
            throw fail("missing adapter_config.json (not a PEFT adapter directory)")
        }
        let weightsPath = dir.appendingPathComponent("adapter_model.safetensors").path
        guard fm.fileExists(atPath: weightsPath) else {
            if fm.fileExists(atPath: dir.appendingPathComponent("adapter_model.bin").path) {
                throw fail("adapter_model.bin is a pickle; convert it to safetensors (e.g. with peft: model.save_pretrained(dir, safe_serialization=True))")
            }
            throw fail("missing adapter_model.safetensors")
        }
        guard let config = try? JSONSerialization.jsonObject(with: configData) as? [String: Any] else {
            throw fail("adapter_config.json is not a JSON object")
        }
        if let type = config["peft_type"] as? String, type != "LORA" { throw fail("peft_type \(type) is not supported (only LORA)") }
        if (config["use_dora"] as? Bool) == true { throw fail("DoRA adapters (use_dora) are not supported") }
        if let m = config["modules_to_save"], !(m is NSNull), !((m as? [Any])?.isEmpty ?? false) {
            throw fail("modules_to_save is not supported (the adapter replaces whole modules)")
        }
        for key in ["rank_pattern", "alpha_pattern"] {
            if let p = config[key] as? [String: Any], !p.isEmpty { throw fail("\(key) (per-module ranks or alphas) is not supported") }
        }
        if (config["fan_in_fan_out"] as? Bool) == true { throw fail("fan_in_fan_out (Conv1D-style weights) is not supported") }
        if (config["lora_bias"] as? Bool) == true { throw fail("lora_bias (a bias on lora_B) is not supported") }
        for key in ["layer_replication", "trainable_token_indices", "target_parameters"] {
            if let v = config[key], !(v is NSNull) { throw fail("\(key) is not supported") }
        }
        guard let r = config["r"] as? Int, r > 0, r <= maxRank else { throw fail("r must be an integer in 1...\(maxRank)") }
        let alpha = (config["lora_alpha"] as? NSNumber)?.doubleValue ?? Double(r)
        let rslora = (config["use_rslora"] as? Bool) ?? false
        guard alpha.isFinite else { throw fail("lora_alpha is not a finite number") }

        let file = try SafetensorsFile(path: weightsPath)
        var modules = Array(repeating: [LoRAModule?](repeating: nil, count: LoRATarget.allCases.count), count: base.numLayers)
        var pairs: [String: (a: SafetensorsTensorInfo?, b: SafetensorsTensorInfo?)] = [:]
        for (tensorName, info) in file.tensors {
            let isA = tensorName.hasSuffix(".lora_A.weight"), isB = tensorName.hasSuffix(".lora_B.weight")
            guard isA || isB else {
                if tensorName.contains("lora_embedding") || tensorName.contains("embed_tokens") || tensorName.contains("lm_head") {
                    throw fail("embedding and output-layer targets are not supported", tensor: tensorName)
                }
                if tensorName.contains("lora_magnitude") { throw fail("DoRA magnitudes are not supported", tensor: tensorName) }
                throw fail("unexpected tensor (expected *.lora_A.weight / *.lora_B.weight)", tensor: tensorName)
            }
            let stem = String(tensorName.dropLast(".lora_A.weight".count))
            var pair = pairs[stem] ?? (nil, nil)
            if isA { pair.a = info } else { pair.b = info }
            pairs[stem] = pair
        }
        guard !pairs.isEmpty else { throw fail("adapter_model.safetensors holds no LoRA tensors") }
        for (stem, pair) in pairs.sorted(by: { $0.key < $1.key }) {
            // …layers.<N>.(self_attn|mlp).<module>
            let parts = stem.split(separator: ".")
            guard parts.count >= 3, let li = parts.firstIndex(of: "layers"), li + 1 < parts.count, let layer = Int(parts[li + 1]),
                  let target = LoRATarget.allCases.first(where: { $0.peftName == parts.last.map(String.init) }) else {
                throw fail("cannot map to a base layer (expected …layers.N.self_attn.q_proj, …)", tensor: stem)
            }
            guard layer >= 0, layer < base.numLayers else {
                throw fail("layer \(layer) does not exist (the base model has \(base.numLayers) layers)", tensor: stem)
            }
            guard let a = pair.a, let b = pair.b else { throw fail("has lora_\(pair.a == nil ? "A" : "B") but not the other", tensor: stem) }
            modules[layer][target.rawValue] = try module(a: (a.shape, file.file.base + a.offset, a.dtype), b: (b.shape, file.file.base + b.offset, b.dtype),
                                                         rank: r, target: target, layer: layer, base: base, permute: base.ropeStyle == .adjacentPairs,
                                                         name: name, tensor: stem)
        }
        let scale = rslora ? alpha / Double(r).squareRoot() : alpha / Double(r)
        return LoRAWeights(name: name, scale: Float(scale), modules: modules)
    }

    // MARK: GGUF LoRA (llama.cpp)

    static func loadGGUF(path: String, name: String, base: ModelConfig) throws -> LoRAWeights {
        func fail(_ problem: String, tensor: String? = nil) -> AdapterError { AdapterError(adapter: name, tensor: tensor, problem: problem) }
        let gguf = try GGUFFile(path: path)
        guard gguf.string("general.type") == "adapter", gguf.string("adapter.type") == "lora" else {
            throw fail("not a GGUF LoRA adapter (general.type must be 'adapter' and adapter.type 'lora')")
        }
        if let arch = gguf.string("general.architecture"), let a = Architecture(rawValue: arch), a != base.architecture,
           !(Set([a, base.architecture]).isSubset(of: [.llama, .mistral])) {
            throw fail("made for architecture '\(arch)', the base is '\(base.architecture.rawValue)'")
        }
        let adapterArch = gguf.string("general.architecture").flatMap(Architecture.init(rawValue:)) ?? base.architecture
        // llama.cpp's converter permutes Q/K of llama/mistral (adjacent-pair RoPE); a qwen2 adapter is unpermuted.
        let adapterPermuted = adapterArch != .qwen2
        let basePermuted = base.ropeStyle == .adjacentPairs
        var modules = Array(repeating: [LoRAModule?](repeating: nil, count: LoRATarget.allCases.count), count: base.numLayers)
        var rank = 0
        var found = Set<String>()
        for info in gguf.tensors {
            let n = info.name
            guard n.hasSuffix(".weight.lora_a") || n.hasSuffix(".weight.lora_b") else {
                throw fail("unexpected tensor (expected blk.N.<module>.weight.lora_a / lora_b)", tensor: n)
            }
            guard n.hasSuffix(".lora_a") else { continue }
            let stem = String(n.dropLast(".weight.lora_a".count))  // blk.N.attn_q
            let parts = stem.split(separator: ".")
            guard parts.count == 3, parts[0] == "blk", let layer = Int(parts[1]),
                  let target = LoRATarget.allCases.first(where: { $0.ggufName == parts[2] }) else {
                throw fail("cannot map to a base layer", tensor: n)
            }
            guard layer >= 0, layer < base.numLayers else {
                throw fail("layer \(layer) does not exist (the base model has \(base.numLayers) layers)", tensor: n)
            }
            let bName = stem + ".weight.lora_b"
            guard let b = gguf.tensorInfo(named: bName) else { throw fail("has lora_a but no lora_b", tensor: n) }
            found.insert(bName)
            // ggml shapes list the contiguous dimension first: lora_a [in, r] is A (r × in); lora_b [r, out] is B (out × r).
            guard info.shape.count == 2, b.shape.count == 2 else { throw fail("LoRA tensors must be 2-D", tensor: n) }
            let r = info.shape[1]
            rank = max(rank, r)
            let m = try module(a: ([info.shape[1], info.shape[0]], gguf.file.base + info.offset, info.dtype),
                               b: ([b.shape[1], b.shape[0]], gguf.file.base + b.offset, b.dtype),
                               rank: r, target: target, layer: layer, base: base, permute: adapterPermuted != basePermuted,
                               name: name, tensor: stem, inverse: adapterPermuted)
            modules[layer][target.rawValue] = m
        }
        for info in gguf.tensors where info.name.hasSuffix(".lora_b") && !found.contains(info.name) {
            throw fail("has lora_b but no lora_a", tensor: info.name)
        }
        guard rank > 0 else { throw fail("holds no LoRA tensors") }
        guard let alpha = gguf.float("adapter.lora.alpha"), alpha.isFinite else { throw fail("missing adapter.lora.alpha") }
        // llama.cpp scales by alpha / r (with r the tensor's rank).
        return LoRAWeights(name: name, scale: Float(alpha / Double(rank)), modules: modules)
    }

    // MARK: Shared

    /// Validates one A/B pair against the base matrix it adapts and converts it to f32, permuting B's rows
    /// between the Hugging Face (rotate-half) and llama.cpp (adjacent-pair) layouts of Q and K when needed.
    static func module(a: (shape: [Int], data: UnsafeRawPointer, dtype: DType), b: (shape: [Int], data: UnsafeRawPointer, dtype: DType),
                       rank: Int, target: LoRATarget, layer: Int, base: ModelConfig, permute: Bool,
                       name: String, tensor: String, inverse: Bool = false) throws -> LoRAModule {
        func fail(_ problem: String) -> AdapterError { AdapterError(adapter: name, tensor: tensor, problem: problem) }
        let (rows, cols) = target.shape(base)
        guard a.shape.count == 2, b.shape.count == 2 else { throw fail("LoRA tensors must be 2-D") }
        let r = a.shape[0]
        guard r > 0, r <= maxRank else { throw fail("rank \(r) is out of range") }
        guard cols % 16 == 0 else { throw fail("input features \(cols) are not a multiple of 16 (not supported by the LoRA kernels)") }
        guard a.shape[1] == cols else { throw fail("lora_A is \(a.shape), expected [\(r), \(cols)] for the base \(target.peftName) (\(rows)×\(cols))") }
        guard b.shape == [rows, r] else { throw fail("lora_B is \(b.shape), expected [\(rows), \(r)] (rank \(r) from lora_A)") }
        guard !a.dtype.isQuantized || a.shape[1] % a.dtype.blockSize == 0, !b.dtype.isQuantized || r % b.dtype.blockSize == 0 else {
            throw fail("quantized LoRA tensors must have whole blocks")
        }
        var af = [Float](repeating: 0, count: r * cols)
        af.withUnsafeMutableBufferPointer { p in
            for i in 0..<r {
                Kernels.dequantize(a.dtype, a.data + i * a.dtype.byteCount(elements: cols)!, count: cols, into: p.baseAddress! + i * cols)
            }
        }
        var bf = [Float](repeating: 0, count: rows * r)
        bf.withUnsafeMutableBufferPointer { p in
            for o in 0..<rows {
                Kernels.dequantize(b.dtype, b.data + o * b.dtype.byteCount(elements: r)!, count: r, into: p.baseAddress! + o * r)
            }
        }
        guard !af.contains(where: { !$0.isFinite }), !bf.contains(where: { !$0.isFinite }) else { throw fail("holds non-finite values") }
        if permute && (target == .q || target == .k) {
            bf = permuteRows(bf, rowLength: r, heads: target == .q ? base.numHeads : base.numKVHeads, headDim: base.headDim, inverse: inverse)
        }
        // Half-precision adapters stay half precision (exact: the values came from that format).
        let storage: DType = a.dtype == b.dtype && (a.dtype == .f16 || a.dtype == .bf16) ? a.dtype : .f32
        return af.withUnsafeBufferPointer { ap in
            bf.withUnsafeBufferPointer { bp in
                LoRAModule(rank: r, inFeatures: cols, outFeatures: rows, a: ap.baseAddress!, b: bp.baseAddress!, dtype: storage)
            }
        }
    }

    /// llama.cpp's Q/K permutation: within each head, row j·(d/2) + i (rotate-half) moves to row 2i + j
    /// (adjacent pairs). `inverse` maps back.
    static func permuteRows(_ m: [Float], rowLength: Int, heads: Int, headDim: Int, inverse: Bool) -> [Float] {
        var out = m
        let half = headDim / 2
        for h in 0..<heads {
            for i in 0..<half {
                for j in 0..<2 {
                    let hfRow = h * headDim + j * half + i
                    let ggRow = h * headDim + 2 * i + j
                    let (src, dst) = inverse ? (ggRow, hfRow) : (hfRow, ggRow)
                    for c in 0..<rowLength { out[dst * rowLength + c] = m[src * rowLength + c] }
                }
            }
        }
        return out
    }
}
