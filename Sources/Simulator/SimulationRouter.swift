import ClusterPolicy
import Scheduling

// The simulated router: arrivals and dispatch over the replicas' polled status, adapter placement, and the
// reactive migration loop with its copy stages. The same `ClusterPolicy` code the real router runs.
extension SimulationRun {
    mutating func arrive(_ i: Int) {
        if i + 1 < workload.count { queue.push(.arrival(i + 1), at: workload[i + 1].arrival) }
        let request = workload[i]
        let name = names[request.adapter]
        arrivalCounts[request.adapter] += 1
        var target: Int
        if statusLoads != nil {
            if config.indexedDispatch, let d = dispatcher as? DLoRAProactive {
                target = d.choose(adapter: name, presence: presence.entries(request.adapter), replicas: statusLoads!) ?? 0
            } else {
                target = dispatcher.choose(adapter: name, promptTokens: request.promptTokens, replicas: statusLoads!) ?? 0
            }
        } else {
            let loads = dispatchLoads()
            target = dispatcher.choose(adapter: name, promptTokens: request.promptTokens, replicas: loads) ?? 0
        }
        if config.replayDispatch, let recorded = request.replica { target = recorded }
        hash.mix(5)
        hash.mix(i)
        hash.mix(target)
        replicas[target].dispatchedSinceStatus[name, default: 0] += 1
        if statusLoads != nil {
            statusLoads![target].addWaiting(adapter: name)
            if indexed { presence.addRequest(request.adapter, at: target) }
            checkIndex()
        }
        // In transit (HTTP, tokenization, relay), then past the replica's adapter registry: the replica's engine
        // sees it then.
        let at = adapterFilesReady(on: target, adapter: request.adapter, at: now + config.requestOverheadSeconds)
        if !dispatchedTo.isEmpty { dispatchedTo[i] = Int32(target) }
        if laneInputs != nil {
            // Parallel: the replica's lane takes it at the end of the window (`runParallel`).
            laneInputs![target % laneInputs!.count].append((i, target, at))
        } else if at > now {
            queue.push(.delivered(i, replica: target), at: at)
        } else {
            deliver(target, .add(i, kv: nil))
        }
    }

    /// When a request for `adapter` reaching replica `r` at `t` is past its adapter registry: `t` itself unless
    /// file loads are modelled (`SimulationConfig.adapterFiles`) and the adapter's files are not yet in its host memory.
    mutating func adapterFilesReady(on r: Int, adapter: Int, at t: Double) -> Double {
        guard let files = config.adapterFiles else { return t }
        return replicas[r].files.ready(key: adapter, size: profiles[adapter].bytes, at: t, model: files)
    }

    /// What dispatch sees: each replica's last status plus the requests dispatched to it since
    /// (`ClusterRouter.loads()`); with no polling, its state now.
    /// Once every replica has reported, `statusLoads` holds exactly that, kept up to date as statuses come in and
    /// requests are dispatched (rather than rebuilt for every arrival).
    mutating func dispatchLoads() -> [ReplicaLoad] {
        if config.pollInterval == 0 { return replicas.indices.map { load($0, includeRequests: false) } }
        if let statusLoads { return statusLoads }
        let loads = replicas.indices.map { r in
            var l = replicas[r].status ?? load(r, includeRequests: false)
            for (name, n) in replicas[r].dispatchedSinceStatus { l.perAdapter[name, default: AdapterCounts()].waiting += n }
            return l
        }
        if replicas.allSatisfy({ $0.status != nil }) {
            statusLoads = loads
            if indexed { for r in loads.indices { presence.rebuild(r, from: loads[r], ids: adapterIDs) } }
            checkIndex()
        }
        return loads
    }

    /// dLoRA dispatch keeps `presence` (`SimulationConfig.indexedDispatch`).
    var indexed: Bool { config.indexedDispatch && config.dispatch == .dlora }

    mutating func refreshStatus(_ r: Int) {
        applyStatus(r, takeStatus(r))
    }

    /// A replica's status as it reports it, and the adapters loaded and evicted since its last one (the replica's
    /// half of a poll).
    mutating func takeStatus(_ r: Int) -> ReplicaStatus {
        var requests: [(key: Int, counts: AdapterCounts)] = []
        let l = replicas.withUnsafeBufferPointer { load(r, of: $0[r], includeRequests: false, counts: &requests) }
        let changes = replicas[r].residentChanges
        replicas[r].residentChanges.removeAll(keepingCapacity: true)
        return ReplicaStatus(load: l, requests: requests, changes: changes)
    }

    /// The router's half of a poll: the status read, the requests dispatched since it forgotten.
    mutating func applyStatus(_ r: Int, _ status: ReplicaStatus) {
        let (l, requests, changes) = (status.load, status.requests, status.changes)
        replicas[r].status = l
        replicas[r].dispatchedSinceStatus.removeAll()
        if statusLoads != nil {
            statusLoads![r] = l
            if indexed { presence.refresh(r, changes: changes, requests: requests) }
            checkIndex()
        }
    }

    mutating func checkIndex() {
        guard verifyIndex, indexed, let loads = statusLoads else { return }
        indexChecks += 1
        if !presence.matches(loads, names: names) { indexMismatches += 1 }
    }

    /// A replica's status as `dlora serve` reports it (ReplicaControl's EngineView) and the router maps it
    /// (ClusterRouter.loads): per-adapter waiting/running counts, resident adapters, free blocks, the decode
    /// step its cost model predicts at the current batch, the merged/unmerged factor at a full batch; with
    /// `includeRequests`, its running requests with at least `migrationMinRemainingTokens` left for the planner
    /// (the others' remaining work is pinned).
    func load(_ r: Int, includeRequests: Bool) -> ReplicaLoad {
        // Read in place (the replica, its scheduler and its requests are not copied).
        var counts: [(key: Int, counts: AdapterCounts)] = []
        return replicas.withUnsafeBufferPointer { load(r, of: $0[r], includeRequests: includeRequests, counts: &counts) }
    }

    /// The load; `counts` gets its requests per adapter key (the base model's under `Request.base`).
    private func load(_ r: Int, of replica: borrowing Replica, includeRequests: Bool,
                      counts: inout [(key: Int, counts: AdapterCounts)]) -> ReplicaLoad {
        let costs = replica.scheduler.policy.config.costs
        // Counted by adapter key, then named once per adapter (not once per request).
        var perKey: [Int: AdapterCounts] = [:]
        var running = 0
        var distinct = Set<Int>()
        replica.scheduler.forEachLiveRequest { q in
            if q.status == .running {
                running += 1
                if q.adapter != Request.base { distinct.insert(q.adapter) }
                perKey[q.adapter, default: AdapterCounts()].running += 1
            } else {
                perKey[q.adapter, default: AdapterCounts()].waiting += 1
            }
        }
        // Requests in the inbox are queued on the replica already (the engine takes them at the next step).
        for case .add(let i, _) in replica.inbox { perKey[workload[i].adapter, default: AdapterCounts()].waiting += 1 }
        var per: [String: AdapterCounts] = [:]
        per.reserveCapacity(perKey.count)
        counts.removeAll(keepingCapacity: true)
        for (key, c) in perKey {
            per[key == Request.base ? "" : names[key]] = c
            counts.append((key, c))
        }
        let decode = costs.unmerged(tokens: max(1, running), adapters: distinct.count)
        let full = max(1, shape.maxBatchSequences)
        let mergedFactor = costs.merged(tokens: full) / max(1e-9, costs.unmerged(tokens: full, adapters: 1))
        var infos: [RequestInfo] = []
        var pinned = 0.0
        if includeRequests {
            replica.scheduler.forEachLiveRequest { q in
                let remaining = max(0, (q.maxLength - q.promptCount) - q.generated)
                let seconds = Double(remaining) * decode
                if q.status == .running && moving[q.id.rawValue] == nil && remaining >= config.migrationMinRemainingTokens {
                    infos.append(RequestInfo(id: UInt64(q.id.rawValue), adapter: q.adapter == Request.base ? "" : names[q.adapter],
                                             tokens: q.tokenCount, kvBlocks: (q.computed + shape.blockSize - 1) / shape.blockSize,
                                             remainingEstimate: remaining, remainingSeconds: seconds))
                } else {
                    pinned += seconds
                }
            }
        }
        return ReplicaLoad(id: r, kvBlocksTotal: replica.scheduler.pool.numBlocks, kvBlocksFree: replica.scheduler.pool.freeCount,
                           blockSize: shape.blockSize, adapterSlots: shape.adapterSlots,
                           residentAdapters: replica.residentNames, perAdapter: per,
                           decodeStepSeconds: decode, mergedCostFactor: mergedFactor, maxBatch: shape.maxBatchSequences,
                           defaultAdapterLoadSeconds: typicalLoadSeconds, running: infos, pinnedWorkSeconds: pinned)
    }

    /// dLoRA's placement loop (`ClusterRouter.placementLoop`): smoothed per-adapter arrival rates re-place the
    /// adapters; dispatch prefers the placed replicas.
    mutating func place() {
        var next: [String: Double] = [:]
        for a in arrivalCounts.indices {
            let r = config.dloraDispatch.smoothedRate(previous: rates[names[a]] ?? 0, arrivals: arrivalCounts[a],
                                                      periodSeconds: config.placementPeriod)
            if r > 1e-3 { next[names[a]] = r }
            arrivalCounts[a] = 0
        }
        rates = next
        guard !rates.isEmpty, var d = dispatcher as? DLoRAProactive else { return }
        d.updatePlacement(rates: rates, replicas: dispatchLoads())
        dispatcher = d
    }

    /// Adapters placed once, ahead of the run, by their share of the whole workload (`DLoRAProactive.placeAdapters`
    /// over the idle replicas, rates = requests / the arrivals' span).
    func staticPlacement() -> [String: Set<Int>] {
        guard let first = workload.first, let last = workload.last else { return [:] }
        let span = max(last.arrival - first.arrival, 1e-9)
        var counts = [Int](repeating: 0, count: names.count)
        for request in workload { counts[request.adapter] += 1 }
        var rates: [String: Double] = [:]
        for (a, n) in counts.enumerated() where n > 0 { rates[names[a]] = Double(n) / span }
        return DLoRAProactive().placeAdapters(rates: rates, replicas: replicas.indices.map { load($0, includeRequests: false) })
    }

    /// The migration loop (`ClusterRouter.migrationLoop`): if the trigger fires, plan and start the moves.
    mutating func migrate() {
        let loads = replicas.indices.map { load($0, includeRequests: true) }
        migrationChecks += 1
        guard let reason = MigrationTrigger(configuration: config.migrationConfig).check(loads) else { return }
        switch reason {
        case .kvPressure: kvPressureTriggers += 1
        case .requestImbalance: imbalanceTriggers += 1
        case .draining: break
        }
        let plan = MigrationPlanner(configuration: config.migrationConfig).plan(replicas: loads)
        for move in plan.moves {
            let i = Int(move.requestID)
            guard owner(i) == move.from, moving[i] == nil, scheduler(move.from, { $0.request(RequestID(i))?.status == .running }) else { continue }
            let m = moves.count
            moves.append(Move(request: i, from: move.from, to: move.to, kv: config.migration == .kv))
            moving[i] = m
            hash.mix(6)
            hash.mix(i)
            hash.mix(move.to)
            // The reservation on the destination loads the adapter's files first (ReplicaControl's reserve).
            let start = adapterFilesReady(on: move.to, adapter: workload[i].adapter, at: now)
            moves[m].filesReady = start
            if config.migration == .kv {
                // First stage: the full blocks it holds now, copied while it keeps decoding.
                let full = scheduler(move.from, { $0.request(RequestID(i))!.computed }) / shape.blockSize
                moves[m].stages = 1
                moves[m].stageBlocks = full
                queue.push(.copyStage(m), at: start + cost.transferSeconds(bytes: full * shape.bytesPerBlock))
            } else {
                deliver(move.from, .stop(m))
            }
        }
    }

    /// A pre-copy stage ended: copy the blocks filled since, or stop the request when few are left.
    mutating func copyStage(_ m: Int) {
        let move = moves[m]
        hash.mix(7)
        hash.mix(m)
        guard owner(move.request) == move.from, let q = scheduler(move.from, { $0.request(RequestID(move.request)) }) else {
            moving[move.request] = nil
            return
        }
        moves[m].sentBlocks = move.stageBlocks
        let full = q.computed / shape.blockSize
        let remaining = full - move.stageBlocks
        if remaining <= config.stopBlocks || move.stages >= config.maxStages {
            deliver(move.from, .stop(m))
        } else {
            moves[m].stages += 1
            moves[m].stageBlocks = full
            queue.push(.copyStage(m), at: now + cost.transferSeconds(bytes: remaining * shape.bytesPerBlock))
        }
    }
}

/// Where each adapter is resident or has requests in `SimulationRun.statusLoads`, kept in step with it, so that
/// dLoRA dispatch finds an adapter's replicas without looking it up in all 1,000 replicas' sets and dictionaries
/// (`DLoRAProactive.choose(adapter:presence:replicas:)`; those lookups were the largest cost of dispatch). A
/// status refresh updates it from what changed: the adapters loaded and evicted since the last status, and the
/// adapters with requests (re-indexing every resident adapter at every poll grew with the resident sets).
struct PresenceIndex {
    /// Per adapter key: its entries, in no particular order.
    private var byAdapter: [[AdapterPresence]]
    /// Per replica: adapter key → the position of its entry in `byAdapter[key]`.
    private var slots: [[Int: Int]]
    /// Per replica: the adapter keys whose entry counts requests (> 0).
    private var counted: [[Int]]

    init(adapters: Int, replicas: Int) {
        byAdapter = Array(repeating: [], count: adapters)
        slots = Array(repeating: [:], count: replicas)
        counted = Array(repeating: [], count: replicas)
    }

    func entries(_ adapter: Int) -> [AdapterPresence] { byAdapter[adapter] }

    /// One more request for `adapter` on replica `r` (dispatch sent it there).
    mutating func addRequest(_ adapter: Int, at r: Int) {
        let k = slot(adapter, r)
        if byAdapter[adapter][k].requests == 0 { counted[r].append(adapter) }
        byAdapter[adapter][k].requests += 1
    }

    /// Replica `r`'s entries rebuilt from its load (adapter names mapped to keys by `ids`; the base model and
    /// unknown names are not indexed: dispatch for them looks the loads up itself).
    mutating func rebuild(_ r: Int, from load: ReplicaLoad, ids: [String: Int]) {
        for (a, k) in slots[r] { byAdapter[a][k].resident = false }
        var requests: [(key: Int, counts: AdapterCounts)] = []
        for (name, counts) in load.perAdapter { if let a = ids[name] { requests.append((a, counts)) } }
        setRequests(r, requests)
        for name in load.residentAdapters { if let a = ids[name] { byAdapter[a][slot(a, r)].resident = true } }
        for (a, k) in slots[r] where !byAdapter[a][k].resident && byAdapter[a][k].requests == 0 { remove(a, at: r) }
    }

    /// A new status of replica `r`: `changes` are the adapters loaded (true) and evicted (false) since its last
    /// status, in order; `requests` its requests per adapter key now (every key with requests; keys < 0 skipped).
    mutating func refresh(_ r: Int, changes: [(key: Int, loaded: Bool)], requests: [(key: Int, counts: AdapterCounts)]) {
        for (a, loaded) in changes where a >= 0 {
            if loaded {
                byAdapter[a][slot(a, r)].resident = true
            } else if let k = slots[r][a] {
                byAdapter[a][k].resident = false
                if byAdapter[a][k].requests == 0 { remove(a, at: r) }
            }
        }
        setRequests(r, requests)
    }

    /// The request counts at `r` replaced by `requests`; entries left neither resident nor with requests go.
    private mutating func setRequests(_ r: Int, _ requests: [(key: Int, counts: AdapterCounts)]) {
        let before = counted[r]
        counted[r].removeAll(keepingCapacity: true)
        for a in before { if let k = slots[r][a] { byAdapter[a][k].requests = 0 } }
        for (a, counts) in requests where a >= 0 && counts.total > 0 {
            byAdapter[a][slot(a, r)].requests = counts.total
            counted[r].append(a)
        }
        for a in before {
            if let k = slots[r][a], byAdapter[a][k].requests == 0, !byAdapter[a][k].resident { remove(a, at: r) }
        }
    }

    /// The position of adapter `a`'s entry at replica `r`, made (not resident, no requests) if it has none.
    private mutating func slot(_ a: Int, _ r: Int) -> Int {
        if let k = slots[r][a] { return k }
        let k = byAdapter[a].count
        byAdapter[a].append(AdapterPresence(position: r, resident: false, requests: 0))
        slots[r][a] = k
        return k
    }

    /// Drops adapter `a`'s entry at replica `r`; the adapter's last entry takes its place.
    private mutating func remove(_ a: Int, at r: Int) {
        guard let k = slots[r].removeValue(forKey: a) else { return }
        let last = byAdapter[a].removeLast()
        guard k < byAdapter[a].count else { return }
        byAdapter[a][k] = last
        slots[last.position][a] = k
    }

    /// Whether the index says what `loads` say (for the tests): every resident adapter and every adapter with
    /// requests, and nothing else.
    func matches(_ loads: [ReplicaLoad], names: [String]) -> Bool {
        var expected: [[AdapterPresence]] = Array(repeating: [], count: byAdapter.count)
        for (r, load) in loads.enumerated() {
            for (a, name) in names.enumerated() {
                let resident = load.residentAdapters.contains(name)
                let requests = load.perAdapter[name]?.total ?? 0
                if resident || requests > 0 { expected[a].append(AdapterPresence(position: r, resident: resident, requests: requests)) }
            }
        }
        return expected.indices.allSatisfy { a in byAdapter[a].sorted { $0.position < $1.position } == expected[a] }
    }
}
