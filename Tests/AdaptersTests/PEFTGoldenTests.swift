import Foundation
import Kernels
@testable import Models
import Testing
import TestSupport

@testable import Adapters

/// Adapters against Hugging Face PEFT (Tests/Fixtures/lora, written by tools/gen_lora_goldens.py): the
/// unmerged and the merged paths, on the base layout the adapter was made for and on the other one, and
/// the same adapters as llama.cpp GGUF LoRA files.
@Suite struct PEFTGoldenTests {
    /// Logit tolerance: f32 activations throughout (the references' merged-vs-unmerged spread is ≤ 6e-5).
    static let tolerance: Float = 1e-3

    struct Step: Decodable {
        let argmax: Int
        let margin: Float
        let logits: [Float]?
        let top50Ids: [Int]?
        let top50Logits: [Float]?
        let spreadLogits: [Float]?
    }

    struct Case: Decodable {
        let promptIds: [Int]
        let steps: [Step]
        let greedyIds: [Int]
        let greedyMargins: [Float]
    }

    struct Golden: Decodable {
        let base: String
        let adapter: String
        let scale: Float
        let baseMaxAbsDiff: Float
        let cases: [Case]
        let spreadIds: [Int]?
        /// MoLE goldens: the experts in use (the others masked).
        let moleExperts: [String]?
    }

    static func golden(_ name: String) throws -> Golden {
        try FixtureFiles.decodeGolden(Golden.self, at: FixtureFiles.lora.appendingPathComponent("goldens/\(name).json"))
    }

    /// Runs every case of `g` through `model` with the adapter (unmerged in slot 0, or merged) and compares
    /// logits of each step and the greedy ids up to the first near-tie.
    /// Returns the largest logit error seen. `tolerance` bounds it; greedy ids are compared up to the first step
    /// whose golden margin is below `tie`.
    @discardableResult
    static func check(_ g: Golden, model: LlamaModel, adapter: LoRAWeights, merged: Bool, label: String,
                      tolerance: Float = tolerance, tie: Float = 1e-2) -> Float {
        var worst: Float = 0
        let lora = LoRASlots(capacity: 1)
        lora[0] = adapter
        if merged { model.merge(adapter, scale: g.scale) }
        defer { if merged { model.unmerge() } }
        let c = model.config
        for (ci, kase) in g.cases.enumerated() {
            let blockSize = 16
            let blocks = (kase.promptIds.count + kase.greedyIds.count + blockSize) / blockSize
            let kv = PagedKVStorage(numLayers: c.numLayers, numBlocks: blocks, blockSize: blockSize, numKVHeads: c.numKVHeads, headDim: c.headDim)
            let table = (0..<blocks).map(Int32.init)
            let ws = ForwardWorkspace(config: c)
            let scratch = ScratchArena()
            var logits = [Float](repeating: .nan, count: c.vocabSize)
            func run(_ tokens: [Int], at start: Int) {
                var batch = ForwardBatch()
                batch.append(sequence: tokens, start: start, blockTable: table, blockSize: blockSize, logits: .last,
                             adapterSlot: merged ? -1 : 0, adapterScale: merged ? 1 : g.scale)
                logits.withUnsafeMutableBufferPointer {
                    model.forward(batch, kv: kv, workspace: ws, scratch: scratch, logits: $0.baseAddress!, lora: merged ? nil : lora)
                }
            }
            // Greedy with our own argmax; logits compared on the steps the golden records while the paths agree.
            run(kase.promptIds, at: 0)
            let comparable = kase.greedyMargins.firstIndex { $0 < tie } ?? kase.greedyIds.count
            var ids: [Int] = []
            for step in 0..<kase.greedyIds.count {
                if step < kase.steps.count && step <= comparable {
                    let want = kase.steps[step]
                    var err: Float = 0
                    if let full = want.logits {
                        for i in full.indices { err = max(err, abs(full[i] - logits[i])) }
                    } else if let ids50 = want.top50Ids, let v50 = want.top50Logits, let spread = want.spreadLogits, let sids = g.spreadIds {
                        for (i, v) in zip(ids50, v50) { err = max(err, abs(logits[i] - v)) }
                        for (i, v) in zip(sids, spread) { err = max(err, abs(logits[i] - v)) }
                    }
                    #expect(err <= tolerance, "\(label) case \(ci) step \(step): max |Δlogit| = \(err)")
                    worst = max(worst, err)
                }
                let next = logits.indices.max { logits[$0] < logits[$1] || (logits[$0] == logits[$1] && $0 > $1) }!
                ids.append(next)
                if step + 1 < kase.greedyIds.count { run([next], at: kase.promptIds.count + step) }
            }
            #expect(Array(ids.prefix(comparable)) == Array(kase.greedyIds.prefix(comparable)), "\(label) case \(ci): greedy ids (first \(comparable))")
        }
        return worst
    }

    static let tinyCases: [(golden: String, base: String, adapter: String)] = [
        // PEFT adapters on the Hugging Face base they were made on…
        ("tiny-llama__a-qv-r4", "tiny-llama/hf", "tiny-llama/a-qv-r4"),
        ("tiny-llama__b-all-r8-rslora", "tiny-llama/hf", "tiny-llama/b-all-r8-rslora"),
        ("tiny-llama__c-kod-r2", "tiny-llama/hf", "tiny-llama/c-kod-r2"),
        ("tiny-llama__a-qv-r4__scale0.5", "tiny-llama/hf", "tiny-llama/a-qv-r4"),
        ("tiny-qwen2__d-all-r4", "tiny-qwen2/hf", "tiny-qwen2/d-all-r4"),
        // PEFT's rank_pattern and alpha_pattern (q at rank 8, layer 1's down at rank 2, v at alpha 2, layer 0's o at
        // alpha 32; r = 4, alpha = 8 elsewhere), on both bases.
        ("tiny-llama__f-pattern", "tiny-llama/hf", "tiny-llama/f-pattern"),
        ("tiny-llama__f-pattern", "tiny-llama/F32", "tiny-llama/f-pattern"),
        // …on the GGUF base (permuted Q/K rows for llama; qwen2 is not permuted)…
        ("tiny-llama__a-qv-r4", "tiny-llama/F32", "tiny-llama/a-qv-r4"),
        ("tiny-llama__b-all-r8-rslora", "tiny-llama/F32", "tiny-llama/b-all-r8-rslora"),
        ("tiny-qwen2__d-all-r4", "tiny-qwen2/F32", "tiny-qwen2/d-all-r4"),
        // A static composition (composition.json: PEFT's add_weighted_adapter "cat" of a, b and c at 0.7, -0.4,
        // 1.3; tools/gen_composition_goldens.py), composed at load, on both bases…
        ("tiny-llama__mix-cat", "tiny-llama/hf", "tiny-llama/mix-cat"),
        ("tiny-llama__mix-cat", "tiny-llama/F32", "tiny-llama/mix-cat"),
        // PEFT's linear (a at 0.7, e at -0.4) and ties (0.8, 0.6, density 0.5) of two rank-4 adapters
        // (tools/gen_composition_goldens.py --same-rank)…
        ("tiny-llama__mix-linear", "tiny-llama/hf", "tiny-llama/mix-linear"),
        ("tiny-llama__mix-linear", "tiny-llama/F32", "tiny-llama/mix-linear"),
        ("tiny-llama__mix-ties", "tiny-llama/hf", "tiny-llama/mix-ties"),
        ("tiny-llama__mix-ties", "tiny-llama/F32", "tiny-llama/mix-ties"),
        // …and PEFT's dare_linear (0.8, -0.5, density 0.6) and dare_ties (0.8, 0.6, density 0.5, sign by frequency), PEFT's
        // code with dlora's seeded drop masks (tools/gen_composition_goldens.py; on the GGUF base the masks of Q/K's B
        // follow its row permutation)…
        ("tiny-llama__mix-dare-linear", "tiny-llama/hf", "tiny-llama/mix-dare-linear"),
        ("tiny-llama__mix-dare-linear", "tiny-llama/F32", "tiny-llama/mix-dare-linear"),
        ("tiny-llama__mix-dare-ties", "tiny-llama/hf", "tiny-llama/mix-dare-ties"),
        ("tiny-llama__mix-dare-ties", "tiny-llama/F32", "tiny-llama/mix-dare-ties"),
        // A MoLE composition (mole_config.json + gates.safetensors over a, b and c; seeded gates per block, per
        // token; tools/gen_mole_goldens.py, torch hooks on PEFT's layers), unmerged only, all experts and
        // masked to a and c, on both bases…
        ("tiny-llama__mole-abc", "tiny-llama/hf", "tiny-llama/mole-abc"),
        ("tiny-llama__mole-abc", "tiny-llama/F32", "tiny-llama/mole-abc"),
        ("tiny-llama__mole-abc__experts-ac", "tiny-llama/hf", "tiny-llama/mole-abc"),
        ("tiny-llama__mole-abc__experts-ac", "tiny-llama/F32", "tiny-llama/mole-abc"),
        // …and with layer gates (one per sub-layer: attention and MLP) and one network gate (from block 0's
        // attention input, weighing every block), the same experts, on both bases…
        ("tiny-llama__mole-abc-layer", "tiny-llama/hf", "tiny-llama/mole-abc-layer"),
        ("tiny-llama__mole-abc-layer", "tiny-llama/F32", "tiny-llama/mole-abc-layer"),
        ("tiny-llama__mole-abc-net", "tiny-llama/hf", "tiny-llama/mole-abc-net"),
        ("tiny-llama__mole-abc-net", "tiny-llama/F32", "tiny-llama/mole-abc-net"),
        // …and matrix gates (m-MoLE: one per adapted projection, from its own input — o's from the attention
        // output, down's from the activation) over a and c, which leave gate_proj and up_proj unadapted…
        ("tiny-llama__mole-ac-matrix", "tiny-llama/hf", "tiny-llama/mole-ac-matrix"),
        ("tiny-llama__mole-ac-matrix", "tiny-llama/F32", "tiny-llama/mole-ac-matrix"),
        // …and as llama.cpp GGUF LoRA files on both bases.
        ("tiny-llama__a-qv-r4", "tiny-llama/F32", "tiny-llama/a-qv-r4.gguf"),
        ("tiny-llama__b-all-r8-rslora", "tiny-llama/F32", "tiny-llama/b-all-r8-rslora.gguf"),
        ("tiny-llama__b-all-r8-rslora", "tiny-llama/hf", "tiny-llama/b-all-r8-rslora.gguf"),
    ]

    @Test(arguments: tinyCases.indices)
    func tinyModels(_ index: Int) throws {
        let (goldenName, basePath, adapterPath) = Self.tinyCases[index]
        let g = try Self.golden(goldenName)
        #expect(g.baseMaxAbsDiff > 0.5, "the adapter must matter")
        let parts = basePath.split(separator: "/").map(String.init)
        let model = try LlamaModel(checkpoint: openCheckpoint(path: Fixtures.model(parts[0], parts[1])))
        var adapter = try AdapterLoader.load(path: Fixtures.root.appendingPathComponent("lora/\(adapterPath)").path, base: model.config)
        if let keep = g.moleExperts {
            let gating = try #require(adapter.gating)
            adapter = adapter.restricted(toExperts: try MoLEComposition.mask(keep, of: gating, adapter: adapter.name))
        }
        let label = "\(goldenName) on \(basePath) via \(adapterPath)"
        Self.check(g, model: model, adapter: adapter, merged: false, label: label + " (unmerged)")
        if adapter.mergeable { Self.check(g, model: model, adapter: adapter, merged: true, label: label + " (merged)") }
    }

    /// The golden of SmolLM2 adapter `name`, the default model and the adapter.
    static func smolLM2Case(_ name: String) throws -> (Golden, LlamaModel, LoRAWeights) {
        _ = try DefaultModel.require()
        let g = try Self.golden("smollm2__\(name)")
        let model = try LlamaModel(checkpoint: openCheckpoint(path: Fixtures.smolPath))
        let adapter = try AdapterLoader.load(path: Fixtures.root.appendingPathComponent("lora/smollm2/\(name)").path, base: model.config)
        return (g, model, adapter)
    }

    /// The default model (Q4_1 GGUF, permuted Q/K) with two F16 PEFT adapters made on transformers' HF-layout load of it.
    @Test(arguments: ["s1-qv-r4", "s2-ko-r8-rslora"])
    func smolLM2(_ name: String) throws {
        let (g, model, adapter) = try Self.smolLM2Case(name)
        #expect(adapter.module(layer: 0, target: name.hasPrefix("s1") ? .q : .k)?.dtype == .f16)
        Self.check(g, model: model, adapter: adapter, merged: false, label: "SmolLM2 + \(name) (unmerged)")
        Self.check(g, model: model, adapter: adapter, merged: true, label: "SmolLM2 + \(name) (merged)")
    }

    /// Merged mode re-quantized to Q8_0 (`MergePrecision.q8_0`) on the default model against the same PEFT
    /// goldens: W + s·B·A rounded to 8-bit blocks moves the logits by more than f32 merging (≤ 1e-3) but by
    /// far less than the adapter itself does; greedy ids agree wherever the golden's margin exceeds twice
    /// that error. Unmerging restores the exact weights.
    @Test(arguments: ["s1-qv-r4", "s2-ko-r8-rslora"])
    func smolLM2MergedQ8(_ name: String) throws {
        _ = try Self.checkRoundedMerge(name, .q8_0, tolerance: Self.q8Tolerance, headroom: 4)
    }

    /// With int8 activations (`--matmul-precision int8`, AVX-512 VNNI) on the default model, against the same PEFT
    /// goldens: unmerged (the adapter's path stays f32) and merged in Q8_0 (`auto`'s merge precision there, whose codes
    /// the merged products read with int8 activations like the base's), both within the int8 tolerance
    /// (ModelGoldenTests: the activations' rounding, 0.88 on the base model), and below the adapter's own effect.
    /// The merged and unmerged forwards differ (a merge's Q8_0 rounding), and unmerging restores the unmerged logits.
    @Test(.enabled(if: Kernels.hasInt8Dot), arguments: ["s1-qv-r4", "s2-ko-r8-rslora"])
    func smolLM2WithInt8Activations(_ name: String) throws {
        let (g, model, adapter) = try Self.smolLM2Case(name)
        model.setInt8Products(true)
        #expect(model.preferredMergePrecision == .q8_0)
        model.mergePrecision = model.preferredMergePrecision
        let tolerance: Float = 1.5
        let unmerged = Self.check(g, model: model, adapter: adapter, merged: false, label: "SmolLM2 + \(name) (unmerged, int8)",
                                  tolerance: tolerance, tie: 2 * tolerance)
        let merged = Self.check(g, model: model, adapter: adapter, merged: true, label: "SmolLM2 + \(name) (merged q8_0, int8)",
                                tolerance: tolerance, tie: 2 * tolerance)
        print("int8 activations \(name): max |Δlogit| unmerged \(unmerged), merged \(merged) (adapter moves the logits by up to \(g.baseMaxAbsDiff))")
        #expect(unmerged > Self.tolerance && merged != unmerged, "int8 activations must differ measurably from f32 products")
        #expect(max(unmerged, merged) < g.baseMaxAbsDiff, "the rounding must stay below what the adapter changes")
        #expect(Self.check(g, model: model, adapter: adapter, merged: false, label: "SmolLM2 + \(name) (unmerged again, int8)",
                           tolerance: tolerance, tie: 2 * tolerance) == unmerged)
    }

    /// Int8 adapters (`AdapterPrecision.int8`, what serve holds beside int8 products): A and B quantized to Q8_0 and the
    /// shrink with int8 activations. Against the PEFT goldens within the int8 tolerance and below the adapter's own
    /// effect; measurably not the stored adapter's forward (or nothing new ran); every module held Q8_0, at less than
    /// 0.6× the stored bytes a step reads; merged (Q8_0, from the held values) within the same tolerance.
    @Test(.enabled(if: Kernels.hasInt8Dot), arguments: ["s1-qv-r4", "s2-ko-r8-rslora"])
    func smolLM2WithInt8Adapters(_ name: String) throws {
        let (g, model, stored) = try Self.smolLM2Case(name)
        model.setInt8Products(true)
        model.mergePrecision = model.preferredMergePrecision
        let adapter = stored.held(as: .matching(model))
        let modules = adapter.modules.joined().compactMap { $0 }
        #expect(!modules.isEmpty && modules.allSatisfy { $0.dtype == .q8_0 })
        #expect(adapter.id == stored.id && adapter.scale == stored.scale && adapter.name == stored.name)
        #expect(Double(adapter.kernelBytes) < 0.6 * Double(stored.kernelBytes), "\(adapter.kernelBytes) of \(stored.kernelBytes) bytes")
        let tolerance: Float = 1.5
        let asStored = Self.check(g, model: model, adapter: stored, merged: false, label: "SmolLM2 + \(name) (stored adapter, int8)",
                                  tolerance: tolerance, tie: 2 * tolerance)
        let unmerged = Self.check(g, model: model, adapter: adapter, merged: false, label: "SmolLM2 + \(name) (int8 adapter, int8)",
                                  tolerance: tolerance, tie: 2 * tolerance)
        let merged = Self.check(g, model: model, adapter: adapter, merged: true, label: "SmolLM2 + \(name) (int8 adapter merged q8_0)",
                                tolerance: tolerance, tie: 2 * tolerance)
        print("int8 adapter \(name): max |Δlogit| unmerged \(unmerged) (stored adapter \(asStored)), merged \(merged) (adapter moves the logits by up to \(g.baseMaxAbsDiff))")
        #expect(unmerged != asStored, "the int8 adapter's forward must differ from the stored one's")
        #expect(max(unmerged, merged) < g.baseMaxAbsDiff, "the rounding must stay below what the adapter changes")
    }

    /// Int4 adapters (`AdapterPrecision.int4`, opt-in): A and B quantized to Q4_0, the same kernels as int8 ones. Their
    /// cost is measured where nothing else rounds (f32 products) and where serve runs them (int8 products): against the
    /// PEFT goldens within `int4Tolerance` of the adapter's own effect under f32 products, more than an int8 adapter
    /// loses (or nothing new ran) and below the adapter's effect under int8 products; at most 0.6× an int8 adapter's
    /// bytes per step.
    @Test(.enabled(if: Kernels.hasInt8Dot), arguments: ["s1-qv-r4", "s2-ko-r8-rslora"])
    func smolLM2WithInt4Adapters(_ name: String) throws {
        let (g, model, stored) = try Self.smolLM2Case(name)
        let int8 = stored.held(as: .int8), int4 = stored.held(as: .int4)
        let modules = int4.modules.joined().compactMap { $0 }
        #expect(!modules.isEmpty && modules.allSatisfy { $0.dtype == .q4_0 })
        #expect(int4.id == stored.id && int4.scale == stored.scale && int4.name == stored.name)
        #expect(Double(int4.kernelBytes) < 0.6 * Double(int8.kernelBytes), "\(int4.kernelBytes) of int8's \(int8.kernelBytes) bytes")
        let effect = g.baseMaxAbsDiff, loose = effect
        let f32Int8 = Self.check(g, model: model, adapter: int8, merged: false, label: "SmolLM2 + \(name) (int8 adapter, f32)",
                                 tolerance: loose, tie: 2 * loose)
        let f32Int4 = Self.check(g, model: model, adapter: int4, merged: false, label: "SmolLM2 + \(name) (int4 adapter, f32)",
                                 tolerance: Self.int4Tolerance * effect, tie: 2 * Self.int4Tolerance * effect)
        model.setInt8Products(true)
        let int8Int4 = Self.check(g, model: model, adapter: int4, merged: false, label: "SmolLM2 + \(name) (int4 adapter, int8)",
                                  tolerance: loose, tie: 2 * loose)
        print("int4 adapter \(name): max |Δlogit| under f32 products \(f32Int4) (int8 adapter \(f32Int8)), under int8 products \(int8Int4); the adapter moves the logits by up to \(effect)")
        #expect(f32Int4 > f32Int8, "the int4 adapter must lose more than the int8 one, or the test checks nothing new")
        #expect(int8Int4 < effect, "the rounding must stay below what the adapter changes")
    }

    /// What an int4 adapter may move the logits by under f32 products, as a share of what the adapter itself moves them
    /// (measured: see docs/design/lora-kernels.md, "int4 adapters").
    static let int4Tolerance: Float = 0.25

    /// Logit tolerance of a Q8_0-merged forward against the f32 references (measured 0.15 and 0.19 on the two SmolLM2 adapters).
    static let q8Tolerance: Float = 0.3

    /// Merged mode rounded to f16 (`MergePrecision.f16`) against the same PEFT goldens: one rounding of W + s·B·A to
    /// 11 significant bits, so the logits move by less than a Q8_0 merge moves them and by far less than the adapter
    /// does. Unmerging restores the exact weights; a merge whose values leave f16's range keeps that matrix f32.
    @Test(arguments: ["s1-qv-r4", "s2-ko-r8-rslora"])
    func smolLM2MergedF16(_ name: String) throws {
        let (model, adapter, g) = try Self.checkRoundedMerge(name, .f16, tolerance: Self.f16Tolerance, headroom: 20)
        let target: LoRATarget = name.hasPrefix("s1") ? .q : .k
        let loaded = model.layers[0].matrix(target).dtype
        model.merge(adapter, scale: g.scale)
        #expect(model.layers[0].matrix(target).dtype == .f16)
        model.unmerge()
        // An update past f16's range (|x| > 65504) keeps that matrix in f32 instead of turning it into infinities.
        model.merge(adapter, scale: 1e9)
        #expect(model.layers[0].matrix(target).dtype == .f32)
        model.unmerge()
        #expect(model.layers[0].matrix(target).dtype == loaded)
    }

    /// A merge in `precision` on the default model against adapter `name`'s PEFT golden: its max logit error, held to
    /// `tolerance` (greedy ids compared where the golden's margin exceeds twice it), must exceed f32 merging's (or the
    /// test checks nothing new) and stay below the adapter's own effect over `headroom`; unmerged afterwards, the
    /// pristine weights give the golden again.
    static func checkRoundedMerge(_ name: String, _ precision: MergePrecision, tolerance: Float,
                                  headroom: Float) throws -> (LlamaModel, LoRAWeights, Golden) {
        let (g, model, adapter) = try Self.smolLM2Case(name)
        model.mergePrecision = precision
        let err = Self.check(g, model: model, adapter: adapter, merged: true, label: "SmolLM2 + \(name) (merged, \(precision))",
                             tolerance: tolerance, tie: 2 * tolerance)
        print("merged \(precision) \(name): max |Δlogit| \(err) (adapter moves the logits by up to \(g.baseMaxAbsDiff))")
        #expect(err > Self.tolerance, "\(precision) merging must differ measurably from f32 merging, or the test checks nothing new")
        #expect(err < g.baseMaxAbsDiff / headroom, "the rounding must stay well below what the adapter changes")
        Self.check(g, model: model, adapter: adapter, merged: false, label: "SmolLM2 + \(name) (unmerged after a \(precision) merge)")
        return (model, adapter, g)
    }

    /// Logit tolerance of an f16-merged forward against the f32 references (measured 0.0051 and 0.0060 on the two
    /// SmolLM2 adapters, against 0.15–0.19 for Q8_0 merges).
    static let f16Tolerance: Float = 0.02

    /// `--merge-precision auto`: f16 for f32 products on a quantized base (the default model), f32 once its products
    /// are bf16 (merged matrices are then read from bf16 packs) and on an f32 base.
    @Test func preferredMergePrecisionFollowsTheProducts() throws {
        _ = try DefaultModel.require()
        let smol = try LlamaModel(checkpoint: openCheckpoint(path: Fixtures.smolPath))
        #expect(!smol.bf16Products && smol.preferredMergePrecision == .f16)
        if Kernels.hasBF16Dot {
            smol.setBF16Products(true)
            #expect(smol.preferredMergePrecision == .f32)
        }
        let f32 = try LlamaModel(checkpoint: openCheckpoint(path: Fixtures.model("tiny-llama", "F32")))
        #expect(f32.preferredMergePrecision == .f32)
        let q8 = try LlamaModel(checkpoint: openCheckpoint(path: Fixtures.model("tiny-llama", "Q8_0")))
        #expect(q8.preferredMergePrecision == .f16)
    }

}
