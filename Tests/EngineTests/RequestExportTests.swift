import Foundation
import Kernels
import Models
import Testing
import Tokenizers

@testable import Engine

/// Export a running request from one engine, import it into another: the continuation is identical —
/// greedy and seeded sampling, with and without the KV cache, through a JSON round trip.
@Suite struct RequestExportTests {
    @Test(arguments: [(0.0, true), (0.9, true), (0.9, false)])
    func exportImportContinuesIdentically(temperature: Double, includeKV: Bool) throws {
        let checkpoint = try openCheckpoint(path: ModelFixtures.checkpointPath(model: "tiny-llama", variant: "Q4_1"))
        let model = try LlamaModel(checkpoint: checkpoint)
        let tokenizer = try Tokenizer(metadata: #require(checkpoint.metadata))
        let params = SamplingParams(temperature: temperature, topP: 0.95, seed: 1234, maxTokens: 24, ignoreEOS: true)
        let prompt = [5, 17, 200, 3, 9, 44, 61, 12, 13, 99, 101]

        let solo = EngineCore(model: model, tokenizer: tokenizer, kvBlocks: 16, blockSize: 4)
        let soloID = try solo.submit(prompt: prompt, params: params)
        let soloEvents = solo.runToCompletion().filter { $0.requestID == soloID }

        // Run 7 steps on engine A (with a neighbour request), export, resume on engine B (other cache size).
        let a = EngineCore(model: model, tokenizer: tokenizer, kvBlocks: 16, blockSize: 4, maxBatchTokens: 5)
        let id = try a.submit(prompt: prompt, params: params)
        try a.submit(prompt: [7, 8, 9], params: params)
        // The consumer's side: text from the token events as they come.
        var processor = OutputProcessor(tokenizer: tokenizer, stop: params.stop)
        var before: [GenerationEvent] = []
        for _ in 0..<7 { before += a.step().filter { $0.requestID == id }.map { processor.process($0) } }
        let exported = try a.export(id, includeKV: includeKV)
        #expect((exported.kv != nil) == includeKV && (exported.computed > 0) == includeKV)
        let wire = try JSONDecoder().decode(ExportedRequest.self, from: JSONEncoder().encode(exported))
        #expect(wire == exported)
        #expect(a.runToCompletion().allSatisfy { $0.requestID != id })

        let b = EngineCore(model: model, tokenizer: tokenizer, kvBlocks: 12, blockSize: 4)
        let newID = try b.importRequest(wire, adapter: nil)
        let after = b.runToCompletion().filter { $0.requestID == newID }
        #expect((before + after).compactMap(\.token) == soloEvents.compactMap(\.token))
        #expect((before + after).map(\.text).joined() == soloEvents.map(\.text).joined())
        #expect(after.last?.finish == .length)
        #expect(b.freeKVBlocks == b.totalKVBlocks)
    }

    /// K/V moves between replicas as f32 values whatever each cache stores: from an f16 cache to an f16 cache
    /// the continuation is the solo run's exactly (widening and rounding back are exact); from f16 to f32 and
    /// from f32 to f16 the request resumes on the moved K/V (no recompute) and runs to its length.
    @Test(arguments: [(KVCacheDType.f16, KVCacheDType.f16), (.f16, .f32), (.f32, .f16)])
    func kvMovesBetweenCacheTypes(from source: KVCacheDType, to destination: KVCacheDType) throws {
        let checkpoint = try openCheckpoint(path: ModelFixtures.checkpointPath(model: "tiny-llama", variant: "Q4_1"))
        let model = try LlamaModel(checkpoint: checkpoint)
        let tokenizer = try Tokenizer(metadata: #require(checkpoint.metadata))
        let params = SamplingParams(temperature: 0, maxTokens: 20, ignoreEOS: true)
        let prompt = [5, 17, 200, 3, 9, 44, 61, 12, 13, 99, 101]
        let solo = EngineCore(model: model, tokenizer: tokenizer, kvBlocks: 16, blockSize: 4, kvCacheDType: source)
        let soloID = try solo.submit(prompt: prompt, params: params)
        let soloTokens = solo.runToCompletion().filter { $0.requestID == soloID }.compactMap(\.token)

        let a = EngineCore(model: model, tokenizer: tokenizer, kvBlocks: 16, blockSize: 4, kvCacheDType: source)
        let id = try a.submit(prompt: prompt, params: params)
        var before: [Int] = []
        for _ in 0..<6 { before += a.step().filter { $0.requestID == id }.compactMap(\.token) }
        let exported = try JSONDecoder().decode(ExportedRequest.self, from: JSONEncoder().encode(try a.export(id)))
        #expect(exported.kv != nil && exported.computed > 0)
        let b = EngineCore(model: model, tokenizer: tokenizer, kvBlocks: 12, blockSize: 4, kvCacheDType: destination)
        let newID = try b.importRequest(exported, adapter: nil)
        let events = b.runToCompletion().filter { $0.requestID == newID }
        #expect(b.stats.promptTokens < prompt.count, "the moved K/V was recomputed (\(b.stats.promptTokens) prompt tokens)")
        #expect(before.count + events.compactMap(\.token).count == 20 && events.last?.finish == .length)
        if source == destination { #expect(before + events.compactMap(\.token) == soloTokens) }
        #expect(b.freeKVBlocks == b.totalKVBlocks)
    }

    @Test func importChecksTheAdapterAndTheState() throws {
        let checkpoint = try openCheckpoint(path: ModelFixtures.checkpointPath(model: "tiny-llama", variant: "Q4_1"))
        let model = try LlamaModel(checkpoint: checkpoint)
        let tokenizer = try Tokenizer(metadata: #require(checkpoint.metadata))
        let g = EngineCore(model: model, tokenizer: tokenizer, kvBlocks: 8)
        let id = try g.submit(prompt: [1, 2, 3], params: .greedy)
        _ = g.step()
        var e = try g.export(id)
        e.adapterName = "sql"
        #expect(throws: EngineError.self) { try g.importRequest(e, adapter: nil) }
        e.adapterName = nil
        e.promptCount = 0
        #expect(throws: EngineError.self) { try g.importRequest(e, adapter: nil) }
        #expect(throws: EngineError.self) { try g.export(RequestID(12345)) }
    }
}
