import Engine
import Foundation
import Models
import Testing

@testable import Adapters

/// One batch across many adapters: requests for 4 different adapters (mixed ranks and targets, one with a
/// per-request scale) plus base-model requests, all submitted together, give per request exactly the tokens
/// of that request run alone.
@Suite struct MixedBatchTests {
    @Test(arguments: ["tiny", "smollm2"])
    func mixedBatchEqualsEachAlone(_ which: String) throws {
        let path = which == "tiny" ? Fixtures.model("tiny-llama", "Q4_1") : Fixtures.smolPath
        try #require(FileManager.default.fileExists(atPath: path), "default model missing: run scripts/fetch-model.sh")
        let checkpoint = try openCheckpoint(path: path)
        let model = try LlamaModel(checkpoint: checkpoint)
        let tokenizer = try Tokenizer(metadata: #require(checkpoint.metadata))
        let c = model.config
        let dir = try TempDir()
        let specs: [(Int, Double, [LoRATarget])] = [(4, 8, [.q, .v]), (8, 16, [.q, .k, .v, .o]), (16, 16, [.gate, .up, .down]), (2, 4, LoRATarget.allCases)]
        var adapters: [LoRAWeights] = []
        for (i, (rank, alpha, targets)) in specs.enumerated() {
            try TestAdapter(config: c, rank: rank, alpha: which == "tiny" ? alpha : alpha * 8, targets: targets, seed: UInt64(20 + i)).writePEFT(to: dir.path("a\(i)"), config: c)
            adapters.append(try AdapterLoader.load(path: dir.path("a\(i)"), base: c))
        }
        let texts = ["The capital of France is", "1, 2, 3, 4,", "def fibonacci(n):", "Once upon a time", "The quick brown fox", "Water boils at"]
        // (prompt, adapter index or nil for base, scale)
        let requests: [(String, Int?, Float)] = [(texts[0], 0, 1), (texts[1], 1, 1), (texts[2], nil, 1), (texts[3], 2, 1),
                                                 (texts[4], 3, 1), (texts[5], 0, 0.5), (texts[0], nil, 1), (texts[1], 2, 1)]
        let params = SamplingParams(temperature: 0, maxTokens: 10, ignoreEOS: true)

        var alone: [[Int]] = []
        for (text, a, scale) in requests {
            let g = Generator(model: model, tokenizer: tokenizer, kvBlocks: 8)
            let id = try g.submit(prompt: tokenizer.encode(text, addSpecial: true), params: params, adapter: a.map { adapters[$0] }, adapterScale: scale)
            alone.append(g.runToCompletion().filter { $0.requestID == id }.compactMap(\.token))
        }
        // The adapters must matter: at least the requests that share a prompt with a base request differ from it.
        #expect(alone[0] != alone[6] || alone[1] != alone[7] || which == "tiny")

        let g = Generator(model: model, tokenizer: tokenizer, kvBlocks: 64, maxBatchTokens: 40, adapterSlots: 4)
        let ids = try requests.map { text, a, scale in
            try g.submit(prompt: tokenizer.encode(text, addSpecial: true), params: params, adapter: a.map { adapters[$0] }, adapterScale: scale)
        }
        let events = g.runToCompletion()
        for (i, id) in ids.enumerated() {
            #expect(events.filter { $0.requestID == id }.compactMap(\.token) == alone[i], "request \(i)")
        }
    }
}
