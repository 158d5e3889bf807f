/// The replica's scheduler, pure and complete (vLLM v1's shape: schedule → execute → update). It owns the
/// request table, the KV `BlockPool`, which adapters are resident (their weights take blocks' worth of the
/// same budget, least recently used evicted first), host-swap accounting, the preemption rule (swap the
/// newest sequence's KV to host memory while the swap space holds it, else recompute it later), the batching
/// policy and its cost model, and which adapter is merged. `schedule` returns the iteration as values; the
/// engine carries out its actions and forward pass and closes the iteration with `update`. No tensors, no
/// clock (time comes in as numbers), no I/O, deterministic: the simulator runs this very code.

public struct Scheduler: Sendable {
    public let config: SchedulerConfig
    public private(set) var pool: BlockPool
    public private(set) var policy: any BatchingPolicy
    public private(set) var stats = SchedulerStats()
    /// Host bytes holding swapped-out KV.
    public private(set) var hostSwapBytes = 0
    /// The adapter merged into the weights, if any.
    public private(set) var merged: Int?
    /// The switch-cost estimates the policy is given (from `SchedulerConfig.switchPrior`, then the merges and
    /// unmerges the engine times).
    private var switchCost: SwitchCostEstimate
    public var mergeSecondsPerElement: Double { switchCost.mergeSecondsPerElement }
    public var mergeSecondsPerMultiplyAdd: Double { switchCost.mergeSecondsPerMultiplyAdd }
    public var lastUnmergeSeconds: Double { switchCost.lastUnmergeSeconds }
    /// The most base elements one merge has covered so far (`SwitchCostEstimate.mergedElementsHigh`).
    public var mergedElementsHigh: Int { switchCost.mergedElementsHigh }

    /// The request table in dense slots (a finished request's slot is reused): every per-iteration pass walks
    /// `order` and reads `table` by slot; only ids coming in from outside (the policy's runs, `finish`, `request`)
    /// go through `slotOf`.
    private var table: [Request] = []
    private var slotOf = IntMap<Int>()
    private var freeSlots: [Int] = []
    /// Live requests' slots in arrival order (FCFS).
    private var order: [Int] = []
    /// Per slot: the step whose policy proposed it, and the step that chose it (this iteration's sets, as marks).
    private var proposedAt: [Int] = []
    private var chosenAt: [Int] = []
    private var nextArrival = 0

    struct AdapterState: Equatable, Sendable {
        let profile: AdapterProfile
        let blocks: Int
        /// Its weights hold `blocks` blocks of the pool (listed in `residentBlocks`). The state holds no
        /// reference, so reading it out of `adapters` copies a few words without retaining anything.
        var resident = false
        var lastUse = 0
        /// Its entry in `lru` while resident (nil when not).
        var lruStamp: Int?
        /// Live requests that need it.
        var refs = 0
        /// Unregistered: forget it as soon as no request needs it.
        var retired = false
        /// The policy holds a measured switch for it (not an estimate).
        var switchTimed = false
    }
    private var adapters = IntMap<AdapterState>()
    /// The blocks of each resident adapter.
    private var residentBlocks: [Int: [Int32]] = [:]
    /// Resident adapters, least recently used first: `makeRoom`'s eviction order.
    private var lru = AdapterLRU()
    /// Actions produced between iterations (cancel, retire, idle unmerge), delivered with the next output
    /// or by `takeActions`.
    private var pendingActions: [SchedulerAction] = []

    public init(config: SchedulerConfig) {
        precondition(config.numBlocks > 0 && config.blockSize > 0 && config.bytesPerBlock > 0 && config.contextLimit > 0)
        self.config = config
        switchCost = SwitchCostEstimate(config.switchPrior)
        pool = BlockPool(numBlocks: config.numBlocks, blockSize: config.blockSize)
        policy = makeBatchingPolicy(config.policy)
    }

    // MARK: Queries

    public var hasWork: Bool { !order.isEmpty }
    public var liveCount: Int { order.count }
    public func request(_ id: RequestID) -> Request? { slotOf[id.rawValue].map { table[$0] } }
    /// The request is live (queued, running or swapped out).
    public func isLive(_ id: RequestID) -> Bool { slotOf[id.rawValue] != nil }
    /// Live requests in FCFS order.
    public var liveRequests: [Request] { order.map { table[$0] } }
    /// Calls `body` with each live request in FCFS order (without building an array of them).
    public func forEachLiveRequest(_ body: (Request) -> Void) {
        for s in order { body(table[s]) }
    }
    public var runningCount: Int { order.reduce(0) { $0 + (table[$1].status == .running ? 1 : 0) } }
    public var swappedCount: Int { order.reduce(0) { $0 + (table[$1].status == .swapped ? 1 : 0) } }
    public var waitingCount: Int { liveCount - runningCount }
    public func knows(adapter: Int) -> Bool { adapters[adapter] != nil }
    public var knownAdapters: [Int] { adapters.keys.sorted() }
    public var residentAdapters: [Int] { adapters.filter { $0.value.resident }.map(\.key).sorted() }
    /// Blocks held by resident adapters (counted as they are allocated and released: the simulator reads it
    /// every step, and summing over the adapters showed in its profile).
    public private(set) var residentAdapterBlocks = 0
    /// Blocks of resident adapters no live request needs (evictable on demand: what a router should count as free).
    /// Summed on each call (the server's metrics read it; the simulator does not).
    public var idleAdapterBlocks: Int {
        var n = 0
        for (key, a) in adapters where a.resident && a.refs == 0 && merged != key { n += residentBlocks[key]?.count ?? 0 }
        return n
    }
    /// Adapters (ascending, the base excluded) that live requests holding no KV blocks wait for: queued,
    /// preempted or swapped out. Sorted so that callers can compare it with an earlier answer.
    public var waitingAdapters: [Int] {
        var keys: Set<Int> = []
        for s in order where table[s].status != .running && table[s].adapter != Request.base { keys.insert(table[s].adapter) }
        return keys.sorted()
    }
    /// Blocks held by requests.
    public var requestBlocks: Int {
        var n = 0
        for s in order { n += table[s].blockTable.count }
        return n
    }

    // MARK: Admission

    /// Tells the scheduler about an adapter before its first request (no-op when known).
    public mutating func addAdapter(_ profile: AdapterProfile) {
        guard adapters[profile.key] == nil else { return }
        adapters[profile.key] = AdapterState(profile: profile, blocks: config.adapterBlocks(bytes: profile.bytes))
        // Merging costs in proportion to the base matrices the adapter targets; its LoRA path in proportion
        // to its multiply-adds per token.
        // (An adapter that cannot merge costs the policy an infinite switch, so dLoRA's never proposes it.)
        policy.estimateSwitch(adapter: profile.key, seconds: profile.mergeable ? switchCost.switchSeconds(profile) : .infinity)
        policy.estimateLoRACost(adapter: profile.key, relative: Double(profile.loraParameters) / config.policy.costs.referenceLoRAParameters)
    }

    /// What merging an adapter should take into an allocated workspace, by the current estimates.
    public func predictedMergeSeconds(_ profile: AdapterProfile) -> Double { switchCost.mergeSeconds(profile) }

    /// What switching to an adapter and back should take now: its merge, the workspace its merge would still
    /// have to allocate, and an unmerge.
    public func predictedSwitchSeconds(_ profile: AdapterProfile) -> Double { switchCost.switchSeconds(profile) }

    public func admissionProblem(promptTokens: Int, adapterBytes: Int) -> String? {
        config.admissionProblem(promptTokens: promptTokens, adapterBytes: adapterBytes)
    }

    /// Queues a request. `tokenCount` > `promptCount` for an imported request that already generated
    /// tokens; `maxNewTokens`: how many it may still generate (nil: up to the length limit).
    @discardableResult
    public mutating func add(_ id: RequestID, adapter: Int, promptCount: Int, tokenCount: Int? = nil, maxNewTokens: Int?) throws -> Request {
        guard slotOf[id.rawValue] == nil else { throw SchedulerError("request \(id) is already queued") }
        let bytes: Int
        if adapter == Request.base {
            bytes = 0
        } else {
            // A retired adapter still takes requests (one its weights were handed to before it was unloaded); it is
            // dropped once none needs it.
            guard let a = adapters[adapter] else { throw SchedulerError("adapter \(adapter) is not known (addAdapter first)") }
            bytes = a.profile.bytes
        }
        let count = tokenCount ?? promptCount
        if let problem = admissionProblem(promptTokens: count, adapterBytes: bytes) {
            // An adapter added for this request alone must not stay behind it.
            if adapter != Request.base {
                var actions: [SchedulerAction] = []
                dropIfUnused(adapter, into: &actions)
                pendingActions += actions
            }
            throw SchedulerError(problem)
        }
        let limit = config.lengthLimit(adapterBytes: bytes)
        let maxLength = min(limit, count + (maxNewTokens ?? limit))
        let r = Request(id: id, adapter: adapter, promptCount: promptCount, tokenCount: count, maxLength: max(maxLength, count + 1),
                        arrival: nextArrival)
        nextArrival += 1
        let slot: Int
        if let free = freeSlots.popLast() {
            slot = free
            table[slot] = r
        } else {
            slot = table.count
            table.append(r)
            proposedAt.append(0)
            chosenAt.append(0)
        }
        slotOf[id.rawValue] = slot
        order.append(slot)
        if adapter != Request.base { adapters[adapter]!.refs += 1 }
        return r
    }

    /// Gives a queued request blocks for K/V it already has (an import that carries its KV): its first
    /// `computed` tokens are then computed. Returns the blocks to copy the K/V into, or nil when the pool
    /// cannot hold them now (the request then recomputes).
    public mutating func adoptKV(_ id: RequestID, computed: Int) -> [Int32]? {
        guard let s = slotOf[id.rawValue], table[s].status == .waiting, table[s].blockTable.isEmpty, computed > 0, computed <= table[s].tokenCount else {
            return nil
        }
        guard pool.ensureCapacity(&table[s].blockTable, tokens: computed) else { return nil }
        table[s].computed = computed
        table[s].status = .running
        return table[s].blockTable
    }

    /// Takes a live request out (cancelled, migrated, or finished by a stop string the engine saw);
    /// what it held is freed. Returns false when it is not live.
    @discardableResult
    public mutating func finish(_ id: RequestID, reason: FinishReason) -> Bool {
        guard slotOf[id.rawValue] != nil else { return false }
        var actions: [SchedulerAction] = []
        release(id, reason: reason, into: &actions)
        idleCheck(into: &actions)
        pendingActions += actions
        return true
    }

    /// The adapter is no longer served: forget it once no request needs it (evicting it now if idle).
    public mutating func retire(adapter: Int) {
        guard adapters[adapter] != nil else { return }
        adapters[adapter]!.retired = true
        var actions: [SchedulerAction] = []
        dropIfUnused(adapter, into: &actions)
        pendingActions += actions
    }

    /// Actions produced outside an iteration (by `finish`, `retire`, or the iteration that emptied the
    /// queue), for the engine to carry out now.
    public mutating func takeActions() -> [SchedulerAction] {
        defer { pendingActions.removeAll() }
        return pendingActions
    }

    // MARK: One iteration

    /// Decides the next iteration: the policy proposes, then each proposed run gets its adapter resident and
    /// its KV blocks — evicting idle adapters, then preempting the newest requests not in this iteration —
    /// or is left out. The policy is told what runs. `now` (seconds, any origin) is the caller's clock.
    public mutating func schedule(now: Double = 0) -> SchedulerOutput {
        var actions = pendingActions
        pendingActions.removeAll()
        stats.steps += 1
        let step = stats.steps
        // `order` does not change during the iteration (preemption keeps a request's place): queue[i] is slot order[i].
        let queueSlots = order
        var queue: [QueuedRequest] = []
        queue.reserveCapacity(queueSlots.count)
        for s in queueSlots { queue.append(QueuedRequest(id: table[s].id, adapter: table[s].adapter, pendingTokens: table[s].pendingTokens)) }
        guard !queue.isEmpty else { return SchedulerOutput(step: step, mode: policy.mode, runs: [], actions: actions, loraSlots: []) }
        let decision = policy.decide(queue)
        let proposedSlots = decision.runs.map { slotOf[$0.id.rawValue] ?? -1 }
        for s in proposedSlots where s >= 0 { proposedAt[s] = step }
        var mode = decision.mode
        var mergedTarget: Int? = if case .merged(let a) = mode { a } else { nil }
        if let a = mergedTarget, adapters[a]?.profile.mergeable == false {
            // A policy that merges whatever it batches (merged-only, PEFT-like) proposed an adapter that cannot
            // merge: the same requests run unmerged.
            mode = .unmerged
            mergedTarget = nil
        }

        var executed: [PolicyRun] = []
        var executedSlots: [Int] = []
        var unavailable: [Int] = []
        /// Gives one run its adapter and KV blocks, or leaves it out.
        func tryRun(_ run: PolicyRun, slot s: Int, backfill: Bool = false) {
            guard s >= 0, !backfill || table[s].status == .running else { return }
            let a = table[s].adapter
            if a != Request.base {
                if unavailable.contains(a) { return }
                if !adapters[a]!.resident && !makeResident(a, for: s, keepMerged: mergedTarget, into: &actions) {
                    unavailable.append(a)
                    return
                }
                touch(a, step: step)
            }
            // Making the adapter resident may have preempted others, never this request.
            let missing = pool.blocksNeeded(tokens: table[s].computed + run.tokens) - table[s].blockTable.count
            guard missing <= 0 || makeRoom(missing, for: s, keep: mergedTarget, into: &actions) else {
                return
            }
            guard pool.ensureCapacity(&table[s].blockTable, tokens: table[s].computed + run.tokens) else { preconditionFailure("room was made") }
            if table[s].status == .swapped {
                actions.append(.swapIn(table[s].id, blocks: Array(table[s].blockTable.prefix(table[s].swappedBlocks))))
                hostSwapBytes -= table[s].swappedBlocks * config.bytesPerBlock
                table[s].swappedBlocks = 0
                stats.swapIns += 1
            }
            table[s].status = .running
            chosenAt[s] = step
            executed.append(run)
            executedSlots.append(s)
        }
        for (run, s) in zip(decision.runs, proposedSlots) { tryRun(run, slot: s) }
        if executed.isEmpty {
            // None of the proposal fits beside the work in progress (new work never pushes it out): continue the
            // requests that hold KV instead, FCFS within the budgets — in the proposed mode if any of them is
            // the merged adapter's, else unmerged — so memory frees up as they finish.
            let running = queue.indices.filter { table[queueSlots[$0]].status == .running }.map { queue[$0] }
            var pool = running.filter { mergedTarget == nil || $0.adapter == mergedTarget }
            if pool.isEmpty && !running.isEmpty {
                mode = .unmerged
                mergedTarget = nil
                pool = running
            }
            // (A backfilled request preempted by an earlier one in this pass is skipped: it holds nothing now.)
            for run in fillBatch(pool, starving: [], credits: Credits(), config: config.policy) {
                tryRun(run, slot: slotOf[run.id.rawValue] ?? -1, backfill: true)
            }
        }

        var deferred: [RequestID] = []
        for (run, s) in zip(decision.runs, proposedSlots) where s < 0 || chosenAt[s] != step { deferred.append(run.id) }
        guard !executed.isEmpty else {
            // Nothing fit at all (this iteration's adapters and KV could not share the budget): free everything so
            // the oldest request can make progress next iteration. Admission checked each request fits alone.
            for s in order where table[s].status == .running { preempt(s, into: &actions) }
            if merged != nil {
                actions.append(.unmerge)
                merged = nil
            }
            for (a, s) in adapters where s.resident { evict(a, into: &actions) }
            for a in adapters.keys { dropIfUnused(a, into: &actions) }  // (a copy: dropping edits the map)
            policy.executed(BatchDecision(mode: policy.mode, runs: []), queue: queue)
            return SchedulerOutput(step: step, mode: policy.mode, runs: [], actions: actions, loraSlots: [], deferred: deferred)
        }

        // The weights: fold the adapter in, or take it out.
        if let a = mergedTarget {
            if merged != a {
                if merged != nil { actions.append(.unmerge) }
                actions.append(.merge(a))
                merged = a
            }
        } else if merged != nil {
            actions.append(.unmerge)
            merged = nil
        }

        // LoRA slots: one per distinct adapter of an unmerged iteration, in order of first appearance; runs of
        // one slot side by side (one segment each, as SGMV groups them), requests FCFS within a slot.
        var slots: [Int] = []
        var keyed: [(slot: Int32, arrival: Int, run: ScheduledRun)] = []
        keyed.reserveCapacity(executed.count)
        for (run, s) in zip(executed, executedSlots) {
            let a = table[s].adapter
            var loraSlot: Int32 = -1
            if mergedTarget == nil && a != Request.base {
                if let i = slots.firstIndex(of: a) {
                    loraSlot = Int32(i)
                } else {
                    loraSlot = Int32(slots.count)
                    slots.append(a)
                }
            }
            let r = table[s]
            keyed.append((loraSlot, r.arrival,
                          ScheduledRun(request: r.id, adapter: a, start: r.computed, tokens: run.tokens, blockTable: r.blockTable,
                                       samples: r.computed + run.tokens == r.tokenCount, loraSlot: loraSlot)))
        }
        keyed.sort { ($0.slot, $0.arrival) < ($1.slot, $1.arrival) }
        let runs = keyed.map(\.run)
        let ran = BatchDecision(mode: mode, runs: executed)
        let switchesBefore = policy.switches
        policy.executed(ran, queue: queue)
        stats.modeSwitches += policy.switches - switchesBefore
        return SchedulerOutput(step: step, mode: mode, runs: runs, actions: actions, loraSlots: slots, deferred: deferred)
    }

    /// Closes an iteration: advances the runs, appends the sampled tokens, finishes requests (end of
    /// sequence, failure, or the length limit), feeds the measured seconds to the cost model and the
    /// switch-cost estimates. `sampled` holds one entry per run with `samples`.
    public mutating func update(_ output: SchedulerOutput, sampled: [SampledToken], report: ExecutionReport) -> [RequestOutput] {
        guard !output.runs.isEmpty else { return [] }
        if output.mode == .unmerged { stats.unmergedSteps += 1 } else { stats.mergedSteps += 1 }
        if let u = report.unmergeSeconds { switchCost.observeUnmerge(seconds: u) }
        for case .merge(let a) in output.actions {
            guard let profile = adapters[a]?.profile else { continue }
            if switchCost.merged(profile), switchCost.modelsAllocation {
                // The workspace grew: adapters whose switch is not timed yet cost less allocation now.
                for (key, state) in adapters where state.profile.mergeable && !state.switchTimed {
                    policy.observeSwitch(adapter: key, seconds: switchCost.switchSeconds(state.profile))
                }
            }
            if let s = report.mergeSeconds, s.isFinite, s >= 0, profile.mergeElements > 0 {
                adapters[a]?.switchTimed = true
                switchCost.observeMerge(profile, seconds: s)
                policy.observeSwitch(adapter: a, seconds: s + switchCost.lastUnmergeSeconds)
            }
        }
        // (The runs are read by index, field by field: copying a run retained its block table, a cache miss per run
        // in a simulation, where a replica's memory goes cold between its iterations.)
        let runs = output.runs
        var policyRuns: [PolicyRun] = []
        policyRuns.reserveCapacity(runs.count)
        for k in runs.indices { policyRuns.append(PolicyRun(id: runs[k].request, tokens: runs[k].tokens)) }
        policy.observe(BatchDecision(mode: output.mode, runs: policyRuns),
                       adapters: output.loraSlots.count, seconds: report.forwardSeconds)

        var outputs: [RequestOutput] = []
        var finished: [(RequestID, FinishReason)] = []
        for k in runs.indices {
            let (request, tokens) = (runs[k].request, runs[k].tokens)
            guard let slot = slotOf[request.rawValue], table[slot].status == .running else { continue }
            if table[slot].computed < table[slot].promptCount { stats.promptTokens += min(tokens, table[slot].promptCount - table[slot].computed) }
            table[slot].computed += tokens
            // The run's sampled token (the last entry for it, should there be several).
            guard runs[k].samples, let i = sampled.lastIndex(where: { $0.request == request }) else { continue }
            let s = sampled[i]
            var finish: FinishReason?
            if s.failed {
                finish = .error
            } else {
                table[slot].tokenCount += 1
                stats.generatedTokens += 1
                if s.endsSequence { finish = .stop } else if table[slot].tokenCount >= table[slot].maxLength { finish = .length }
            }
            outputs.append(RequestOutput(request: request, finish: finish))
            if let finish { finished.append((request, finish)) }
        }
        var actions: [SchedulerAction] = []
        for (id, reason) in finished { release(id, reason: reason, into: &actions) }
        idleCheck(into: &actions)
        pendingActions += actions
        return outputs
    }

    // MARK: Memory

    /// Frees `blocks` blocks for `owner`'s run (its KV or its adapter), if it can be done at all: first idle
    /// resident adapters (least recently used; never one a request holding KV, this iteration, or the merge
    /// target needs), then requests holding blocks outside this iteration, newest first (those the policy did
    /// not propose before those it did). Who may give way:
    /// - to a running owner (growing its KV), a request that arrived after it, swapped to host memory while the
    ///   swap space holds it, else recomputed later (vLLM's rule: work is only lost from newer to older, so the
    ///   oldest request always progresses and no two requests can undo each other's work in turn);
    /// - to an owner whose adapter is starving (credits), a request of an adapter that is not, of any age, but
    ///   only by swapping it (it loses no work), so memory does not hold a starving adapter up for long.
    /// A waiting owner otherwise takes only free blocks and idle adapters' blocks: new work never pushes out
    /// work in progress. Nothing is evicted or preempted when even all of that would not be enough.
    private mutating func makeRoom(_ blocks: Int, for owner: Int, keep: Int?, into actions: inout [SchedulerAction]) -> Bool {
        guard pool.freeCount < blocks else { return true }
        let step = stats.steps
        var needed = Set<Int>()
        for s in order where !table[s].blockTable.isEmpty || proposedAt[s] == step { needed.insert(table[s].adapter) }
        if let keep { needed.insert(keep) }
        if let m = merged { needed.insert(m) }
        needed.insert(table[owner].adapter)
        // The idle adapters' blocks: every resident adapter's but the needed ones'.
        var free = pool.freeCount + residentAdapterBlocks
        for a in needed { if let s = adapters[a], s.resident { free -= s.blocks } }

        var victims: [Int] = []
        if free < blocks {
            let me = table[owner]
            let credits = policy.credits
            func starving(_ adapter: Int) -> Bool { (credits[adapter] ?? 0) >= config.policy.creditBound }
            let ownerStarving = starving(me.adapter)
            let ownerRunning = !me.blockTable.isEmpty
            let holders = order.filter { $0 != owner && chosenAt[$0] != step && !table[$0].blockTable.isEmpty }
            let candidates = holders.filter { proposedAt[$0] != step }.reversed() + holders.filter { proposedAt[$0] == step }.reversed()
            var swapBytes = hostSwapBytes
            for v in candidates where free < blocks {
                let r = table[v]
                let bytes = pool.blocksNeeded(tokens: r.computed) * config.bytesPerBlock
                let swaps = r.computed > 0 && swapBytes + bytes <= config.hostSwapLimitBytes
                let mayRecompute = ownerRunning && r.arrival > me.arrival
                guard mayRecompute || (ownerStarving && !starving(r.adapter) && (swaps || r.computed == 0)) else { continue }
                if swaps { swapBytes += bytes }
                free += r.blockTable.count
                victims.append(v)
            }
            guard free >= blocks else { return false }
        }
        evictIdle(until: blocks, keeping: needed, into: &actions)
        for v in victims where pool.freeCount < blocks { preempt(v, into: &actions) }
        precondition(pool.freeCount >= blocks)
        return true
    }

    /// Frees a request's blocks. Its K/V go to host memory while the swap space holds them (copying ~46 KB per
    /// SmolLM2 token costs microseconds; recomputing costs ~1.4 ms per token here, so swapping wins while there
    /// is room); beyond that it recomputes from zero when rescheduled. Either way it keeps its place in
    /// arrival order, so preempted requests come back FCFS.
    private mutating func preempt(_ s: Int, into actions: inout [SchedulerAction]) {
        let used = pool.blocksNeeded(tokens: table[s].computed)
        let bytes = used * config.bytesPerBlock
        if table[s].computed > 0 && hostSwapBytes + bytes <= config.hostSwapLimitBytes {
            actions.append(.swapOut(table[s].id, blocks: Array(table[s].blockTable.prefix(used))))
            hostSwapBytes += bytes
            table[s].swappedBlocks = used
            table[s].status = .swapped
            stats.swapOuts += 1
        } else {
            if table[s].computed > 0 { stats.recomputes += 1 }
            table[s].computed = 0
            table[s].status = .waiting
        }
        pool.release(table[s].blockTable)
        table[s].blockTable.removeAll()
        stats.preemptions += 1
    }

    /// Marks a resident adapter used at `step`, moving it to the back of the eviction order.
    private mutating func touch(_ a: Int, step: Int) {
        // (One lookup, the state changed in place.)
        guard Self.markUsed(&adapters[a]!, key: a, step: step, lru: &lru) else { return }
        // Drop the stale entries once they outnumber the adapters known (amortized O(1) per touch).
        if lru.count > 2 * adapters.count + 64 {
            lru.rebuild(adapters.compactMap { a, s in s.lruStamp.map { AdapterLRU.Entry(lastUse: s.lastUse, key: a, stamp: $0) } })
        }
    }

    private static func markUsed(_ s: inout AdapterState, key: Int, step: Int, lru: inout AdapterLRU) -> Bool {
        guard s.lastUse != step || s.lruStamp == nil else { return false }
        s.lastUse = step
        s.lruStamp = lru.push(key: key, lastUse: step)
        return true
    }

    /// Evicts idle resident adapters (those not in `needed`), least recently used first (the lower key among
    /// equals), until `blocks` blocks are free or none is left.
    private mutating func evictIdle(until blocks: Int, keeping needed: Set<Int>, into actions: inout [SchedulerAction]) {
        var kept: [AdapterLRU.Entry] = []
        while pool.freeCount < blocks, let e = lru.popFirst() {
            guard adapters[e.key]?.lruStamp == e.stamp else { continue }
            if needed.contains(e.key) {
                kept.append(e)
                continue
            }
            evict(e.key, into: &actions)
            dropIfUnused(e.key, into: &actions)
        }
        for e in kept { lru.push(e) }
    }

    /// Makes an adapter resident: takes its share of the budget, making room as `makeRoom` does.
    private mutating func makeResident(_ a: Int, for owner: Int, keepMerged: Int?, into actions: inout [SchedulerAction]) -> Bool {
        let need = adapters[a]!.blocks
        guard need < pool.numBlocks, makeRoom(need, for: owner, keep: keepMerged, into: &actions) else {
            return false
        }
        residentBlocks[a] = pool.allocate(need)!
        adapters[a]!.resident = true
        residentAdapterBlocks += need
        stats.adapterLoads += 1
        actions.append(.loadAdapter(a))
        return true
    }

    private mutating func evict(_ a: Int, into actions: inout [SchedulerAction]) {
        guard let blocks = residentBlocks.removeValue(forKey: a) else { return }
        pool.release(blocks)
        adapters[a]!.resident = false
        adapters[a]!.lruStamp = nil
        residentAdapterBlocks -= blocks.count
        stats.adapterEvictions += 1
        actions.append(.evictAdapter(a))
    }

    /// Forgets an adapter no request needs when it is not resident, or when it was retired (evicting it).
    private mutating func dropIfUnused(_ a: Int, into actions: inout [SchedulerAction]) {
        guard let s = adapters[a], s.refs == 0 else { return }
        if s.resident {
            guard s.retired, merged != a else { return }
            evict(a, into: &actions)
        }
        guard merged != a else { return }
        adapters[a] = nil
        policy.forget(adapter: a)
        actions.append(.dropAdapter(a))
    }

    private mutating func release(_ id: RequestID, reason: FinishReason, into actions: inout [SchedulerAction]) {
        guard let slot = slotOf.removeValue(forKey: id.rawValue) else { return }
        order.removeAll { $0 == slot }
        let r = table[slot]
        table[slot].blockTable = []
        freeSlots.append(slot)
        pool.release(r.blockTable)
        if r.status == .swapped {
            hostSwapBytes -= r.swappedBlocks * config.bytesPerBlock
            actions.append(.dropSwap(id))
        }
        actions.append(.free(id, reason))
        if r.adapter != Request.base, adapters[r.adapter] != nil {
            adapters[r.adapter]!.refs -= 1
            dropIfUnused(r.adapter, into: &actions)
        }
    }

    /// Idle: leave the weights as they were given (other users may share the model), and forget retired
    /// adapters the merge kept.
    private mutating func idleCheck(into actions: inout [SchedulerAction]) {
        guard order.isEmpty, let m = merged else { return }
        actions.append(.unmerge)
        merged = nil
        let switchesBefore = policy.switches
        policy.unmergedWhileIdle()
        stats.modeSwitches += policy.switches - switchesBefore
        dropIfUnused(m, into: &actions)
    }
}
