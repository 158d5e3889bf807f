/// The batching policies behind one protocol: given the live requests in FCFS order, decide the next
/// iteration's execution mode and which requests run with how many tokens. The `Scheduler` then fits the
/// decision into memory and tells the policy what actually ran (`executed`), so credits, switch counts and
/// the AIMD stretch are charged for executed work only. Pure: no tensors, no clock, no I/O.

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

/// The policies a replica can run.
public enum BatchingPolicyKind: String, CaseIterable, Sendable {
    /// dLoRA: dynamic merged/unmerged switching with adaptive thresholds, switch-cost amortization, credits.
    case dlora
    /// vLLM / S-LoRA style: always unmerged, strict FCFS; at the distinct-adapter cap, requests of other
    /// adapters are skipped (they wait). No credits.
    case unmergedOnly = "unmerged-only"
    /// One adapter at a time, merged: the oldest request's adapter with all its queued requests.
    case mergedOnly = "merged-only"
    /// HF PEFT style: static batches of one adapter's requests, run to completion before the next batch.
    case peftLike = "peft-like"
}

/// What a policy sees of one live request.
public struct QueuedRequest: Equatable, Sendable {
    public let id: RequestID
    /// The scheduler's adapter key; `QueuedRequest.base` for requests of the base model.
    public let adapter: Int
    /// Tokens still to compute before it can sample (its prompt remainder; 1 when decoding).
    public let pendingTokens: Int
    public static let base = Request.base

    public init(id: RequestID, adapter: Int, pendingTokens: Int) {
        precondition(pendingTokens >= 1)
        self.id = id
        self.adapter = adapter
        self.pendingTokens = pendingTokens
    }

    public init(id: Int, adapter: Int, pendingTokens: Int) {
        self.init(id: RequestID(id), adapter: adapter, pendingTokens: pendingTokens)
    }
}

/// One request's share of an iteration, as a policy proposes it.
public struct PolicyRun: Equatable, Sendable {
    public var id: RequestID
    public var tokens: Int
    public init(id: RequestID, tokens: Int) {
        self.id = id
        self.tokens = tokens
    }
}

/// A policy's answer for one iteration (and, handed back through `executed`, what ran of it).
public struct BatchDecision: Equatable, Sendable {
    public var mode: ExecutionMode
    /// Runs in execution order.
    public var runs: [PolicyRun]
    public init(mode: ExecutionMode, runs: [PolicyRun]) {
        self.mode = mode
        self.runs = runs
    }
}

public struct BatchPolicyConfig: Equatable, Sendable {
    public var kind: BatchingPolicyKind = .dlora
    /// Tokens per iteration (decodes count one each; prompt chunks fill the rest).
    public var maxBatchTokens = 512
    /// Sequences per iteration (the paper's batch size B).
    public var maxBatchSequences = 32
    /// Distinct adapters an unmerged iteration may hold (LoRA slots).
    public var maxAdapters = 32
    /// Iterations an adapter may be passed over (a request of it that FCFS would run left waiting) before its
    /// requests go first.
    public var creditBound = 8
    /// Iterations over which a switch to merged mode must pay for itself.
    public var amortizationHorizon = 16
    public var costs = StepCostModel.smolLM2Reference

    public init(kind: BatchingPolicyKind = .dlora) { self.kind = kind }
}

/// A batching policy. `decide` proposes; `executed` is told what ran (possibly fewer runs, when memory
/// did not allow all); `observe` gets the measured seconds of that iteration.
public protocol BatchingPolicy: Sendable {
    var config: BatchPolicyConfig { get }
    /// The mode of the last executed iteration.
    var mode: ExecutionMode { get }
    /// Mode switches executed so far.
    var switches: Int { get }
    /// Per adapter: consecutive executed iterations it had queued requests but none ran.
    var credits: [Int: Int] { get }
    mutating func decide(_ queue: [QueuedRequest]) -> BatchDecision
    mutating func executed(_ ran: BatchDecision, queue: [QueuedRequest])
    mutating func observe(_ ran: BatchDecision, adapters: Int, seconds: Double)
    /// An a-priori merge + unmerge cost for an adapter (kept until a measurement replaces it).
    mutating func estimateSwitch(adapter: Int, seconds: Double)
    /// A measured merge + unmerge of an adapter.
    mutating func observeSwitch(adapter: Int, seconds: Double)
    /// An adapter's LoRA path cost per token relative to the cost model's reference adapter.
    mutating func estimateLoRACost(adapter: Int, relative: Double)
    /// Drops what the policy keeps about an adapter the scheduler no longer knows.
    mutating func forget(adapter: Int)
    /// The queue emptied while merged and the scheduler unmerged the weights: the next merge is a new switch.
    mutating func unmergedWhileIdle()
}

extension BatchingPolicy {
    /// Decides and charges as if everything proposed ran (for callers without memory limits).
    public mutating func schedule(_ queue: [QueuedRequest]) -> BatchDecision {
        let d = decide(queue)
        executed(d, queue: queue)
        return d
    }
    public mutating func estimateSwitch(adapter: Int, seconds: Double) {}
    public mutating func observeSwitch(adapter: Int, seconds: Double) {}
    public mutating func estimateLoRACost(adapter: Int, relative: Double) {}
    public mutating func observe(_ ran: BatchDecision, adapters: Int, seconds: Double) {}
    public mutating func unmergedWhileIdle() {}
}

/// The policy a configuration names.
public func makeBatchingPolicy(_ config: BatchPolicyConfig) -> any BatchingPolicy {
    precondition(config.maxBatchTokens >= 1 && config.maxBatchSequences >= 1 && config.maxAdapters >= 1)
    switch config.kind {
    case .dlora: return DLoRAPolicy(config: config)
    case .unmergedOnly: return FCFSUnmergedPolicy(config: config)
    case .mergedOnly: return MergedOnlyPolicy(config: config)
    case .peftLike: return PEFTLikePolicy(config: config)
    }
}

/// dLoRA's credits, shared by the policies that use them: an adapter passed over in an executed iteration (a
/// request of it that FCFS would have run did not run) gains a credit; one that ran goes back to zero (`charge`).
struct Credits: Equatable, Sendable {
    private(set) var values: [Int: Int] = [:]
    // (`charge`'s tables are this thread's `PolicyScratch`.)

    func starving(_ queue: [QueuedRequest], bound: Int) -> Set<Int> {
        guard bound > 0 else {
            var out = Set<Int>()
            for r in queue { out.insert(r.adapter) }
            return out
        }
        // Adapters at the bound first (usually none: then the queue is not walked, and nothing is allocated).
        var candidates: [Int] = []
        for (a, v) in values where v >= bound { candidates.append(a) }
        guard !candidates.isEmpty else { return [] }
        var out = Set<Int>()
        for r in queue where candidates.contains(r.adapter) { out.insert(r.adapter) }
        return out
    }

    func credit(_ adapter: Int) -> Int { values[adapter] ?? 0 }

    /// After an executed iteration: an adapter that ran is reset; one that was *passed over* — a request of it that
    /// FCFS would have run this iteration (the queue's first requests within the budgets, as `fillBatch` takes them
    /// without credits) did not run, because the mode, a starving adapter or memory put others first —
    /// gains one credit; one that only waits its turn behind the batch keeps its credit (the dLoRA artifact's rule:
    /// credit moves to a request displaced from FCFS order, not to every request queued behind a full batch).
    mutating func charge(queue: [QueuedRequest], ran: [PolicyRun], config: BatchPolicyConfig) {
        let s = PolicyScratch.current
        s.pointee.ranIDs.removeAll()
        s.pointee.fcfsIDs.removeAll()
        fillBatch(queue, starving: [], credits: self, config: config) { i, _ in s.pointee.fcfsIDs.add(queue[i].id.rawValue) }
        s.pointee.served.removeAll()
        s.pointee.waiting.removeAll()
        s.pointee.passed.removeAll()
        for r in ran { s.pointee.ranIDs.add(r.id.rawValue) }
        for r in queue {
            if s.pointee.ranIDs.contains(r.id.rawValue) {
                s.pointee.served.add(r.adapter)
            } else {
                s.pointee.waiting.add(r.adapter)
                if s.pointee.fcfsIDs.contains(r.id.rawValue) { s.pointee.passed.add(r.adapter) }
            }
        }
        for a in s.pointee.served.keys { values[a] = 0 }
        for a in s.pointee.passed.keys where !s.pointee.served.contains(a) { values[a, default: 0] += 1 }
        // Adapters with no queued request left drop out.
        s.pointee.gone.removeAll(keepingCapacity: true)
        for a in values.keys where !s.pointee.served.contains(a) && !s.pointee.waiting.contains(a) { s.pointee.gone.append(a) }
        for a in s.pointee.gone { values[a] = nil }
    }
}

/// Fills an iteration: decodes and prompt chunks within the token and sequence budgets and the adapter-slot
/// limit. Starving adapters first — the oldest request of each, the longest-waiting adapter first, each with a
/// fair share of the token budget so one long prompt cannot shut the others out — then the pool FCFS (a
/// request whose adapter finds no free slot is skipped). Returns the runs.
func fillBatch(_ pool: [QueuedRequest], starving: Set<Int>, credits: Credits, config c: BatchPolicyConfig) -> [PolicyRun] {
    var runs: [PolicyRun] = []
    runs.reserveCapacity(min(pool.count, c.maxBatchSequences))
    fillBatch(pool, starving: starving, credits: credits, config: c) { i, n in runs.append(PolicyRun(id: pool[i].id, tokens: n)) }
    return runs
}

/// `fillBatch`'s selection, each run handed to `take` as (its position in the pool, its tokens) in the order
/// taken. Its own tables are this thread's `PolicyScratch` (`batchAdapters`, `takenAt`), so a caller that only
/// needs the ids (`Credits.charge`) allocates nothing.
func fillBatch(_ pool: [QueuedRequest], starving: Set<Int>, credits: Credits, config c: BatchPolicyConfig,
               take emit: (_ position: Int, _ tokens: Int) -> Void) {
    let s = PolicyScratch.current
    // Adapters among the ≤ maxAdapters taken; positions taken for starving adapters, which the FCFS pass skips
    // (requests are taken by position in the pool: ids are unique).
    s.pointee.batchAdapters.removeAll(keepingCapacity: true)
    s.pointee.takenAt.removeAll(keepingCapacity: true)
    var budget = c.maxBatchTokens
    var count = 0
    func take(_ i: Int, limit: Int) {
        let r = pool[i]
        guard budget > 0, count < c.maxBatchSequences else { return }
        if r.adapter != QueuedRequest.base && !s.pointee.batchAdapters.contains(r.adapter) {
            guard s.pointee.batchAdapters.count < c.maxAdapters else { return }
            s.pointee.batchAdapters.append(r.adapter)
        }
        let n = min(r.pendingTokens, budget, limit)
        emit(i, n)
        count += 1
        budget -= n
    }
    if !starving.isEmpty {
        let order = starving.sorted { (credits.credit($0), -$0) > (credits.credit($1), -$1) }
        for (k, a) in order.enumerated() {
            guard let oldest = pool.firstIndex(where: { $0.adapter == a }) else { continue }
            let before = count
            take(oldest, limit: max(1, budget / (order.count - k)))
            if count > before { s.pointee.takenAt.append(oldest) }
        }
    }
    // (Once the token or sequence budget is spent, nothing more can be taken.)
    for i in pool.indices {
        guard budget > 0, count < c.maxBatchSequences else { break }
        if s.pointee.takenAt.contains(i) { continue }
        take(i, limit: .max)
    }
}
