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
        let target: Int
        if statusLoads != nil {
            target = dispatcher.choose(adapter: name, promptTokens: request.promptTokens, replicas: statusLoads!) ?? 0
        } else {
            let loads = dispatchLoads()
            target = dispatcher.choose(adapter: name, promptTokens: request.promptTokens, replicas: loads) ?? 0
        }
        hash.mix(5)
        hash.mix(i)
        hash.mix(target)
        replicas[target].dispatchedSinceStatus[name, default: 0] += 1
        if statusLoads != nil { statusLoads![target].perAdapter[name, default: AdapterCounts()].waiting += 1 }
        if config.requestOverheadSeconds > 0 {
            // In transit (HTTP, tokenization, relay): the replica sees it when it lands.
            queue.push(.delivered(i, replica: target), at: now + config.requestOverheadSeconds)
        } else {
            deliver(target, .add(i, kv: nil))
        }
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
        if replicas.allSatisfy({ $0.status != nil }) { statusLoads = loads }
        return loads
    }

    mutating func refreshStatus(_ r: Int) {
        let l = load(r, includeRequests: false)
        replicas[r].status = l
        replicas[r].dispatchedSinceStatus.removeAll()
        if statusLoads != nil { statusLoads![r] = l }
    }

    /// A replica's status as `dlora serve` reports it (ReplicaControl's EngineView) and the router maps it
    /// (ClusterRouter.loads): per-adapter waiting/running counts, resident adapters, free blocks, the decode
    /// step its cost model predicts at the current batch, the merged/unmerged factor at a full batch; with
    /// `includeRequests`, its running requests with at least `migrationMinRemainingTokens` left for the planner
    /// (the others' remaining work is pinned).
    func load(_ r: Int, includeRequests: Bool) -> ReplicaLoad {
        // Read in place (the replica, its scheduler and its requests are not copied).
        replicas.withUnsafeBufferPointer { load(r, of: $0[r], includeRequests: includeRequests) }
    }

    private func load(_ r: Int, of replica: borrowing Replica, includeRequests: Bool) -> ReplicaLoad {
        let costs = replica.scheduler.policy.config.costs
        var per: [String: AdapterCounts] = [:]
        var running = 0
        var distinct = Set<Int>()
        replica.scheduler.forEachLiveRequest { q in
            let name = q.adapter == Request.base ? "" : names[q.adapter]
            if q.status == .running {
                running += 1
                if q.adapter != Request.base { distinct.insert(q.adapter) }
                per[name, default: AdapterCounts()].running += 1
            } else {
                per[name, default: AdapterCounts()].waiting += 1
            }
        }
        // Requests in the inbox are queued on the replica already (the engine takes them at the next step).
        for case .add(let i, _) in replica.inbox { per[names[workload[i].adapter], default: AdapterCounts()].waiting += 1 }
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
            let r = 0.5 * (rates[names[a]] ?? 0) + 0.5 * Double(arrivalCounts[a]) / config.placementPeriod
            if r > 1e-3 { next[names[a]] = r }
            arrivalCounts[a] = 0
        }
        rates = next
        guard !rates.isEmpty, var d = dispatcher as? DLoRAProactive else { return }
        d.updatePlacement(rates: rates, replicas: dispatchLoads())
        dispatcher = d
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
            guard owner[i] == move.from, moving[i] == nil, scheduler(move.from, { $0.request(RequestID(i))?.status == .running }) else { continue }
            let m = moves.count
            moves.append(Move(request: i, from: move.from, to: move.to, kv: config.migration == .kv))
            moving[i] = m
            hash.mix(6)
            hash.mix(i)
            hash.mix(move.to)
            if config.migration == .kv {
                // First stage: the full blocks it holds now, copied while it keeps decoding.
                let full = scheduler(move.from, { $0.request(RequestID(i))!.computed }) / shape.blockSize
                moves[m].stages = 1
                moves[m].stageBlocks = full
                queue.push(.copyStage(m), at: now + cost.transferSeconds(bytes: full * shape.bytesPerBlock))
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
        guard owner[move.request] == move.from, let q = scheduler(move.from, { $0.request(RequestID(move.request)) }) else {
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
