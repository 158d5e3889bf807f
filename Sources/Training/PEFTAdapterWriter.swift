import Foundation
import Adapters
import Models

/// A problem writing an adapter.
public struct AdapterWriteError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Writes a trained adapter as a PEFT directory — `adapter_config.json` and `adapter_model.safetensors`
/// with PEFT's tensor names (`base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight`, …) — that
/// `peft.PeftModel.from_pretrained` and our `AdapterLoader` both read. PEFT adapters are in the Hugging
/// Face layout: when the base is a llama.cpp GGUF (Q/K rows permuted for adjacent-pair RoPE) the B rows of
/// q_proj and k_proj are permuted back, as `AdapterLoader` permutes them forward when it loads.
public enum PEFTAdapterWriter {
    public static func write(_ lora: LoRAParameters, to directory: String, baseModelName: String) throws {
        let fm = FileManager.default
        var isDirectory: ObjCBool = false
        if fm.fileExists(atPath: directory, isDirectory: &isDirectory) {
            guard isDirectory.boolValue else { throw AdapterWriteError("\(directory) exists and is not a directory") }
        } else {
            do {
                try fm.createDirectory(atPath: directory, withIntermediateDirectories: true)
            } catch {
                throw AdapterWriteError("\(directory): cannot create the directory (\(error.localizedDescription))")
            }
        }
        let c = lora.config
        var tensors: [(name: String, shape: [Int], values: [Float])] = []
        for (li, layer) in lora.modules.enumerated() {
            for m in layer.compactMap({ $0 }) {
                let block = [.gate, .up, .down].contains(m.target) ? "mlp" : "self_attn"
                let stem = "base_model.model.model.layers.\(li).\(block).\(m.target.peftName)"
                var b = m.bValues
                if c.ropeStyle == .adjacentPairs && (m.target == .q || m.target == .k) {
                    b = AdapterLoader.permuteRows(b, rowLength: m.rank, heads: m.target == .q ? c.numHeads : c.numKVHeads,
                                                  headDim: c.headDim, inverse: true)
                }
                tensors.append((stem + ".lora_A.weight", [m.rank, m.inFeatures], m.aValues))
                tensors.append((stem + ".lora_B.weight", [m.outFeatures, m.rank], b))
            }
        }
        let config: [String: Any] = [
            "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": lora.rank, "lora_alpha": lora.alpha, "lora_dropout": 0.0,
            "target_modules": lora.targets.map(\.peftName), "bias": "none", "base_model_name_or_path": baseModelName,
            "fan_in_fan_out": false, "use_rslora": false, "use_dora": false, "inference_mode": true,
            "init_lora_weights": true, "modules_to_save": NSNull(), "rank_pattern": [String: Any](),
            "alpha_pattern": [String: Any](), "layers_to_transform": NSNull(), "revision": NSNull(),
        ]
        let json = try JSONSerialization.data(withJSONObject: config, options: [.prettyPrinted, .sortedKeys])
        try atomicWrite(json, to: directory + "/adapter_config.json")
        try atomicWrite(SafetensorsWriter.encode(tensors), to: directory + "/adapter_model.safetensors")
    }

    static func atomicWrite(_ data: Data, to path: String) throws {
        do {
            try data.write(to: URL(fileURLWithPath: path), options: .atomic)
        } catch {
            throw AdapterWriteError("\(path): cannot write (\(error.localizedDescription))")
        }
    }
}

/// The safetensors format (huggingface/safetensors): an 8-byte little-endian header length, a JSON header
/// mapping each tensor name to {dtype, shape, data_offsets [begin, end)} relative to the data, then the data.
/// F32 only; the header is padded with spaces to a multiple of 8 bytes, as the reference writer does.
public enum SafetensorsWriter {
    public static func encode(_ tensors: [(name: String, shape: [Int], values: [Float])], metadata: [String: String] = ["format": "pt"]) throws -> Data {
        var header: [String: Any] = ["__metadata__": metadata]
        var offset = 0
        for t in tensors {
            guard t.shape.reduce(1, *) == t.values.count else {
                throw AdapterWriteError("tensor \(t.name): shape \(t.shape) does not hold \(t.values.count) values")
            }
            guard header[t.name] == nil else { throw AdapterWriteError("tensor \(t.name) appears twice") }
            header[t.name] = ["dtype": "F32", "shape": t.shape, "data_offsets": [offset, offset + 4 * t.values.count]]
            offset += 4 * t.values.count
        }
        var headerBytes = try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])
        while headerBytes.count % 8 != 0 { headerBytes.append(0x20) }
        var out = Data()
        out.reserveCapacity(8 + headerBytes.count + offset)
        withUnsafeBytes(of: UInt64(headerBytes.count).littleEndian) { out.append(contentsOf: $0) }
        out.append(headerBytes)
        for t in tensors {
            for v in t.values { withUnsafeBytes(of: v.bitPattern.littleEndian) { out.append(contentsOf: $0) } }
        }
        return out
    }
}
