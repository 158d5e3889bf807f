import Foundation
import Kernels
import Engine
import Models
import TestSupport

@testable import Adapters

enum Fixtures {
    static let root = FixtureFiles.root
    static func model(_ name: String, _ variant: String) -> String { FixtureFiles.checkpoint(model: name, variant: variant) }
    /// The default model, where the CLI finds it (`DefaultModel`).
    static var smolPath: String { DefaultModel.path }
}

/// A scratch directory for adapter files, removed when released.
typealias TempDir = TemporaryDirectory

/// Random LoRA weights in Hugging Face layout, written as a PEFT directory or a llama.cpp GGUF LoRA.
struct TestAdapter {
    var rank: Int
    var alpha: Double
    var rslora = false
    var targets: [LoRATarget]
    /// [layer][target] → (A: rank × in, B: out × rank), HF layout.
    var weights: [[LoRATarget: (a: [Float], b: [Float])]]

    init(config: ModelConfig, rank: Int, alpha: Double, rslora: Bool = false, targets: [LoRATarget], seed: UInt64) {
        self.rank = rank
        self.alpha = alpha
        self.rslora = rslora
        self.targets = targets
        var state = seed &+ 0x9E37_79B9_7F4A_7C15
        func uniform() -> Float {
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return Float(state >> 40) / Float(1 << 24) * 2 - 1
        }
        weights = (0..<config.numLayers).map { _ in
            var layer: [LoRATarget: (a: [Float], b: [Float])] = [:]
            for t in targets {
                let (rows, cols) = t.shape(config)
                layer[t] = ((0..<(rank * cols)).map { _ in uniform() * 0.5 / Float(cols).squareRoot() },
                            (0..<(rows * rank)).map { _ in uniform() * 0.5 })
            }
            return layer
        }
    }

    static func le<T: FixedWidthInteger>(_ v: T) -> [UInt8] { withUnsafeBytes(of: v.littleEndian, Array.init) }
    static func floats(_ a: [Float]) -> [UInt8] { a.flatMap { le($0.bitPattern) } }

    /// bf16 bits of x, rounded to nearest even.
    static func bf16(_ x: Float) -> UInt16 {
        let bits = x.bitPattern
        return UInt16(truncatingIfNeeded: (bits &+ 0x7FFF &+ ((bits >> 16) & 1)) >> 16)
    }

    /// x rounded to bf16, as f32.
    static func roundedBF16(_ x: Float) -> Float { Float(bitPattern: UInt32(bf16(x)) << 16) }

    static func safetensors(_ tensors: [(String, [Int], [Float])], header override: String? = nil, dtype: String = "F32") -> [UInt8] {
        var entries: [String] = []
        var data: [UInt8] = []
        for (name, shape, values) in tensors {
            let bytes = dtype == "BF16" ? values.flatMap { Self.le(Self.bf16($0)) } : Self.floats(values)
            entries.append("\"\(name)\":{\"dtype\":\"\(dtype)\",\"shape\":\(shape),\"data_offsets\":[\(data.count),\(data.count + bytes.count)]}")
            data += bytes
        }
        let header = override ?? "{" + entries.joined(separator: ",") + "}"
        return Self.le(UInt64(header.utf8.count)) + Array(header.utf8) + data
    }

    func peftTensors(_ config: ModelConfig) -> [(String, [Int], [Float])] {
        var out: [(String, [Int], [Float])] = []
        for (li, layer) in weights.enumerated() {
            for t in targets {
                guard let w = layer[t] else { continue }
                let block = t == .gate || t == .up || t == .down ? "mlp" : "self_attn"
                let stem = "base_model.model.model.layers.\(li).\(block).\(t.peftName)"
                let (rows, cols) = t.shape(config)
                out.append((stem + ".lora_A.weight", [rank, cols], w.a))
                out.append((stem + ".lora_B.weight", [rows, rank], w.b))
            }
        }
        return out
    }

    var peftConfig: String {
        """
        {"peft_type": "LORA", "r": \(rank), "lora_alpha": \(alpha), "use_rslora": \(rslora), "lora_dropout": 0.0,
         "target_modules": [\(targets.map { "\"\($0.peftName)\"" }.joined(separator: ", "))], "bias": "none",
         "modules_to_save": null, "task_type": "CAUSAL_LM", "fan_in_fan_out": false}
        """
    }

    /// Writes a PEFT directory; `tensors` and `config` can be replaced to make broken adapters.
    func writePEFT(to dir: String, config: ModelConfig, tensors: [(String, [Int], [Float])]? = nil,
                   adapterConfig: String? = nil, header: String? = nil, dtype: String = "F32") throws {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try Data((adapterConfig ?? peftConfig).utf8).write(to: URL(fileURLWithPath: dir + "/adapter_config.json"))
        try Data(Self.safetensors(tensors ?? peftTensors(config), header: header, dtype: dtype))
            .write(to: URL(fileURLWithPath: dir + "/adapter_model.safetensors"))
    }

    /// llama.cpp GGUF LoRA tensors: Q/K B rows permuted to the adjacent-pair layout (for arch llama).
    func ggufTensors(_ config: ModelConfig) -> [(String, [UInt64], [Float])] {
        var tensors: [(String, [UInt64], [Float])] = []
        for (li, layer) in weights.enumerated() {
            for t in targets {
                guard let w = layer[t] else { continue }
                let (rows, cols) = t.shape(config)
                var b = w.b
                if config.architecture != .qwen2 && (t == .q || t == .k) {
                    b = AdapterLoader.permuteRows(b, rowLength: rank, heads: t == .q ? config.numHeads : config.numKVHeads,
                                                  headDim: config.headDim, inverse: false)
                }
                tensors.append(("blk.\(li).\(t.ggufName).weight.lora_a", [UInt64(cols), UInt64(rank)], w.a))
                tensors.append(("blk.\(li).\(t.ggufName).weight.lora_b", [UInt64(rank), UInt64(rows)], b))
            }
        }
        return tensors
    }

    /// Writes a llama.cpp GGUF LoRA, alpha folded for rsLoRA so that alpha'/r = alpha/√r. `tensors` and
    /// `alpha` (GGUF value type and its bytes) can be replaced to make broken adapters.
    func writeGGUF(to path: String, config: ModelConfig, tensors override: [(String, [UInt64], [Float])]? = nil,
                   alpha alphaOverride: (type: UInt32, bytes: [UInt8])? = nil) throws {
        let tensors = override ?? ggufTensors(config)
        let effectiveAlpha = rslora ? alpha * Double(rank).squareRoot() : alpha
        func str(_ s: String) -> [UInt8] { Self.le(UInt64(s.utf8.count)) + Array(s.utf8) }
        var out = Array("GGUF".utf8) + Self.le(UInt32(3)) + Self.le(UInt64(tensors.count)) + Self.le(UInt64(4))
        out += str("general.architecture") + Self.le(UInt32(8)) + str(config.architecture.rawValue)
        out += str("general.type") + Self.le(UInt32(8)) + str("adapter")
        out += str("adapter.type") + Self.le(UInt32(8)) + str("lora")
        let (alphaType, alphaBytes) = alphaOverride ?? (6, Self.le(Float(effectiveAlpha).bitPattern))
        out += str("adapter.lora.alpha") + Self.le(alphaType) + alphaBytes
        var offset = 0
        for (name, dims, values) in tensors {
            out += str(name) + Self.le(UInt32(2)) + dims.flatMap(Self.le) + Self.le(UInt32(0)) + Self.le(UInt64(offset))
            offset += (values.count * 4 + 31) / 32 * 32
        }
        while out.count % 32 != 0 { out.append(0) }
        for (_, _, values) in tensors {
            out += Self.floats(values)
            while out.count % 32 != 0 { out.append(0) }
        }
        try Data(out).write(to: URL(fileURLWithPath: path))
    }
}

/// Logits of a prompt through a model (with optional adapter slot) using a private KV cache.
func promptLogits(_ model: LlamaModel, _ tokens: [Int], lora: LoRASlots? = nil, slot: Int32 = -1, scale: Float = 1) -> [[Float]] {
    let blockSize = 16
    let blocks = (tokens.count + blockSize - 1) / blockSize
    // The engine's runner (its KV storage, workspace and logits) over one sequence laid out here.
    let runner = Engine.ModelRunner(model: model, numBlocks: blocks, blockSize: blockSize, maxBatchTokens: 64, adapterSlots: 1)
    var batch = ForwardBatch()
    batch.append(sequence: tokens, start: 0, blockTable: (0..<blocks).map(Int32.init), blockSize: blockSize, logits: .all,
                 adapterSlot: slot, adapterScale: scale)
    _ = runner.forward(batch, lora: lora)
    return (0..<tokens.count).map { Array(runner.logitsRow($0)) }
}

