import Engine
import Foundation
import Kernels
import Models
import Scheduling
import Testing
import Tokenizers
import TestSupport

@testable import Adapters

/// MoLE compositions (mole_config.json + gates.safetensors) as untrusted input, expert masks, and MoLE requests
/// served inside mixed, chunked, continuously batched engine iterations against the torch golden
/// (tools/gen_mole_goldens.py).
@Suite struct MoLECompositionTests {
    static let experts = ["a-qv-r4", "b-all-r8-rslora", "c-kod-r2"]

    /// A root with the three experts and the fixture composition `mole`.
    static func root() throws -> TemporaryDirectory {
        let dir = try TemporaryDirectory()
        for name in experts {
            try FileManager.default.copyItem(at: FixtureFiles.lora.appendingPathComponent("tiny-llama/\(name)"), to: dir.file(name))
        }
        try FileManager.default.copyItem(at: FixtureFiles.lora.appendingPathComponent("tiny-llama/mole-abc"), to: dir.file("mole"))
        return dir
    }

    static func config() throws -> ModelConfig { try openCheckpoint(path: FixtureFiles.checkpoint(model: "tiny-llama", variant: "F32")).config }

    static func realRoot(_ dir: TemporaryDirectory) -> String { URL(fileURLWithPath: dir.url.path).resolvingSymlinksInPath().path }

    static func expectFailure(_ dir: TemporaryDirectory, _ c: ModelConfig, _ expected: String, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(sourceLocation: sourceLocation) {
            _ = try AdapterLoader.load(path: dir.path("mole"), base: c, confinedTo: realRoot(dir))
        } throws: { error in
            let text = "\(error)"
            if !text.contains(expected) { print("expected '\(expected)' in: \(text)") }
            return text.contains(expected)
        }
    }

    @Test func theFixtureLoads() throws {
        let dir = try Self.root()
        let c = try Self.config()
        let w = try AdapterLoader.load(path: dir.path("mole"), base: c, confinedTo: Self.realRoot(dir))
        let gating = try #require(w.gating)
        #expect(gating.experts == Self.experts && gating.weights.count == c.numLayers && !w.mergeable)
        // q is adapted by a (rank 4) and b (rank 8): one stacked module of rank 12; down by b and c: 10.
        #expect(w.module(layer: 0, target: .q)?.rank == 12 && w.module(layer: 0, target: .down)?.rank == 10)
    }

    @Test func malformedConfigsAreClearErrors() throws {
        let dir = try Self.root()
        let c = try Self.config()
        let good = try String(contentsOf: dir.file("mole/mole_config.json"), encoding: .utf8)
        func edited(_ from: String, _ to: String) -> String {
            precondition(good.contains(from), from)
            return good.replacingOccurrences(of: from, with: to)
        }
        try FileManager.default.createDirectory(at: dir.file("inner"), withIntermediateDirectories: true)
        try Data(#"{"adapters": [{"name": "a-qv-r4", "weight": 1}]}"#.utf8).write(to: dir.file("inner/composition.json"))
        let cases: [(String, String)] = [
            ("[1]", "not a JSON object"),
            ("{", "not valid JSON"),
            (edited(#""dlora-mole""#, #""other""#), "format must be"),
            (edited(#""version": 1"#, #""version": 2"#), "version 2 is not supported"),
            (edited(#""block""#, #""neuron""#), "granularity 'neuron' is not supported"),
            (edited(#""block""#, #""matrix""#), "holds 4 tensors; expected 28"),
            (edited(#""token""#, #""sequence mean""#), "gate_input 'sequence mean' is not supported"),
            (edited(#""num_layers": "#, #""num_layers": 1000, "x_layers": "#), "unknown key 'x_layers'"),
            (edited(#""hidden_size": "#, #""hidden_size": "64", "h": "#), "hidden_size has the wrong type"),
            (edited(#""name": "b-all-r8-rslora""#, #""name": "../b-all-r8-rslora""#), "not a plain adapter name"),
            (edited(#""name": "b-all-r8-rslora""#, #""name": "a-qv-r4""#), "appears twice"),
            (edited(#""name": "b-all-r8-rslora""#, #""name": "missing""#), "adapter 'missing'"),
            (edited(#""name": "b-all-r8-rslora""#, #""name": "inner""#), "itself a composition"),
            (edited(#""name": "b-all-r8-rslora""#, #""label": "b""#), "unexpected 'label'"),
        ]
        for (text, expected) in cases {
            try Data(text.utf8).write(to: dir.file("mole/mole_config.json"))
            Self.expectFailure(dir, c, expected)
        }
        // A model of another shape.
        let other = good.replacingOccurrences(of: #""num_layers": \#(c.numLayers)"#, with: #""num_layers": \#(c.numLayers + 1)"#)
        try Data(other.utf8).write(to: dir.file("mole/mole_config.json"))
        Self.expectFailure(dir, c, "made for a model with \(c.numLayers + 1) layers")
    }

    @Test func malformedGatesAreClearErrors() throws {
        let dir = try Self.root()
        let c = try Self.config()
        let n = Self.experts.count, h = c.hiddenSize
        func gates(_ edit: (inout [(String, [Int], [Float])]) -> Void = { _ in }, dtype: String = "F32") throws {
            var t: [(String, [Int], [Float])] = []
            for l in 0..<c.numLayers {
                t.append(("layers.\(l).gate.weight", [n, h], (0..<(n * h)).map { Float($0 % 7) * 0.01 }))
                t.append(("layers.\(l).gate.temperature", [1], [1]))
            }
            edit(&t)
            try Data(TestAdapter.safetensors(t, dtype: dtype)).write(to: dir.file("mole/gates.safetensors"))
        }
        try gates()
        _ = try AdapterLoader.load(path: dir.path("mole"), base: c, confinedTo: Self.realRoot(dir))
        try gates { $0[0].1 = [n - 1, h]; $0[0].2.removeLast(h) }
        Self.expectFailure(dir, c, "has shape [\(n - 1), \(h)]")
        try gates { $0[1].2 = [0] }
        Self.expectFailure(dir, c, "outside")
        try gates { $0[3].2 = [.infinity] }
        Self.expectFailure(dir, c, "outside")
        try gates { $0[2].2[5] = .nan }
        Self.expectFailure(dir, c, "finite")
        try gates { $0[2].2[5] = 2e4 }
        Self.expectFailure(dir, c, "finite")
        try gates { $0.append(("extra", [1], [0])) }
        Self.expectFailure(dir, c, "holds \(2 * c.numLayers + 1) tensors")
        try gates { $0[1].0 = "layers.0.gate.temp" }
        Self.expectFailure(dir, c, "layers.0.gate.temperature")
        try gates(dtype: "BF16")
        Self.expectFailure(dir, c, "expected F32")
        try FileManager.default.removeItem(at: dir.file("mole/gates.safetensors"))
        Self.expectFailure(dir, c, "missing gates.safetensors")
        try Data([1, 2, 3]).write(to: dir.file("mole/gates.safetensors"))
        #expect(throws: AdapterError.self) { _ = try AdapterLoader.load(path: dir.path("mole"), base: c, confinedTo: Self.realRoot(dir)) }
    }

    /// `mole_experts`: names map to a mask, bad lists are one clear error; a restricted view is made once per
    /// mask (the engine then batches its requests together) and the whole mask is the composition itself.
    @Test func expertMasks() throws {
        let dir = try Self.root()
        let w = try AdapterLoader.load(path: dir.path("mole"), base: try Self.config(), confinedTo: Self.realRoot(dir))
        let g = try #require(w.gating)
        #expect(try MoLEComposition.mask(["c-kod-r2", "a-qv-r4"], of: g, adapter: "mole") == 0b101)
        for (names, expected) in [([String](), "at least one"), (["x"], "'x' is not one of its experts"), (["a-qv-r4", "a-qv-r4"], "appears twice")] {
            #expect { _ = try MoLEComposition.mask(names, of: g, adapter: "mole") } throws: { "\($0)".contains(expected) }
        }
        let ac = w.restricted(toExperts: 0b101)
        #expect(ac === w.restricted(toExperts: 0b101) && ac.id != w.id && ac.gating?.mask == 0b101 && ac.name == w.name)
        #expect(w.restricted(toExperts: 0b111) === w)
    }

    /// MoLE requests (block gates whole and masked, and matrix gates) beside plain-LoRA, static-composition and base requests, in small
    /// prefill chunks with continuous batching, under dLoRA's policy and under merged-only (which would merge
    /// whatever it batches: the MoLE batch must run unmerged): each MoLE request's greedy tokens are the torch
    /// golden's, and the engine counts its gates.
    @Test(arguments: [BatchingPolicyKind.dlora, .mergedOnly]) func mixedBatchesMatchTheGolden(policy: BatchingPolicyKind) throws {
        let dir = try Self.root()
        for name in ["mix-cat", "mole-ac-matrix"] {
            try FileManager.default.copyItem(at: FixtureFiles.lora.appendingPathComponent("tiny-llama/\(name)"), to: dir.file(name))
        }
        let checkpoint = try openCheckpoint(path: FixtureFiles.checkpoint(model: "tiny-llama", variant: "F32"))
        let model = try LlamaModel(checkpoint: checkpoint)
        let tokenizer = try Tokenizer(metadata: #require(checkpoint.metadata))
        let c = model.config, root = Self.realRoot(dir)
        let mole = try AdapterLoader.load(path: dir.path("mole"), base: c, confinedTo: root)
        let plain = try AdapterLoader.load(path: dir.path("a-qv-r4"), base: c, confinedTo: root)
        let mix = try AdapterLoader.load(path: dir.path("mix-cat"), base: c, confinedTo: root)
        let matrix = try AdapterLoader.load(path: dir.path("mole-ac-matrix"), base: c, confinedTo: root)
        let whole = try PEFTGoldenTests.golden("tiny-llama__mole-abc"), masked = try PEFTGoldenTests.golden("tiny-llama__mole-abc__experts-ac")
        let perMatrix = try PEFTGoldenTests.golden("tiny-llama__mole-ac-matrix")
        let engine = EngineCore(model: model, tokenizer: tokenizer, kvBlocks: 256, blockSize: 4, maxBatchTokens: 8, maxSequences: 6,
                                adapterSlots: 5, policy: BatchPolicyConfig(kind: policy))
        var checks: [(RequestID, [Int], Int)] = []
        for (g, w) in [(whole, mole), (masked, mole.restricted(toExperts: 0b101)), (perMatrix, matrix)] {
            for kase in g.cases {
                let n = kase.greedyIds.count
                let params = SamplingParams(temperature: 0, maxTokens: n, ignoreEOS: true)
                // Neighbours first, so the MoLE request joins a batch already running.
                try engine.submit(prompt: kase.promptIds, params: params, adapter: plain)
                try engine.submit(prompt: kase.promptIds.reversed(), params: params, adapter: mix)
                let id = try engine.submit(prompt: kase.promptIds, params: params, adapter: w)
                try engine.submit(prompt: kase.promptIds, params: params)
                checks.append((id, kase.greedyIds, kase.greedyMargins.firstIndex { $0 < 1e-2 } ?? n))
            }
        }
        let events = engine.runToCompletion()
        for (id, want, comparable) in checks {
            let got = events.filter { $0.requestID == id }.compactMap { $0.token }
            #expect(Array(got.prefix(comparable)) == Array(want.prefix(comparable)), "request \(id), policy \(policy)")
        }
        let tally = try #require(engine.stats.gates["mole"])
        #expect(tally.count > 0 && tally.meanEntropy > 0 && tally.meanEntropy <= Foundation.log(3.0))
        #expect(tally.meanGates.count == 3 && abs(tally.meanGates.reduce(0, +) - 1) < 1e-4, "\(tally.meanGates)")
        let matrixTally = try #require(engine.stats.gates["mole-ac-matrix"])
        #expect(matrixTally.count > 0 && matrixTally.meanEntropy > 0 && matrixTally.meanEntropy <= Foundation.log(2.0))
        #expect(matrixTally.meanGates.count == 2 && abs(matrixTally.meanGates.reduce(0, +) - 1) < 1e-4, "\(matrixTally.meanGates)")
        if policy == .mergedOnly { #expect(engine.stats.mergedSteps > 0, "merged-only merged the plain adapters") }
    }
}
