import Foundation
import Kernels
import Models
import Tokenizers

/// A trained MoLE composition, served like an adapter: a directory under the adapter root holding
/// `mole_config.json` and `gates.safetensors` as `dlora train mole` writes them (docs/design/mole-serving.md).
/// Its experts are siblings under the same root, named in the config (plain adapter names, each a PEFT
/// directory or GGUF LoRA); they are stacked as PEFT's `cat` stacks adapters (weights 1), and block l's gate
/// W_l (N × H) and τ_l (or those of the granularity's units) weigh them per token. Everything is validated before use: strict keys, the
/// experts' count and names, the model's shape, every gate tensor's name, dtype, shape and values.
public enum MoLEComposition {
    public static let configFile = "mole_config.json"
    public static let gatesFile = "gates.safetensors"
    /// Largest |value| of a gate weight, and the temperature's range.
    public static let maxAbsGateWeight: Float = 1e4
    public static let temperatureRange: ClosedRange<Float> = 0.01...100

    public struct Config: Sendable, Equatable {
        public var experts: [String]
        public var granularity: MoLEGranularity
        public var numLayers: Int
        public var hiddenSize: Int
    }

    /// Parses and validates `mole_config.json` (untrusted) against the base model's shape.
    public static func parse(_ bytes: UnsafeRawBufferPointer, adapter: String, base: ModelConfig) throws -> Config {
        func fail(_ problem: String) -> AdapterError { AdapterError(adapter: adapter, problem: "\(configFile): " + problem) }
        let json: ExactJSON
        do { json = try ExactJSON.parse(bytes, name: configFile, strict: true) } catch { throw fail("not valid JSON (\(error))") }
        guard case .object(let members) = json else { throw fail("not a JSON object") }
        var seen = Set<String>()
        var experts: [String]?, layers: Int?, hidden: Int?, format: String?
        var granularity = MoLEGranularity.block
        for (key, value) in members {
            guard seen.insert(key).inserted else { throw fail("duplicate key '\(key.prefix(64))'") }
            switch (key, value) {
            case ("format", .string(let s)): format = s
            case ("version", .int(let v)):
                guard v == 1 else { throw fail("version \(v) is not supported (1)") }
            case ("granularity", .string(let g)):
                guard let known = MoLEGranularity(rawValue: g) else {
                    throw fail("granularity '\(g.prefix(32))' is not supported (\(MoLEGranularity.allCases.map(\.rawValue).joined(separator: ", ")))")
                }
                granularity = known
            case ("gate_input", .string(let g)):
                guard g == "token" else {
                    throw fail("gate_input '\(g.prefix(64))' is not supported (token: retrain with this version's `dlora train mole`)")
                }
            case ("balance_weight", .int), ("balance_weight", .double), ("base_model", .string): break
            case ("num_layers", .int(let n)): layers = n
            case ("hidden_size", .int(let n)): hidden = n
            case ("experts", .array(let items)):
                guard (1...MoLEGating.maxExperts).contains(items.count) else {
                    throw fail("experts must list between 1 and \(MoLEGating.maxExperts) adapters")
                }
                experts = try items.enumerated().map { i, item in
                    guard case .object(let fields) = item else { throw fail("experts[\(i)] must be an object") }
                    var name: String?
                    for (k, v) in fields {
                        switch (k, v) {
                        case ("name", .string(let s)): name = s
                        case ("path", .string): break
                        default: throw fail("experts[\(i)]: unexpected '\(k.prefix(32))' (name, path: strings)")
                        }
                    }
                    guard let name else { throw fail("experts[\(i)] needs a name") }
                    guard LoRAComposition.isPlainName(name) else {
                        throw fail("experts[\(i)]: '\(name.prefix(64))' is not a plain adapter name under the root")
                    }
                    return name
                }
            case ("format", _), ("version", _), ("granularity", _), ("gate_input", _), ("balance_weight", _), ("base_model", _),
                 ("num_layers", _), ("hidden_size", _), ("experts", _):
                throw fail("\(key) has the wrong type")
            default:
                throw fail("unknown key '\(key.prefix(64))'")
            }
        }
        guard format == "dlora-mole" else { throw fail("format must be \"dlora-mole\"") }
        guard let experts else { throw fail("missing experts") }
        guard Set(experts).count == experts.count else { throw fail("an expert appears twice") }
        guard let layers, let hidden else { throw fail("missing num_layers or hidden_size") }
        guard layers == base.numLayers, hidden == base.hiddenSize else {
            throw fail("made for a model with \(layers) layers of width \(hidden); this one has \(base.numLayers) of \(base.hiddenSize)")
        }
        return Config(experts: experts, granularity: granularity, numLayers: layers, hiddenSize: hidden)
    }

    /// Reads and validates the gates: for every gate unit of the granularity in use (`inUse`; nil: all) exactly its
    /// weight (F32, N × the unit's input width, finite, |w| ≤ 1e4) and temperature (F32, [1], within
    /// `temperatureRange`) — `layers.{l}.gate.*` per block, `layers.{l}.attn_gate.*` and `layers.{l}.mlp_gate.*` per
    /// sub-layer, `gate.*` for the network, `layers.{l}.{q_proj…down_proj}.gate.*` per adapted projection. A unit
    /// not in use gets no values (and a temperature of 1).
    public static func gates(_ file: SafetensorsFile, experts n: Int, granularity: MoLEGranularity = .block, inUse: [Bool]? = nil,
                             config c: ModelConfig, adapter: String) throws -> (weights: [[Float]], temperatures: [Float]) {
        func fail(_ problem: String, tensor: String? = nil) -> AdapterError {
            AdapterError(adapter: adapter, tensor: tensor, problem: "\(gatesFile): " + problem)
        }
        let inUse = inUse ?? Array(repeating: true, count: granularity.units(layers: c.numLayers))
        precondition(inUse.count == granularity.units(layers: c.numLayers))
        let units = inUse.filter { $0 }.count
        guard file.tensors.count == 2 * units else {
            throw fail("holds \(file.tensors.count) tensors; expected \(2 * units) (a weight and a temperature per \(granularity.rawValue) gate)")
        }
        func floats(_ name: String, shape: [Int]) throws -> [Float] {
            guard let info = file.tensors[name] else { throw fail("missing", tensor: name) }
            guard info.dtype == .f32 else { throw fail("is \(info.dtype), expected F32", tensor: name) }
            guard info.shape == shape else { throw fail("has shape \(info.shape), expected \(shape)", tensor: name) }
            let count = shape.reduce(1, *)
            let p = UnsafeRawPointer(file.file.base + info.offset)
            return (0..<count).map { p.loadUnaligned(fromByteOffset: $0 * 4, as: Float.self) }
        }
        var weights: [[Float]] = [], temperatures: [Float] = []
        for (u, used) in inUse.enumerated() {
            guard used else {
                weights.append([])
                temperatures.append(1)
                continue
            }
            let (wName, tName) = granularity.tensorNames(unit: u)
            let w = try floats(wName, shape: [n, granularity.inputWidth(unit: u, config: c)])
            guard w.allSatisfy({ $0.isFinite && abs($0) <= maxAbsGateWeight }) else {
                throw fail("values must be finite and at most \(maxAbsGateWeight) in size", tensor: wName)
            }
            let tau = try floats(tName, shape: [1])[0]
            guard temperatureRange.contains(tau) else {
                throw fail("the temperature \(tau) is outside \(temperatureRange.lowerBound)…\(temperatureRange.upperBound)", tensor: tName)
            }
            weights.append(w)
            temperatures.append(tau)
        }
        return (weights, temperatures)
    }

    /// The mask of the experts named (`mole_experts`): each one of the composition's, at least one, no repeats.
    public static func mask(_ names: [String], of gating: MoLEGating, adapter: String) throws -> UInt64 {
        guard !names.isEmpty else { throw AdapterError(adapter: adapter, problem: "mole_experts must name at least one expert") }
        var mask: UInt64 = 0
        for name in names {
            guard let i = gating.experts.firstIndex(of: name) else {
                throw AdapterError(adapter: adapter, problem: "mole_experts: '\(name.prefix(64))' is not one of its experts (\(gating.experts.joined(separator: ", ")))")
            }
            guard mask & (1 << UInt64(i)) == 0 else { throw AdapterError(adapter: adapter, problem: "mole_experts: '\(name.prefix(64))' appears twice") }
            mask |= 1 << UInt64(i)
        }
        return mask
    }

    /// The composition: the experts stacked (weights 1) with the gates.
    public static func compose(_ experts: [LoRAWeights], names: [String], granularity: MoLEGranularity = .block, weights: [[Float]],
                               temperatures: [Float], config c: ModelConfig, name: String, id: AdapterID) throws -> LoRAWeights {
        let (modules, columns) = try LoRAComposition.stack(experts.map { ($0, 1) }, name: name)
        let gating = MoLEGating(experts: names, granularity: granularity, weights: weights, temperatures: temperatures,
                                config: c, columns: columns)
        return LoRAWeights(name: name, scale: 1, modules: modules, id: id, gating: gating)
    }
}
