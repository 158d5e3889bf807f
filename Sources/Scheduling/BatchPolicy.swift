/// dLoRA's intra-replica batching policy and its baselines, as pure bookkeeping: given the live requests in
/// FCFS order and what the last iterations cost, decide the next iteration's execution mode and which
/// requests run with how many tokens. No tensors, no clock (time comes in as numbers), no I/O — the
/// simulator runs this very code. docs/design/scheduler.md describes the algorithm in the paper's terms.

/// How an iteration executes.
public enum ExecutionMode: Equatable, Hashable, Sendable, CustomStringConvertible {
    /// Base weights shared by a mixed batch; each adapter's low-rank path added per segment.
    case unmerged
    /// One adapter folded into the weights; only its requests run.
    case merged(adapter: Int)

    public var description: String {
        switch self {
        case .unmerged: "unmerged"
        case .merged(let a): "merged(\(a))"
        }
    }
}

/// The batching policies behind one interface.
public enum BatchingPolicyKind: String, CaseIterable, Sendable {
    /// dLoRA: dynamic merged/unmerged switching with adaptive thresholds, switch-cost amortization, credits.
    case dlora
    /// S-LoRA/Punica style: always unmerged, strict FCFS.
    case unmergedOnly = "unmerged-only"
    /// One adapter at a time, merged: the oldest request's adapter with all its queued requests.
    case mergedOnly = "merged-only"
    /// HF PEFT style: static batches of one adapter's requests, run to completion before the next batch.
    case peftLike = "peft-like"
}

/// What the policy sees of one live request.
public struct QueuedRequest: Equatable, Sendable {
    public let id: Int
    /// Adapter id; `QueuedRequest.base` for requests of the base model.
    public let adapter: Int
    /// Tokens still to compute before it can sample (its prompt remainder; 1 when decoding).
    public let pendingTokens: Int
    public static let base = -1

    public init(id: Int, adapter: Int, pendingTokens: Int) {
        precondition(pendingTokens >= 1)
        self.id = id
        self.adapter = adapter
        self.pendingTokens = pendingTokens
    }
}

/// The policy's answer for one iteration.
public struct BatchDecision: Equatable, Sendable {
    public var mode: ExecutionMode
    /// (request id, tokens to compute) in execution order.
    public var runs: [(id: Int, tokens: Int)]

    public static func == (a: BatchDecision, b: BatchDecision) -> Bool {
        a.mode == b.mode && a.runs.map(\.id) == b.runs.map(\.id) && a.runs.map(\.tokens) == b.runs.map(\.tokens)
    }
}

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

public struct BatchPolicyConfig: Equatable, Sendable {
    public var kind: BatchingPolicyKind = .dlora
    /// Tokens per iteration (decodes count one each; prompt chunks fill the rest).
    public var maxBatchTokens = 512
    /// Sequences per iteration (the paper's batch size B).
    public var maxBatchSequences = 32
    /// Distinct adapters an unmerged iteration may hold (resident LoRA slots).
    public var maxAdapters = 32
    /// Iterations an adapter with queued requests may be passed over before its requests go first.
    public var creditBound = 8
    /// Iterations over which a switch to merged mode must pay for itself.
    public var amortizationHorizon = 16
    public var costs = StepCostModel.smolLM2Reference

    public init(kind: BatchingPolicyKind = .dlora) { self.kind = kind }
}

/// The policy state machine. Call `schedule` once per iteration, then `observe` with what it cost.
public struct BatchPolicy: Sendable {
    public private(set) var config: BatchPolicyConfig
    public private(set) var mode: ExecutionMode = .unmerged
    /// dLoRA's adaptive thresholds on the dominant adapter's share of the FCFS window: switch to merged when
    /// its share ≥ mergeRight, stay merged while ≥ mergeLeft. Tuned online (AIMD).
    public private(set) var mergeRight = 1.0
    public private(set) var mergeLeft = 0.5
    /// Per adapter: consecutive iterations it had queued requests but none ran.
    public private(set) var credits: [Int: Int] = [:]
    /// Counters for tests and metrics.
    public private(set) var switches = 0
    /// The current static batch (peft-like).
    private var staticBatch: Set<Int> = []
    /// Merge + unmerge seconds per adapter: an estimate given by the engine (the merge cost grows with the
    /// base matrices an adapter targets), replaced by measurements. Adapters without one cost
    /// `config.costs.switchSeconds`.
    public private(set) var switchCosts: [Int: Double] = [:]
    /// Per adapter: its LoRA path's cost per token relative to the cost model's reference adapter (its
    /// parameters over the reference's), given by the engine. Adapters without one count as 1.
    public private(set) var loraWeights: [Int: Double] = [:]
    /// The LoRA work of the iteration just scheduled, in reference-adapter tokens, for `observe`.
    private var pendingLoRATokens: Double?
    /// The stretch since the last switch: tokens served and seconds spent, for the AIMD comparison.
    private var stretchTokens = 0
    private var stretchSeconds = 0.0
    private var stretchAlternativeTokens = 0
    private var stretchAlternativeSeconds = 0.0
    /// The other mode's predicted (tokens, seconds) for the iteration just scheduled, added when it is observed.
    private var pendingAlternative: (tokens: Int, seconds: Double)?

    public init(config: BatchPolicyConfig) {
        precondition(config.maxBatchTokens >= 1 && config.maxBatchSequences >= 1 && config.maxAdapters >= 1)
        self.config = config
        mergeLeft = min(1, config.costs.merged(tokens: config.maxBatchSequences)
            / config.costs.unmerged(tokens: config.maxBatchSequences, adapters: 1))
    }

    /// Decides the next iteration. `queue` holds every live request (running and waiting) in FCFS order.
    public mutating func schedule(_ queue: [QueuedRequest]) -> BatchDecision {
        guard !queue.isEmpty else { return BatchDecision(mode: mode, runs: []) }
        let window = Array(queue.prefix(config.maxBatchSequences))
        var counts: [Int: Int] = [:]
        for r in queue { counts[r.adapter, default: 0] += 1 }

        let next: ExecutionMode
        var pool = queue
        switch config.kind {
        case .unmergedOnly:
            next = .unmerged
        case .mergedOnly:
            next = window[0].adapter == QueuedRequest.base ? .unmerged : .merged(adapter: window[0].adapter)
            pool = queue.filter { $0.adapter == window[0].adapter }
        case .peftLike:
            let live = Set(queue.map(\.id))
            staticBatch.formIntersection(live)
            if staticBatch.isEmpty {
                let a = window[0].adapter
                staticBatch = Set(queue.filter { $0.adapter == a }.prefix(config.maxBatchSequences).map(\.id))
            }
            pool = queue.filter { staticBatch.contains($0.id) }
            next = pool[0].adapter == QueuedRequest.base ? .unmerged : .merged(adapter: pool[0].adapter)
        case .dlora:
            next = dloraMode(queue: queue, window: window, counts: counts)
            if case .merged(let a) = next { pool = queue.filter { $0.adapter == a } }
        }
        if next != mode {
            adapt(leaving: mode, entering: next)
            switches += 1
            mode = next
        }
        let (runs, perAdapter) = fill(pool, starving: next == .unmerged ? starvingAdapters(queue) : [])
        updateCredits(queue: queue, runs: runs)
        if config.kind == .dlora { pendingAlternative = alternative(of: next, perAdapter: perAdapter, window: window) }
        if next == .unmerged { pendingLoRATokens = perAdapter.reduce(0) { $0 + Double($1.value) * loraWeight($1.key) } }
        return BatchDecision(mode: next, runs: runs)
    }

    /// Records what the iteration cost (seconds measured by the engine, or simulated).
    public mutating func observe(_ decision: BatchDecision, adapters: Int, seconds: Double) {
        let tokens = decision.runs.reduce(0) { $0 + $1.tokens }
        config.costs.observe(mode: decision.mode, tokens: tokens, adapters: adapters,
                             loraTokens: decision.mode == .unmerged ? pendingLoRATokens : nil, seconds: seconds)
        pendingLoRATokens = nil
        stretchTokens += tokens
        stretchSeconds += seconds
        if let alt = pendingAlternative {
            stretchAlternativeTokens += alt.tokens
            stretchAlternativeSeconds += alt.seconds
            pendingAlternative = nil
        }
    }

    /// What the other mode would have done with this iteration, by the cost model: while unmerged, a merged
    /// step on the batch's dominant adapter serves only that adapter's tokens; while merged, an unmerged step
    /// serves the FCFS window (its tokens within the token budget, its distinct adapters).
    /// `perAdapter`: the iteration's tokens per adapter.
    private func alternative(of mode: ExecutionMode, perAdapter: [Int: Int], window: [QueuedRequest]) -> (tokens: Int, seconds: Double)? {
        guard !perAdapter.isEmpty else { return nil }
        switch mode {
        case .unmerged:
            guard let dominant = perAdapter.filter({ $0.key != QueuedRequest.base }).values.max() else { return nil }
            return (dominant, config.costs.merged(tokens: dominant))
        case .merged:
            let tokens = min(config.maxBatchTokens, window.reduce(0) { $0 + $1.pendingTokens })
            return (tokens, config.costs.unmerged(tokens: tokens, adapters: distinctAdapters(window), loraTokens: loraTokens(window, limit: tokens)))
        }
    }

    /// An adapter's LoRA path cost per token relative to the cost model's reference adapter (the engine
    /// gives its parameter count over `referenceLoRAParameters`).
    public mutating func estimateLoRACost(adapter: Int, relative: Double) {
        guard relative.isFinite, relative >= 0 else { return }
        loraWeights[adapter] = relative
    }

    /// Distinct adapters (not counting the base model) among the requests.
    private func distinctAdapters(_ requests: [QueuedRequest]) -> Int {
        Set(requests.map(\.adapter)).subtracting([QueuedRequest.base]).count
    }

    private func loraWeight(_ adapter: Int) -> Double {
        adapter == QueuedRequest.base ? 0 : loraWeights[adapter] ?? 1
    }

    /// The window's LoRA work in reference-adapter tokens, its tokens capped at `limit` in FCFS order.
    private func loraTokens(_ window: [QueuedRequest], limit: Int) -> Double {
        var left = limit, w = 0.0
        for r in window where left > 0 {
            let n = min(left, r.pendingTokens)
            w += Double(n) * loraWeight(r.adapter)
            left -= n
        }
        return w
    }

    /// An a-priori merge + unmerge cost for an adapter (kept until a measurement replaces it).
    public mutating func estimateSwitch(adapter: Int, seconds: Double) {
        guard seconds.isFinite, seconds >= 0, switchCosts[adapter] == nil else { return }
        switchCosts[adapter] = seconds
    }

    /// A measured merge + unmerge of an adapter.
    public mutating func observeSwitch(adapter: Int, seconds: Double) {
        guard seconds.isFinite, seconds >= 0 else { return }
        switchCosts[adapter] = seconds
    }

    private func switchCost(_ mode: ExecutionMode) -> Double {
        if case .merged(let a) = mode, let s = switchCosts[a] { return s }
        return config.costs.switchSeconds
    }

    // MARK: dLoRA

    private func dloraMode(queue: [QueuedRequest], window: [QueuedRequest], counts: [Int: Int]) -> ExecutionMode {
        let c = config
        // Starving adapters go first: only an unmerged batch can hold them beside the others, unless the
        // current merged adapter is the only one starving. The whole queue counts, not just the FCFS window:
        // a starving adapter's requests may all sit behind it.
        let starving = starvingAdapters(queue)
        if !starving.isEmpty {
            if case .merged(let a) = mode, starving == [a] { return mode }
            return .unmerged
        }
        let windowSize = Double(window.count)
        if case .merged(let a) = mode {
            let share = Double(counts[a] ?? 0) / windowSize
            return share >= mergeLeft && (counts[a] ?? 0) > 0 ? mode : .unmerged
        }
        // The dominant adapter (ties: the one whose first request is oldest).
        var best: (adapter: Int, count: Int)?
        for r in window where r.adapter != QueuedRequest.base {
            let n = counts[r.adapter] ?? 0
            if best == nil || n > best!.count { best = (r.adapter, n) }
        }
        guard let (m, nm) = best else { return .unmerged }
        guard Double(nm) / windowSize >= mergeRight else { return .unmerged }
        // Amortization: over the horizon, merged must serve the dominant adapter's tokens faster than the
        // unmerged window serves tokens, after paying the switch. While other adapters wait, their credits end
        // a merged stretch after `creditBound` iterations, so the switch must pay for itself within that.
        let othersWait = counts.contains { $0.key != m && $0.value > 0 }
        let h = Double(othersWait ? min(c.amortizationHorizon, c.creditBound) : c.amortizationHorizon)
        let merged = Double(min(nm, c.maxBatchSequences)) * h
            / (switchCost(.merged(adapter: m)) + h * c.costs.merged(tokens: min(nm, c.maxBatchSequences)))
        let unmerged = windowSize / c.costs.unmerged(tokens: window.count, adapters: distinctAdapters(window),
                                                     loraTokens: window.reduce(0) { $0 + loraWeight($1.adapter) })
        return merged > unmerged ? .merged(adapter: m) : .unmerged
    }

    /// AIMD on the threshold of the mode being left: compare the stretch's throughput with what the other mode
    /// would have served per second over the same iterations (by the cost model), charging the switch to
    /// whichever side pays it — a merged stretch paid its merge and unmerge, an unmerged stretch's alternative
    /// would have. If the mode being left won, make it easier to enter/keep (mergeLeft −0.05, or mergeRight
    /// ×1.1 so merging is less eager); if it lost, harder (mergeLeft ×1.1, or mergeRight −0.05).
    private mutating func adapt(leaving old: ExecutionMode, entering new: ExecutionMode) {
        guard config.kind == .dlora, stretchTokens > 0, stretchAlternativeTokens > 0 else { return resetStretch() }
        let sw = switchCost(old == .unmerged ? new : old)
        let wasMerged = old != .unmerged
        let actual = Double(stretchTokens) / (stretchSeconds + (wasMerged ? sw : 0))
        let alternative = Double(stretchAlternativeTokens) / (stretchAlternativeSeconds + (wasMerged ? 0 : sw))
        let won = actual >= alternative
        if wasMerged {
            if won { mergeLeft = max(0.05, mergeLeft - 0.05) } else { mergeLeft = min(1, mergeLeft * 1.1) }
        } else {
            if won { mergeRight = min(1.5, mergeRight * 1.1) } else { mergeRight = max(0.1, mergeRight - 0.05) }
        }
        resetStretch()
    }

    private mutating func resetStretch() {
        stretchTokens = 0
        stretchSeconds = 0
        stretchAlternativeTokens = 0
        stretchAlternativeSeconds = 0
    }

    // MARK: Filling a batch

    private func starvingAdapters(_ queue: [QueuedRequest]) -> Set<Int> {
        Set(queue.map(\.adapter).filter { (credits[$0] ?? 0) >= config.creditBound })
    }

    /// Decodes and prompt chunks within the token and sequence budgets and the adapter-slot limit. Starving
    /// adapters first — the oldest request of each, the longest-waiting adapter first, each with a fair share
    /// of the token budget so one long prompt cannot shut the others out — then everything else FCFS.
    /// Returns the runs and the tokens each adapter got.
    private func fill(_ pool: [QueuedRequest], starving: Set<Int>) -> ([(id: Int, tokens: Int)], [Int: Int]) {
        let c = config
        var runs: [(id: Int, tokens: Int)] = []
        var perAdapter: [Int: Int] = [:]
        var taken = Set<Int>()
        var budget = c.maxBatchTokens
        var adapters = Set<Int>()
        func take(_ r: QueuedRequest, limit: Int) -> Bool {
            guard budget > 0, runs.count < c.maxBatchSequences, !taken.contains(r.id) else { return false }
            if r.adapter != QueuedRequest.base && !adapters.contains(r.adapter) {
                guard adapters.count < c.maxAdapters else { return false }
                adapters.insert(r.adapter)
            }
            let n = min(r.pendingTokens, budget, limit)
            runs.append((r.id, n))
            perAdapter[r.adapter, default: 0] += n
            taken.insert(r.id)
            budget -= n
            return true
        }
        if !starving.isEmpty {
            let order = starving.sorted { (credits[$0] ?? 0, -$0) > (credits[$1] ?? 0, -$1) }
            for (i, a) in order.enumerated() {
                guard let oldest = pool.first(where: { $0.adapter == a }) else { continue }
                _ = take(oldest, limit: max(1, budget / (order.count - i)))
            }
        }
        for r in pool { _ = take(r, limit: .max) }
        return (runs, perAdapter)
    }

    private mutating func updateCredits(queue: [QueuedRequest], runs: [(id: Int, tokens: Int)]) {
        let ran = Set(runs.map(\.id))
        var served = Set<Int>(), waiting = Set<Int>()
        for r in queue {
            if ran.contains(r.id) { served.insert(r.adapter) } else { waiting.insert(r.adapter) }
        }
        for a in served { credits[a] = 0 }
        for a in waiting.subtracting(served) { credits[a, default: 0] += 1 }
        for a in Array(credits.keys) where !served.contains(a) && !waiting.contains(a) { credits[a] = nil }
    }
}
