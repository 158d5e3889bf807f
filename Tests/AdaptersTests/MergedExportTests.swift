import Engine
import Foundation
import Kernels
import Models
import Scheduling
import Testing
import Tokenizers
import TestSupport

@testable import Adapters

/// A request of an adapter that runs merged moves between engines — with its K/V and by recompute, f32 and f16
/// caches — and continues exactly as its undisturbed merged run, seeded sampling included. This is a failover or
/// migration onto a replica that runs the adapter merged (`ClusterProcessTests` pins unmerged execution, since
/// dLoRA's mode decisions there follow measured step times; see docs/design/cluster.md).
@Suite struct MergedExportTests {
    @Test(arguments: KVCacheDType.allCases, [true, false])
    func aMergedRequestMovesExactly(kvCacheDType: KVCacheDType, includeKV: Bool) throws {
        let checkpoint = try openCheckpoint(path: Fixtures.model("tiny-llama", "Q4_1"))
        let tokenizer = try Tokenizer(metadata: #require(checkpoint.metadata))
        let c = try LlamaModel(checkpoint: checkpoint).config
        let dir = try TempDir()
        try TestAdapter(config: c, rank: 8, alpha: 16, targets: [.q, .v, .down], seed: 77).writePEFT(to: dir.path("a"), config: c)
        let adapter = try AdapterLoader.load(path: dir.path("a"), base: c)
        let params = SamplingParams(temperature: 0.9, seed: 5, maxTokens: 24, ignoreEOS: true)
        let prompt = tokenizer.encode("Tell me about mountains.", addSpecial: true)
        // Each engine its own model, as each replica has: a merge folds the adapter into the model's weights.
        func engine() throws -> EngineCore {
            EngineCore(model: try LlamaModel(checkpoint: checkpoint), tokenizer: tokenizer, kvBlocks: 128, blockSize: 4, policy: BatchPolicyConfig(kind: .mergedOnly),
                       kvCacheDType: kvCacheDType)
        }

        let solo = try engine()
        let soloID = try solo.submit(prompt: prompt, params: params, adapter: adapter)
        let soloTokens = solo.runToCompletion().filter { $0.requestID == soloID }.compactMap(\.token)
        #expect(soloTokens.count == 24)
        #expect(solo.stats.merges == 1 && solo.stats.unmergedSteps == 0, "\(solo.stats)")

        // Seven steps merged on A (a base-model neighbour waits: merged steps run one adapter), then B takes over.
        let a = try engine()
        let id = try a.submit(prompt: prompt, params: params, adapter: adapter)
        try a.submit(prompt: [7, 8, 9], params: params)
        var before: [Int] = []
        for _ in 0..<7 { before += a.step().filter { $0.requestID == id }.compactMap(\.token) }
        #expect(a.stats.mergedSteps == 7 && before.count == 7)
        let exported = try JSONDecoder().decode(ExportedRequest.self, from: JSONEncoder().encode(try a.export(id, includeKV: includeKV)))
        #expect((exported.kv != nil) == includeKV)
        let b = try engine()
        let newID = try b.importRequest(exported, adapter: adapter)
        let after = b.runToCompletion().filter { $0.requestID == newID }.compactMap(\.token)
        #expect(before + after == soloTokens)
        #expect(b.stats.merges == 1 && b.stats.unmergedSteps == 0)
    }
}

/// bf16 products (`LlamaModel.setBF16Products`) and merged mode: a merge packs its matrices too (f32 merges rounded
/// to bf16, Q8_0 merges as codes), so merged steps run every product in bf16; their logits follow the unmerged
/// path's (base products plus the f32 LoRA path) within bf16 rounding; the packs kept across merges are refilled
/// exactly (merging A after B gives A's first merged bits); the unmerge brings back the loaded products bit for bit.
@Suite struct BF16ProductsMergeTests {
    @Test(arguments: MergePrecision.allCases)
    func mergedStepsRunInBF16AndUnmergeRestores(precision: MergePrecision) throws {
        guard Kernels.hasBF16Dot else { return }  // (elsewhere bf16 products are a slow portable loop, never used)
        let checkpoint = try openCheckpoint(path: Fixtures.model("tiny-llama", "Q4_1"))
        let model = try LlamaModel(checkpoint: checkpoint)
        model.mergePrecision = precision
        let tokenizer = try Tokenizer(metadata: #require(checkpoint.metadata))
        let dir = try TempDir()
        try TestAdapter(config: model.config, rank: 8, alpha: 16, targets: [.q, .v, .down], seed: 78).writePEFT(to: dir.path("a"), config: model.config)
        try TestAdapter(config: model.config, rank: 8, alpha: 16, targets: [.q, .k, .v, .o, .gate, .up, .down], seed: 79).writePEFT(to: dir.path("b"), config: model.config)
        let a = try AdapterLoader.load(path: dir.path("a"), base: model.config)
        let b = try AdapterLoader.load(path: dir.path("b"), base: model.config)
        model.setBF16Products(true)
        func logits(_ adapter: LoRAWeights? = nil) throws -> [[Float]] {
            let g = EngineCore(model: model, tokenizer: tokenizer, kvBlocks: 256, blockSize: 4, policy: BatchPolicyConfig(kind: .unmergedOnly))
            var rows: [[Float]] = []
            g.logitsObserver = { _, row in rows.append(Array(row)) }
            try g.submit(prompt: [5, 17, 200, 3, 9], params: SamplingParams(temperature: 0, maxTokens: 4, ignoreEOS: true), adapter: adapter)
            _ = g.runToCompletion()
            return rows
        }
        let before = try logits(), unmergedA = try logits(a), unmergedB = try logits(b)
        #expect(model.everyProductInBF16)
        model.merge(a, scale: 1)
        #expect(model.everyProductInBF16)
        let mergedA = try logits()
        model.unmerge()
        model.merge(b, scale: 1)
        #expect(model.everyProductInBF16)
        let mergedB = try logits()
        model.unmerge()
        model.merge(a, scale: 1)
        let mergedAAgain = try logits()
        model.unmerge()
        #expect(mergedAAgain == mergedA && mergedA != mergedB && mergedA != before)
        // Merged vs unmerged: the same function of the adapter up to bf16 rounding of W + s·B·A (or Q8_0's), on the
        // prompt's logits (the random model's greedy steps may part on a near tie, and then so do the later rows).
        for (merged, unmerged) in [(mergedA, unmergedA), (mergedB, unmergedB)] {
            let err = zip(merged[0], unmerged[0]).map { abs($0 - $1) }.max() ?? .infinity
            // Measured (2026-12-05): 0.14-0.19 for f32 merges (1e-5 with f32 products); 0.46-0.51 for Q8_0 merges,
            // whose own rounding gives 0.43-0.65 on this random-weight model with f32 products.
            #expect(err < (precision == .f32 ? 0.5 : 1.0), "\(precision): merged vs unmerged max |Δlogit| = \(err)")
        }
        #expect(model.bf16Products && model.everyProductInBF16)
        #expect(try logits() == before)
    }
}
