import Foundation
import Kernels
import Models
import Testing
import Tokenizers
import TestSupport

@testable import Engine

/// A batched forward of k sequences (prefill chunks and decodes mixed in one flat batch) equals k
/// single-sequence forwards.
@Suite struct BatchEquivalenceTests {
    /// Logits of every step of one sequence run alone: the prompt in one pass, then `decodes` fed tokens.
    static func single(_ model: LlamaModel, prompt: [Int], feed: [Int], kvDType: KVCacheDType = .f32) -> [[Float]] {
        let runner = SequenceDriver(model: model, sequences: 1, maxTokens: prompt.count + feed.count, kvDType: kvDType)
        var rows = runner.forward([(0, prompt, 0, .all)])
        for (i, t) in feed.enumerated() {
            rows += runner.forward([(0, [t], prompt.count + i, .last)])
        }
        return rows
    }

    /// Runs the same sequences interleaved: sequence s starts at step s, prefills in chunks of 3 tokens,
    /// then decodes its `feed` tokens one per step; every step is one flat batch over all active sequences.
    static func batched(_ model: LlamaModel, prompts: [[Int]], feeds: [[Int]], kvDType: KVCacheDType = .f32) -> [[[Float]]] {
        let runner = SequenceDriver(model: model, sequences: prompts.count, maxTokens: prompts.map(\.count).max()! + feeds.map(\.count).max()!,
                                    kvDType: kvDType)
        var out = prompts.map { _ in [[Float]]() }
        var done = prompts.map { _ in 0 }  // tokens computed per sequence
        var step = 0
        while zip(done, zip(prompts, feeds)).contains(where: { $0 < $1.0.count + $1.1.count }) {
            var parts: [(seq: Int, tokens: [Int], start: Int, logits: ForwardBatch.Logits)] = []
            for s in prompts.indices where s <= step {
                let all = prompts[s] + feeds[s]
                guard done[s] < all.count else { continue }
                let n = done[s] < prompts[s].count ? min(3, prompts[s].count - done[s]) : 1
                parts.append((s, Array(all[done[s]..<(done[s] + n)]), done[s], .all))
            }
            let rows = runner.forward(parts)
            var r = 0
            for p in parts {
                out[p.seq] += rows[r..<(r + p.tokens.count)]
                r += p.tokens.count
                done[p.seq] += p.tokens.count
            }
            step += 1
        }
        return out
    }

    static let prompts: [[Int]] = [[5, 17, 200, 3, 9, 44, 61], [250], [12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22], [99, 98, 97, 96]]
    static let feeds: [[Int]] = [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11, 12], [13, 14], [15, 16, 17, 18]]

    /// Quantized weights (dequantize-on-the-fly kernel): bit-identical whatever the batch, with an f32 or an f16
    /// KV cache.
    @Test(arguments: ["Q4_1", "Q8_0", "F16"], KVCacheDType.allCases)
    func quantizedIsBitIdentical(_ variant: String, kvDType: KVCacheDType) throws {
        let model = try LlamaModel(checkpoint: openCheckpoint(path: ModelFixtures.checkpointPath(model: "tiny-llama", variant: variant)))
        let batched = Self.batched(model, prompts: Self.prompts, feeds: Self.feeds, kvDType: kvDType)
        for s in Self.prompts.indices {
            let alone = Self.single(model, prompt: Self.prompts[s], feed: Self.feeds[s], kvDType: kvDType)
            #expect(batched[s].count == alone.count)
            for (i, (a, b)) in zip(batched[s], alone).enumerated() {
                #expect(a == b, "\(variant) sequence \(s) row \(i): batched differs from alone by \(maxAbsDiff(a, b))")
            }
        }
    }

    /// f32 weights go to BLAS, whose blocking depends on the batch: equal within f32 rounding.
    /// The base model's products in bf16 (`--matmul-precision bf16`): bit-identical whatever the batch, for quantized
    /// and f32 checkpoints alike (every token count goes through the same kernel, sgemm included).
    @Test(arguments: ["Q4_1", "F32"], KVCacheDType.allCases)
    func bf16ProductsAreBitIdentical(_ variant: String, kvDType: KVCacheDType) throws {
        let model = try LlamaModel(checkpoint: openCheckpoint(path: ModelFixtures.checkpointPath(model: "tiny-llama", variant: variant)))
        model.setBF16Products(true)
        let batched = Self.batched(model, prompts: Self.prompts, feeds: Self.feeds, kvDType: kvDType)
        for s in Self.prompts.indices {
            #expect(batched[s] == Self.single(model, prompt: Self.prompts[s], feed: Self.feeds[s], kvDType: kvDType), "sequence \(s)")
        }
        // And it is the bf16 arithmetic: the f32 products' logits differ, and switching back restores them exactly.
        let bf16 = Self.single(model, prompt: Self.prompts[0], feed: Self.feeds[0], kvDType: kvDType)
        model.setBF16Products(false)
        let f32 = Self.single(model, prompt: Self.prompts[0], feed: Self.feeds[0], kvDType: kvDType)
        let fresh = try LlamaModel(checkpoint: openCheckpoint(path: ModelFixtures.checkpointPath(model: "tiny-llama", variant: variant)))
        #expect(f32 != bf16 && f32 == Self.single(fresh, prompt: Self.prompts[0], feed: Self.feeds[0], kvDType: kvDType))
    }

    /// With int8 activations (`--matmul-precision int8`, AVX-512 VNNI): bit-identical whatever the batch (every token
    /// count goes through the same kernel, and a token's activations are quantized on their own), and it is the int8
    /// arithmetic: the f32 products' logits differ, and switching back restores them exactly.
    @Test(.enabled(if: Kernels.hasInt8Dot), arguments: ["Q4_0", "Q4_1", "Q8_0"], KVCacheDType.allCases)
    func int8ProductsAreBitIdentical(_ variant: String, kvDType: KVCacheDType) throws {
        let model = try LlamaModel(checkpoint: openCheckpoint(path: ModelFixtures.checkpointPath(model: "tiny-llama", variant: variant)))
        let f32 = Self.single(model, prompt: Self.prompts[0], feed: Self.feeds[0], kvDType: kvDType)
        model.setInt8Products(true)
        let batched = Self.batched(model, prompts: Self.prompts, feeds: Self.feeds, kvDType: kvDType)
        for s in Self.prompts.indices {
            #expect(batched[s] == Self.single(model, prompt: Self.prompts[s], feed: Self.feeds[s], kvDType: kvDType), "sequence \(s)")
        }
        #expect(batched[0] != f32)
        model.setInt8Products(false)
        #expect(Self.single(model, prompt: Self.prompts[0], feed: Self.feeds[0], kvDType: kvDType) == f32)
    }

    @Test(arguments: ["tiny-llama", "tiny-qwen2"])
    func f32WithinRounding(_ modelName: String) throws {
        let model = try LlamaModel(checkpoint: openCheckpoint(path: ModelFixtures.checkpointPath(model: modelName, variant: "hf")))
        let batched = Self.batched(model, prompts: Self.prompts, feeds: Self.feeds)
        for s in Self.prompts.indices {
            let alone = Self.single(model, prompt: Self.prompts[s], feed: Self.feeds[s])
            for (i, (a, b)) in zip(batched[s], alone).enumerated() {
                #expect(maxAbsDiff(a, b) <= 1e-4, "\(modelName) sequence \(s) row \(i)")
            }
        }
    }

    /// The Generator on the default model: 8 greedy requests submitted together produce the same tokens
    /// as each alone, including when the KV cache is too small for all of them (preemption + recompute).
    @Test(arguments: [64, 8], KVCacheDType.allCases)
    func generatorBatchOfEightMatchesSingles(kvBlocks: Int, kvDType: KVCacheDType) throws {
        let path = try DefaultModel.require()
        let checkpoint = try openCheckpoint(path: path)
        let model = try LlamaModel(checkpoint: checkpoint)
        let tokenizer = try Tokenizer(metadata: #require(checkpoint.metadata))
        let texts = ["The capital of France is", "1, 2, 3, 4,", "def fibonacci(n):", "Once upon a time",
                     "The quick brown fox", "Water boils at", "In 1492,", "Swift is a programming language"]
        let params = SamplingParams(temperature: 0, maxTokens: 12, ignoreEOS: true)

        var alone: [[Int]] = []
        for t in texts {
            let g = EngineCore(model: model, tokenizer: tokenizer, kvBlocks: 4, kvCacheDType: kvDType)
            let id = try g.submit(prompt: tokenizer.encode(t, addSpecial: true), params: params)
            alone.append(g.runToCompletion().filter { $0.requestID == id }.compactMap(\.token))
        }

        let g = EngineCore(model: model, tokenizer: tokenizer, kvBlocks: kvBlocks, maxBatchTokens: 64, kvCacheDType: kvDType)
        let ids = try texts.map { try g.submit(prompt: tokenizer.encode($0, addSpecial: true), params: params) }
        let events = g.runToCompletion()
        for (i, id) in ids.enumerated() {
            #expect(events.filter { $0.requestID == id }.compactMap(\.token) == alone[i], "request \(i)")
        }
        if kvBlocks < 16 { #expect(g.stats.preemptions > 0) }
    }

    /// Cancelling requests mid-stream frees their KV blocks (and the rest keep going).
    @Test func cancellationFreesEverything() throws {
        let checkpoint = try openCheckpoint(path: ModelFixtures.checkpointPath(model: "tiny-llama", variant: "Q4_1"))
        let model = try LlamaModel(checkpoint: checkpoint)
        let tokenizer = try Tokenizer(metadata: #require(checkpoint.metadata))
        let g = EngineCore(model: model, tokenizer: tokenizer, kvBlocks: 32, blockSize: 4)
        let params = SamplingParams(temperature: 0, maxTokens: 20, ignoreEOS: true)
        let ids = try (0..<6).map { try g.submit(prompt: Array(repeating: 5 + $0, count: 3 + $0), params: params) }
        for _ in 0..<4 { _ = g.step() }
        #expect(g.freeKVBlocks < g.totalKVBlocks)
        for id in ids.prefix(3) { g.cancel(id) }
        let rest = g.runToCompletion()
        #expect(Set(rest.map(\.requestID)).isSubset(of: Set(ids.suffix(3))))
        #expect(rest.filter { $0.finish != nil }.count == 3)
        #expect(!g.hasWork && g.freeKVBlocks == g.totalKVBlocks)
    }
}
