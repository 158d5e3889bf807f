/// The step-cost model the batching policies predict with and the scheduler keeps up to date. Pure values:
/// measured seconds come in from the engine (or the simulator), nothing here reads a clock.

/// Predicted seconds per iteration, from measured figures (bench/results/lora.md) and refreshed online.
/// The profile: step(merged, b) = fixed + perToken·b; step(unmerged, b, d) = fixed + (perToken + perLoRAToken)·b
/// + perAdapter·d. Online, two corrections track observed/predicted: one per batch-size bucket (powers of two),
/// learned from unmerged iterations — how this machine and model differ from the profile at that size (a
/// full-precision base, say, has a much larger fixed cost) — and one ratio for merged iterations on top of it
/// (how merged execution differs from the profile relative to unmerged: dense f32 copies of a quantized base
/// cost more, a full-precision base costs nothing extra). One global factor cannot do this: it would carry a
/// merged step observed at batch 1 over to batch 32.
public struct StepCostModel: Equatable, Sendable {
    public var fixedSeconds: Double
    public var perTokenSeconds: Double
    /// The LoRA path's cost per token in unmerged mode, for an adapter of `referenceLoRAParameters`
    /// parameters; other adapters cost in proportion to their parameters (their multiply-adds per token).
    public var perLoRATokenSeconds: Double
    /// The adapter size `perLoRATokenSeconds` was measured with (q/v, rank 16 on SmolLM2: 30 layers ×
    /// 16 × (576 + 576 + 576 + 192)).
    public var referenceLoRAParameters = 921_600.0
    public var perAdapterSeconds: Double
    /// Seconds to merge one adapter plus unmerging it later.
    public var switchSeconds: Double
    /// observed / profile for unmerged iterations, per bucket of tokens (1, 2–3, 4–7, …, ≥ 2^(buckets-1)).
    public private(set) var bucketCorrection = [Double](repeating: 1, count: StepCostModel.buckets)
    public private(set) var bucketObservations = [Int](repeating: 0, count: StepCostModel.buckets)
    /// observed / predicted-unmerged-corrected for merged iterations.
    public private(set) var mergedRatio = 1.0
    public private(set) var mergedObservations = 0
    public static let buckets = 10

    public init(fixedSeconds: Double, perTokenSeconds: Double, perLoRATokenSeconds: Double, perAdapterSeconds: Double,
                switchSeconds: Double) {
        self.fixedSeconds = fixedSeconds
        self.perTokenSeconds = perTokenSeconds
        self.perLoRATokenSeconds = perLoRATokenSeconds
        self.perAdapterSeconds = perAdapterSeconds
        self.switchSeconds = switchSeconds
    }

    /// SmolLM2-135M Q4_1 on the 2-core reference machine (bench/results/core.md and lora.md, rank 16, q/v):
    /// ≈ 7 ms + 2 ms per token; the LoRA path ≈ 0.1 ms per token and ≈ 0.3 ms per distinct adapter;
    /// merge + unmerge ≈ 11 ms.
    public static let smolLM2Reference = StepCostModel(fixedSeconds: 0.007, perTokenSeconds: 0.002, perLoRATokenSeconds: 0.0001,
                                                       perAdapterSeconds: 0.0003, switchSeconds: 0.011)

    static func bucket(_ tokens: Int) -> Int { min(buckets - 1, Int.bitWidth - 1 - max(1, tokens).leadingZeroBitCount) }

    /// The correction at a batch size: its bucket's, else the nearest observed bucket's (the smaller on a tie),
    /// else 1.
    public func correction(tokens b: Int) -> Double {
        let k = Self.bucket(b)
        for distance in 0..<Self.buckets {
            let lower = k - distance, upper = k + distance
            if lower >= 0 && bucketObservations[lower] > 0 { return bucketCorrection[lower] }
            if upper < Self.buckets && bucketObservations[upper] > 0 { return bucketCorrection[upper] }
        }
        return 1
    }

    private func profileMerged(_ b: Int) -> Double { fixedSeconds + perTokenSeconds * Double(b) }
    /// `w`: the batch's LoRA work in reference-adapter tokens (Σ tokens × the adapter's relative size).
    private func profileUnmerged(_ b: Int, _ d: Int, _ w: Double) -> Double {
        fixedSeconds + perTokenSeconds * Double(b) + perLoRATokenSeconds * w + perAdapterSeconds * Double(d)
    }

    public func merged(tokens b: Int) -> Double { profileMerged(b) * correction(tokens: b) * mergedRatio }

    /// `loraTokens`: Σ tokens × each adapter's size relative to the reference (default: b reference-size tokens).
    public func unmerged(tokens b: Int, adapters d: Int, loraTokens: Double? = nil) -> Double {
        profileUnmerged(b, d, loraTokens ?? Double(b)) * correction(tokens: b)
    }

    /// Folds in a measured iteration: the plain average of the first observations (weight 1/n), then an EWMA
    /// (0.1), so a profile far from the machine is corrected after one iteration.
    public mutating func observe(mode: ExecutionMode, tokens: Int, adapters: Int, loraTokens: Double? = nil, seconds: Double) {
        guard seconds.isFinite, seconds > 0, tokens > 0 else { return }
        switch mode {
        case .merged:
            let predicted = merged(tokens: tokens) / mergedRatio
            mergedObservations += 1
            let alpha = max(0.1, 1 / Double(mergedObservations))
            mergedRatio = (1 - alpha) * mergedRatio + alpha * seconds / predicted
        case .unmerged:
            let k = Self.bucket(tokens)
            bucketObservations[k] += 1
            let alpha = max(0.1, 1 / Double(bucketObservations[k]))
            bucketCorrection[k] = (1 - alpha) * bucketCorrection[k] + alpha * seconds / profileUnmerged(tokens, adapters, loraTokens ?? Double(tokens))
        }
    }
}

/// What a CPU replica (`dlora serve`) reports to the router as the time to make an adapter resident that is in its
/// host cache: a rank-16 q/v adapter of SmolLM2 is ~1.8 MB of weights copied at a few GB/s, about 1 ms
/// (bench/results/lora.md's adapter sizes; the engine's residency is an account in the one budget, not a device
/// copy). A first load from disk costs more; the router sees it as one slow request, not a standing cost. The
/// simulator's CPU replicas report the same figure (`CPUCostModel.reportedAdapterLoadSeconds`), so the simulated
/// router's dispatch weighs a load as the real one does.
public enum AdapterResidency {
    public static let reportedLoadSeconds = 0.001
}
