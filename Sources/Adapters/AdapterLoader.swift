import Foundation
import Kernels
import Models
import Tokenizers

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
///
/// Everything in an adapter file is untrusted. Besides the shapes, the loader refuses what would make the
/// base's outputs non-finite (an adapter with 1e30 weights or `lora_alpha` 1e300 turns every logit into NaN):
/// - every A/B value finite and within ±`maxAbsWeight`;
/// - a finite scaling (alpha / r, or alpha / √r for rsLoRA) within ±`maxScale`;
/// - for each adapted matrix, |scale| · r · max|A| · max|B| — a bound on every entry of ΔW = scale·B·A —
///   at most `maxDeltaBound`. Trained adapters are far below these (scales 0.25–16, ΔW entries below 1; the
///   base's own weights are below ~10): the bounds only keep f32 activations far from overflow.
public enum AdapterLoader {
    /// Largest rank we accept (PEFT adapters in the wild use ≤ 256).
    public static let maxRank = 1024
    /// Largest |value| of an A or B entry.
    public static let maxAbsWeight: Float = 1e4
    /// Largest |scaling| (alpha / r, alpha / √r).
    public static let maxScale = 1024.0
    /// Largest |scale| · r · max|A| · max|B| of one adapted matrix.
    public static let maxDeltaBound = 1e4
    /// adapter_config.json larger than this is refused before it is read.
    public static let maxConfigBytes = 1 << 20
    /// Adapter weight files larger than this are refused before they are read (unless the caller passes
    /// another limit; the registry passes its host-memory budget).
    public static let defaultMaxFileBytes = 16 << 30
    /// PEFT's default `lora_alpha` (peft.LoraConfig), used when adapter_config.json has none.
    public static let peftDefaultAlpha = 8.0
    /// The files of a PEFT directory the loader looks at.
    static let peftFiles = ["adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"]
    /// The manifests that make a directory without adapter_config.json a composition (static, MoLE).
    static let compositionManifests = [LoRAComposition.manifestFile, MoLEComposition.configFile]

    /// The manifest that makes the directory at `path` a composition (static or MoLE), nil for a plain adapter.
    public static func compositionManifest(at path: String) -> String? {
        let fm = FileManager.default
        guard !fm.fileExists(atPath: path + "/adapter_config.json") else { return nil }
        return compositionManifests.first { fm.fileExists(atPath: path + "/" + $0) }
    }

    /// Loads the adapter at `path` for `base`. `name` is how errors and the registry call it; `id` the
    /// identity the weights carry. With `confinedTo` (the adapter root's real path) every file must resolve
    /// under it when it is opened.
    public static func load(path: String, name: String? = nil, base: ModelConfig, id: AdapterID = .next(),
                            confinedTo root: String? = nil, maxFileBytes: Int = defaultMaxFileBytes) throws -> LoRAWeights {
        let name = name ?? URL(fileURLWithPath: path).lastPathComponent
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw AdapterError(adapter: name, problem: "no such file or directory: \(path)")
        }
        let files = AdapterFiles(path: path, name: name, rootRealPath: root)
        do {
            if isDirectory.boolValue && !files.exists("adapter_config.json"),
               let manifest = try files.open(LoRAComposition.manifestFile, maxBytes: maxConfigBytes) {
                return try loadComposition(manifest, files: files, base: base, id: id, root: root, maxFileBytes: maxFileBytes)
            }
            if isDirectory.boolValue && !files.exists("adapter_config.json"),
               let config = try files.open(MoLEComposition.configFile, maxBytes: maxConfigBytes) {
                return try loadMoLE(config, files: files, base: base, id: id, root: root, maxFileBytes: maxFileBytes)
            }
            if isDirectory.boolValue { return try loadPEFT(files, base: base, id: id, maxFileBytes: maxFileBytes) }
            if path.hasSuffix(".gguf") { return try loadGGUF(files, base: base, id: id, maxFileBytes: maxFileBytes) }
            throw AdapterError(adapter: name, problem: "unknown adapter format (expected a PEFT directory or a .gguf LoRA file)")
        } catch let e as CheckpointError {
            throw AdapterError(adapter: name, tensor: e.tensor, problem: "\((e.file as NSString).lastPathComponent): \(e.problem)")
        }
    }

    // MARK: Compositions

    /// A `composition.json` directory: its adapters are its siblings (same root, same confinement), loaded and
    /// composed (LoRAComposition). A composition of compositions is refused.
    static func loadComposition(_ manifestFile: MappedFile, files: AdapterFiles, base: ModelConfig, id: AdapterID, root: String?,
                                maxFileBytes: Int) throws -> LoRAWeights {
        let manifest = try LoRAComposition.parse(UnsafeRawBufferPointer(start: manifestFile.base, count: manifestFile.count), adapter: files.name)
        let loaded = try siblings(manifest.parts.map(\.name), of: files, manifest: LoRAComposition.manifestFile, base: base, root: root,
                                  maxFileBytes: maxFileBytes)
        return try LoRAComposition.compose(manifest, loaded, base: base, name: files.name, id: id)
    }

    /// The plain adapters `names`, siblings of the composition `files` under the same root and confinement;
    /// a composition (static or MoLE) among them is refused.
    static func siblings(_ names: [String], of files: AdapterFiles, manifest: String, base: ModelConfig, root: String?,
                         maxFileBytes: Int) throws -> [LoRAWeights] {
        let parent = (files.path as NSString).deletingLastPathComponent
        return try names.map { name in
            let path = parent + "/" + name
            let sibling = AdapterFiles(path: path, name: name, rootRealPath: files.rootRealPath)
            if compositionManifest(at: sibling.path) != nil {
                throw AdapterError(adapter: files.name, problem: "\(manifest): '\(name)' is itself a composition (not supported)")
            }
            do {
                return try load(path: path, name: name, base: base, confinedTo: root, maxFileBytes: maxFileBytes)
            } catch let e as AdapterError {
                throw AdapterError(adapter: files.name, problem: "\(manifest): adapter '\(name)': \(e.problem)")
            }
        }
    }

    /// A MoLE directory (`mole_config.json` + `gates.safetensors`): its experts are siblings, stacked and gated.
    static func loadMoLE(_ configFile: MappedFile, files: AdapterFiles, base: ModelConfig, id: AdapterID, root: String?,
                         maxFileBytes: Int) throws -> LoRAWeights {
        let config = try MoLEComposition.parse(UnsafeRawBufferPointer(start: configFile.base, count: configFile.count),
                                               adapter: files.name, base: base)
        guard let gatesFile = try files.open(MoLEComposition.gatesFile, maxBytes: maxFileBytes, precheck: SafetensorsFile.checkHeader) else {
            throw AdapterError(adapter: files.name, problem: "missing \(MoLEComposition.gatesFile)")
        }
        let experts = try siblings(config.experts, of: files, manifest: MoLEComposition.configFile, base: base, root: root,
                                   maxFileBytes: maxFileBytes)
        let inUse = config.granularity.unitsInUse(layers: base.numLayers) { l, t in experts.contains { $0.module(layer: l, target: t) != nil } }
        let gates = try MoLEComposition.gates(try SafetensorsFile(file: gatesFile), experts: config.experts.count,
                                              granularity: config.granularity, inUse: inUse, config: base, adapter: files.name)
        return try MoLEComposition.compose(experts, names: config.experts, granularity: config.granularity, weights: gates.weights,
                                           temperatures: gates.temperatures, config: base, name: files.name, id: id)
    }

    // MARK: PEFT

    static func loadPEFT(_ files: AdapterFiles, base: ModelConfig, id: AdapterID, maxFileBytes: Int) throws -> LoRAWeights {
        let name = files.name
        func fail(_ problem: String, tensor: String? = nil) -> AdapterError { AdapterError(adapter: name, tensor: tensor, problem: problem) }
        guard let configFile = try files.open("adapter_config.json", maxBytes: maxConfigBytes) else {
            throw fail("missing adapter_config.json (not a PEFT adapter directory)")
        }
        let config = try peftConfig(configFile, name: name)
        guard let weightsFile = try files.open("adapter_model.safetensors", maxBytes: maxFileBytes, precheck: SafetensorsFile.checkHeader) else {
            if files.exists("adapter_model.bin") {
                throw fail("adapter_model.bin is a pickle; convert it to safetensors (e.g. with peft: model.save_pretrained(dir, safe_serialization=True))")
            }
            throw fail("missing adapter_model.safetensors")
        }
        let r = config.rank
        let scale = config.rslora ? config.alpha / Double(r).squareRoot() : config.alpha / Double(r)
        try checkScale(scale, name: name)
        // With rank_pattern / alpha_pattern a module's scaling may differ from the adapter's: the ratio is folded
        // into its B (in f32), so every consumer of the adapter's one scaling (the LoRA kernels, merges,
        // compositions) computes the module's own. An adapter scaling of 0 then becomes 1, the modules' in B.
        let patterned = !config.rankPattern.isEmpty || !config.alphaPattern.isEmpty
        let weightScale = patterned && scale == 0 ? 1 : scale

        let file = try SafetensorsFile(file: weightsFile)
        var modules = Array(repeating: [LoRAModule?](repeating: nil, count: LoRATarget.allCases.count), count: base.numLayers)
        var pairs: [String: (a: SafetensorsTensorInfo?, b: SafetensorsTensorInfo?)] = [:]
        for (stored, info) in file.tensors {
            // PEFT's in-memory names carry the adapter's name ("default"), which some tools save: the same tensor.
            var tensorName = stored
            for half in ["A", "B"] where stored.hasSuffix(".lora_\(half).default.weight") {
                tensorName = String(stored.dropLast(".default.weight".count)) + ".weight"
            }
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
            guard (isA ? pair.a : pair.b) == nil else {
                throw fail("holds lora_\(isA ? "A" : "B") twice (with and without PEFT's adapter name 'default')", tensor: stem)
            }
            if isA { pair.a = info } else { pair.b = info }
            pairs[stem] = pair
        }
        guard !pairs.isEmpty else { throw fail("adapter_model.safetensors holds no LoRA tensors") }
        // The module each stem names, once: two stems for one module (PEFT's prefixed names beside unprefixed copies,
        // `layers.00` beside `layers.0`) would have left whichever came last.
        var seen: [Int: String] = [:]
        for (stem, pair) in pairs.sorted(by: { $0.key < $1.key }) {
            guard let (layer, target) = Self.peftModule(stem) else {
                throw fail("cannot map to a base layer (expected [base_model.model.][model.]layers.N.self_attn.{q,k,v,o}_proj or "
                           + "…layers.N.mlp.{gate,up,down}_proj)", tensor: stem)
            }
            guard layer < base.numLayers else {
                throw fail("layer \(layer) does not exist (the base model has \(base.numLayers) layers)", tensor: stem)
            }
            if let other = seen.updateValue(stem, forKey: layer * LoRATarget.allCases.count + target.rawValue) {
                throw fail("names the same module as '\(other.prefix(128))' (layer \(layer) \(target.peftName))", tensor: stem)
            }
            guard let a = pair.a, let b = pair.b else { throw fail("has lora_\(pair.a == nil ? "B" : "A") but not the other", tensor: stem) }
            if let why = config.untargeted(stem, layer: layer) {
                throw fail("adapter_config.json does not target this module (\(why)); PEFT would ignore its tensors. Remove them, or correct the config", tensor: stem)
            }
            let own = config.module(stem)
            guard a.shape.count == 2, a.shape[0] == own.rank else {
                let source = own.rankKey.map { "rank_pattern '\($0.prefix(64))'" } ?? "r"
                throw fail("lora_A is \(a.shape): its rank does not match \(source) = \(own.rank) in adapter_config.json", tensor: stem)
            }
            if patterned { try checkScale(own.scale, name: name) }
            let (m, bound) = try module(a: (a.shape, file.file.base + a.offset, a.dtype), b: (b.shape, file.file.base + b.offset, b.dtype),
                                        target: target, layer: layer, base: base, permute: base.ropeStyle == .adjacentPairs,
                                        name: name, tensor: stem, bScale: patterned ? own.scale / weightScale : 1)
            try checkDelta(scale: own.scale, bound: bound, name: name, tensor: stem)
            modules[layer][target.rawValue] = m
        }
        return LoRAWeights(name: name, scale: Float(weightScale), modules: modules, id: id)
    }

    /// The layer and target a PEFT tensor stem names: `[base_model.model.][model.]layers.<N>.self_attn.<q|k|v|o>_proj` or
    /// `….mlp.<gate|up|down>_proj`, N in plain decimal (no sign, no leading zero). Anything else (a nested `layers`, a
    /// projection under the wrong block) is no module of a Llama base.
    static func peftModule(_ stem: String) -> (layer: Int, target: LoRATarget)? {
        var name = Substring(stem)
        if name.hasPrefix("base_model.model.") { name = name.dropFirst("base_model.model.".count) }
        if name.hasPrefix("model.") { name = name.dropFirst("model.".count) }
        let parts = name.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4, parts[0] == "layers", let n = parts[1].first, n.isASCII, n.isNumber,
              parts[1] == "0" || n != "0", parts[1].count <= 6, parts[1].allSatisfy({ $0.isASCII && $0.isNumber }),
              let layer = Int(parts[1]),
              let target = LoRATarget.allCases.first(where: { $0.peftName == parts[3] }) else { return nil }
        let block: Substring = [.q, .k, .v, .o].contains(target) ? "self_attn" : "mlp"
        return parts[2] == block ? (layer, target) : nil
    }

    struct PEFTConfig {
        var rank: Int
        var alpha: Double
        var rslora: Bool
        /// PEFT's rank_pattern and alpha_pattern, in the file's order (the first key that matches a module wins).
        var rankPattern: [(key: String, rank: Int)] = []
        var alphaPattern: [(key: String, alpha: Double)] = []
        /// target_modules as module names (nil: not a list — "all-linear", a regular expression, or absent).
        var targetModules: [String]?
        /// exclude_modules as module names (nil: none, or a regular expression).
        var excludeModules: [String]?
        /// layers_to_transform (nil: every layer).
        var layers: Set<Int>?

        /// Why PEFT would build no LoRA module at `stem` in `layer` under this config (nil: it would build one): PEFT
        /// creates modules only where the config says, and loads only their tensors, so a tensor elsewhere is one the
        /// file and its config disagree about. Regular-expression forms are not evaluated (see `isModuleName`).
        func untargeted(_ stem: String, layer: Int) -> String? {
            let name = stem.hasPrefix("base_model.model.") ? String(stem.dropFirst("base_model.model.".count)) : stem
            func suffix(_ key: String) -> Bool { name == key || name.hasSuffix("." + key) }
            if let targetModules, !targetModules.contains(where: suffix) {
                return "target_modules \(targetModules.prefix(8).map { "'\($0.prefix(64))'" }.joined(separator: ", ")) does not name it"
            }
            if let key = excludeModules?.first(where: suffix) { return "exclude_modules names it ('\(key.prefix(64))')" }
            // PEFT applies layers_to_transform to modules target_modules names by suffix, not to one it names by its whole
            // path (and an empty list to none).
            if let layers, !layers.contains(layer), targetModules?.contains(name) != true {
                return "layers_to_transform does not include layer \(layer)"
            }
            return nil
        }

        /// A module's rank and scaling: PEFT's `get_pattern_key` on its name (the tensor stem less PEFT's
        /// `base_model.model.` prefix), then alpha / r (or alpha / √r with rsLoRA).
        func module(_ stem: String) -> (rank: Int, scale: Double, rankKey: String?) {
            let name = stem.hasPrefix("base_model.model.") ? String(stem.dropFirst("base_model.model.".count)) : stem
            let rk = rankPattern.first { PEFTConfig.matches(name, $0.key) }
            let ak = alphaPattern.first { PEFTConfig.matches(name, $0.key) }
            let r = rk?.rank ?? rank, a = ak?.alpha ?? alpha
            return (r, rslora ? a / Double(r).squareRoot() : a / Double(r), rk?.key)
        }

        /// PEFT's `re.match(rf"(.*\.)?({key})$", name)` for a key of letters, digits, `_`, `-` and `.` (a `.` in
        /// the key matches any one character, as in the regular expression): the key matches the end of the name,
        /// which is the whole name or follows a dot.
        static func matches(_ name: String, _ key: String) -> Bool {
            let n = Array(name.utf8), k = Array(key.utf8)
            guard k.count <= n.count else { return false }
            let start = n.count - k.count
            guard start == 0 || n[start - 1] == UInt8(ascii: ".") else { return false }
            for i in 0..<k.count where k[i] != UInt8(ascii: ".") && k[i] != n[start + i] { return false }
            return true
        }

        /// Keys are module names, not general regular expressions (which PEFT allows, but whose matching
        /// would be Python's `re`, and whose backtracking an untrusted file could make unbounded).
        static func isModuleName(_ key: String) -> Bool {
            !key.isEmpty && key.utf8.count <= 256 && key.utf8.allSatisfy { c in
                (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) || c == 0x5F || c == 0x2D || c == 0x2E
            }
        }
    }

    /// adapter_config.json, parsed strictly (the project's exact JSON parser: duplicate keys refused, integers
    /// kept apart from doubles); every key that changes the computation is checked for type and support.
    static func peftConfig(_ file: MappedFile, name: String) throws -> PEFTConfig {
        func fail(_ problem: String) -> AdapterError { AdapterError(adapter: name, problem: "adapter_config.json: " + problem) }
        let json: ExactJSON
        let bytes = UnsafeRawBufferPointer(start: file.base, count: file.count)
        guard String(validating: bytes.bindMemory(to: UInt8.self), as: UTF8.self) != nil else { throw fail("not valid UTF-8") }
        do {
            json = try ExactJSON.parse(bytes, name: "adapter_config.json", strict: true)
        } catch {
            throw fail("not valid JSON (\(error))")
        }
        guard case .object(let members) = json else { throw fail("not a JSON object") }
        var config: [String: ExactJSON] = [:]
        for (key, value) in members {
            guard config.updateValue(value, forKey: key) == nil else { throw fail("duplicate key '\(key.prefix(64))'") }
        }
        func bool(_ key: String) throws -> Bool {
            switch config[key] {
            case nil, .null?: return false
            case .bool(let b)?: return b
            default: throw fail("\(key) must be true or false")
            }
        }
        if let type = config["peft_type"] {
            guard case .string(let t) = type else { throw fail("peft_type must be a string") }
            guard t == "LORA" else { throw fail("peft_type \(t.prefix(64)) is not supported (only LORA)") }
        }
        if try bool("use_dora") { throw fail("DoRA adapters (use_dora) are not supported") }
        switch config["modules_to_save"] {
        case nil, .null?: break
        case .array(let a)? where a.isEmpty: break
        default: throw fail("modules_to_save is not supported (the adapter replaces whole modules)")
        }
        // Per-module ranks and alphas: {module name: value}, at most 4,096 keys.
        func pattern(_ key: String) throws -> [(key: String, value: ExactJSON)] {
            switch config[key] {
            case nil, .null?: return []
            case .object(let o)?:
                guard o.count <= 4096 else { throw fail("\(key) has more than 4096 entries") }
                for (k, _) in o where !PEFTConfig.isModuleName(k) {
                    throw fail("\(key) key '\(String(k.prefix(64)))' is not a module name (letters, digits, _, - and .; regular expressions are not supported)")
                }
                return o.map { (key: $0.key, value: $0.value) }
            default: throw fail("\(key) must be an object of module names")
            }
        }
        let rankPattern = try pattern("rank_pattern").map { entry -> (key: String, rank: Int) in
            guard case .int(let v) = entry.value, v > 0, v <= maxRank else {
                throw fail("rank_pattern '\(entry.key.prefix(64))' must be an integer in 1...\(maxRank)")
            }
            return (entry.key, v)
        }
        let alphaPattern = try pattern("alpha_pattern").map { entry -> (key: String, alpha: Double) in
            switch entry.value {
            case .int(let v): return (entry.key, Double(v))
            case .double(let v) where v.isFinite: return (entry.key, v)
            default: throw fail("alpha_pattern '\(entry.key.prefix(64))' must be a finite number")
            }
        }
        // PiSSA, OLoRA, CorDA, LoftQ and LoRA-GA start from a modified base (its principal part, its quantization residual, W less the initial B·A): saved as trained, the
        // adapter needs that modified base, not the original one (PEFT's save_pretrained with
        // path_initial_model_for_weight_conversion turns it into a plain LoRA of twice the rank, init_lora_weights true).
        if case .string(let initName)? = config["init_lora_weights"] {
            let lower = initName.lowercased()
            let methods = ["pissa": "PiSSA", "olora": "OLoRA", "corda": "CorDA", "loftq": "LoftQ", "lora_ga": "LoRA-GA"]
            if let method = methods.keys.sorted().first(where: { lower.hasPrefix($0) }) {
                throw fail("init_lora_weights '\(initName.prefix(64))': a \(methods[method]!) adapter saved as trained needs the modified base it was trained on; save it with PEFT's path_initial_model_for_weight_conversion to serve it on the original base")
            }
        }
        // PEFT's LoRA variants, each a different forward pass than W x + s·B·A x (peft.tuners.lora.layer's lora_variants):
        // served as plain LoRA they would be silently wrong.
        for (key, what) in [("alora_invocation_tokens", "Activated LoRA (alora_invocation_tokens: the adapter applies from its invocation tokens on)"),
                            ("arrow_config", "Arrow routing (arrow_config)"), ("use_bdlora", "block-diagonal LoRA (use_bdlora)"),
                            ("velora_config", "VeLoRA (velora_config)"), ("monteclora_config", "MonteCLoRA (monteclora_config)"),
                            ("kasa_config", "KaSA (kasa_config)"), ("use_qalora", "QA-LoRA (use_qalora: pooled inputs)")] {
            switch config[key] {
            case nil, .null?, .bool(false)?: continue
            case .array(let a)? where a.isEmpty: continue
            default: throw fail("\(what) is not supported")
            }
        }
        if case .string(let initName)? = config["init_lora_weights"], initName.lowercased() == "mica" {
            throw fail("init_lora_weights 'mica' (a MiCA adapter, PEFT's MiCALinearVariant) is not supported")
        }
        if try bool("fan_in_fan_out") { throw fail("fan_in_fan_out (Conv1D-style weights) is not supported") }
        switch config["bias"] {
        case nil, .null?: break
        case .string(let b)? where ["none", "all", "lora_only"].contains(b): break  // bias tensors themselves are refused
        default: throw fail("bias must be \"none\", \"all\" or \"lora_only\"")
        }
        // Which modules the adapter targets: module-name lists are checked against the file's tensors; a string is
        // "all-linear" or a regular expression (not evaluated: Python's `re` on an untrusted pattern).
        func names(_ key: String) throws -> [String]? {
            switch config[key] {
            case nil, .null?, .string?: return nil
            case .array(let a)?:
                return try a.map { v in
                    guard case .string(let n) = v else { throw fail("\(key) must be a string or a list of strings") }
                    return n
                }
            default: throw fail("\(key) must be a string or a list of strings")
            }
        }
        let targetModules = try names("target_modules"), excludeModules = try names("exclude_modules")
        var layers: Set<Int>?
        switch config["layers_to_transform"] {
        case nil, .null?: break
        case .int(let l)?: layers = [l]
        case .array(let a)?:
            layers = Set(try a.map { v in
                guard case .int(let l) = v else { throw fail("layers_to_transform must be an integer or a list of integers") }
                return l
            })
            if layers == [] { layers = nil }  // PEFT: an empty list transforms every layer
        default: throw fail("layers_to_transform must be an integer or a list of integers")
        }
        switch config["layers_pattern"] {
        case nil, .null?, .string?: break
        case .array(let a)? where a.allSatisfy({ if case .string = $0 { return true } else { return false } }): break
        default: throw fail("layers_pattern must be a string or a list of strings")
        }
        if try bool("lora_bias") { throw fail("lora_bias (a bias on lora_B) is not supported") }
        for key in ["layer_replication", "trainable_token_indices", "target_parameters"] {
            if let v = config[key], v != .null { throw fail("\(key) is not supported") }
        }
        guard case .int(let r)? = config["r"], r > 0, r <= maxRank else { throw fail("r must be an integer in 1...\(maxRank)") }
        let alpha: Double
        switch config["lora_alpha"] {
        case nil: alpha = peftDefaultAlpha
        case .int(let a)?: alpha = Double(a)
        case .double(let a)?: alpha = a
        default: throw fail("lora_alpha must be a number")
        }
        guard alpha.isFinite else { throw fail("lora_alpha is not a finite number") }
        return PEFTConfig(rank: r, alpha: alpha, rslora: try bool("use_rslora"), rankPattern: rankPattern, alphaPattern: alphaPattern,
                          targetModules: targetModules, excludeModules: excludeModules, layers: layers)
    }

    /// The adapter's scaling must be finite and within ±`maxScale`.
    static func checkScale(_ scale: Double, name: String) throws {
        guard scale.isFinite, abs(scale) <= maxScale else {
            throw AdapterError(adapter: name, problem: "the scaling (alpha / r, or alpha / √r with rsLoRA) is \(scale); at most ±\(Int(maxScale)) is accepted")
        }
    }

    /// |scale| · r · max|A| · max|B| of one matrix within `maxDeltaBound`.
    static func checkDelta(scale: Double, bound: Double, name: String, tensor: String) throws {
        guard abs(scale) * bound <= maxDeltaBound else {
            throw AdapterError(adapter: name, tensor: tensor, problem: "weights too large: |scale| · r · max|A| · max|B| = \(abs(scale) * bound) exceeds \(Int(maxDeltaBound)) (its outputs would overflow)")
        }
    }

    // MARK: GGUF LoRA (llama.cpp)

    static func loadGGUF(_ files: AdapterFiles, base: ModelConfig, id: AdapterID, maxFileBytes: Int) throws -> LoRAWeights {
        let name = files.name
        func fail(_ problem: String, tensor: String? = nil) -> AdapterError { AdapterError(adapter: name, tensor: tensor, problem: problem) }
        guard let file = try files.open(nil, maxBytes: maxFileBytes) else { throw fail("no such file: \(files.path)") }
        let gguf = try GGUFFile(file: file)
        guard gguf.string("general.type") == "adapter", gguf.string("adapter.type") == "lora" else {
            throw fail("not a GGUF LoRA adapter (general.type must be 'adapter' and adapter.type 'lora')")
        }
        guard let alpha = gguf.float("adapter.lora.alpha") else { throw fail("adapter.lora.alpha is missing or not a number") }
        guard alpha.isFinite else { throw fail("adapter.lora.alpha is not a finite number") }
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
        var bounds: [(tensor: String, bound: Double)] = []
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
            // llama.cpp scales each matrix by alpha / (its own rank); one scale per adapter here, so one rank.
            let r = info.shape[1]
            guard rank == 0 || r == rank else {
                throw fail("rank \(r) differs from the adapter's other tensors (rank \(rank)); mixed ranks are not supported", tensor: n)
            }
            rank = r
            let (m, bound) = try module(a: ([info.shape[1], info.shape[0]], gguf.file.base + info.offset, info.dtype),
                                        b: ([b.shape[1], b.shape[0]], gguf.file.base + b.offset, b.dtype),
                                        target: target, layer: layer, base: base, permute: adapterPermuted != basePermuted,
                                        name: name, tensor: stem, inverse: adapterPermuted)
            modules[layer][target.rawValue] = m
            bounds.append((stem, bound))
        }
        for info in gguf.tensors where info.name.hasSuffix(".lora_b") && !found.contains(info.name) {
            throw fail("has lora_b but no lora_a", tensor: info.name)
        }
        guard rank > 0 else { throw fail("holds no LoRA tensors") }
        // llama.cpp: alpha / r, and an alpha of 0 means no scaling (1).
        let scale = alpha == 0 ? 1 : alpha / Double(rank)
        try checkScale(scale, name: name)
        for (tensor, bound) in bounds { try checkDelta(scale: scale, bound: bound, name: name, tensor: tensor) }
        return LoRAWeights(name: name, scale: Float(scale), modules: modules, id: id)
    }

    // MARK: Shared

    /// Validates one A/B pair against the base matrix it adapts and converts it to f32, permuting B's rows
    /// between the Hugging Face (rotate-half) and llama.cpp (adjacent-pair) layouts of Q and K when needed.
    /// Returns the module and r · max|A| · max|B| (times the scale, a bound on the entries of ΔW).
    static func module(a: (shape: [Int], data: UnsafeRawPointer, dtype: DType), b: (shape: [Int], data: UnsafeRawPointer, dtype: DType),
                       target: LoRATarget, layer: Int, base: ModelConfig, permute: Bool,
                       name: String, tensor: String, inverse: Bool = false, bScale: Double = 1) throws -> (LoRAModule, bound: Double) {
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
        func largest(_ v: [Float], _ which: String) throws -> Float {
            var m: Float = 0
            for x in v {
                guard x.isFinite else { throw fail("\(which) holds non-finite values (NaN or infinity)") }
                m = max(m, abs(x))
            }
            guard m <= maxAbsWeight else { throw fail("\(which) holds a value of magnitude \(m); at most \(Int(maxAbsWeight)) is accepted") }
            return m
        }
        let maxA = try largest(af, "lora_A"), maxB = try largest(bf, "lora_B")
        let bound = Double(r) * Double(maxA) * Double(maxB)
        if permute && (target == .q || target == .k) {
            bf = permuteRows(bf, rowLength: r, heads: target == .q ? base.numHeads : base.numKVHeads, headDim: base.headDim, inverse: inverse)
        }
        // A module scaled apart from its adapter (PEFT's rank/alpha patterns): B × bScale, rounded once to f32.
        if bScale != 1 {
            for i in bf.indices { bf[i] = Float(Double(bf[i]) * bScale) }
        }
        // Half-precision adapters stay half precision (exact: the values came from that format).
        let storage: DType = bScale == 1 && a.dtype == b.dtype && (a.dtype == .f16 || a.dtype == .bf16) ? a.dtype : .f32
        let m = af.withUnsafeBufferPointer { ap in
            bf.withUnsafeBufferPointer { bp in
                LoRAModule(rank: r, inFeatures: cols, outFeatures: rows, a: ap.baseAddress!, b: bp.baseAddress!, dtype: storage)
            }
        }
        return (m, bound)
    }

    /// llama.cpp's Q/K permutation: within each head, row j·(d/2) + i (rotate-half) moves to row 2i + j
    /// (adjacent pairs). `inverse` maps back.
    public static func permuteRows(_ m: [Float], rowLength: Int, heads: Int, headDim: Int, inverse: Bool) -> [Float] {
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
