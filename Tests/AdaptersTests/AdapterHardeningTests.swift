import Foundation
import Models
import Testing
import TestSupport

@testable import Adapters

/// Adapters that would make the base's outputs non-finite, or whose config does not match their tensors, are
/// refused at load with a one-line error.
@Suite struct AdapterHardeningTests {
    static let config = AdapterErrorTests.config
    static let good = AdapterErrorTests.good

    /// Writes an adapter at a path named `file` in a fresh directory, loads it, and returns the refusal.
    static func error(file: String, _ write: (String) throws -> Void) throws -> AdapterError? {
        try AdapterErrorTests.error(file: file, write)
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
        // Per-module ranks and alphas: values and keys checked (the PEFT golden tiny-llama__f-pattern checks their numbers).
        try Self.expectRefused("alpha_pattern 'v_proj' must be a finite number") {
            try Self.good.writePEFT(to: $0, config: c, adapterConfig: Self.peftConfig("alpha_pattern", #"{"v_proj": "32"}"#))
        }
        try Self.expectRefused("rank_pattern 'q_proj' must be an integer") {
            try Self.good.writePEFT(to: $0, config: c, adapterConfig: Self.peftConfig("rank_pattern", #"{"q_proj": 0}"#))
        }
        try Self.expectRefused("is not a module name") {
            try Self.good.writePEFT(to: $0, config: c, adapterConfig: Self.peftConfig("rank_pattern", #"{"^model.layers.(0|1).self_attn.q_proj": 4}"#))
        }
        try Self.expectRefused("the scaling") {
            try Self.good.writePEFT(to: $0, config: c, adapterConfig: Self.peftConfig("alpha_pattern", #"{"layers.0.self_attn.v_proj": 1e9}"#))
        }
        #expect(try AdapterErrorTests.error {
            try Self.good.writePEFT(to: $0, config: c, adapterConfig: Self.peftConfig("alpha_pattern", #"{"v_proj": 32}"#))
        } == nil)
        // Initialisations that change the base (PiSSA, OLoRA, CorDA, LoftQ) are refused unless converted; others load.
        for method in ["pissa", "pissa_niter_16", "olora", "corda", "loftq"] {
            try Self.expectRefused("modified base") {
                try Self.good.writePEFT(to: $0, config: c, adapterConfig: Self.peftConfig("init_lora_weights", "\"\(method)\""))
            }
        }
        for value in ["true", "false", #""gaussian""#, #""eva""#] {
            #expect(try AdapterErrorTests.error {
                try Self.good.writePEFT(to: $0, config: c, adapterConfig: Self.peftConfig("init_lora_weights", value))
            } == nil, "init_lora_weights \(value)")
        }
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

/// The registry: identities, confinement at every (re)load, failures remembered until the files change,
/// in-place reloads that keep the old version on failure, NFC names.
@Suite struct AdapterRegistryTests {
    static let config = AdapterErrorTests.config
    static let good = AdapterErrorTests.good

    @Test func idsAreStableAcrossHostCacheReloads() throws {
        let dir = try TempDir()
        try Self.good.writePEFT(to: dir.path("a"), config: Self.config)
        try Self.good.writePEFT(to: dir.path("src"), config: Self.config)
        let registry = try AdapterRegistry(root: dir.url.path, base: Self.config)
        #expect(registry.id(for: "a") == nil)
        let first = try registry.load("a")
        let id = try #require(registry.id(for: "a"))
        #expect(first.id == id)
        // Evicted from host memory and read again: new weights, same identity.
        registry.evict("a")
        let again = try registry.load("a")
        #expect(again !== first && again.id == id && registry.id(for: "a") == id)
        // The files changed on disk: the next read is a new identity.
        registry.evict("a")
        try TestAdapter(config: Self.config, rank: 4, alpha: 8, targets: [.k], seed: 4).writePEFT(to: dir.path("a"), config: Self.config)
        let changed = try registry.load("a")
        #expect(changed.id != id && registry.id(for: "a") == changed.id)
        // A registration, an in-place reload, and unregister + register each give a new identity.
        let b1 = try registry.register(name: "b", relativePath: "src")
        #expect(registry.id(for: "b") == b1.id && b1.id != changed.id)
        #expect(throws: AdapterRegistry.NameTaken.self) { try registry.register(name: "b", relativePath: "src") }
        let b2 = try registry.register(name: "b", relativePath: "src", replace: true)
        #expect(b2.id != b1.id && registry.id(for: "b") == b2.id)
        #expect(registry.unregister("b") && registry.id(for: "b") == nil && !registry.serves("b"))
        let b3 = try registry.register(name: "b", relativePath: "src")
        #expect(b3.id != b2.id && b3.id != b1.id)
        #expect(try registry.load("b") === b3)
    }

    /// A name's path is resolved once; every (re)load re-checks what it opened against the root, so a file
    /// swapped for a symbolic link out of the root after registration is refused.
    @Test func swappedSymlinkIsRefusedAtReload() throws {
        let dir = try TempDir(), outside = try TempDir()
        try Self.writeGood(peft: [dir.path("a"), dir.path("sub"), outside.path("evil")], gguf: [dir.path("g.gguf"), outside.path("evil.gguf")])
        let registry = try AdapterRegistry(root: dir.url.path, base: Self.config)
        _ = try registry.load("a")
        _ = try registry.register(name: "reg", relativePath: "sub")
        _ = try registry.load("g")
        for name in ["a", "reg", "g"] { registry.evict(name) }
        let fm = FileManager.default
        // The weights file of `a`, the config of `reg`, and the GGUF file `g` each become a link out of the root.
        try fm.removeItem(atPath: dir.path("a/adapter_model.safetensors"))
        try fm.createSymbolicLink(atPath: dir.path("a/adapter_model.safetensors"), withDestinationPath: outside.path("evil/adapter_model.safetensors"))
        try fm.removeItem(atPath: dir.path("sub/adapter_config.json"))
        try fm.createSymbolicLink(atPath: dir.path("sub/adapter_config.json"), withDestinationPath: outside.path("evil/adapter_config.json"))
        try fm.removeItem(atPath: dir.path("g.gguf"))
        try fm.createSymbolicLink(atPath: dir.path("g.gguf"), withDestinationPath: outside.path("evil.gguf"))
        for (name, file) in [("a", "adapter_model.safetensors"), ("reg", "adapter_config.json"), ("g", "g.gguf")] {
            do {
                _ = try registry.load(name)
                Issue.record("\(name): loaded through a link out of the root")
            } catch let e as AdapterError {
                #expect(e.description == "adapter '\(name)': \(file) resolves outside the adapter root", "\(e)")
            }
        }
        // The same with the whole directory swapped for a link.
        try Self.good.writePEFT(to: dir.path("d"), config: Self.config)
        _ = try registry.load("d")
        registry.evict("d")
        try fm.removeItem(atPath: dir.path("d"))
        try fm.createSymbolicLink(atPath: dir.path("d"), withDestinationPath: outside.path("evil"))
        #expect(throws: AdapterError.self) { try registry.load("d") }
    }

    /// The good adapter as PEFT directories and as GGUF LoRA files at these paths.
    static func writeGood(peft: [String], gguf: [String]) throws {
        for path in peft { try good.writePEFT(to: path, config: config) }
        for path in gguf { try good.writeGGUF(to: path, config: config) }
    }

    /// The model list names exactly what a request may use: not a link that leads out of the root (a request for it
    /// is refused), and still an adapter held in memory whose directory moved away (a request for it is served).
    @Test func availableNamesWhatIsServed() throws {
        let dir = try TempDir(), outside = try TempDir()
        try Self.writeGood(peft: [outside.path("evil"), dir.path("a"), dir.path("b")], gguf: [outside.path("evil.gguf")])
        let fm = FileManager.default
        try fm.createSymbolicLink(atPath: dir.path("out"), withDestinationPath: outside.path("evil"))
        try fm.createSymbolicLink(atPath: dir.path("outg.gguf"), withDestinationPath: outside.path("evil.gguf"))
        // A link inside the root is fine.
        try fm.createSymbolicLink(atPath: dir.path("alias"), withDestinationPath: dir.path("b"))
        let registry = try AdapterRegistry(root: dir.url.path, base: Self.config)
        #expect(registry.available() == ["a", "alias", "b"])
        #expect(!registry.serves("out") && !registry.serves("outg"))
        _ = try registry.load("a")
        try fm.moveItem(atPath: dir.path("a"), toPath: outside.path("moved"))
        #expect(registry.serves("a"))
        #expect(registry.available() == ["a", "alias", "b"])
        // Out of memory too, it is no longer served once a load finds its files gone.
        registry.evict("a")
        #expect(registry.available() == ["alias", "b"])
        #expect(throws: AdapterError.self) { try registry.load("a") }
        #expect(!registry.serves("a"))
    }

    /// A broken adapter is parsed once, then answered from memory until one of its files changes.
    @Test func failuresAreRememberedUntilTheFilesChange() throws {
        let dir = try TempDir()
        try Self.good.writePEFT(to: dir.path("big"), config: Self.config)
        // A 2 MB adapter_config.json (refused by size before it is read) and a corrupt safetensors header.
        try Data((Self.good.peftConfig + String(repeating: " ", count: 2 << 20)).utf8).write(to: URL(fileURLWithPath: dir.path("big/adapter_config.json")))
        // A 1 MB safetensors header that is broken at its end: each read parses it all.
        try Self.good.writePEFT(to: dir.path("corrupt"), config: Self.config,
                                header: "{\"__metadata__\": {\"pad\": \"" + String(repeating: "x", count: 1 << 20) + "\"}, nope")
        let registry = try AdapterRegistry(root: dir.url.path, base: Self.config)
        for name in ["big", "corrupt"] {
            let before = registry.loadAttempts
            var first: AdapterError?
            let clock = ContinuousClock()
            let start = clock.now
            for _ in 0..<20 {
                do {
                    _ = try registry.load(name)
                    Issue.record("\(name) loaded")
                } catch let e as AdapterError {
                    if first == nil { first = e }
                    #expect(e == first)
                }
            }
            let remembered = clock.now - start
            if case .failed(let e) = registry.prefetch(name) { #expect(e == first) } else { Issue.record("prefetch did not report the failure") }
            #expect(registry.loadAttempts == before + 1, "\(name) was read \(registry.loadAttempts - before) times")
            // Forgetting the failure each time measures what every request cost before.
            let start2 = clock.now
            for _ in 0..<20 {
                registry.clearFailure(name)
                _ = try? registry.load(name)
            }
            print("failed adapter '\(name)': 20 requests remembered \(remembered), 20 re-parsed \(clock.now - start2)")
            #expect(registry.loadAttempts == before + 21)
        }
        // Fixing the files makes them load.
        try Self.good.writePEFT(to: dir.path("big"), config: Self.config)
        try Self.good.writePEFT(to: dir.path("corrupt"), config: Self.config)
        #expect(try registry.load("big").byteCount > 0)
        #expect(try registry.load("corrupt").byteCount > 0)
        // An adapter whose files vanish is no longer served (rather than a remembered error).
        registry.evict("big")
        try FileManager.default.removeItem(atPath: dir.path("big"))
        #expect(throws: AdapterError.self) { try registry.load("big") }
        #expect(!registry.serves("big"))
    }

    /// A failed in-place reload leaves the earlier version serving, with its identity.
    @Test func failedInPlaceReloadKeepsTheOldVersion() throws {
        let dir = try TempDir()
        try Self.good.writePEFT(to: dir.path("v1"), config: Self.config)
        try Self.good.writePEFT(to: dir.path("broken"), config: Self.config, header: "{ nope")
        let registry = try AdapterRegistry(root: dir.url.path, base: Self.config)
        let v1 = try registry.register(name: "hs", relativePath: "v1")
        for path in ["broken", "missing", "../v1", "v1/../../x"] {
            #expect(throws: (any Error).self) { try registry.register(name: "hs", relativePath: path, replace: true) }
            #expect(registry.serves("hs") && registry.id(for: "hs") == v1.id && registry.cached("hs") === v1)
        }
        registry.evict("hs")
        #expect(try registry.load("hs").id == v1.id)
        // A failed first registration leaves nothing.
        #expect(throws: AdapterError.self) { try registry.register(name: "new", relativePath: "broken") }
        #expect(!registry.serves("new") && registry.id(for: "new") == nil)
    }

    /// A registered, loaded adapter is served from memory: its files can even disappear.
    @Test func loadedAdaptersNeedNoFiles() throws {
        let dir = try TempDir()
        try Self.good.writePEFT(to: dir.path("a"), config: Self.config)
        let registry = try AdapterRegistry(root: dir.url.path, base: Self.config)
        let w = try registry.register(name: "mine", relativePath: "a")
        try FileManager.default.moveItem(atPath: dir.path("a"), toPath: dir.path("moved"))
        #expect(registry.serves("mine") && registry.cached("mine") === w)
        #expect(try registry.path(for: "mine").hasSuffix("/a"))
    }

    /// Names are compared byte for byte and must be NFC.
    @Test func namesMustBeNFC() throws {
        #expect(throws: Never.self) { try AdapterRegistry.checkName("caf\u{E9}") }
        do {
            try AdapterRegistry.checkName("cafe\u{301}")
            Issue.record("an NFD name was accepted")
        } catch let e as AdapterError {
            #expect(e.problem.contains("NFC"))
        }
        let dir = try TempDir()
        try Self.good.writePEFT(to: dir.path("caf\u{E9}"), config: Self.config)
        let registry = try AdapterRegistry(root: dir.url.path, base: Self.config)
        #expect(registry.available() == ["caf\u{E9}"])
        #expect(registry.serves("caf\u{E9}") && !registry.serves("cafe\u{301}"))
        #expect(throws: AdapterError.self) { try registry.register(name: "cafe\u{301}", relativePath: "caf\u{E9}") }
    }
}
