import Foundation

/// Tests/Fixtures/models/tiny-llama/goldens/sampling.json (tools/gen_sampling_goldens.py): greedy decoding under
/// OpenAI's penalties and logit bias, and raw log-probabilities, from transformers; read by the engine's and the
/// server's tests.
public struct SamplingGoldens: Decodable, Sendable {
    public struct Step: Decodable, Sendable {
        public let token: Int
        /// Between the two largest adjusted logits.
        public let margin: Float
        public let logprob: Double
        public let topTokens: [Int]
        public let topLogprobs: [Double]
        /// What the penalties and bias added to each token's logit that they changed (by token id).
        public let adjusted: [String: Double]
    }

    public struct Case: Decodable, Sendable {
        public let name: String
        public let promptIds: [Int]
        public let presencePenalty: Double
        public let frequencyPenalty: Double
        public let repetitionPenalty: Double
        public let logitBias: [String: Double]
        public let steps: [Step]
    }

    /// A prompt token scored given the ones before it.
    public struct Scored: Decodable, Sendable {
        public let token: Int
        public let logprob: Double
        public let topTokens: [Int]
        public let topLogprobs: [Double]
    }

    public struct PromptCase: Decodable, Sendable {
        public let promptIds: [Int]
        /// Positions 1 ..< prompt length.
        public let positions: [Scored]
    }

    /// Alternatives per step.
    public let top: Int
    public let cases: [Case]
    public let prompt: PromptCase

    public static func load() throws -> SamplingGoldens {
        try FixtureFiles.decodeGolden(SamplingGoldens.self, at: FixtureFiles.models.appendingPathComponent("tiny-llama/goldens/sampling.json"))
    }
}
