import Foundation
import Testing

@testable import Engine

@Suite struct SamplingTests {
    static func draw(_ logits: [Float], _ params: SamplingParams, count: Int) -> [Int: Int] {
        var sampler = Sampler(params: params)
        var hist: [Int: Int] = [:]
        logits.withUnsafeBufferPointer { p in
            for _ in 0..<count { hist[sampler.sample(p) ?? -1, default: 0] += 1 }
        }
        return hist
    }

    /// Probabilities softmax(logits / T) restricted to `allowed` and renormalised.
    static func expected(_ logits: [Float], temperature: Double, allowed: Set<Int>) -> [Int: Double] {
        let m = logits.max()!
        var p: [Int: Double] = [:]
        for i in allowed { p[i] = exp(Double(logits[i] - m) / temperature) }
        let z = p.values.reduce(0, +)
        return p.mapValues { $0 / z }
    }

    /// Every sampled frequency within 5 standard deviations of its probability, and nothing outside `allowed`.
    static func check(_ hist: [Int: Int], _ want: [Int: Double], count: Int) {
        for i in hist.keys { #expect(want[i] != nil, "token \(i) sampled but not allowed") }
        for (i, p) in want {
            let sd = (Double(count) * p * (1 - p)).squareRoot()
            let got = Double(hist[i] ?? 0)
            #expect(abs(got - Double(count) * p) <= 5 * sd + 1, "token \(i): \(got) draws, expected \(Double(count) * p)")
        }
    }

    let logits: [Float] = [2.0, 1.0, 0.5, 0.0, -1.0, 3.0, -5.0, 1.5]

    @Test func greedyIsArgmaxWithLowestIndexOnTies() {
        var s = Sampler(params: .greedy)
        let x: [Float] = [0, 3, 1, 3, -2]
        #expect(x.withUnsafeBufferPointer { s.sample($0) } == 1)
        var k1 = Sampler(params: SamplingParams(temperature: 0.7, topK: 1, seed: 3))
        #expect(logits.withUnsafeBufferPointer { k1.sample($0) } == 5)
    }

    /// A repetition penalty near 0 (in range: (0, 10]) divides a positive logit past the largest float; it stops there,
    /// so the repeated token ranks first and nothing turns NaN (a 500 before), greedy or sampled.
    @Test func tinyRepetitionPenaltyStaysFinite() {
        for penalty in [1e-38, 1e-40, 1e-45] {
            for temperature in [0.0, 1.0] {
                var params = SamplingParams(temperature: temperature, seed: 1)
                params.repetitionPenalty = penalty
                var s = Sampler(params: params)
                let pick = logits.withUnsafeBufferPointer { s.sample($0, position: 0, generated: [1, 4]) }
                #expect(pick == 1, "penalty \(penalty), temperature \(temperature): \(String(describing: pick))")
            }
        }
    }

    @Test func temperatureMatchesSoftmax() {
        let n = 40000
        for t in [0.5, 1.0, 2.0] {
            let hist = Self.draw(logits, SamplingParams(temperature: t, seed: 7), count: n)
            Self.check(hist, Self.expected(logits, temperature: t, allowed: Set(logits.indices)), count: n)
        }
    }

    @Test func topKKeepsTheKMostLikely() {
        let n = 30000
        let hist = Self.draw(logits, SamplingParams(temperature: 1, topK: 3, seed: 11), count: n)
        Self.check(hist, Self.expected(logits, temperature: 1, allowed: [5, 0, 7]), count: n)
    }

    /// min-p keeps the tokens at least min_p times as likely as the most likely (after temperature), renormalised;
    /// with top-k it is applied first. logits: 5 → 1, 0 → e^-1 ≈ 0.37, 7 → e^-1.5 ≈ 0.22, 1 → e^-2 ≈ 0.14, …
    @Test func minPKeepsTokensNearTheTop() {
        let n = 30000
        var params = SamplingParams(temperature: 1, seed: 21)
        params.minP = 0.2
        Self.check(Self.draw(logits, params, count: n), Self.expected(logits, temperature: 1, allowed: [5, 0, 7]), count: n)
        // At T = 2 the ratios are square roots: 1, 0.61, 0.47, 0.37, 0.29 (index 2), 0.22 (3), 0.11 (4): min_p 0.2 keeps six.
        params.temperature = 2
        Self.check(Self.draw(logits, params, count: n), Self.expected(logits, temperature: 2, allowed: [5, 0, 7, 1, 2, 3]), count: n)
        params.temperature = 1
        params.topK = 2
        Self.check(Self.draw(logits, params, count: n), Self.expected(logits, temperature: 1, allowed: [5, 0]), count: n)
    }

    @Test func topPKeepsTheNucleus() {
        // softmax at T=1: index 5 ≈ 0.50, 0 ≈ 0.18, 7 ≈ 0.11, 1 ≈ 0.07 … ; top-p 0.75 needs 5, 0, 7.
        let n = 30000
        let hist = Self.draw(logits, SamplingParams(temperature: 1, topP: 0.75, seed: 5), count: n)
        Self.check(hist, Self.expected(logits, temperature: 1, allowed: [5, 0, 7]), count: n)
        // top-k then top-p (over the renormalised top-k), as transformers applies them.
        let both = Self.draw(logits, SamplingParams(temperature: 1, topP: 0.8, topK: 2, seed: 5), count: n)
        Self.check(both, Self.expected(logits, temperature: 1, allowed: [5, 0]), count: n)
    }

    /// On a large vocabulary with a long flat tail, the nucleus found from the thresholded candidate set
    /// equals the brute-force nucleus (all sorted).
    @Test func topPOnLargeVocabularyMatchesBruteForce() {
        var rng = SamplerRNG(seed: 99)
        let vocab = 20000
        var x = (0..<vocab).map { _ in Float(rng.nextUnit() - 0.5) }
        x[123] = 10  // one token ~20000x likelier than any other, the tail still ~half the mass
        let p = 0.9
        let m = x.max()!
        let e = x.map { exp(Double($0 - m)) }
        let z = e.reduce(0, +)
        let order = x.indices.sorted { e[$0] > e[$1] || (e[$0] == e[$1] && $0 < $1) }
        var nucleus = Set<Int>(), cum = 0.0
        for i in order {
            nucleus.insert(i)
            cum += e[i] / z
            if cum >= p { break }
        }
        let hist = Self.draw(x, SamplingParams(temperature: 1, topP: p, seed: 1), count: 200)
        #expect(Set(hist.keys).isSubset(of: nucleus))
        #expect(nucleus.count > 1000)  // the tail matters: the threshold had to be lowered
        #expect(hist.count > 50)
    }

    /// Every parameter combination the API allows, plus a NaN temperature the API would refuse.
    static let allParams: [SamplingParams] = [
        .greedy, SamplingParams(temperature: 1, seed: 1), SamplingParams(temperature: 0.7, topP: 0.5, seed: 2),
        SamplingParams(temperature: 1.3, topK: 3, seed: 3), SamplingParams(temperature: 1, topP: 0.9, topK: 2, seed: 4),
        SamplingParams(temperature: .nan, topP: 0.5, seed: 5),
    ]

    static func sampleOnce(_ logits: [Float], _ params: SamplingParams) -> Int? {
        var s = Sampler(params: params)
        return logits.withUnsafeBufferPointer { s.sample($0) }
    }

    /// A row with a NaN or +∞ anywhere, or without any finite logit, has no token: nil, whatever the
    /// parameters (a crash before: the nucleus was empty and `candidates[-1]` was read).
    @Test func undefinedRowsGiveNil() {
        let vocab = 1000
        var someNaN = (0..<vocab).map { Float($0 % 17) * 0.1 }
        someNaN[500] = .nan
        var plusInf = (0..<vocab).map { Float($0 % 7) }
        plusInf[3] = .infinity
        var twoPlusInf = plusInf
        twoPlusInf[9] = .infinity
        let rows: [(String, [Float])] = [
            ("all NaN", Array(repeating: .nan, count: vocab)), ("some NaN", someNaN), ("one +Inf", plusInf),
            ("two +Inf", twoPlusInf), ("-Inf only", Array(repeating: -.infinity, count: vocab)), ("empty", []),
        ]
        for (what, row) in rows {
            for params in Self.allParams {
                #expect(Self.sampleOnce(row, params) == nil, "\(what), \(params)")
            }
        }
    }

    /// −∞ marks a token impossible: the others are still sampled, and the masked ones never are.
    @Test func minusInfinityIsProbabilityZero() {
        var row = [Float](repeating: -.infinity, count: 64)
        row[10] = 0.5
        row[20] = 0.4
        row[30] = -2
        for params in Self.allParams {
            var s = Sampler(params: params)
            for _ in 0..<200 {
                let t = row.withUnsafeBufferPointer { s.sample($0) }
                #expect(t == 10 || t == 20 || t == 30, "\(params): \(String(describing: t))")
            }
        }
        let hist = Self.draw(row, SamplingParams(temperature: 1, seed: 8), count: 20000)
        Self.check(hist, Self.expected(row, temperature: 1, allowed: [10, 20, 30]), count: 20000)
    }

    /// Temperatures so small that 1/T overflows (or the softmax underflows to a single 1) are greedy with
    /// every filter: before, `1e-300` with top-p and `1e-39` with top-k kept only zero-probability tokens.
    @Test func tinyTemperaturesAreGreedy() {
        var rng = SamplerRNG(seed: 17)
        let row = (0..<5000).map { _ in Float(rng.nextUnit() * 8 - 4) }
        let best = Sampler.argmax(row.withUnsafeBufferPointer { $0 })
        for t in [1e-300, 1e-39, 1e-20, 1e-5, Sampler.greedyBelowTemperature / 2] {
            for (p, k) in [(1.0, 0), (0.5, 0), (1.0, 5), (0.9, 40), (0.01, 1000)] {
                let params = SamplingParams(temperature: t, topP: p, topK: k, seed: 3)
                #expect(throws: Never.self) { try params.validate() }
                for _ in 0..<5 { #expect(Self.sampleOnce(row, params) == best, "T=\(t) top_p=\(p) top_k=\(k)") }
            }
        }
        // At the threshold the sampler samples again; the largest logit still dominates a clear gap.
        var gap = row
        gap[42] = 100
        #expect(Self.sampleOnce(gap, SamplingParams(temperature: Sampler.greedyBelowTemperature, topP: 0.5, seed: 1)) == 42)
        #expect(Self.sampleOnce(gap, SamplingParams(temperature: Sampler.greedyBelowTemperature, topK: 5, seed: 1)) == 42)
    }

    /// Huge finite logits (a difference overflows to −∞) still sample the largest; nothing is NaN.
    @Test func extremeFiniteLogits() {
        let row: [Float] = [-Float.greatestFiniteMagnitude, Float.greatestFiniteMagnitude, 0, -1]
        for params in Self.allParams { #expect(Self.sampleOnce(row, params) == 1, "\(params)") }
    }

    @Test func seedsAreReproducibleAndStateRestores() {
        let a = Self.draw(logits, SamplingParams(temperature: 1, seed: 42), count: 200)
        let b = Self.draw(logits, SamplingParams(temperature: 1, seed: 42), count: 200)
        #expect(a == b)
        var r1 = SamplerRNG(seed: 1)
        _ = r1.next()
        var r2 = SamplerRNG(state: r1.state)
        #expect((0..<10).map { _ in r1.next() } == (0..<10).map { _ in r2.next() })
        #expect(SamplerRNG(seed: 1) != SamplerRNG(seed: 2))
    }

    @Test func validationNamesTheParameter() {
        let bad: [(SamplingParams, String)] = [
            (SamplingParams(temperature: -1), "temperature"), (SamplingParams(temperature: .nan), "temperature"),
            (SamplingParams(topP: 0), "top_p"), (SamplingParams(topP: 1.5), "top_p"), (SamplingParams(topK: -1), "top_k"),
            (SamplingParams(maxTokens: 0), "max_tokens"), (SamplingParams(stop: [""]), "stop"),
        ]
        for (params, name) in bad {
            #expect(throws: SamplingError.self) { try params.validate() }
            do { try params.validate() } catch { #expect("\(error)".contains(name)) }
        }
        #expect(throws: Never.self) { try SamplingParams(temperature: 0, topP: 1, topK: 0, maxTokens: 1, stop: ["\n"]).validate() }
    }

    @Test func stopMatcherHoldsBackPartialMatches() {
        var m = StopMatcher(stops: ["END", "\n\n"])
        #expect(m.append("Hello E") == ("Hello ", false))
        #expect(m.append("N") == ("", false))
        #expect(m.append("x") == ("ENx", false))
        #expect(m.append(" world\n") == (" world", false))
        #expect(m.append("\nmore") == ("", true))
        var n = StopMatcher(stops: ["stop"])
        #expect(n.append("a st") == ("a ", false))
        #expect(n.finish() == "st")
        var none = StopMatcher(stops: [])
        #expect(none.append("anything") == ("anything", false))
        var inside = StopMatcher(stops: ["lo w"])
        #expect(inside.append("hello world") == ("hel", true))
    }
    /// Log-probabilities: the log-softmax of the row at the token, the top list in order without −∞ entries, and
    /// ties listed lower id first.
    @Test func logprobsOfARow() {
        let row: [Float] = [1, 3, 2, -.infinity, 3]
        let lp = row.withUnsafeBufferPointer { TokenLogprobs(logits: $0, token: 2, top: 5) }
        let z = log(exp(1.0) + 2 * exp(3.0) + exp(2.0))
        #expect(abs(Double(lp.logprob) - (2 - z)) < 1e-6)
        #expect(lp.topTokens == [1, 4, 2, 0])
        #expect(zip(lp.topLogprobs, [3 - z, 3 - z, 2 - z, 1 - z]).allSatisfy { abs(Double($0) - $1) < 1e-6 })
        let none = row.withUnsafeBufferPointer { TokenLogprobs(logits: $0, token: 0, top: 0) }
        #expect(none.topTokens.isEmpty && none.topLogprobs.isEmpty)
    }

    /// A −100 bias bans a token even when sampling at temperature 1, and the draw stays counter-based: the same
    /// (seed, position, generated tokens) gives the same token.
    @Test func biasBansAndPenaltiesKeepDrawsReproducible() {
        let row: [Float] = [2, 2.5, 1, 0.5]
        let params = SamplingParams(temperature: 1, seed: 5, presencePenalty: 0.7, frequencyPenalty: 0.3, logitBias: [1: -100])
        var a = Sampler(params: params)
        var b = Sampler(params: params)
        let history = [0, 0, 2]
        row.withUnsafeBufferPointer { p in
            for position in 0..<2000 {
                let x = a.sample(p, position: position, generated: history[...])
                #expect(x != nil && x != 1)
                #expect(x == b.sample(p, position: position, generated: history[...]))
            }
        }
    }
}
