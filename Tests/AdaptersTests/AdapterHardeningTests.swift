import Foundation
import Models
import Testing

@testable import Adapters

/// Adapters that would make the base's outputs non-finite, or whose config does not match their tensors, are
/// refused at load with a one-line error.
@Suite struct AdapterHardeningTests {
    static let config = AdapterErrorTests.config
    static let good = AdapterErrorTests.good

    /// Writes an adapter at a path named `file` in a fresh directory, loads it, and returns the refusal.
    static func error(file: String, _ write: (String) throws -> Void) throws -> AdapterError? {
        let dir = try TempDir()
        let path = dir.path(file)
        try write(path)
        do {
            _ = try AdapterLoader.load(path: path, base: config)
            return nil
        } catch let e as AdapterError {
            return e
        }
    }

    static func expectRefused(_ mention: String, tensor: String? = nil, file: String = "bad", sourceLocation: SourceLocation = #_sourceLocation,
                              _ write: (String) throws -> Void) throws {
        let e = try error(file: file, write)
        #expect(e != nil, "expected a refusal mentioning '\(mention)'", sourceLocation: sourceLocation)
        guard let e else { return }
        #expect(e.problem.contains(mention), "got: \(e)", sourceLocation: sourceLocation)
        if let tensor { #expect(e.tensor == tensor, "got: \(e)", sourceLocation: sourceLocation) }
        #expect(!e.description.contains("\n"), sourceLocation: sourceLocation)
    }

    /// The PEFT config with one key's value replaced (or added).
    static func peftConfig(_ key: String, _ json: String) -> String {
        let base = good.peftConfig
        if let r = base.range(of: "\"\(key)\": ") {
            let end = base[r.upperBound...].firstIndex { $0 == "," || $0 == "\n" || $0 == "}" }!
            return base.replacingCharacters(in: r.upperBound..<end, with: json)
        }
        return base.replacingOccurrences(of: "\"peft_type\"", with: "\"\(key)\": \(json), \"peft_type\"")
    }

    static func tensors(scaledBy factor: Float, only suffix: String? = nil) -> [(String, [Int], [Float])] {
        good.peftTensors(config).map { name, shape, values in
            suffix.map { name.hasSuffix($0) } ?? true ? (name, shape, values.map { $0 * factor }) : (name, shape, values)
        }
    }

    @Test func peftScalingAndMagnitudesAreBounded() throws {
        let c = Self.config
        // lora_alpha 1e300: finite in JSON, the scaling is absurd (every logit would be NaN).
        try Self.expectRefused("the scaling") { try Self.good.writePEFT(to: $0, config: c, adapterConfig: Self.peftConfig("lora_alpha", "1e300")) }
        try Self.expectRefused("lora_alpha must be a number") { try Self.good.writePEFT(to: $0, config: c, adapterConfig: Self.peftConfig("lora_alpha", "\"16\"")) }
        try Self.expectRefused("lora_alpha must be a number") { try Self.good.writePEFT(to: $0, config: c, adapterConfig: Self.peftConfig("lora_alpha", "true")) }
        try Self.expectRefused("not valid JSON") { try Self.good.writePEFT(to: $0, config: c, adapterConfig: Self.peftConfig("lora_alpha", "1e400")) }
        try Self.expectRefused("the scaling") { try Self.good.writePEFT(to: $0, config: c, adapterConfig: Self.peftConfig("lora_alpha", "-5000")) }
        // Weights of 1e30 (or NaN, or a moderate size that still overflows through the scaling and the rank).
        try Self.expectRefused("lora_A holds a value of magnitude") { try Self.good.writePEFT(to: $0, config: c, tensors: Self.tensors(scaledBy: 1e30, only: "lora_A.weight")) }
        try Self.expectRefused("lora_B holds a value of magnitude") { try Self.good.writePEFT(to: $0, config: c, tensors: Self.tensors(scaledBy: 1e30, only: "lora_B.weight")) }
        try Self.expectRefused("non-finite") { try Self.good.writePEFT(to: $0, config: c, tensors: Self.tensors(scaledBy: .nan, only: "q_proj.lora_B.weight")) }
        try Self.expectRefused("non-finite") { try Self.good.writePEFT(to: $0, config: c, tensors: Self.tensors(scaledBy: .infinity), dtype: "BF16") }
        try Self.expectRefused("weights too large") { try Self.good.writePEFT(to: $0, config: c, tensors: Self.tensors(scaledBy: 3000)) }
        // Just inside the bounds loads (scale 2, rank 4, |A| ≤ 0.0625·50, |B| ≤ 0.5·50: bound 2·4·3.1·25 = 625).
        #expect(try AdapterErrorTests.error { try Self.good.writePEFT(to: $0, config: c, tensors: Self.tensors(scaledBy: 50)) } == nil)
    }

    @Test func peftConfigIsStrict() throws {
        let c = Self.config
        // r must match the tensors' rank (they have rank 4).
        try Self.expectRefused("does not match r = 8", tensor: "base_model.model.model.layers.0.self_attn.q_proj") {
            try Self.good.writePEFT(to: $0, config: c, adapterConfig: Self.peftConfig("r", "8"))
        }
        try Self.expectRefused("r must be an integer") { try Self.good.writePEFT(to: $0, config: c, adapterConfig: Self.peftConfig("r", "4.0")) }
        try Self.expectRefused("rank_pattern") { try Self.good.writePEFT(to: $0, config: c, adapterConfig: Self.peftConfig("rank_pattern", #"{"q_proj": 8}"#)) }
        try Self.expectRefused("alpha_pattern") { try Self.good.writePEFT(to: $0, config: c, adapterConfig: Self.peftConfig("alpha_pattern", #"{"v_proj": 32}"#)) }
        try Self.expectRefused("rank_pattern") { try Self.good.writePEFT(to: $0, config: c, adapterConfig: Self.peftConfig("rank_pattern", #""q_proj""#)) }
        try Self.expectRefused("use_rslora must be true or false") { try Self.good.writePEFT(to: $0, config: c, adapterConfig: Self.peftConfig("use_rslora", #""yes""#)) }
        try Self.expectRefused("duplicate key 'r'") {
            try Self.good.writePEFT(to: $0, config: c, adapterConfig: Self.good.peftConfig.replacingOccurrences(of: "\"peft_type\"", with: "\"r\": 4, \"peft_type\""))
        }
        // A huge adapter_config.json is refused before it is read.
        let padding = String(repeating: " ", count: AdapterLoader.maxConfigBytes)
        try Self.expectRefused("more than the \(AdapterLoader.maxConfigBytes) allowed") {
            try Self.good.writePEFT(to: $0, config: c, adapterConfig: Self.good.peftConfig + padding)
        }
        // Empty patterns are fine; a missing lora_alpha is PEFT's default (8): scale 8 / 4.
        let dir = try TempDir()
        try Self.good.writePEFT(to: dir.path("x"), config: c,
                                adapterConfig: Self.peftConfig("lora_alpha", "8").replacingOccurrences(of: "\"lora_alpha\": 8, ", with: "\"rank_pattern\": {}, \"alpha_pattern\": null, "))
        #expect(!(try String(contentsOfFile: dir.path("x") + "/adapter_config.json", encoding: .utf8)).contains("lora_alpha"))
        #expect(try AdapterLoader.load(path: dir.path("x"), base: c).scale == 2)
    }

    /// The GGUF LoRA float alpha: as f64 (finite 1e300), f32 infinity, a string; 1e30 weights; mixed ranks.
    @Test func ggufScalingMagnitudesAndRanks() throws {
        let c = Self.config
        let le = { (v: UInt64) in TestAdapter.le(v) }
        try Self.expectRefused("the scaling", file: "a.gguf") { try Self.good.writeGGUF(to: $0, config: c, alpha: (12, le((1e300 as Double).bitPattern))) }
        try Self.expectRefused("adapter.lora.alpha is not a finite number", file: "a.gguf") {
            try Self.good.writeGGUF(to: $0, config: c, alpha: (6, TestAdapter.le(Float.infinity.bitPattern))); 
        }
        try Self.expectRefused("adapter.lora.alpha is missing or not a number", file: "a.gguf") {
            try Self.good.writeGGUF(to: $0, config: c, alpha: (8, le(2) + Array("16".utf8))); 
        }
        let huge = Self.good.ggufTensors(c).map { ($0.0, $0.1, $0.0.hasSuffix("lora_b") ? $0.2.map { $0 * 1e30 } : $0.2) }
        try Self.expectRefused("lora_B holds a value of magnitude", file: "a.gguf") { try Self.good.writeGGUF(to: $0, config: c, tensors: huge) }
        let r8 = TestAdapter(config: c, rank: 8, alpha: 8, targets: [.v], seed: 3)
        let mixed = TestAdapter(config: c, rank: 4, alpha: 8, targets: [.q], seed: 2).ggufTensors(c) + r8.ggufTensors(c)
        try Self.expectRefused("mixed ranks", file: "a.gguf") { try Self.good.writeGGUF(to: $0, config: c, tensors: mixed) }
        // llama.cpp: alpha 0 means no scaling.
        let dir = try TempDir()
        try Self.good.writeGGUF(to: dir.path("zero.gguf"), config: c, alpha: (6, TestAdapter.le(Float(0).bitPattern)))
        #expect(try AdapterLoader.load(path: dir.path("zero.gguf"), base: c).scale == 1)
        try Self.good.writeGGUF(to: dir.path("ok.gguf"), config: c)
        #expect(try AdapterLoader.load(path: dir.path("ok.gguf"), base: c).scale == 2)
    }
}
