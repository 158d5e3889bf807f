/// The simulated workload: the same inputs as the real benchmarks (`dlora bench replica`, bench/cluster.sh) —
/// arrivals from a Poisson process or the Azure LLM inference trace 2023 (its gaps scaled to a mean rate),
/// prompt and output lengths from ShareGPT pairs, the trace's own token columns or a seeded distribution, and
/// adapters drawn with power-law popularity P(k) ∝ (k+1)^-α. Seeded and deterministic; no I/O here: callers
/// read the files and hand in their text.

/// One request of the workload. Its output length is fixed in advance: the simulated engine samples its
/// end-of-sequence at that token.
public struct SimRequest: Sendable, Equatable {
    public let id: Int
    /// Seconds from the start of the run.
    public let arrival: Double
    /// Adapter index (0 ..< adapters).
    public let adapter: Int
    public let promptTokens: Int
    public let outputTokens: Int
    /// The replica a recorded run's router sent it to first (the `x-dlora-replica` response header), if known;
    /// `SimulationConfig.replayDispatch` sends it there.
    public let replica: Int?

    public init(id: Int, arrival: Double, adapter: Int, promptTokens: Int, outputTokens: Int, replica: Int? = nil) {
        precondition(promptTokens >= 1 && outputTokens >= 1 && arrival >= 0)
        self.id = id
        self.arrival = arrival
        self.adapter = adapter
        self.promptTokens = promptTokens
        self.outputTokens = outputTokens
        self.replica = replica
    }
}

public enum ArrivalProcess: Sendable, Equatable {
    /// Exponential gaps at the mean rate.
    case poisson
    /// The trace's inter-arrival gaps in order (cycled if the run needs more), scaled so their mean is 1/rate.
    case traceGaps([Double])
}

public enum LengthSource: Sendable, Equatable {
    /// (prompt, output) token pairs, used in order (cycled), cut to the limits.
    case pairs([(prompt: Int, output: Int)])
    /// Log-normal prompt and output lengths with these medians and σ = 1 (a heavy tail like ShareGPT's).
    case logNormal(promptMedian: Double, outputMedian: Double)
    /// The same length for every request (closed-form tests).
    case fixed(prompt: Int, output: Int)

    public static func == (a: LengthSource, b: LengthSource) -> Bool {
        switch (a, b) {
        case (.pairs(let x), .pairs(let y)): x.count == y.count && zip(x, y).allSatisfy { $0.prompt == $1.prompt && $0.output == $1.output }
        case (.logNormal(let p1, let o1), .logNormal(let p2, let o2)): p1 == p2 && o1 == o2
        case (.fixed(let p1, let o1), .fixed(let p2, let o2)): p1 == p2 && o1 == o2
        default: false
        }
    }
}

public struct WorkloadSpec: Sendable, Equatable {
    /// Number of requests; when nil, requests arrive until `duration`.
    public var requests: Int?
    public var duration: Double?
    /// Mean arrival rate, requests/s.
    public var rate: Double
    public var adapters: Int
    /// Power-law skew of adapter popularity.
    public var alpha: Double
    public var arrivals: ArrivalProcess
    public var lengths: LengthSource
    public var maxPrompt: Int
    public var maxOutput: Int
    public var seed: UInt64
    /// Per-adapter bursts (0: off): in every `burstWindow` seconds each adapter's popularity is multiplied by
    /// its own log-normal factor exp(σ·z − σ²/2) (mean 1), so which adapters are hot drifts from window to
    /// window — as dLoRA's workload gets from mapping Azure Functions invocation traces onto adapters (a
    /// per-adapter rate per window), and as a single arrival trace with independent per-request draws does not.
    public var burstSigma = 0.0
    public var burstWindow = 60.0

    public init(requests: Int? = 100, duration: Double? = nil, rate: Double, adapters: Int, alpha: Double = 1,
                arrivals: ArrivalProcess = .poisson, lengths: LengthSource = .logNormal(promptMedian: 128, outputMedian: 128),
                maxPrompt: Int = 1024, maxOutput: Int = 1024, seed: UInt64 = 1) {
        self.requests = requests
        self.duration = duration
        self.rate = rate
        self.adapters = adapters
        self.alpha = alpha
        self.arrivals = arrivals
        self.lengths = lengths
        self.maxPrompt = maxPrompt
        self.maxOutput = maxOutput
        self.seed = seed
    }

    /// The most requests one workload may hold: each costs a few hundred bytes here and more in a simulation (the
    /// hour at 1,000 replicas, 5.4 M requests, peaks at 3.5 GB), so a rate × duration past this would exhaust
    /// memory or never finish generating rather than run.
    public static let maxRequests = 20_000_000

    /// Why the spec cannot generate a workload, or nil.
    /// Largest median of the log-normal lengths (a draw is a few medians at most, far inside Int).
    public static let maxMedian = 1e9
    /// Largest length limit (prompt or output tokens).
    public static let maxLength = 100_000_000

    public var problem: String? {
        if requests == nil && duration == nil { return "give a number of requests or a duration" }
        if let n = requests, n < 1 { return "the number of requests must be at least 1" }
        if let n = requests, n > Self.maxRequests { return "at most \(Self.maxRequests) requests (asked for \(n))" }
        if let d = duration, !(d > 0 && d.isFinite) { return "the duration must be positive" }
        if !(rate > 0 && rate.isFinite) { return "the rate must be positive" }
        if let d = duration, rate * d > Double(Self.maxRequests) {
            return "a rate of \(rate) req/s for \(d) s is about \(rate * d) requests; at most \(Self.maxRequests)"
        }
        if adapters < 1 { return "there must be at least one adapter" }
        if !(alpha >= 0 && alpha.isFinite) { return "alpha must be ≥ 0" }
        if maxPrompt < 1 || maxOutput < 1 { return "the length limits must be positive" }
        if case .traceGaps(let g) = arrivals, g.isEmpty || !(g.reduce(0, +) > 0) { return "the trace has no usable gaps" }
        if case .pairs(let p) = lengths, p.isEmpty { return "the length pairs are empty" }
        if !(burstSigma >= 0 && burstSigma <= 10) { return "the burst sigma must be between 0 and 10" }
        // Window indices are Ints of arrival time / window: a window of 1e-300 s overflowed them.
        if !(burstWindow >= 1e-3 && burstWindow.isFinite) { return "the burst window must be at least 0.001 s" }
        if case .logNormal(let pm, let om) = lengths, !(pm >= 1 && pm <= Self.maxMedian && om >= 1 && om <= Self.maxMedian) {
            return "the median lengths must be in 1...\(Int(Self.maxMedian)) tokens"
        }
        if maxPrompt > Self.maxLength || maxOutput > Self.maxLength { return "the length limits must be at most \(Self.maxLength) tokens" }
        return nil
    }
}

public enum Workload {
    /// The requests of `spec`, in arrival order. Adapters, gaps and lengths come from separate streams of the
    /// seed, so changing the length source does not change arrivals or adapters.
    public static func generate(_ spec: WorkloadSpec) -> [SimRequest] {
        precondition(spec.problem == nil, spec.problem ?? "")
        var gapRNG = SimRandom(seed: spec.seed &* 0x9E37_79B9 &+ 1)
        var adapterRNG = SimRandom(seed: spec.seed &* 0x9E37_79B9 &+ 2)
        var lengthRNG = SimRandom(seed: spec.seed &* 0x9E37_79B9 &+ 3)
        let popularity = (0..<spec.adapters).map { power(Double($0 + 1), -spec.alpha) }
        var cumulative: [Double] = []
        var sum = 0.0
        for w in popularity {
            sum += w
            cumulative.append(sum)
        }
        // Bursts: the current window's cumulative weights, recomputed when a request falls in a new window
        // (each window's factors from their own seeded stream, so they do not depend on the request count).
        var window = -1
        func reweigh(at t: Double) {
            let w = Int(t / spec.burstWindow)
            guard w != window else { return }
            window = w
            var rng = SimRandom(seed: (spec.seed &* 0x9E37_79B9 &+ 4) ^ (UInt64(w) &* 0xD1B5_4A32_D192_ED03))
            sum = 0
            for k in popularity.indices {
                sum += popularity[k] * exponential(spec.burstSigma * rng.normal() - spec.burstSigma * spec.burstSigma / 2)
                cumulative[k] = sum
            }
        }
        func drawAdapter(at t: Double) -> Int {
            if spec.burstSigma > 0 { reweigh(at: t) }
            let u = adapterRNG.unit() * sum
            var lo = 0, hi = cumulative.count - 1
            while lo < hi {
                let mid = (lo + hi) / 2
                if cumulative[mid] > u { hi = mid } else { lo = mid + 1 }
            }
            return lo
        }
        var traceScale = 1.0
        if case .traceGaps(let g) = spec.arrivals {
            traceScale = (1 / spec.rate) / (g.reduce(0, +) / Double(g.count))
        }
        var out: [SimRequest] = []
        var t = 0.0
        var i = 0
        while true {
            if let n = spec.requests, i >= n { break }
            if let d = spec.duration, t >= d { break }
            if i >= WorkloadSpec.maxRequests { break }  // (a duration's Poisson count can pass rate × duration)
            let (p, o): (Int, Int)
            switch spec.lengths {
            case .pairs(let pairs): (p, o) = (pairs[i % pairs.count].prompt, pairs[i % pairs.count].output)
            case .fixed(let fp, let fo): (p, o) = (fp, fo)
            case .logNormal(let pm, let om):
                // Clamped before the conversion: a draw far in the tail must not leave Int's range.
                p = Int(min(Double(spec.maxPrompt), max(1, (pm * exponential(lengthRNG.normal())).rounded())))
                o = Int(min(Double(spec.maxOutput), max(1, (om * exponential(lengthRNG.normal())).rounded())))
            }
            out.append(SimRequest(id: i, arrival: t, adapter: drawAdapter(at: t), promptTokens: min(spec.maxPrompt, max(1, p)),
                                  outputTokens: min(spec.maxOutput, max(1, o))))
            switch spec.arrivals {
            case .poisson: t += gapRNG.exponential(mean: 1 / spec.rate)
            case .traceGaps(let g): t += g[i % g.count] * traceScale
            }
            i += 1
        }
        return out
    }

    /// Arrival times (seconds, any origin) and token columns from the Azure LLM inference trace 2023 CSV
    /// (`TIMESTAMP,ContextTokens,GeneratedTokens`, timestamps like `2023-11-16 18:15:46.6805900`, UTC). Rows that
    /// do not parse are skipped (a header, a blank line); at most `limit` rows are read. A zero token count is taken
    /// as 1 (the trace has rows that generated nothing); a negative one is an error naming its line.
    public static func azureTrace(csv: String, limit: Int = .max) throws -> (times: [Double], lengths: [(prompt: Int, output: Int)]) {
        var times: [Double] = []
        var lengths: [(prompt: Int, output: Int)] = []
        var lineNumber = 0
        for line in csv.split(omittingEmptySubsequences: false, whereSeparator: \.isNewline) {
            lineNumber += 1
            if times.count >= limit { break }
            let fields = line.split(separator: ",", omittingEmptySubsequences: false)
            guard fields.count >= 1, let t = parseTimestamp(fields[0]) else { continue }
            times.append(t)
            if fields.count >= 3, let p = Int(fields[1].trimmingSpaces), let o = Int(fields[2].trimmingSpaces) {
                guard p >= 0 && o >= 0 else {
                    throw WorkloadError("line \(lineNumber): negative token count (ContextTokens \(p), GeneratedTokens \(o))")
                }
                lengths.append((max(1, p), max(1, o)))
            }
        }
        return (times, lengths)
    }

    /// Inter-arrival gaps of sorted-or-not times, in order, negatives clamped to 0.
    public static func gaps(_ times: [Double]) -> [Double] {
        zip(times.dropFirst(), times).map { max(0, $0 - $1) }
    }

    /// `YYYY-MM-DD HH:MM:SS[.fraction]` → seconds since 1970-01-01 UTC.
    static func parseTimestamp(_ text: Substring) -> Double? {
        let parts = text.trimmingSpaces.split(separator: " ")
        guard parts.count == 2 else { return nil }
        let date = parts[0].split(separator: "-"), clock = parts[1].split(separator: ":")
        guard date.count == 3, clock.count == 3, let y = Int(date[0]), let mo = Int(date[1]), let d = Int(date[2]),
              let h = Int(clock[0]), let mi = Int(clock[1]), let s = Double(clock[2]), (1...12).contains(mo), (1...31).contains(d)
        else { return nil }
        // Days from the civil date (Howard Hinnant's algorithm).
        let yy = mo <= 2 ? y - 1 : y
        let era = (yy >= 0 ? yy : yy - 399) / 400
        let yoe = yy - era * 400
        let doy = (153 * (mo + (mo > 2 ? -3 : 9)) + 2) / 5 + d - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        let days = era * 146_097 + doe - 719_468
        return Double(days * 86_400 + h * 3_600 + mi * 60) + s
    }
}

extension Substring {
    var trimmingSpaces: Substring {
        var s = self
        while let f = s.first, f == " " || f == "\t" || f == "\"" { s = s.dropFirst() }
        while let l = s.last, l == " " || l == "\t" || l == "\"" { s = s.dropLast() }
        return s
    }
}

/// A workload file that cannot be used, with what is wrong and where.
public struct WorkloadError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
