import Foundation
import Kernels
import Engine
import Models
import Testing
import TestSupport

/// The reference goldens of Tests/Fixtures/models (written by tools/gen_model_goldens.py from transformers).
enum ModelFixtures {
    static let root = FixtureFiles.models

    struct Step: Decodable {
        let position: Int
        let argmax: Int
        let margin: Float
        let logits: [Float]
    }

    struct Case: Decodable {
        let promptIds: [Int]
        let steps: [Step]
        let greedyIds: [Int]
        let greedyMargins: [Float]
    }

    struct PrefillAll: Decodable {
        let promptIndex: Int
        let logits: [[Float]]
    }

    struct Goldens: Decodable {
        let model: String
        let variant: String
        let file: String
        let vocabSize: Int
        let cases: [Case]
        let prefillAllPositions: PrefillAll?
    }

    static func goldens(model: String, variant: String) throws -> Goldens {
        try FixtureFiles.decodeGolden(Goldens.self, at: root.appendingPathComponent("\(model)/goldens/\(variant).json"))
    }

    /// The checkpoint a golden file was computed from: the hf/ directory or the GGUF file.
    static func checkpointPath(model: String, variant: String) -> String {
        FixtureFiles.checkpoint(model: model, variant: variant)
    }

    /// Every (model, variant) pair with goldens.
    static let variants: [(String, String)] = [
        ("tiny-llama", "hf"), ("tiny-llama", "F32"), ("tiny-llama", "F16"), ("tiny-llama", "Q8_0"),
        ("tiny-llama", "Q4_0"), ("tiny-llama", "Q4_1"),
        ("tiny-qwen2", "hf"), ("tiny-qwen2", "F32"), ("tiny-qwen2", "Q8_0"),
        ("tiny-llama3", "hf"), ("tiny-llama3", "F32"),
        ("tiny-llama-bias", "hf"),
    ]

    // SmolLM2-135M-Instruct goldens (the model file lives in the user cache, not in the repo).
    struct SmolStep: Decodable {
        let argmax: Int
        let margin: Float
        let top50Ids: [Int]
        let top50Logits: [Float]
        let spreadLogits: [Float]
        let logsumexp: Float
    }

    struct SmolCase: Decodable {
        let kind: String
        let promptIds: [Int]
        let steps: [SmolStep]
        let greedyIds: [Int]
        let greedyMargins: [Float]
        let continuationText: String
    }

    struct SmolGoldens: Decodable {
        let sha256: String
        let spreadIds: [Int]
        let cases: [SmolCase]
    }

    static func smolGoldens() throws -> SmolGoldens {
        try FixtureFiles.decodeGolden(SmolGoldens.self, at: root.appendingPathComponent("smollm2-135m-instruct/goldens.json"))
    }

}

/// Runs a model over sequences with block tables laid out here, on the engine's own `ModelRunner` (its KV
/// storage, workspace and logits): the smallest driver of a forward pass.
final class SequenceDriver {
    let model: LlamaModel
    let runner: Engine.ModelRunner
    let blockSize: Int
    let blocksPerSequence: Int

    init(model: LlamaModel, sequences: Int, maxTokens: Int, blockSize: Int = 4, kvDType: KVCacheDType = .f32) {
        self.model = model
        self.blockSize = blockSize
        blocksPerSequence = (maxTokens + blockSize - 1) / blockSize
        runner = Engine.ModelRunner(model: model, numBlocks: sequences * blocksPerSequence, blockSize: blockSize, maxBatchTokens: 8,
                                    adapterSlots: 1, kvDType: kvDType)
        // Blocks of different sequences interleave (sequence s owns blocks s, s + sequences, ...), so a
        // paging bug that reads a neighbour's block cannot go unnoticed.
        let perSequence = blocksPerSequence
        tables = (0..<sequences).map { s in (0..<perSequence).map { Int32($0 * sequences + s) } }
    }

    let tables: [[Int32]]

    /// One forward pass over (sequence index, new tokens, start position, logits wanted) parts; returns
    /// the logit rows in order.
    func forward(_ parts: [(seq: Int, tokens: [Int], start: Int, logits: ForwardBatch.Logits)]) -> [[Float]] {
        var batch = ForwardBatch()
        for p in parts {
            batch.append(sequence: p.tokens, start: p.start, blockTable: tables[p.seq], blockSize: blockSize, logits: p.logits)
        }
        _ = runner.forward(batch)
        return (0..<batch.logitRows.count).map { Array(runner.logitsRow($0)) }
    }
}

func argmax(_ x: [Float]) -> Int {
    var best = 0
    for i in x.indices where x[i] > x[best] { best = i }
    return best
}

/// Greedy ids must match the reference up to the first step whose reference margin is below
/// `minMargin` (there, f32 summation order may legitimately pick the other token).
func comparableGreedyPrefix(_ margins: [Float], minMargin: Float = 1e-2) -> Int {
    margins.firstIndex { $0 < minMargin } ?? margins.count
}
