import Foundation
import Synchronization
import Kernels
import Models
import Testing
import TestSupport

@testable import Adapters

/// Bad adapters are refused with an error that names the adapter, the tensor (when there is one) and the
/// problem.
@Suite struct AdapterErrorTests {
    static let config = try! openCheckpoint(path: Fixtures.model("tiny-llama", "hf")).config

    /// Writes an adapter at a path named `file` in a fresh directory, loads it, and returns the refusal (nil: it loaded).
    static func error(file: String = "bad", _ write: (String) throws -> Void) throws -> AdapterError? {
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

    static let good = TestAdapter(config: config, rank: 4, alpha: 8, targets: [.q, .v], seed: 9)

    @Test func theGoodOneLoads() throws {
        #expect(try Self.error { try Self.good.writePEFT(to: $0, config: Self.config) } == nil)
    }

    @Test func peftProblems() throws {
        let c = Self.config
        var tensors = Self.good.peftTensors(c)
        // Rank mismatch between A and B.
        let bIndex = tensors.firstIndex { $0.0.hasSuffix("layers.0.self_attn.q_proj.lora_B.weight") }!
        tensors[bIndex] = (tensors[bIndex].0, [64, 3], Array(repeating: 0.1, count: 64 * 3))
        var e = try Self.error { try Self.good.writePEFT(to: $0, config: c, tensors: tensors) }
        #expect(e?.tensor == "base_model.model.model.layers.0.self_attn.q_proj" && e?.problem.contains("lora_B is [64, 3]") == true, "\(String(describing: e))")

        // Shape mismatch with the base (in features).
        tensors = Self.good.peftTensors(c)
        let aIndex = tensors.firstIndex { $0.0.hasSuffix("layers.1.self_attn.v_proj.lora_A.weight") }!
        tensors[aIndex] = (tensors[aIndex].0, [4, 32], Array(repeating: 0.1, count: 4 * 32))
        e = try Self.error { try Self.good.writePEFT(to: $0, config: c, tensors: tensors) }
        #expect(e?.problem.contains("expected [4, 64]") == true, "\(String(describing: e))")

        // Missing half of a pair.
        tensors = Self.good.peftTensors(c).filter { !$0.0.hasSuffix("layers.1.self_attn.q_proj.lora_B.weight") }
        e = try Self.error { try Self.good.writePEFT(to: $0, config: c, tensors: tensors) }
        #expect(e?.tensor == "base_model.model.model.layers.1.self_attn.q_proj" && e?.problem.contains("not the other") == true)

        // A layer the base does not have.
        tensors = Self.good.peftTensors(c).map { ($0.0.replacingOccurrences(of: "layers.1.", with: "layers.7."), $0.1, $0.2) }
        e = try Self.error { try Self.good.writePEFT(to: $0, config: c, tensors: tensors) }
        #expect(e?.problem.contains("layer 7 does not exist (the base model has 2 layers)") == true)

        // Embedding targets, DoRA, modules_to_save, pickles, corrupted headers, unknown formats.
        tensors = Self.good.peftTensors(c) + [("base_model.model.model.embed_tokens.lora_embedding_A", [4, 320], Array(repeating: 0, count: 1280))]
        e = try Self.error { try Self.good.writePEFT(to: $0, config: c, tensors: tensors) }
        #expect(e?.problem.contains("embedding") == true)
        e = try Self.error { try Self.good.writePEFT(to: $0, config: c, adapterConfig: Self.good.peftConfig.replacingOccurrences(of: "\"bias\"", with: "\"use_dora\": true, \"bias\"")) }
        #expect(e?.problem.contains("DoRA") == true)
        e = try Self.error { try Self.good.writePEFT(to: $0, config: c, adapterConfig: Self.good.peftConfig.replacingOccurrences(of: "\"modules_to_save\": null", with: "\"modules_to_save\": [\"lm_head\"]")) }
        #expect(e?.problem.contains("modules_to_save") == true)
        e = try Self.error { try Self.good.writePEFT(to: $0, config: c, header: "{ broken") }
        #expect(e?.problem.contains("adapter_model.safetensors: header is not a JSON object") == true, "\(String(describing: e))")
        e = try Self.error { dir in
            try Self.good.writePEFT(to: dir, config: c)
            try FileManager.default.moveItem(atPath: dir + "/adapter_model.safetensors", toPath: dir + "/adapter_model.bin")
        }
        #expect(e?.problem.contains("convert it to safetensors") == true)
        e = try Self.error { try Data("hello".utf8).write(to: URL(fileURLWithPath: $0 + ".txt")); try Data().write(to: URL(fileURLWithPath: $0)) }
        #expect(e?.problem.contains("unknown adapter format") == true)
        e = try Self.error { try Self.good.writePEFT(to: $0, config: c, adapterConfig: #"{"peft_type": "LORA", "r": 0}"#) }
        #expect(e?.problem.contains("r must be") == true)
    }

    /// Tensor names map to one module each, strictly: `[base_model.model.][model.]layers.N.<block>.<module>`. A second
    /// name for a module that is already filled (an unprefixed copy), a signed or padded layer number (`layers.00`), a
    /// projection under the wrong block and a nested `layers` are refused (each had loaded, the last tensor read winning,
    /// up to 12 logprob from PEFT); PEFT's `.default.` names are the plain ones; a half-missing pair names the half it has.
    @Test func peftTensorNamesMapToOneModuleEach() throws {
        let c = Self.config
        let plain = Self.good.peftTensors(c)
        func refusal(_ tensors: [(String, [Int], [Float])]) throws -> AdapterError? {
            try Self.error { try Self.good.writePEFT(to: $0, config: c, tensors: tensors) }
        }
        func renamed(_ from: String, _ to: String) -> [(String, [Int], [Float])] {
            plain.map { ($0.0.replacingOccurrences(of: from, with: to), $0.1, $0.2) }
        }
        // Unprefixed copies (other values) beside PEFT's names, and a padded duplicate of layer 0.
        var e = try refusal(plain + plain.map { ($0.0.replacingOccurrences(of: "base_model.model.", with: ""), $0.1, $0.2.map { $0 * 2 }) })
        #expect(e?.problem.contains("names the same module as") == true, "\(String(describing: e))")
        e = try refusal(plain + plain.filter { $0.0.contains("layers.0.") }.map { ($0.0.replacingOccurrences(of: "base_model.model.model.", with: ""), $0.1, $0.2) })
        #expect(e?.problem.contains("names the same module as") == true, "\(String(describing: e))")
        e = try refusal(plain + plain.filter { $0.0.contains("layers.0.") }.map { ($0.0.replacingOccurrences(of: "layers.0.", with: "layers.00."), $0.1, $0.2) })
        #expect(e?.problem.contains("cannot map to a base layer") == true, "\(String(describing: e))")
        for (from, to) in [("layers.1.", "layers.+1."), ("layers.1.", "layers.01."), ("self_attn.q_proj", "mlp.q_proj"),
                           ("model.layers.1.", "model.layers.0.vision.layers.1."), ("layers.1.self_attn", "layers.1.attn")] {
            e = try refusal(renamed(from, to))
            #expect(e?.problem.contains("cannot map to a base layer") == true, "\(to): \(String(describing: e))")
        }
        // The plain forms load: PEFT's prefix, transformers' model.layers…, and bare layers….
        for (from, to) in [("base_model.model.", ""), ("base_model.model.model.", "")] {
            #expect(try refusal(renamed(from, to)) == nil, "\(to)")
        }
        // `.default.` names: the same adapter as the plain ones (every module's A and B bit for bit).
        let dir = try TempDir()
        try Self.good.writePEFT(to: dir.path("plain"), config: c, tensors: plain)
        try Self.good.writePEFT(to: dir.path("named"), config: c,
                                tensors: plain.map { ($0.0.replacingOccurrences(of: ".weight", with: ".default.weight"), $0.1, $0.2) })
        let a = try AdapterLoader.load(path: dir.path("plain"), base: c), b = try AdapterLoader.load(path: dir.path("named"), base: c)
        var compared = 0
        for (ma, mb) in zip(a.modules.joined(), b.modules.joined()) {
            #expect((ma == nil) == (mb == nil))
            guard let ma, let mb else { continue }
            func aBytes(_ m: LoRAModule) -> [UInt8] { Array(UnsafeRawBufferPointer(start: m.a.data, count: m.a.byteCount)) }
            func bValues(_ m: LoRAModule) -> [UInt32] {
                var v = [Float](repeating: 0, count: m.outFeatures * m.paddedRank)
                v.withUnsafeMutableBufferPointer { m.b.unpack(into: $0.baseAddress!) }
                return v.map(\.bitPattern)
            }
            #expect(aBytes(ma) == aBytes(mb) && bValues(ma) == bValues(mb))
            compared += 1
        }
        #expect(compared == plain.count / 2)
        // Both spellings of one tensor: refused.
        e = try refusal(plain + plain.prefix(1).map { ($0.0.replacingOccurrences(of: ".weight", with: ".default.weight"), $0.1, $0.2) })
        #expect(e?.problem.contains("twice") == true, "\(String(describing: e))")
        // A pair missing its B names the A it has, and the other way round.
        for (drop, has) in [("lora_B", "lora_A"), ("lora_A", "lora_B")] {
            e = try refusal(plain.filter { !$0.0.hasSuffix("layers.1.self_attn.q_proj.\(drop).weight") })
            #expect(e?.problem.contains("has \(has) but not the other") == true, "\(String(describing: e))")
        }
    }

    /// A config that contradicts the file's tensors (PEFT would build no module for them and ignore them, so serving
    /// them would differ from PEFT), PEFT's LoRA variants (a different forward pass), base-modifying inits, and loose
    /// types are refused; the forms PEFT accepts with these tensors load.
    @Test func peftConfigContradictionsAndVariants() throws {
        let c = Self.config
        func configWith(_ edit: String) -> String { Self.good.peftConfig.replacingOccurrences(of: "\"bias\"", with: edit + ", \"bias\"") }
        func refusal(_ config: String) throws -> AdapterError? { try Self.error { try Self.good.writePEFT(to: $0, config: c, adapterConfig: config) } }
        let targets = Self.good.peftConfig.replacingOccurrences(of: #""target_modules": ["q_proj", "v_proj"]"#, with: #""target_modules": ["q_proj"]"#)
        #expect(targets != Self.good.peftConfig)
        var e = try refusal(targets)
        #expect(e?.tensor?.hasSuffix("self_attn.v_proj") == true && e?.problem.contains("does not target this module") == true, "\(String(describing: e))")
        e = try refusal(configWith(#""exclude_modules": ["v_proj"]"#))
        #expect(e?.problem.contains("exclude_modules names it ('v_proj')") == true, "\(String(describing: e))")
        e = try refusal(configWith(#""layers_to_transform": [1]"#))
        #expect(e?.tensor?.contains("layers.0.") == true && e?.problem.contains("layers_to_transform does not include layer 0") == true, "\(String(describing: e))")
        // PEFT: an empty layers_to_transform transforms every layer, and a module target_modules names by its whole path
        // is not filtered by layer (both were refused). The tiny adapter has q and v in layers 0 and 1.
        let wholePaths = Self.good.peftConfig.replacingOccurrences(
            of: #""target_modules": ["q_proj", "v_proj"]"#,
            with: #""target_modules": ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj", "q_proj", "v_proj"], "layers_to_transform": [1]"#)
        #expect(wholePaths != Self.good.peftConfig)
        for fine in [configWith(#""layers_to_transform": []"#), wholePaths] {
            let e = try refusal(fine)
            #expect(e == nil, "\(fine): \(String(describing: e))")
        }
        for fine in [configWith(#""layers_to_transform": [0, 1], "layers_pattern": "layers""#), configWith(#""exclude_modules": ["k_proj"]"#),
                     Self.good.peftConfig.replacingOccurrences(of: #"["q_proj", "v_proj"]"#, with: #""all-linear""#),
                     Self.good.peftConfig.replacingOccurrences(of: #"["q_proj", "v_proj"]"#, with: #"".*\\.(q|v)_proj""#),
                     Self.good.peftConfig.replacingOccurrences(of: #"["q_proj", "v_proj"]"#, with: #"["self_attn.q_proj", "v_proj", "o_proj"]"#),
                     configWith(#""alora_invocation_tokens": null, "use_qalora": false, "arrow_config": null"#)] {
            #expect(try refusal(fine) == nil, "\(fine)")
        }
        for (edit, mention) in [(#""alora_invocation_tokens": [190, 4]"#, "Activated LoRA"), (#""use_qalora": true"#, "QA-LoRA"),
                                (#""arrow_config": {"top_k": 2}"#, "Arrow"), (#""use_bdlora": {"nblocks": 2}"#, "block-diagonal"),
                                (#""kasa_config": {}"#, "KaSA"), (#""init_lora_weights": "lora_ga""#, "LoRA-GA"),
                                (#""init_lora_weights": "mica""#, "MiCA"), (#""layers_to_transform": "0""#, "layers_to_transform must be"),
                                (#""layers_pattern": 3"#, "layers_pattern must be"), (#""exclude_modules": 5"#, "exclude_modules must be")] {
            e = try refusal(configWith(edit))
            #expect(e?.problem.contains(mention) == true, "\(edit): \(String(describing: e))")
        }
        e = try refusal(Self.good.peftConfig.replacingOccurrences(of: #""bias": "none""#, with: #""bias": 5"#))
        #expect(e?.problem.contains("bias must be") == true, "\(String(describing: e))")
        e = try refusal(Self.good.peftConfig.replacingOccurrences(of: #"["q_proj", "v_proj"]"#, with: "5"))
        #expect(e?.problem.contains("target_modules must be") == true, "\(String(describing: e))")
        // Not UTF-8 (a Latin-1 é in a string).
        e = try Self.error { dir in
            try Self.good.writePEFT(to: dir, config: c)
            var bytes = [UInt8](configWith(#""base_model_name_or_path": "caf_""#).utf8)
            bytes[bytes.firstIndex(of: UInt8(ascii: "_"))!] = 0xE9
            try Data(bytes).write(to: URL(fileURLWithPath: dir + "/adapter_config.json"))
        }
        #expect(e?.problem.contains("not valid UTF-8") == true, "\(String(describing: e))")
    }

    /// A plain directory `x/` (no adapter in it) beside `x.gguf` does not hide the file: `x` is listed and loads from
    /// the GGUF (it was listed, then refused with "missing adapter_config.json").
    @Test func aPlainDirectoryDoesNotHideAGGUFOfTheSameName() throws {
        let dir = try TempDir()
        try FileManager.default.copyItem(at: FixtureFiles.lora.appendingPathComponent("tiny-llama/a-qv-r4.gguf"), to: URL(fileURLWithPath: dir.path("x.gguf")))
        try FileManager.default.createDirectory(atPath: dir.path("x"), withIntermediateDirectories: false)
        try Data("notes".utf8).write(to: URL(fileURLWithPath: dir.path("x/README")))
        let registry = try AdapterRegistry(root: dir.url.path, base: Self.config)
        #expect(registry.available() == ["x"])
        let loaded = try registry.load("x")
        #expect(loaded.modules.joined().contains { $0 != nil })
    }

    /// A slow load (a header of a few hundred thousand entries to parse, then refuse) does not hold up another
    /// adapter's first load: loads run side by side (they ran one at a time, the good one after the slow one), and
    /// callers of one name share its load.
    @Test func aSlowLoadDoesNotHoldUpOthers() async throws {
        let dir = try TempDir()
        try Self.good.writePEFT(to: dir.path("good"), config: Self.config)
        let entries = (0..<300_000).map { "\"t\($0)\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}" }
        try Self.good.writePEFT(to: dir.path("slow"), config: Self.config, header: "{" + entries.joined(separator: ",") + "}")
        let registry = try AdapterRegistry(root: dir.url.path, base: Self.config)
        let slowDone = Mutex(false)
        let slow = Task {
            defer { slowDone.withLock { $0 = true } }
            return try await registry.loadAsync("slow")
        }
        try await Task.sleep(for: .milliseconds(20))  // the slow load is running
        let (a, b) = try await (registry.loadAsync("good"), registry.loadAsync("good"))
        #expect(!slowDone.withLock { $0 }, "the good adapter waited for the slow one")
        #expect(a === b && registry.loadAttempts <= 2, "two callers of one name share its load (\(registry.loadAttempts) reads)")
        await #expect(throws: AdapterError.self) { try await slow.value }
    }

    /// A safetensors file padded (sparse) to 4 GiB around a few kilobytes of tensors is refused from its header, before
    /// its data is read: in milliseconds, not the seconds (and 4 GiB of memory) of reading it whole first.
    @Test func aPaddedWeightsFileIsRefusedBeforeItIsRead() throws {
        let dir = try TempDir()
        try Self.good.writePEFT(to: dir.path("padded"), config: Self.config)
        let file = dir.path("padded") + "/adapter_model.safetensors"
        #expect(truncate(file, 4 << 30) == 0)
        let start = ContinuousClock.now
        var e: AdapterError?
        do { _ = try AdapterLoader.load(path: dir.path("padded"), base: Self.config) } catch let error as AdapterError { e = error }
        let elapsed = ContinuousClock.now - start
        #expect(e?.problem.contains("not fully covered") == true, "\(String(describing: e))")
        #expect(elapsed < .seconds(1), "\(elapsed) to refuse it")
    }

    @Test func ggufLoRAProblems() throws {
        let c = Self.config
        // A base GGUF is not an adapter.
        let dir = try TempDir()
        try FileManager.default.copyItem(atPath: Fixtures.model("tiny-llama", "F32"), toPath: dir.path("base.gguf"))
        #expect(throws: AdapterError.self) { try AdapterLoader.load(path: dir.path("base.gguf"), base: c) }
        do { _ = try AdapterLoader.load(path: dir.path("base.gguf"), base: c) } catch let e as AdapterError {
            #expect(e.problem.contains("not a GGUF LoRA adapter"))
        }
        // An adapter for a model with other shapes.
        let qwen = try openCheckpoint(path: Fixtures.model("tiny-qwen2", "hf")).config
        let other = TestAdapter(config: qwen, rank: 2, alpha: 2, targets: [.gate], seed: 5)
        try other.writeGGUF(to: dir.path("qwen.gguf"), config: qwen)
        do {
            _ = try AdapterLoader.load(path: dir.path("qwen.gguf"), base: c)
            Issue.record("a qwen2 adapter loaded onto a llama base")
        } catch let e as AdapterError {
            #expect(e.problem.contains("architecture 'qwen2'"))
        }
        // Truncated GGUF LoRA.
        try Self.good.writeGGUF(to: dir.path("ok.gguf"), config: c)
        let bytes = try Data(contentsOf: URL(fileURLWithPath: dir.path("ok.gguf")))
        try bytes.prefix(bytes.count / 2).write(to: URL(fileURLWithPath: dir.path("cut.gguf")))
        do {
            _ = try AdapterLoader.load(path: dir.path("cut.gguf"), base: c)
            Issue.record("a truncated adapter loaded")
        } catch let e as AdapterError {
            #expect(e.problem.contains("cut.gguf"))
        }
    }

    @Test func registryNamesAndBackgroundLoads() throws {
        let dir = try TempDir()
        try Self.good.writePEFT(to: dir.path("alpha"), config: Self.config)
        try Self.good.writeGGUF(to: dir.path("beta.gguf"), config: Self.config)
        try Self.good.writePEFT(to: dir.path("broken"), config: Self.config, header: "nope")
        let registry = try AdapterRegistry(root: dir.url.path, base: Self.config)
        #expect(registry.available() == ["alpha", "beta", "broken"])
        for bad in ["../alpha", "a/b", ".hidden", ""] {
            #expect(throws: AdapterError.self) { try registry.path(for: bad) }
        }
        #expect(throws: AdapterError.self) { try registry.path(for: "missing") }
        #expect(try registry.path(for: "beta").hasSuffix("beta.gguf"))
        // A GGUF file answers to the one name listed (less .gguf), not to its file name too (a second load of it).
        #expect(throws: AdapterError.self) { try registry.path(for: "beta.gguf") }

        #expect(registry.prefetch("alpha") == .loading)
        var status = registry.prefetch("alpha")
        for _ in 0..<500 where status == .loading {
            Thread.sleep(forTimeInterval: 0.01)
            status = registry.prefetch("alpha")
        }
        guard case .ready(let w) = status else { Issue.record("alpha did not load: \(status)"); return }
        #expect(w.name == "alpha" && registry.cached("alpha") === w)
        _ = registry.prefetch("broken")
        status = registry.prefetch("broken")
        for _ in 0..<500 where status == .loading {
            Thread.sleep(forTimeInterval: 0.01)
            status = registry.prefetch("broken")
        }
        guard case .failed(let e) = status else { Issue.record("broken did not fail: \(status)"); return }
        #expect(e.adapter == "broken")
        // The good adapters keep working.
        #expect(try registry.load("beta").byteCount > 0)
    }

    @Test func hostCacheIsBoundedInBytes() throws {
        let dir = try TempDir()
        for name in ["a", "b", "c"] { try Self.good.writePEFT(to: dir.path(name), config: Self.config) }
        let one = try AdapterLoader.load(path: dir.path("a"), base: Self.config).byteCount
        let registry = try AdapterRegistry(root: dir.url.path, base: Self.config, hostBudgetBytes: 2 * one)
        _ = try registry.load("a")
        _ = try registry.load("b")
        _ = registry.cached("a")  // a is now more recent than b
        _ = try registry.load("c")
        #expect(registry.cached("b") == nil && registry.cached("a") != nil && registry.cached("c") != nil)
        #expect(registry.hostBytes <= 2 * one)
    }

    /// A registry made with `precision: .int8` (serve's beside int8 products) holds what it loads in Q8_0: every module,
    /// the same name and scale, fewer bytes than the stored adapter, and the factors within half a quantization step of
    /// the stored ones (A's blocks of 32 inputs, B's blocks of 16 rank indices), plus the f16 scale's rounding (up to
    /// 127 codes times 2⁻¹¹ of the step).
    @Test(.enabled(if: Kernels.hasInt8Dot)) func int8RegistryHoldsQ8Modules() throws {
        let dir = try TempDir()
        try Self.good.writePEFT(to: dir.path("a"), config: Self.config)
        let stored = try AdapterLoader.load(path: dir.path("a"), base: Self.config)
        let registry = try AdapterRegistry(root: dir.url.path, base: Self.config, precision: .int8)
        let held = try registry.load("a")
        #expect(held.name == stored.name && held.scale == stored.scale && held.byteCount < stored.byteCount)
        var checked = 0
        for (layer, row) in stored.modules.enumerated() {
            for (t, m) in row.enumerated() {
                guard let m else { #expect(held.modules[layer][t] == nil); continue }
                let q = try #require(held.modules[layer][t])
                #expect(q.dtype == .q8_0 && q.rank == m.rank && q.paddedRank == m.paddedRank)
                let (a, b) = m.unpaddedFactors, (qa, qb) = q.unpaddedFactors
                for r in 0..<m.rank {
                    for k0 in stride(from: 0, to: m.inFeatures, by: 32) {
                        let block = (k0..<(k0 + 32)).map { r * m.inFeatures + $0 }
                        let step = block.map { abs(a[$0]) }.max()! / 127
                        #expect(block.allSatisfy { abs(qa[$0] - a[$0]) <= step * (0.5 + 127 / 2048) + 1e-12 })
                    }
                }
                for o in 0..<m.outFeatures {
                    let row = (0..<m.rank).map { o * m.rank + $0 }
                    let step = row.map { abs(b[$0]) }.max()! / 127
                    #expect(row.allSatisfy { abs(qb[$0] - b[$0]) <= step * (0.5 + 127 / 2048) + 1e-12 })
                }
                checked += 1
            }
        }
        #expect(checked > 0)
    }
}
