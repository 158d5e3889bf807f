import Foundation
import Kernels
@testable import Models
import Testing
import TestSupport

@testable import Adapters

@Suite struct LoRAExecutionTests {
    static let prompt = [5, 17, 200, 3, 9, 44, 61, 12, 13]

    static func slots(_ w: LoRAWeights) -> LoRASlots {
        let s = LoRASlots(capacity: 2)
        s[1] = w
        return s
    }

    /// A PEFT adapter (Hugging Face layout) and the same adapter as a llama.cpp GGUF LoRA (Q/K rows
    /// permuted) give the same logits on the Hugging Face base and on the GGUF base: the row permutation
    /// between the two RoPE layouts is applied whichever way round they meet.
    @Test func adapterLayoutsMeetBothBaseLayouts() throws {
        let dir = try TempDir()
        let hfBase = try LlamaModel(checkpoint: openCheckpoint(path: Fixtures.model("tiny-llama", "hf")))
        let ggBase = try LlamaModel(checkpoint: openCheckpoint(path: Fixtures.model("tiny-llama", "F32")))
        let config = hfBase.config
        let adapter = TestAdapter(config: config, rank: 4, alpha: 8, targets: [.q, .k, .v, .o], seed: 1)
        try adapter.writePEFT(to: dir.path("peft"), config: config)
        try adapter.writeGGUF(to: dir.path("lora.gguf"), config: ggBase.config)

        let reference = promptLogits(hfBase, Self.prompt, lora: Self.slots(try AdapterLoader.load(path: dir.path("peft"), base: hfBase.config)), slot: 1)
        let baseOnly = promptLogits(hfBase, Self.prompt)
        #expect(maxAbsDiff(reference, baseOnly) > 0.3, "the adapter must change the logits for this test to mean anything")
        for (base, path) in [(ggBase, dir.path("peft")), (ggBase, dir.path("lora.gguf")), (hfBase, dir.path("lora.gguf"))] {
            let w = try AdapterLoader.load(path: path, base: base.config)
            let got = promptLogits(base, Self.prompt, lora: Self.slots(w), slot: 1)
            #expect(maxAbsDiff(got, reference) <= 1e-4, "\(path) on \(base.config.ropeStyle) base")
        }
    }

    /// rsLoRA scales by alpha/√r; GGUF LoRA carries it folded into alpha.
    @Test func rsLoRAScaling() throws {
        let dir = try TempDir()
        let base = try LlamaModel(checkpoint: openCheckpoint(path: Fixtures.model("tiny-llama", "hf")))
        let adapter = TestAdapter(config: base.config, rank: 16, alpha: 8, rslora: true, targets: [.gate, .up, .down], seed: 2)
        try adapter.writePEFT(to: dir.path("peft"), config: base.config)
        try adapter.writeGGUF(to: dir.path("lora.gguf"), config: base.config)
        let peft = try AdapterLoader.load(path: dir.path("peft"), base: base.config)
        let gguf = try AdapterLoader.load(path: dir.path("lora.gguf"), base: base.config)
        #expect(abs(peft.scale - 2) < 1e-6 && abs(gguf.scale - 2) < 1e-6)
        #expect(peft.targets == [.gate, .up, .down])
    }

    /// Merged (W + s·B·A, dense) and unmerged (LoRA path per segment) agree; unmerging restores the base
    /// bit-exactly, 1,000 times over.
    @Test(arguments: ["Q4_1", "hf"])
    func mergedEqualsUnmergedAndUnmergeRestoresTheBase(_ variant: String) throws {
        let dir = try TempDir()
        let model = try LlamaModel(checkpoint: openCheckpoint(path: Fixtures.model("tiny-llama", variant)))
        let adapter = TestAdapter(config: model.config, rank: 8, alpha: 16, targets: LoRATarget.allCases, seed: 3)
        try adapter.writePEFT(to: dir.path("peft"), config: model.config)
        let w = try AdapterLoader.load(path: dir.path("peft"), base: model.config)
        let base = promptLogits(model, Self.prompt)
        let unmerged = promptLogits(model, Self.prompt, lora: Self.slots(w), slot: 1, scale: 0.7)
        model.merge(w, scale: 0.7)
        let merged = promptLogits(model, Self.prompt)
        #expect(model.merged?.name == "peft")
        #expect(maxAbsDiff(merged, unmerged) <= 1e-4)
        #expect(maxAbsDiff(merged, base) > 0.3)
        model.unmerge()
        #expect(promptLogits(model, Self.prompt) == base)
        for _ in 0..<1000 {
            model.merge(w)
            model.unmerge()
        }
        #expect(model.merged == nil)
        #expect(promptLogits(model, Self.prompt) == base)
    }

    /// Merges write into a workspace kept across merges: merging an adapter after another one (with other
    /// targets) gives exactly what merging it into a fresh model gives, and the workspace does not grow.
    @Test func mergeWorkspaceIsReusedWithoutResidue() throws {
        let dir = try TempDir()
        let path = Fixtures.model("tiny-llama", "Q4_1")
        let model = try LlamaModel(checkpoint: openCheckpoint(path: path))
        let fresh = try LlamaModel(checkpoint: openCheckpoint(path: path))
        try TestAdapter(config: model.config, rank: 8, alpha: 16, targets: LoRATarget.allCases, seed: 5)
            .writePEFT(to: dir.path("all"), config: model.config)
        try TestAdapter(config: model.config, rank: 4, alpha: 8, targets: [.q, .v, .down], seed: 6)
            .writePEFT(to: dir.path("qvd"), config: model.config)
        let all = try AdapterLoader.load(path: dir.path("all"), base: model.config)
        let qvd = try AdapterLoader.load(path: dir.path("qvd"), base: model.config)
        #expect(model.mergeWorkspaceBytes == 0)
        model.merge(all)
        let bytes = model.mergeWorkspaceBytes
        #expect(bytes > 0)
        model.unmerge()
        model.merge(qvd)
        let reused = promptLogits(model, Self.prompt)
        model.unmerge()
        fresh.merge(qvd)
        #expect(reused == promptLogits(fresh, Self.prompt))
        #expect(fresh.mergeWorkspaceBytes < bytes)
        model.merge(all)
        model.unmerge()
        #expect(model.mergeWorkspaceBytes == bytes)
        model.releaseMergeWorkspace()
        #expect(model.mergeWorkspaceBytes == 0)
    }

    /// On an F32 base, merging some members of a fused projection (q and v of q|k|v, gate of gate|up) keeps it one
    /// product reading the merge workspace (the member the adapter leaves alone copied into its place) instead of
    /// stacking copies into a new buffer on every merge; the merged logits still follow the unmerged path's, and
    /// unmerging restores the base bit-exactly. On a quantized base the members keep their own dtypes.
    @Test func aPartialMergeKeepsFusedProjectionsInTheWorkspace() throws {
        let dir = try TempDir()
        let config = try LlamaModel(checkpoint: openCheckpoint(path: Fixtures.model("tiny-llama", "F32"))).config
        try TestAdapter(config: config, rank: 8, alpha: 16, targets: [.q, .v, .gate], seed: 7).writePEFT(to: dir.path("qvg"), config: config)
        for variant in ["F32", "Q4_1"] {
            let model = try LlamaModel(checkpoint: openCheckpoint(path: Fixtures.model("tiny-llama", variant)))
            let w = try AdapterLoader.load(path: dir.path("qvg"), base: model.config)
            let base = promptLogits(model, Self.prompt)
            let unmerged = promptLogits(model, Self.prompt, lora: Self.slots(w), slot: 1)
            for _ in 0..<2 {
                model.merge(w)
                for layer in model.layers {
                    if variant == "F32" {
                        #expect(layer.qkv?.storage === layer.q.storage && layer.qkv?.offset == layer.q.offset)
                        #expect(layer.gateUp?.storage === layer.gate.storage && layer.gateUp?.offset == layer.gate.offset)
                        #expect(layer.k.storage === layer.q.storage && layer.up.storage === layer.gate.storage)
                    } else {
                        #expect(layer.qkv == nil && layer.gateUp == nil && layer.k.dtype == .q4_1 && layer.up.dtype == .q4_1)
                    }
                }
                #expect(maxAbsDiff(promptLogits(model, Self.prompt), unmerged) <= 1e-4, "\(variant)")
                model.unmerge()
                #expect(promptLogits(model, Self.prompt) == base)
            }
        }
    }

    /// Timing a switch on the model (the scheduler's prior, `measureSwitchCost`) leaves it as loaded: nothing
    /// merged, the same logits, no workspace kept that it did not find (and the one it found kept); it declines
    /// while an adapter is merged.
    @Test func switchCostProbeLeavesTheModelAsLoaded() throws {
        let dir = try TempDir()
        let model = try LlamaModel(checkpoint: openCheckpoint(path: Fixtures.model("tiny-llama", "Q4_1")))
        let base = promptLogits(model, Self.prompt)
        let cost = try #require(model.measureSwitchCost(sampleElements: 1, rounds: 2))
        for v in [cost.secondsPerElement, cost.secondsPerMultiplyAdd, cost.unmergeSeconds] { #expect(v.isFinite && v >= 0) }
        #expect(cost.secondsPerElement + 16 * cost.secondsPerMultiplyAdd > 0)
        #expect(model.merged == nil && model.mergeWorkspaceBytes == 0)
        #expect(promptLogits(model, Self.prompt) == base)
        try TestAdapter(config: model.config, rank: 8, alpha: 16, targets: LoRATarget.allCases, seed: 5)
            .writePEFT(to: dir.path("all"), config: model.config)
        let all = try AdapterLoader.load(path: dir.path("all"), base: model.config)
        model.merge(all)
        let merged = promptLogits(model, Self.prompt)
        #expect(model.measureSwitchCost(sampleElements: 1, rounds: 1) == nil)
        #expect(promptLogits(model, Self.prompt) == merged)
        model.unmerge()
        let bytes = model.mergeWorkspaceBytes
        #expect(model.measureSwitchCost(sampleElements: 1, rounds: 1) != nil)
        #expect(model.mergeWorkspaceBytes == bytes && model.merged == nil)
        #expect(promptLogits(model, Self.prompt) == base)
    }

    /// The per-request scale multiplies the adapter's scaling: scale 0 is the base model, 2 equals an
    /// adapter with twice the alpha.
    @Test func perRequestScale() throws {
        let dir = try TempDir()
        let model = try LlamaModel(checkpoint: openCheckpoint(path: Fixtures.model("tiny-llama", "Q8_0")))
        var adapter = TestAdapter(config: model.config, rank: 4, alpha: 4, targets: [.q, .v, .down], seed: 4)
        try adapter.writePEFT(to: dir.path("a"), config: model.config)
        adapter.alpha = 8
        try adapter.writePEFT(to: dir.path("b"), config: model.config)
        let a = try AdapterLoader.load(path: dir.path("a"), base: model.config)
        let b = try AdapterLoader.load(path: dir.path("b"), base: model.config)
        #expect(promptLogits(model, Self.prompt, lora: Self.slots(a), slot: 1, scale: 0) == promptLogits(model, Self.prompt))
        #expect(maxAbsDiff(promptLogits(model, Self.prompt, lora: Self.slots(a), slot: 1, scale: 2),
                           promptLogits(model, Self.prompt, lora: Self.slots(b), slot: 1)) <= 1e-5)
    }

    /// A BF16 adapter file stays BF16 in memory (half the bytes per step) and computes exactly what the same
    /// values in f32 compute.
    @Test func halfPrecisionAdaptersStayHalfAndExact() throws {
        let dir = try TempDir()
        let model = try LlamaModel(checkpoint: openCheckpoint(path: Fixtures.model("tiny-llama", "Q4_1")))
        var adapter = TestAdapter(config: model.config, rank: 8, alpha: 16, targets: LoRATarget.allCases, seed: 6)
        try adapter.writePEFT(to: dir.path("bf16"), config: model.config, dtype: "BF16")
        adapter.weights = adapter.weights.map { $0.mapValues { (a: $0.a.map(TestAdapter.roundedBF16), b: $0.b.map(TestAdapter.roundedBF16)) } }
        try adapter.writePEFT(to: dir.path("f32"), config: model.config)
        let half = try AdapterLoader.load(path: dir.path("bf16"), base: model.config)
        let full = try AdapterLoader.load(path: dir.path("f32"), base: model.config)
        #expect(half.module(layer: 0, target: .q)?.dtype == .bf16 && full.module(layer: 0, target: .q)?.dtype == .f32)
        #expect(half.byteCount * 2 == full.byteCount)
        #expect(promptLogits(model, Self.prompt, lora: Self.slots(half), slot: 1) == promptLogits(model, Self.prompt, lora: Self.slots(full), slot: 1))
    }
}
