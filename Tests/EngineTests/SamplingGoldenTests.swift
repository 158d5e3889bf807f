import Foundation
import Models
import Testing
import Tokenizers
import TestSupport

@testable import Engine

/// Penalties, logit bias and log-probabilities against transformers (Tests/Fixtures/models/tiny-llama/goldens/
/// sampling.json, written by tools/gen_sampling_goldens.py): greedy decoding with OpenAI's presence/frequency
/// penalties and bias applied to the reference's float32 logits, and the raw logits' log-softmax in float64.
@Suite struct SamplingGoldenTests {
    /// The prompt's log-probabilities (each token given the ones before it), reported with the first generated
    /// token: in one prefill, and chunked over several iterations (each position scored once, in order), beside a
    /// request that asks for none.
    @Test(arguments: [512, 5])
    func promptLogprobsMatchTransformers(maxBatchTokens: Int) throws {
        let g = Self.goldens
        let checkpoint = try openCheckpoint(path: FixtureFiles.models.appendingPathComponent("tiny-llama/tiny-llama.F32.gguf").path)
        let model = try LlamaModel(checkpoint: checkpoint)
        let tokenizer = try Tokenizer(metadata: #require(checkpoint.metadata))
        let engine = EngineCore(model: model, tokenizer: tokenizer, kvBlocks: 64, maxBatchTokens: maxBatchTokens)
        let params = SamplingParams(temperature: 0, maxTokens: 2, ignoreEOS: true, promptLogprobs: 3)
        let id = try engine.submit(prompt: g.prompt.promptIds, params: params)
        let other = try engine.submit(prompt: g.prompt.promptIds, params: SamplingParams(temperature: 0, maxTokens: 2, ignoreEOS: true))
        var events: [EngineEvent] = []
        var otherEvents: [EngineEvent] = []
        for _ in 0..<40 where events.last?.finish == nil || otherEvents.last?.finish == nil {
            let step = engine.step()
            events += step.filter { $0.requestID == id }
            otherEvents += step.filter { $0.requestID == other }
        }
        #expect(events.count == 2 && otherEvents.count == 2)
        #expect(events.map(\.token) == otherEvents.map(\.token))
        #expect(otherEvents.allSatisfy { $0.promptLogprobs == nil } && events.last?.promptLogprobs == nil)
        let scored = try #require(events.first?.promptLogprobs)
        #expect(scored.count == g.prompt.positions.count)
        for (i, (got, want)) in zip(scored, g.prompt.positions).enumerated() {
            #expect(got.token == want.token)
            #expect(abs(Double(got.logprob) - want.logprob) <= Self.tolerance, "position \(i + 1): \(got.logprob) vs \(want.logprob)")
            #expect(zip(got.topLogprobs, want.topLogprobs).allSatisfy { abs(Double($0) - $1) <= Self.tolerance }, "position \(i + 1)")
            #expect(got.topTokens.count == 3 && got.topTokens.first == want.topTokens.first)
        }
    }

    /// The f32 forward pass's logits are within 1e-3 of the reference's (ModelGoldenTests); log-softmax moves each
    /// by the same normaliser, so the log-probabilities are held to 2e-3. A greedy step is compared where the
    /// reference's adjusted margin exceeds 1e-2, and the run stops being compared after the first that does not.
    static let tolerance = 2e-3
    static let minMargin: Float = 1e-2

    static let goldens: SamplingGoldens = try! SamplingGoldens.load()

    /// stop_token_ids end a request at that token (not part of its text, like end-of-sequence); min_tokens keeps
    /// them, and the end-of-sequence tokens, from being sampled until that many tokens were generated.
    @Test func stopTokenIDsAndMinTokens() throws {
        let plain = try #require(Self.goldens.cases.first { $0.name == "plain" })
        let checkpoint = try openCheckpoint(path: FixtureFiles.models.appendingPathComponent("tiny-llama/tiny-llama.F32.gguf").path)
        let model = try LlamaModel(checkpoint: checkpoint)
        let tokenizer = try Tokenizer(metadata: #require(checkpoint.metadata))
        let engine = EngineCore(model: model, tokenizer: tokenizer, kvBlocks: 64)
        let first = plain.steps[0].token  // the greedy first token, far from a tie
        var params = SamplingParams(temperature: 0, maxTokens: 8, ignoreEOS: true)
        params.stopTokenIDs = [first]
        let stopped = try engine.submit(prompt: plain.promptIds, params: params)
        params.minTokens = 3
        let held = try engine.submit(prompt: plain.promptIds, params: params)
        let events = engine.runToCompletion()
        let a = events.filter { $0.requestID == stopped }
        #expect(a.map(\.token) == [first] && a.last?.finish == .stop && a.map(\.text).joined().isEmpty)
        let b = events.filter { $0.requestID == held }.compactMap(\.token)
        #expect(b.count >= 3 && !b.prefix(3).contains(first), "\(b)")
        #expect(b.count == 8 || b.last == first)
        // min_tokens above max_tokens is refused.
        params.minTokens = 9
        #expect(throws: SamplingError.self) { try engine.submit(prompt: plain.promptIds, params: params) }
    }

    /// Under memory pressure: four such requests in a cache that holds fewer than their blocks, prefilled in chunks
    /// of 8 tokens, with no host memory to swap to, so requests are preempted and recomputed (some mid-prefill); each
    /// still reports every prompt position once, as the reference scores it.
    @Test func promptLogprobsSurvivePreemption() throws {
        let g = Self.goldens
        let checkpoint = try openCheckpoint(path: FixtureFiles.models.appendingPathComponent("tiny-llama/tiny-llama.F32.gguf").path)
        let model = try LlamaModel(checkpoint: checkpoint)
        let tokenizer = try Tokenizer(metadata: #require(checkpoint.metadata))
        let engine = EngineCore(model: model, tokenizer: tokenizer, kvBlocks: 14, blockSize: 4, maxBatchTokens: 8, hostSwapLimitBytes: 0)
        let params = SamplingParams(temperature: 0, maxTokens: 12, ignoreEOS: true, promptLogprobs: 2)
        let ids = try (0..<4).map { _ in try engine.submit(prompt: g.prompt.promptIds, params: params) }
        let events = engine.runToCompletion()
        #expect(engine.stats.preemptions > 0)
        for id in ids {
            let mine = events.filter { $0.requestID == id }
            #expect(mine.count == 12)
            let reported = mine.compactMap(\.promptLogprobs)
            #expect(reported.count == 1, "prompt log-probabilities reported \(reported.count) times")
            let scored = try #require(reported.first)
            #expect(scored.map(\.token) == g.prompt.positions.map(\.token))
            #expect(zip(scored, g.prompt.positions).allSatisfy { abs(Double($0.logprob) - $1.logprob) <= Self.tolerance })
        }
    }

    @Test(arguments: ["plain", "penalties", "negative-penalties", "bias", "prompt-not-penalised", "repetition"])
    func matchesTransformers(_ name: String) throws {
        let g = Self.goldens
        let c = try #require(g.cases.first { $0.name == name })
        let checkpoint = try openCheckpoint(path: FixtureFiles.models.appendingPathComponent("tiny-llama/tiny-llama.F32.gguf").path)
        let model = try LlamaModel(checkpoint: checkpoint)
        let tokenizer = try Tokenizer(metadata: #require(checkpoint.metadata))
        let engine = EngineCore(model: model, tokenizer: tokenizer, kvBlocks: 64)
        final class Rows: @unchecked Sendable { var rows: [[Float]] = [] }
        let seen = Rows()
        engine.logitsObserver = { _, row in seen.rows.append(Array(row)) }
        var bias: [Int: Double] = [:]
        for (k, v) in c.logitBias { bias[try #require(Int(k))] = v }
        var params = SamplingParams(temperature: 0, maxTokens: c.steps.count, ignoreEOS: true, presencePenalty: c.presencePenalty,
                                    frequencyPenalty: c.frequencyPenalty, logitBias: bias, logprobs: g.top)
        params.repetitionPenalty = c.repetitionPenalty
        let id = try engine.submit(prompt: c.promptIds, params: params)
        var events: [EngineEvent] = []
        for _ in 0..<(c.steps.count + 4) where events.last?.finish == nil {
            events += engine.step().filter { $0.requestID == id }
        }
        #expect(events.count == c.steps.count)
        var compared = 0
        for (i, (e, want)) in zip(events, c.steps).enumerated() {
            let lp = try #require(e.logprobs, "step \(i) has no logprobs")
            #expect(lp.token == e.token)
            #expect(abs(Double(lp.logprob) - want.logprob) <= Self.tolerance || e.token != want.token,
                    "\(name) step \(i): logprob \(lp.logprob) vs \(want.logprob)")
            #expect(lp.topTokens.count == g.top && lp.topLogprobs.count == g.top)
            for (j, (got, ref)) in zip(lp.topLogprobs, want.topLogprobs).enumerated() {
                #expect(abs(Double(got) - ref) <= Self.tolerance, "\(name) step \(i) top \(j): \(got) vs \(ref)")
            }
            // Ids of the top list where their neighbours are apart beyond the noise (a near-tie may swap).
            for j in 0..<min(lp.topTokens.count, want.topTokens.count) {
                let apart = (j == 0 || want.topLogprobs[j - 1] - want.topLogprobs[j] > 2 * Self.tolerance)
                    && (j + 1 == want.topLogprobs.count || want.topLogprobs[j] - want.topLogprobs[j + 1] > 2 * Self.tolerance)
                if apart { #expect(lp.topTokens[j] == want.topTokens[j], "\(name) step \(i) top \(j)") }
            }
            // The adjustment itself, on this step's logits given the same tokens so far: every changed logit by what
            // the reference changed it by (within the logits' own tolerance, which a multiplicative penalty scales),
            // and no other.
            let row = seen.rows[i]
            var adjusted = row
            var marks = [UInt32](repeating: 0, count: row.count)
            let history = events[..<i].compactMap(\.token)
            adjusted.withUnsafeMutableBufferPointer { a in
                marks.withUnsafeMutableBufferPointer { m in
                    if c.repetitionPenalty != 1 {
                        Sampler.repeat(a, tokens: c.promptIds[...], generated: history[...], penalty: Float(c.repetitionPenalty), marks: m, mark: 1)
                    }
                    Sampler.adjust(a, generated: history[...], presence: Float(c.presencePenalty), frequency: Float(c.frequencyPenalty),
                                   bias: bias, marks: m, mark: 2)
                }
            }
            for t in row.indices {
                let ref = want.adjusted[String(t)] ?? 0
                let d = Double(adjusted[t]) - Double(row[t])
                #expect(abs(d - ref) <= 2e-3, "\(name) step \(i): token \(t) adjusted by \(d), reference \(ref)")
            }
            guard want.margin > Self.minMargin else { break }
            #expect(e.token == want.token, "\(name) step \(i): token \(e.token ?? -1) vs \(want.token)")
            compared += 1
            if e.token != want.token { break }
        }
        #expect(compared >= 3, "only \(compared) greedy steps were comparable")
    }
}
