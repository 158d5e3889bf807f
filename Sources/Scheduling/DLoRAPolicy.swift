/// dLoRA's intra-replica dynamic batching (shared/PAPERS.md, "Intra-replica: dynamic batching"), each
/// iteration:
///  1. Credits first. An adapter whose requests were passed over `creditBound` executed iterations running
///     is *starving*: only an unmerged batch can hold it beside the others, so the mode is unmerged (unless
///     the merged adapter is itself the only one starving), and `fillBatch` serves starving adapters first.
///  2. Merged with adapter S: stay while S's share of B_fcfs (the FCFS window of B requests) is at least the
///     adaptive threshold `mergeLeft`; else unmerge.
///  3. Unmerged: R_merge is the largest same-adapter group in B_fcfs. Switch to merged with it only if its
///     share reaches the adaptive threshold `mergeRight` *and* the switch amortizes: over the horizon H
///     (capped by the credit bound while other adapters wait, since credits will end the stretch by then),
///     |R_merge|·H / (switch + H·step_merged(|R_merge|)) > |B_fcfs| / step_unmerged(B_fcfs), with every step
///     time from the `StepCostModel` and the switch cost per adapter (the scheduler's estimate from the
///     matrices it rewrites, replaced by measurements).
///  4. Adaptive thresholds (AIMD): when a stretch in one mode ends, its measured throughput is compared with
///     what the other mode would have served over the same iterations (by the cost model), the switch
///     charged to whichever side pays it; the threshold of the mode being left moves to make it easier to
///     enter/keep if it won (mergeLeft −0.05, mergeRight ×1.1 the other way round), harder if it lost.
public struct DLoRAPolicy: BatchingPolicy {
    public private(set) var config: BatchPolicyConfig
    public private(set) var mode: ExecutionMode = .unmerged
    /// The adaptive thresholds on the dominant adapter's share of B_fcfs: switch to merged when its share
    /// ≥ mergeRight, stay merged while ≥ mergeLeft. Tuned online (AIMD).
    public private(set) var mergeRight = 1.0
    public private(set) var mergeLeft = 0.5
    public private(set) var switches = 0
    private var creditTable = Credits()
    public var credits: [Int: Int] { creditTable.values }
    /// Merge + unmerge seconds per adapter: an estimate from the scheduler, replaced by measurements.
    /// Adapters without one cost `config.costs.switchSeconds`.
    public private(set) var switchCosts: [Int: Double] = [:]
    /// Per adapter: its LoRA path's cost per token relative to the cost model's reference adapter. Adapters
    /// without one count as 1.
    public private(set) var loraWeights: [Int: Double] = [:]
    /// The LoRA work of the iteration that executed, in reference-adapter tokens, for `observe`.
    private var pendingLoRATokens: Double?
    /// The stretch since the last switch: tokens served and seconds spent, for the AIMD comparison.
    private var stretchTokens = 0
    private var stretchSeconds = 0.0
    private var stretchAlternativeTokens = 0
    private var stretchAlternativeSeconds = 0.0
    /// The other mode's predicted (tokens, seconds) for the iteration that executed, added when observed.
    private var pendingAlternative: (tokens: Int, seconds: Double)?
    // Per-iteration tables (the queue's requests per adapter, the executed runs' ids and adapters, tokens per
    // adapter, a window's distinct adapters) are this thread's `PolicyScratch`, not stored here.

    public init(config: BatchPolicyConfig) {
        precondition(config.maxBatchTokens >= 1 && config.maxBatchSequences >= 1 && config.maxAdapters >= 1)
        self.config = config
        mergeLeft = min(1, config.costs.merged(tokens: config.maxBatchSequences)
            / config.costs.unmerged(tokens: config.maxBatchSequences, adapters: 1))
    }

    public mutating func decide(_ queue: [QueuedRequest]) -> BatchDecision {
        guard !queue.isEmpty else { return BatchDecision(mode: mode, runs: []) }
        let window = queue.prefix(config.maxBatchSequences)
        let scratch = PolicyScratch.current
        scratch.pointee.counts.removeAll()
        for r in queue { scratch.pointee.counts.add(r.adapter, 1) }
        let starvingNow = creditTable.starving(queue, bound: config.creditBound)
        let next = nextMode(queue: queue, window: window, starving: starvingNow, scratch: scratch)
        var pool = queue
        if case .merged(let a) = next { pool = queue.filter { $0.adapter == a } }
        let starving = next == .unmerged ? starvingNow : []
        return BatchDecision(mode: next, runs: fillBatch(pool, starving: starving, credits: creditTable, config: config))
    }

    public mutating func executed(_ ran: BatchDecision, queue: [QueuedRequest]) {
        creditTable.charge(queue: queue, ran: ran.runs, config: config)
        guard !ran.runs.isEmpty else { return }
        if ran.mode != mode { switchMode(to: ran.mode) }
        // Each run's adapter, from its queue entry (the base model if it has none).
        let s = PolicyScratch.current
        s.pointee.runIDs.removeAll()
        for r in ran.runs { s.pointee.runIDs.add(r.id.rawValue) }
        s.pointee.adapterOf.removeAll()
        for r in queue where s.pointee.runIDs.contains(r.id.rawValue) { s.pointee.adapterOf.set(r.id.rawValue, r.adapter) }
        s.pointee.perAdapter.removeAll()
        for r in ran.runs {
            let a = s.pointee.adapterOf.contains(r.id.rawValue) ? s.pointee.adapterOf[r.id.rawValue] : QueuedRequest.base
            s.pointee.perAdapter.add(a, r.tokens)
        }
        pendingAlternative = alternative(of: ran.mode, window: queue.prefix(config.maxBatchSequences), scratch: s)
        if ran.mode == .unmerged {
            var w = 0.0
            for a in s.pointee.perAdapter.keys { w += Double(s.pointee.perAdapter[a]) * loraWeight(a) }
            pendingLoRATokens = w
        } else {
            pendingLoRATokens = nil
        }
    }

    /// Records what the executed iteration cost (seconds measured by the engine, or simulated).
    public mutating func observe(_ ran: BatchDecision, adapters: Int, seconds: Double) {
        let tokens = ran.runs.reduce(0) { $0 + $1.tokens }
        config.costs.observe(mode: ran.mode, tokens: tokens, adapters: adapters,
                             loraTokens: ran.mode == .unmerged ? pendingLoRATokens : nil, seconds: seconds)
        pendingLoRATokens = nil
        stretchTokens += tokens
        stretchSeconds += seconds
        if let alt = pendingAlternative {
            stretchAlternativeTokens += alt.tokens
            stretchAlternativeSeconds += alt.seconds
            pendingAlternative = nil
        }
    }

    public mutating func estimateLoRACost(adapter: Int, relative: Double) {
        guard relative.isFinite, relative >= 0 else { return }
        loraWeights[adapter] = relative
    }

    public mutating func estimateSwitch(adapter: Int, seconds: Double) {
        // (+∞: the adapter cannot merge; merged then never wins the amortisation test.)
        guard !seconds.isNaN, seconds >= 0, switchCosts[adapter] == nil else { return }
        switchCosts[adapter] = seconds
    }

    public mutating func observeSwitch(adapter: Int, seconds: Double) {
        guard seconds.isFinite, seconds >= 0 else { return }
        switchCosts[adapter] = seconds
    }

    public mutating func forget(adapter: Int) {
        switchCosts[adapter] = nil
        loraWeights[adapter] = nil
    }

    /// The merged stretch ended when the queue emptied (the scheduler unmerged the weights): back to unmerged, so the
    /// next request of that adapter merges again only if the amortization test says it pays. Before, the policy stayed
    /// merged across the idle gap, and every lone request of the adapter paid a merge and an unmerge it never weighed.
    public mutating func unmergedWhileIdle() {
        guard mode != .unmerged else { return }
        switchMode(to: .unmerged)
    }

    /// A switch that happened: the thresholds adapt to the stretch it ends, and it is counted.
    private mutating func switchMode(to new: ExecutionMode) {
        adapt(leaving: mode, entering: new)
        switches += 1
        mode = new
    }

    /// What the other mode would have done with this iteration, by the cost model: while unmerged, a merged
    /// step on the batch's dominant adapter serves only that adapter's tokens; while merged, an unmerged step
    /// serves the FCFS window (its tokens within the token budget, its distinct adapters).
    /// `scratch.perAdapter` holds the iteration's tokens per adapter.
    private func alternative(of mode: ExecutionMode, window: ArraySlice<QueuedRequest>,
                             scratch: UnsafeMutablePointer<PolicyScratch>) -> (tokens: Int, seconds: Double)? {
        let perAdapter = scratch.pointee.perAdapter
        guard !perAdapter.isEmpty else { return nil }
        switch mode {
        case .unmerged:
            var dominant: Int?
            for a in perAdapter.keys where a != QueuedRequest.base { dominant = max(dominant ?? .min, perAdapter[a]) }
            guard let dominant else { return nil }
            return (dominant, config.costs.merged(tokens: dominant))
        case .merged:
            let tokens = min(config.maxBatchTokens, window.reduce(0) { $0 + $1.pendingTokens })
            let n = distinctAdapters(window, scratch: scratch)
            return (tokens, config.costs.unmerged(tokens: tokens, adapters: n, loraTokens: loraTokens(window, limit: tokens)))
        }
    }

    /// Distinct adapters (not counting the base model) among the requests.
    private func distinctAdapters(_ requests: ArraySlice<QueuedRequest>, scratch: UnsafeMutablePointer<PolicyScratch>) -> Int {
        scratch.pointee.distinct.removeAll()
        for r in requests where r.adapter != QueuedRequest.base { scratch.pointee.distinct.add(r.adapter) }
        return scratch.pointee.distinct.count
    }

    private func loraWeight(_ adapter: Int) -> Double {
        adapter == QueuedRequest.base ? 0 : loraWeights[adapter] ?? 1
    }

    /// The window's LoRA work in reference-adapter tokens, its tokens capped at `limit` in FCFS order.
    private func loraTokens(_ window: ArraySlice<QueuedRequest>, limit: Int) -> Double {
        var left = limit, w = 0.0
        for r in window where left > 0 {
            let n = min(left, r.pendingTokens)
            w += Double(n) * loraWeight(r.adapter)
            left -= n
        }
        return w
    }

    private func switchCost(_ mode: ExecutionMode) -> Double {
        if case .merged(let a) = mode, let s = switchCosts[a] { return s }
        return config.costs.switchSeconds
    }

    // MARK: dLoRA

    /// `scratch.counts` holds the queue's requests per adapter.
    private func nextMode(queue: [QueuedRequest], window: ArraySlice<QueuedRequest>, starving: Set<Int>,
                          scratch: UnsafeMutablePointer<PolicyScratch>) -> ExecutionMode {
        let c = config
        let counts = scratch.pointee.counts
        // Starving adapters go first: only an unmerged batch can hold them beside the others, unless the
        // current merged adapter is the only one starving. The whole queue counts, not just the FCFS window:
        // a starving adapter's requests may all sit behind it.
        if !starving.isEmpty {
            if case .merged(let a) = mode, starving == [a] { return mode }
            return .unmerged
        }
        let windowSize = Double(window.count)
        if case .merged(let a) = mode {
            let share = Double(counts[a]) / windowSize
            return share >= mergeLeft && counts[a] > 0 ? mode : .unmerged
        }
        // The dominant adapter (ties: the one whose first request is oldest).
        var best: (adapter: Int, count: Int)?
        for r in window where r.adapter != QueuedRequest.base {
            let n = counts[r.adapter]
            if best == nil || n > best!.count { best = (r.adapter, n) }
        }
        guard let (m, nm) = best else { return .unmerged }
        guard Double(nm) / windowSize >= mergeRight else { return .unmerged }
        // Amortization: over the horizon, merged must serve the dominant adapter's tokens faster than the
        // unmerged window serves tokens, after paying the switch. While other adapters wait, their credits end
        // a merged stretch after `creditBound` iterations, so the switch must pay for itself within that.
        let othersWait = counts.keys.contains { $0 != m && counts[$0] > 0 }
        let h = Double(othersWait ? min(c.amortizationHorizon, c.creditBound) : c.amortizationHorizon)
        let merged = Double(min(nm, c.maxBatchSequences)) * h
            / (switchCost(.merged(adapter: m)) + h * c.costs.merged(tokens: min(nm, c.maxBatchSequences)))
        let distinctInWindow = distinctAdapters(window, scratch: scratch)
        let unmerged = windowSize / c.costs.unmerged(tokens: window.count, adapters: distinctInWindow,
                                                     loraTokens: window.reduce(0) { $0 + loraWeight($1.adapter) })
        return merged > unmerged ? .merged(adapter: m) : .unmerged
    }

    /// AIMD on the threshold of the mode being left: compare the stretch's throughput with what the other mode
    /// would have served per second over the same iterations (by the cost model), charging the switch to
    /// whichever side pays it — a merged stretch paid its merge and unmerge, an unmerged stretch's alternative
    /// would have. If the mode being left won, make it easier to enter/keep (mergeLeft −0.05, or mergeRight
    /// ×1.1 so merging is less eager); if it lost, harder (mergeLeft ×1.1, or mergeRight −0.05).
    private mutating func adapt(leaving old: ExecutionMode, entering new: ExecutionMode) {
        guard stretchTokens > 0, stretchAlternativeTokens > 0 else { return resetStretch() }
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
}
