import Foundation
import Kernels

/// How a request's next tokens are chosen (OpenAI's parameter names and meanings).
public struct SamplingParams: Sendable, Equatable, Codable {
    /// 0 means greedy (argmax).
    public var temperature: Double = 1.0
    /// Nucleus: sample from the smallest set of most likely tokens whose probability reaches `topP`.
    public var topP: Double = 1.0
    /// Keep only the `topK` most likely tokens; 0 = no limit.
    public var topK: Int = 0
    public var seed: UInt64?
    /// Generated tokens at most; nil = until end of sequence or the context is full.
    public var maxTokens: Int? = nil
    /// Generation stops before the first occurrence of any of these strings (not included in the output).
    public var stop: [String] = []
    /// Stop strings do not apply to an output that begins with this text: an "auto" tool choice's tag, after which
    /// the output is a call its grammar constrains and ends (a stop string matched inside it would cut the call's
    /// syntax short). While the output is still a prefix of it, its text is held.
    public var stopExemptPrefix: String? = nil
    /// Keep generating past the end-of-sequence token.
    public var ignoreEOS = false
    /// OpenAI's penalties (−2…2), on the tokens this request generated so far (as vLLM applies them): a token's
    /// logit loses `presencePenalty` once if it was generated at all, and `frequencyPenalty` per time it was.
    public var presencePenalty: Double = 0
    public var frequencyPenalty: Double = 0
    /// Added to these tokens' logits before sampling (OpenAI's `logit_bias`, −100…100; −100 in effect bans one).
    public var logitBias: [Int: Double] = [:]
    /// vLLM's and transformers' repetition penalty (> 0; 1 = off), over the prompt and the generated tokens: a
    /// positive logit of a token seen so far is divided by it, a negative one multiplied.
    public var repetitionPenalty: Double = 1
    /// vLLM's min-p (0…1; 0 = off): sample only among tokens at least `minP` times as likely as the most likely.
    public var minP: Double = 0
    /// vLLM's min_tokens: the end-of-sequence tokens (and `stopTokenIDs`) cannot be sampled before this many.
    public var minTokens: Int = 0
    /// vLLM's stop_token_ids: more tokens that end the sequence (not part of the text, like end-of-sequence).
    public var stopTokenIDs: [Int] = []
    /// Structured outputs (`response_format` json_object and json_schema, vLLM's `guided_json` / `guided_choice`,
    /// tool calls): only tokens that keep the output a prefix of a sentence of the spec's grammar can be sampled,
    /// end-of-sequence only once it is one (`GrammarAutomaton`).
    public var grammar: GrammarSpec? = nil
    /// Log-probabilities to report with each sampled token: nil none; n ≥ 0 the sampled token's and the n most
    /// likely tokens' (at most `maxLogprobs`). They are the model's own distribution (log-softmax of the raw
    /// logits), before temperature, penalties and bias — what OpenAI and vLLM (its default) return.
    public var logprobs: Int? = nil
    /// Log-probabilities of the prompt's tokens (each given the ones before it; the first has none), with this many
    /// alternatives, reported with the first generated token (vLLM's `prompt_logprobs`; OpenAI's `echo` with
    /// `logprobs`). A request resumed with tokens it generated elsewhere does not report them again.
    public var promptLogprobs: Int? = nil

    /// The most alternatives `logprobs` may ask for (OpenAI's chat limit, and vLLM's default).
    public static let maxLogprobs = 20

    public init(temperature: Double = 1.0, topP: Double = 1.0, topK: Int = 0, seed: UInt64? = nil,
                maxTokens: Int? = nil, stop: [String] = [], ignoreEOS: Bool = false, presencePenalty: Double = 0,
                frequencyPenalty: Double = 0, logitBias: [Int: Double] = [:], logprobs: Int? = nil, promptLogprobs: Int? = nil) {
        self.temperature = temperature
        self.topP = topP
        self.topK = topK
        self.seed = seed
        self.maxTokens = maxTokens
        self.stop = stop
        self.ignoreEOS = ignoreEOS
        self.presencePenalty = presencePenalty
        self.frequencyPenalty = frequencyPenalty
        self.logitBias = logitBias
        self.logprobs = logprobs
        self.promptLogprobs = promptLogprobs
    }

    /// Whether the logits are changed before sampling (penalties or bias).
    public var adjustsLogits: Bool { presencePenalty != 0 || frequencyPenalty != 0 || !logitBias.isEmpty || repetitionPenalty != 1 }

    public static let greedy = SamplingParams(temperature: 0)

    public var isGreedy: Bool { temperature == 0 || topK == 1 }

    /// Checks the ranges; the message names the parameter as the API and CLI spell it.
    public func validate() throws {
        guard temperature.isFinite, temperature >= 0, temperature <= 100 else {
            throw SamplingError("temperature must be between 0 and 100, got \(temperature)")
        }
        guard topP.isFinite, topP > 0, topP <= 1 else { throw SamplingError("top_p must be in (0, 1], got \(topP)") }
        guard topK >= 0 else { throw SamplingError("top_k must be >= 0, got \(topK)") }
        if let maxTokens, maxTokens < 1 { throw SamplingError("max_tokens must be >= 1, got \(maxTokens)") }
        guard stop.count <= 16 else { throw SamplingError("at most 16 stop strings, got \(stop.count)") }
        for s in stop where s.isEmpty || s.utf8.count > 256 {
            throw SamplingError("stop strings must be 1 to 256 bytes long")
        }
        guard presencePenalty.isFinite, abs(presencePenalty) <= 2 else {
            throw SamplingError("presence_penalty must be between -2 and 2, got \(presencePenalty)")
        }
        guard frequencyPenalty.isFinite, abs(frequencyPenalty) <= 2 else {
            throw SamplingError("frequency_penalty must be between -2 and 2, got \(frequencyPenalty)")
        }
        guard logitBias.count <= Self.maxLogitBias else {
            throw SamplingError("logit_bias may name at most \(Self.maxLogitBias) tokens, got \(logitBias.count)")
        }
        for (token, bias) in logitBias {
            guard token >= 0 else { throw SamplingError("logit_bias names token id \(token), which is negative") }
            guard bias.isFinite, abs(bias) <= 100 else {
                throw SamplingError("logit_bias values must be between -100 and 100, got \(bias) for token \(token)")
            }
        }
        if let logprobs, !(0...Self.maxLogprobs).contains(logprobs) {
            throw SamplingError("logprobs must be between 0 and \(Self.maxLogprobs), got \(logprobs)")
        }
        if let promptLogprobs, !(0...Self.maxLogprobs).contains(promptLogprobs) {
            throw SamplingError("prompt_logprobs must be between 0 and \(Self.maxLogprobs), got \(promptLogprobs)")
        }
        guard repetitionPenalty.isFinite, repetitionPenalty > 0, repetitionPenalty <= 10 else {
            throw SamplingError("repetition_penalty must be in (0, 10], got \(repetitionPenalty)")
        }
        guard minP.isFinite, minP >= 0, minP <= 1 else { throw SamplingError("min_p must be between 0 and 1, got \(minP)") }
        guard minTokens >= 0 else { throw SamplingError("min_tokens must be >= 0, got \(minTokens)") }
        if let maxTokens, minTokens > maxTokens {
            throw SamplingError("min_tokens (\(minTokens)) must not exceed max_tokens (\(maxTokens))")
        }
        guard stopTokenIDs.count <= 64, stopTokenIDs.allSatisfy({ $0 >= 0 }) else {
            throw SamplingError("stop_token_ids must hold at most 64 non-negative token ids")
        }
    }

    /// The most tokens `logitBias` may name (OpenAI documents no limit; this bounds the work per step).
    public static let maxLogitBias = 1024
}

public struct SamplingError: Error, CustomStringConvertible, Equatable, Sendable {
    public let description: String
    /// The request parameter at fault, as the API spells it, where one is.
    public let parameter: String?
    public init(_ message: String, parameter: String? = nil) {
        description = message
        self.parameter = parameter
    }
}

/// xoshiro256** seeded through splitmix64: small, fast, and its whole state can be saved and restored
/// (a migrated request continues the same random stream).
public struct SamplerRNG: RandomNumberGenerator, Sendable, Equatable {
    public private(set) var state: (UInt64, UInt64, UInt64, UInt64)

    public init(seed: UInt64) {
        var z = seed
        func splitmix() -> UInt64 {
            z &+= 0x9E37_79B9_7F4A_7C15
            var r = z
            r = (r ^ (r >> 30)) &* 0xBF58_476D_1CE4_E5B9
            r = (r ^ (r >> 27)) &* 0x94D0_49BB_1331_11EB
            return r ^ (r >> 31)
        }
        state = (splitmix(), splitmix(), splitmix(), splitmix())
    }

    public init(state: (UInt64, UInt64, UInt64, UInt64)) { self.state = state }

    /// The generator of one draw of a counter-based stream: (seed, position) mixed through splitmix64 so that
    /// neighbouring positions and seeds give unrelated states.
    public init(seed: UInt64, position: Int) {
        var z = seed ^ 0xD1B5_4A32_D192_ED03
        z = (z ^ (z >> 33)) &* 0xFF51_AFD7_ED55_8CCD
        z ^= UInt64(truncatingIfNeeded: position) &* 0x9E37_79B9_7F4A_7C15
        z = (z ^ (z >> 29)) &* 0xC4CE_B9FE_1A85_EC53
        self.init(seed: z ^ (z >> 32))
    }

    public mutating func next() -> UInt64 {
        let result = ((state.1 &* 5) << 7 | (state.1 &* 5) >> 57) &* 9
        let t = state.1 << 17
        state.2 ^= state.0
        state.3 ^= state.1
        state.1 ^= state.2
        state.0 ^= state.3
        state.2 ^= t
        state.3 = state.3 << 45 | state.3 >> 19
        return result
    }

    /// A uniform double in [0, 1).
    public mutating func nextUnit() -> Double { Double(next() >> 11) * 0x1.0p-53 }

    public static func == (a: SamplerRNG, b: SamplerRNG) -> Bool { a.state == b.state }
}

/// Chooses a token from a row of logits. Keeps its candidate buffers between calls, so sampling does not
/// allocate once warm; top-p sorts only the candidates that can be in the nucleus.
///
/// Counter-based: the random draw for the token at sequence position p depends only on (seed, p)
/// (`SamplerRNG(seed: seed, position: p)`), never on what was drawn before. A request resumed anywhere —
/// migrated, or re-dispatched after its replica died — with its seed and the tokens generated so far
/// continues exactly as it would have; nothing else about the sampler needs to travel.
public struct Sampler: Sendable {
    public let params: SamplingParams
    /// The request's seed (`params.seed`, or one drawn at random when it names none).
    public let seed: UInt64
    /// Position used by `sample(_:)` without one (tests and tools that draw repeatedly).
    private var counter = 0
    private var candidates: [Int32] = []
    private var probs: [Float] = []
    /// The logits after penalties and bias (requests that set them).
    private var adjusted: [Float] = []
    /// Per-token marks for the presence penalty: `seen[t] == epoch` once token t was penalised this step.
    private var seen: [UInt32] = []
    private var epoch: UInt32 = 0

    public init(params: SamplingParams, seed: UInt64? = nil) {
        self.params = params
        self.seed = seed ?? params.seed ?? UInt64.random(in: .min ... .max)
    }

    /// The next token for the sequence position `position`, after the request's penalties (over `generated`, the
    /// tokens it generated so far) and logit bias. Without either it is `sample(_:position:)` on `logits` as they are.
    /// `prompt`: the request's prompt (the repetition penalty counts it too); `suppress`: tokens that cannot be sampled
    /// now (end-of-sequence before `minTokens`).
    /// `allowed`: when given, only tokens t with allowed[t] ≠ 0 can be sampled (JSON mode).
    public mutating func sample(_ logits: UnsafeBufferPointer<Float>, position: Int, generated: ArraySlice<Int>,
                                prompt: ArraySlice<Int> = [], suppress: [Int] = [], allowed: UnsafeBufferPointer<UInt8>? = nil) -> Int? {
        guard params.adjustsLogits || !suppress.isEmpty || allowed != nil else { return sample(logits, position: position) }
        let vocab = logits.count
        if adjusted.count != vocab { adjusted = [Float](repeating: 0, count: vocab) }
        let presence = Float(params.presencePenalty), frequency = Float(params.frequencyPenalty)
        let repetition = Float(params.repetitionPenalty)
        if (presence != 0 || repetition != 1) && seen.count != vocab {
            seen = [UInt32](repeating: 0, count: vocab)
            epoch = 0
        }
        if epoch >= UInt32.max - 2 {  // about to wrap: clear the marks once every 2^31 steps
            for i in seen.indices { seen[i] = 0 }
            epoch = 0
        }
        epoch &+= 2
        let mark = epoch
        adjusted.withUnsafeMutableBufferPointer { a in
            _ = a.initialize(from: logits)
            seen.withUnsafeMutableBufferPointer { marks in
                if repetition != 1 { Self.repeat(a, tokens: prompt, generated: generated, penalty: repetition, marks: marks, mark: mark - 1) }
                Self.adjust(a, generated: generated, presence: presence, frequency: frequency, bias: params.logitBias,
                            marks: marks, mark: mark)
            }
            for t in suppress where t >= 0 && t < vocab { a[t] = -.infinity }
            if let allowed {
                for t in 0..<min(vocab, allowed.count) where allowed[t] == 0 { a[t] = -.infinity }
            }
        }
        var buffer = adjusted
        adjusted = []  // `sample` below may not see its own scratch through `self`; handed back after
        defer { adjusted = buffer }
        return buffer.withUnsafeMutableBufferPointer { sample(UnsafeBufferPointer($0), position: position) }
    }

    /// The repetition penalty, in place, once per distinct token of `tokens` and `generated` (transformers' and
    /// vLLM's rule): x / penalty where x > 0, x · penalty otherwise. `marks` as for `adjust`, with its own `mark`.
    static func `repeat`(_ a: UnsafeMutableBufferPointer<Float>, tokens: ArraySlice<Int>, generated: ArraySlice<Int>, penalty: Float,
                         marks: UnsafeMutableBufferPointer<UInt32>, mark: UInt32) {
        let vocab = a.count
        func apply(_ t: Int) {
            guard t >= 0 && t < vocab && marks[t] != mark else { return }
            marks[t] = mark
            // A penalty near 0 would send x / penalty past the largest float (then every probability is NaN): the
            // quotient stops at the largest finite value, so such a token still ranks first, as the rule says it should.
            a[t] = a[t] > 0 ? min(a[t] / penalty, .greatestFiniteMagnitude) : a[t] * penalty
        }
        for t in tokens { apply(t) }
        for t in generated { apply(t) }
    }

    /// OpenAI's adjustment, in place: logit[t] − count(t)·frequency − [count(t) > 0]·presence + bias[t], counts over
    /// `generated`. `marks` (one per token, none equal to `mark`; may be empty when `presence` is 0) record the
    /// tokens already given the presence penalty.
    static func adjust(_ a: UnsafeMutableBufferPointer<Float>, generated: ArraySlice<Int>, presence: Float, frequency: Float,
                       bias: [Int: Double], marks: UnsafeMutableBufferPointer<UInt32>, mark: UInt32) {
        let vocab = a.count
        for t in generated where t >= 0 && t < vocab {
            a[t] -= frequency
            if presence != 0 && marks[t] != mark {
                marks[t] = mark
                a[t] -= presence
            }
        }
        for (t, b) in bias where t < vocab { a[t] += Float(b) }
    }

    /// The next token for the next position of an internal counter (0, 1, 2, …).
    public mutating func sample(_ logits: UnsafeBufferPointer<Float>) -> Int? {
        defer { counter += 1 }
        return sample(logits, position: counter)
    }

    /// Below this temperature a request is sampled greedily. exp(−Δ/T) drops under f32's smallest normal
    /// (≈ e^−87) once Δ > 87·T, so at T < 1e-4 only tokens within ~0.009 of the largest logit — ties within the
    /// numerical noise of the forward pass — could still be drawn; and far below it 1/T overflows (1/1e-39 is
    /// already beyond Float.greatestFiniteMagnitude), which would turn the largest token's weight into NaN.
    public static let greedyBelowTemperature = 1e-4

    /// Index of the largest logit (the lowest index among ties; 0 for a row without one).
    public static func argmax(_ logits: UnsafeBufferPointer<Float>) -> Int {
        var best = 0
        var bestValue = -Float.infinity
        for i in 0..<logits.count where logits[i] > bestValue {
            bestValue = logits[i]
            best = i
        }
        return best
    }

    /// `argmax`, or nil when no token can be chosen by the rule of `sample`.
    static func definedArgmax(_ logits: UnsafeBufferPointer<Float>) -> Int? {
        var best = -1
        var bestValue = -Float.infinity
        for i in 0..<logits.count {
            let x = logits[i]
            // −∞ (a masked token) never wins the comparison below; NaN or +∞ leave the row undefined.
            if x.isNaN || x == .infinity { return nil }
            if x > bestValue {
                bestValue = x
                best = i
            }
        }
        return best >= 0 ? best : nil
    }

    /// The next token, or nil when the row makes sampling undefined: any NaN or +∞ logit (the forward pass
    /// overflowed — e.g. an adapter with absurd weights — so no probability in the row means anything), or no
    /// finite logit at all (every token masked with −∞, or an empty row). −∞ logits are allowed and get
    /// probability 0. The same rule holds for greedy requests, so a broken row never yields a token.
    /// Temperatures below `greedyBelowTemperature` sample greedily.
    /// `position` keys the random draw (the index in the sequence of the token being chosen).
    public mutating func sample(_ logits: UnsafeBufferPointer<Float>, position: Int) -> Int? {
        guard let best = Self.definedArgmax(logits) else { return nil }
        // `!(T >= threshold)` also sends a NaN temperature (never valid, but the sampler must stay total) to greedy.
        if params.isGreedy || !(params.temperature >= Self.greedyBelowTemperature) { return best }
        var rng = SamplerRNG(seed: seed, position: position)
        let invT = Float(1 / params.temperature)
        let maxLogit = logits[best]
        let vocab = logits.count
        if probs.count < vocab { probs = [Float](repeating: 0, count: vocab) }
        candidates.reserveCapacity(vocab)

        // Unnormalised probabilities; min-p drops those below minP times the largest (which is 1).
        var total: Double = 0
        let minP = Float(params.minP)
        probs.withUnsafeMutableBufferPointer { p in
            for i in 0..<vocab {
                let d = logits[i] - maxLogit
                var e = d == -.infinity ? 0 : expf(d * invT)  // the largest logit gets exactly 1, so total ≥ 1
                if e < minP { e = 0 }
                p[i] = e
                total += Double(e)
            }
        }

        let k = params.topK > 0 ? min(params.topK, vocab) : vocab
        if k == vocab && params.topP >= 1 {
            // Plain temperature sampling: draw over the whole vocabulary, no sorting.
            let u = rng.nextUnit() * total
            var cumulative: Double = 0
            for i in 0..<vocab {
                cumulative += Double(probs[i])
                if u < cumulative { return i }
            }
            return best
        }

        // Candidates: a prefix of the descending order that holds the top k (with top-k) or at least topP
        // of the mass (top-p alone). Any set {p > τ} is such a prefix; lower τ until it is big enough.
        let needMass = params.topP * total
        var tau: Float = 1e-4
        while true {
            candidates.removeAll(keepingCapacity: true)
            var mass: Double = 0
            probs.withUnsafeBufferPointer { p in
                for i in 0..<vocab where p[i] > tau {
                    candidates.append(Int32(i))
                    mass += Double(p[i])
                }
            }
            let enough = k < vocab ? candidates.count >= k : mass >= needMass
            if tau < 0 || enough { break }
            tau = tau > 1e-30 ? tau * 1e-3 : -1
        }
        candidates.withUnsafeMutableBufferPointer { c in
            probs.withUnsafeBufferPointer { p in
                c.sort { p[Int($0)] > p[Int($1)] || (p[Int($0)] == p[Int($1)] && $0 < $1) }
            }
        }

        // Apply top-k, then top-p, over the sorted candidates; then draw.
        var keep = min(k, candidates.count)
        var kept: Double = 0
        for i in 0..<keep { kept += Double(probs[Int(candidates[i])]) }
        if params.topP < 1 {
            let target = params.topP * kept
            var cumulative: Double = 0
            for i in 0..<keep {
                cumulative += Double(probs[Int(candidates[i])])
                if cumulative >= target {
                    keep = i + 1
                    kept = cumulative
                    break
                }
            }
        }
        let u = rng.nextUnit() * kept
        var cumulative: Double = 0
        for i in 0..<keep {
            cumulative += Double(probs[Int(candidates[i])])
            if u < cumulative { return Int(candidates[i]) }
        }
        return keep > 0 ? Int(candidates[keep - 1]) : best
    }
}

/// A sampled token's log-probability under the model, and the most likely tokens' at that position.
public struct TokenLogprobs: Sendable, Equatable, Codable {
    public let token: Int
    public let logprob: Float
    /// The `n` most likely tokens, most likely first (ties: lower id first), and their log-probabilities.
    public let topTokens: [Int]
    public let topLogprobs: [Float]

    public init(token: Int, logprob: Float, topTokens: [Int], topLogprobs: [Float]) {
        self.token = token
        self.logprob = logprob
        self.topTokens = topTokens
        self.topLogprobs = topLogprobs
    }

    /// Log-softmax of `logits` at `token`, and the `top` largest (tokens with a −∞ logit are never listed): a pass for
    /// the maximum, the vectorized normaliser (`Kernels.sumExp`), and a pass for the selection. The row must have a
    /// finite maximum (as `sample` requires).
    public init(logits: UnsafeBufferPointer<Float>, token: Int, top: Int) {
        var maxLogit = -Float.infinity
        for x in logits where x > maxLogit { maxLogit = x }
        let sum = logits.isEmpty ? 1 : Kernels.sumExp(logits.baseAddress!, count: logits.count, shift: maxLogit)
        let logZ = Double(maxLogit) + log(sum)
        func lp(_ x: Float) -> Float { Float(Double(x) - logZ) }
        // The top `top` by logit: a small array kept sorted (descending logit, then ascending id).
        var ids: [Int] = []
        var values: [Float] = []
        if top > 0 {
            ids.reserveCapacity(top + 1)
            values.reserveCapacity(top + 1)
            for i in 0..<logits.count {
                let x = logits[i]
                guard x != -.infinity, ids.count < top || x > values[values.count - 1] else { continue }
                var at = values.count
                while at > 0 && values[at - 1] < x { at -= 1 }
                ids.insert(i, at: at)
                values.insert(x, at: at)
                if ids.count > top {
                    ids.removeLast()
                    values.removeLast()
                }
            }
        }
        self.token = token
        logprob = lp(logits[token])
        topTokens = ids
        topLogprobs = values.map(lp)
    }
}

/// Finds stop strings in streamed text and holds back the tail that could still become one.
public struct StopMatcher: Sendable {
    public let stops: [String]
    private var pending = ""
    private let longest: Int

    public init(stops: [String]) {
        self.stops = stops
        longest = stops.map(\.count).max() ?? 0
    }

    /// Adds generated text; returns the text that is safe to emit and whether a stop string was hit (then
    /// the returned text ends just before it and generation must end).
    public mutating func append(_ text: String) -> (emit: String, stopped: Bool) {
        guard !stops.isEmpty else { return (text, false) }
        pending += text
        var first: String.Index?
        for s in stops {
            if let r = pending.range(of: s), first.map({ r.lowerBound < $0 }) ?? true { first = r.lowerBound }
        }
        if let first {
            let out = String(pending[..<first])
            pending = ""
            return (out, true)
        }
        // Hold back the longest suffix that is a prefix of some stop string.
        var hold = 0
        let tail = pending.suffix(longest - 1)
        for start in tail.indices {
            let suffix = tail[start...]
            if stops.contains(where: { $0.hasPrefix(suffix) }) {
                hold = suffix.count
                break
            }
        }
        let cut = pending.index(pending.endIndex, offsetBy: -hold)
        let out = String(pending[..<cut])
        pending = String(pending[cut...])
        return (out, false)
    }

    /// The text held back, released when generation ends for another reason.
    public mutating func finish() -> String {
        defer { pending = "" }
        return pending
    }
}
