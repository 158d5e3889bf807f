import Foundation
import Models
import Scheduling
import Testing
import Tokenizers

@testable import Engine

/// The step loop on its own thread, driven from many tasks at once.
@Suite struct EngineLoopTests {
    static func tiny() throws -> (LlamaModel, Tokenizer) {
        let checkpoint = try openCheckpoint(path: ModelFixtures.checkpointPath(model: "tiny-llama", variant: "Q4_1"))
        return (try LlamaModel(checkpoint: checkpoint), try Tokenizer(metadata: #require(checkpoint.metadata)))
    }

    /// 100 requests submitted concurrently from tasks all finish, each streaming exactly the tokens of its
    /// solo run.
    @Test func hundredConcurrentRequests() async throws {
        let (model, tokenizer) = try Self.tiny()
        let params = SamplingParams(temperature: 0, maxTokens: 8, ignoreEOS: true)
        let prompts = (0..<100).map { i in (0..<(1 + i % 9)).map { (i * 31 + $0 * 7) % 300 } }
        var solo: [[Int]] = []
        for p in prompts {
            let g = EngineCore(model: model, tokenizer: tokenizer, kvBlocks: 2)
            let id = try g.submit(prompt: p, params: params)
            solo.append(g.runToCompletion().filter { $0.requestID == id }.compactMap(\.token))
        }
        let loop = EngineLoop(engine: EngineCore(model: model, tokenizer: tokenizer, kvBlocks: 400, maxBatchTokens: 128,
                                                   maxSequences: 32, policy: BatchPolicyConfig(kind: .unmergedOnly)))
        defer { loop.shutdown() }
        let results = try await withThrowingTaskGroup(of: (Int, [Int], FinishReason?).self) { group in
            for (i, p) in prompts.enumerated() {
                group.addTask {
                    let (_, events) = try loop.submit(prompt: p, params: params)
                    var tokens: [Int] = []
                    var finish: FinishReason?
                    for await e in events {
                        if let t = e.token { tokens.append(t) }
                        finish = e.finish ?? finish
                    }
                    return (i, tokens, finish)
                }
            }
            var out: [(Int, [Int], FinishReason?)] = []
            for try await r in group { out.append(r) }
            return out
        }
        #expect(results.count == 100)
        for (i, tokens, finish) in results {
            #expect(tokens == solo[i], "request \(i)")
            #expect(finish == .length)
        }
        #expect(loop.inspect { $0.freeKVBlocks == $0.totalKVBlocks && !$0.hasWork })
    }

    /// A consumer that stops reading mid-stream cancels its request; an explicit cancel does too; bad
    /// requests are refused at submit.
    @Test func cancellationAndValidation() async throws {
        let (model, tokenizer) = try Self.tiny()
        let loop = EngineLoop(engine: EngineCore(model: model, tokenizer: tokenizer, kvBlocks: 64))
        defer { loop.shutdown() }
        let long = SamplingParams(temperature: 0, maxTokens: 200, ignoreEOS: true)
        do {
            let (_, events) = try loop.submit(prompt: [1, 2, 3], params: long)
            var seen = 0
            for await _ in events {
                seen += 1
                if seen == 3 { break }  // drops the stream: onTermination cancels the request
            }
        }
        let (ticket, events2) = try loop.submit(prompt: [4, 5, 6], params: long)
        loop.cancel(ticket)
        var count = 0
        for await _ in events2 { count += 1 }
        #expect(count < 200)
        // The loop reaches idle with every block free.
        var idle = false
        for _ in 0..<200 where !idle {
            try await Task.sleep(nanoseconds: 5_000_000)
            idle = loop.inspect { !$0.hasWork && $0.freeKVBlocks == $0.totalKVBlocks }
        }
        #expect(idle)
        #expect(throws: EngineError.self) { try loop.submit(prompt: [], params: long) }
        #expect(throws: SamplingError.self) { try loop.submit(prompt: [1], params: SamplingParams(topP: 2)) }
        #expect(throws: EngineError.self) { try loop.submit(prompt: [100_000], params: long) }
    }
}
