import ClusterPolicy
import Scheduling

/// A discrete-event simulation of `replicas` replicas behind a router. Each replica is a real
/// `Scheduling.Scheduler`, driven exactly as `EngineCore.step()` drives it — schedule(now:), carry out the
/// actions, one forward pass, sample, update, take the between-iteration actions — with every part taking the
/// seconds the cost model says; requests dispatched to it wait in its inbox until the iteration in progress
/// ends, as submissions wait for the engine thread. The router runs `ClusterPolicy`'s dispatch over
/// `ReplicaLoad`s built as `ClusterRouter.loads()` builds them from the status a replica reports, dLoRA's
/// placement loop, and the reactive migration loop (trigger, planner, moves by recompute or staged K/V copy).
public enum Simulation {
    /// `onStep` gets each iteration as it is simulated (a step log written as it goes: a long run's iterations do
    /// not fit in memory as `recordSteps` keeps them).
    public static func run(_ config: SimulationConfig, workload: [SimRequest], onStep: ((StepRecord) -> Void)? = nil) -> SimulationResult {
        precondition(config.problem == nil, config.problem ?? "")
        precondition(!config.replayDispatch || workload.allSatisfy { ($0.replica ?? -1) >= 0 && $0.replica! < config.replicas },
                     "replayed dispatch needs every request's replica")
        var run = SimulationRun(config: config, workload: workload)
        run.onStep = onStep
        run.run()
        return run.result()
    }
}

struct SimulationRun {
    enum Event: Sendable {
        case arrival(Int)
        case stepDone(Int)
        case poll
        case placement
        case migrationCheck
        case copyStage(Int)
        case landed(Int)
        /// A dispatched request reaches its replica after `requestOverheadSeconds`.
        case delivered(Int, replica: Int)
    }

    enum InboxItem {
        /// A request to queue (new, or resumed after a move with `kv` positions of K/V to adopt).
        case add(Int, kv: Int?)
        /// A move's stop: take the request out between iterations.
        case stop(Int)
    }

    struct Replica {
        var scheduler: Scheduler
        var busy = false
        var current: SchedulerOutput?
        var actionSeconds = 0.0
        var forwardSeconds = 0.0
        /// When its iteration in progress ends (while `busy`).
        var stepEnds = 0.0
        var mergeSeconds: Double?
        var unmergeSeconds: Double?
        var merged: Int?
        var inbox: [InboxItem] = []
        /// Seconds of actions carried out between iterations (frees, an idle unmerge, K/V adoption), charged
        /// to the next iteration.
        var carrySeconds = 0.0
        var maxBlocksUsed = 0
        /// Names of the adapters resident in its scheduler, kept from the load and evict actions it carries out
        /// (its status reports them; rebuilding the set from the scheduler at every poll grew with the run, as
        /// a replica keeps every adapter it served resident until memory runs short).
        var residentNames: Set<String> = []
        /// The adapters loaded (true) and evicted (false) since its last status, in order (for `PresenceIndex`).
        var residentChanges: [(key: Int, loaded: Bool)] = []
        /// The last status the router read, and requests (per adapter name) dispatched since.
        var status: ReplicaLoad?
        var dispatchedSinceStatus: [String: Int] = [:]
        /// Its adapter registry's host cache and loader (`SimulationConfig.adapterFiles`).
        var files = AdapterFileCache()
    }

    struct Move {
        let request: Int
        let from: Int
        let to: Int
        let kv: Bool
        var stages = 0
        var stageBlocks = 0
        var sentBlocks = 0
        var kvComputed: Int?
        /// When the destination has the adapter's files (its reservation loaded them; `adapterFiles`).
        var filesReady = 0.0
    }

    let config: SimulationConfig
    let cost: any ReplicaCostModel
    let shape: ReplicaShape
    let workload: [SimRequest]
    let profiles: [AdapterProfile]
    let names: [String]
    let typicalLoadSeconds: Double
    var queue = EventQueue<Event>()
    var replicas: [Replica] = []
    var dispatcher: any DispatchPolicy
    var records: [RequestRecord]
    /// Per request, what every iteration reads and writes, in one 16-byte entry: the batch's requests are spread
    /// over millions, and separate arrays (owner, tokens generated, output length, first token, stopped) cost a
    /// cache miss each per sampled token.
    var progress: [Progress]
    var moving: [Int?]
    var stoppedAt: [Double?]
    var moves: [Move] = []
    var resolved = 0
    var now = 0.0
    var events = 0
    var hash = EventLogHash()
    var invariants = InvariantReport()
    var stepLog: [StepRecord] = []
    var onStep: ((StepRecord) -> Void)?
    var arrivalCounts: [Int]
    var rates: [String: Double] = [:]
    /// What dispatch sees, once every replica has reported (`dispatchLoads`).
    var statusLoads: [ReplicaLoad]?
    /// Where each adapter is in `statusLoads` (dLoRA dispatch's index).
    var presence: PresenceIndex
    /// Adapter name → key (`names`' inverse).
    let adapterIDs: [String: Int]
    /// Tests: check `presence` against `statusLoads` after every change (`indexChecks`, `indexMismatches`).
    var verifyIndex = false
    var indexChecks = 0
    var indexMismatches = 0
    var stallSum = 0.0
    var stallCount = 0
    var migrationsDone = 0
    /// Parallel runs (`runParallel`): the arrivals dispatched in the current window, per lane (request, replica,
    /// when it reaches the replica's queue), and the replica each request was dispatched to (-1: not yet). nil /
    /// empty otherwise.
    var laneInputs: [[(request: Int, replica: Int, at: Double)]]?
    var dispatchedTo: [Int32] = []
    var migrationChecks = 0
    var kvPressureTriggers = 0
    var imbalanceTriggers = 0

    init(config: SimulationConfig, workload: [SimRequest]) {
        self.config = config
        cost = config.cost
        shape = config.cost.shape
        self.workload = workload
        let adapterCount = (workload.map(\.adapter).max() ?? -1) + 1
        profiles = (0..<adapterCount).map { config.cost.adapterProfile(key: $0, rank: config.adapterRanks[$0 % config.adapterRanks.count]) }
        names = (0..<adapterCount).map { "adapter-\($0)" }
        adapterIDs = Dictionary(uniqueKeysWithValues: names.enumerated().map { ($1, $0) })
        presence = PresenceIndex(adapters: adapterCount, replicas: config.replicas)
        let meanBytes = profiles.isEmpty ? 0 : profiles.reduce(0) { $0 + $1.bytes } / profiles.count
        typicalLoadSeconds = config.cost.reportedAdapterLoadSeconds(bytes: meanBytes)
        var schedulerConfig = shape.schedulerConfig(policy: config.policy, costs: config.cost.schedulerPrior)
        schedulerConfig.switchPrior = config.cost.switchPrior
        replicas = (0..<config.replicas).map { _ in Replica(scheduler: Scheduler(config: schedulerConfig)) }
        dispatcher = switch config.dispatch {
        case .roundRobin, .roundRobinPlaced: RoundRobin()
        case .leastLoaded: LeastLoaded()
        case .loraAffinity: LoRAAffinity()
        case .dlora: config.dloraDispatch
        }
        records = workload.map {
            RequestRecord(id: $0.id, adapter: $0.adapter, arrival: $0.arrival, promptTokens: $0.promptTokens, firstToken: nil, finish: nil,
                          finishReason: nil, tokens: 0, replica: nil, migrations: 0, rejected: false)
        }
        progress = workload.map { Progress(outputTokens: Int32(clamping: $0.outputTokens)) }
        moving = Array(repeating: nil, count: workload.count)
        stoppedAt = Array(repeating: nil, count: workload.count)
        arrivalCounts = Array(repeating: 0, count: adapterCount)
        invariants.numBlocks = shape.numBlocks
        invariants.maxBlocksUsed = Array(repeating: 0, count: config.replicas)
        if config.dispatch == .roundRobinPlaced { dispatcher = PlacedRoundRobin(placement: staticPlacement()) }
    }

    var unresolved: Bool { resolved < workload.count }

    /// The replica request `i` runs on (nil: none, between replicas or resolved).
    func owner(_ i: Int) -> Int? { progress[i].owner < 0 ? nil : Int(progress[i].owner) }
    /// Tokens request `i` has generated so far.
    func generated(_ i: Int) -> Int { Int(progress[i].generated) }

    mutating func run() {
        guard let first = workload.first else { return }
        queue.push(.arrival(0), at: first.arrival)
        if config.pollInterval > 0 { queue.push(.poll, at: first.arrival) }
        if config.dispatch == .dlora { queue.push(.placement, at: first.arrival + config.placementPeriod) }
        if config.migration != .off { queue.push(.migrationCheck, at: first.arrival + config.migrationConfig.periodSeconds) }
        let lanes = min(config.threads, config.replicas)
        let parallel = lanes > 1 && config.parallelizable && onStep == nil && !verifyIndex
        if parallel { dispatchedTo = Array(repeating: -1, count: workload.count) }
        while let (t, event) = queue.pop(), tick(t) {
            handle(event)
            // Once dispatch reads polled statuses only, the replicas go to their lanes.
            if parallel, statusLoads != nil, case .poll = event { return runParallel(lanes: lanes) }
        }
    }

    /// The clock moves to an event's time `t`, which is logged; false (and nothing done) past the time limit.
    mutating func tick(_ t: Double) -> Bool {
        if t < now { invariants.timeMonotone = false }
        if t > config.timeLimit { return false }
        now = t
        events += 1
        hash.mix(t)
        return true
    }

    mutating func handle(_ event: Event) {
        switch event {
        case .arrival(let i): arrive(i)
        case .stepDone(let r): stepDone(r)
        case .poll:
            hash.mix(1)
            for r in replicas.indices { refreshStatus(r) }
            if unresolved { queue.push(.poll, at: now + config.pollInterval) }
        case .placement:
            hash.mix(2)
            place()
            if unresolved { queue.push(.placement, at: now + config.placementPeriod) }
        case .migrationCheck:
            hash.mix(3)
            migrate()
            if unresolved { queue.push(.migrationCheck, at: now + config.migrationConfig.periodSeconds) }
        case .copyStage(let m): copyStage(m)
        case .landed(let m):
            hash.mix(4)
            hash.mix(m)
            deliver(moves[m].to, .add(moves[m].request, kv: moves[m].kvComputed))
        case .delivered(let i, let r):
            hash.mix(9)
            hash.mix(i)
            deliver(r, .add(i, kv: nil))
        }
    }

    // MARK: The replicas

    /// Reads replica `r`'s scheduler in place. (A non-mutating call into the Scheduling module through Array's
    /// getter, `replicas[r].scheduler.hasWork`, copies the whole replica first: its scheduler, inbox and status.
    /// Read through an unsafe pointer, the scheduler was still copied before every call into it, as the
    /// compiler cannot rule out a write to that memory during the call: once per sampled request per iteration
    /// in `stepDone`. Exclusive (`inout`) access lets the calls borrow it where it is.)
    mutating func scheduler<T>(_ r: Int, _ body: (inout Scheduler) -> T) -> T {
        body(&replicas[r].scheduler)
    }

    mutating func deliver(_ r: Int, _ item: InboxItem) {
        replicas[r].inbox.append(item)
        if !replicas[r].busy { startStep(r) }
    }

    /// Between iterations: take the moves' stops, then queue the new and resumed requests.
    mutating func takeInbox(_ r: Int) {
        let items = replicas[r].inbox
        replicas[r].inbox.removeAll()
        for item in items {
            switch item {
            case .stop(let m):
                let move = moves[m]
                let i = move.request
                guard owner(i) == r, let q = scheduler(r, { $0.request(RequestID(i)) }) else {
                    moving[i] = nil
                    continue
                }
                let computed = q.computed
                replicas[r].scheduler.finish(RequestID(i), reason: .cancelled)
                replicas[r].carrySeconds += actionSeconds(r, replicas[r].scheduler.takeActions())
                progress[i].owner = -1
                progress[i].stopped = true
                stoppedAt[i] = now
                records[i].migrations += 1
                migrationsDone += 1
                hash.mix(8)
                hash.mix(i)
                if move.kv {
                    // The last stage: what the earlier stages did not copy, while the request is stopped. The
                    // destination adopts at most the positions before its last token (docs/design/cluster.md).
                    let rest = max(0, (computed + shape.blockSize - 1) / shape.blockSize - move.sentBlocks)
                    moves[m].kvComputed = min(computed, workload[i].promptTokens + generated(i) - 1)
                    queue.push(.landed(m), at: now + cost.transferSeconds(bytes: rest * shape.bytesPerBlock))
                } else if move.filesReady > now {
                    queue.push(.delivered(i, replica: move.to), at: move.filesReady)
                } else {
                    deliver(move.to, .add(i, kv: nil))
                }
            case .add(let i, let kv):
                let request = workload[i]
                let id = RequestID(i)
                replicas[r].scheduler.addAdapter(profiles[request.adapter])
                do {
                    try replicas[r].scheduler.add(id, adapter: request.adapter, promptCount: request.promptTokens,
                                                  tokenCount: request.promptTokens + generated(i),
                                                  maxNewTokens: request.outputTokens - generated(i))
                } catch {
                    replicas[r].carrySeconds += actionSeconds(r, replicas[r].scheduler.takeActions())
                    moving[i] = nil
                    records[i].rejected = true
                    resolve(i, replica: r, reason: nil)
                    continue
                }
                progress[i].owner = Int32(r)
                moving[i] = nil
                if let kv, kv > 0, let blocks = replicas[r].scheduler.adoptKV(id, computed: kv) {
                    // The staged K/V goes from host memory into the blocks (EngineCore.adoptKV's copy).
                    replicas[r].carrySeconds += cost.swapSeconds(bytes: blocks.count * shape.bytesPerBlock)
                }
            }
        }
    }

    /// `EngineCore.step()`'s first half: schedule, carry out the actions, start the forward pass.
    mutating func startStep(_ r: Int) {
        takeInbox(r)
        guard scheduler(r, \.hasWork) else {
            replicas[r].carrySeconds += actionSeconds(r, replicas[r].scheduler.takeActions())
            replicas[r].busy = false
            return
        }
        let out = replicas[r].scheduler.schedule(now: now)
        replicas[r].mergeSeconds = nil
        replicas[r].unmergeSeconds = nil
        let actions = replicas[r].carrySeconds + actionSeconds(r, out.actions, timing: true)
        replicas[r].carrySeconds = 0
        // (The scheduler's configured reference: the policy's cost model keeps it as given.)
        let reference = replicas[r].scheduler.config.policy.costs.referenceLoRAParameters
        var forward = out.runs.isEmpty ? 0 : cost.stepSeconds(stepShape(out, reference: reference))
        if config.coRunSlowdown > 0 && forward > 0 && replicas.count > 1 {
            var sum = 0.0
            for o in replicas.indices where o != r && replicas[o].busy { sum += expectedOverlap(o, seconds: forward) }
            let share = sum / Double(replicas.count - 1)
            forward *= (1 + config.coRunSlowdown * share) / (1 + config.coRunSlowdown * config.coRunBaseline)
        }
        replicas[r].busy = true
        replicas[r].current = out
        replicas[r].actionSeconds = actions
        replicas[r].forwardSeconds = forward
        let (used, accounted) = scheduler(r) { ($0.pool.numBlocks - $0.pool.freeCount, $0.requestBlocks + $0.residentAdapterBlocks) }
        if used > invariants.maxBlocksUsed[r] { invariants.maxBlocksUsed[r] = used }
        if accounted != used { invariants.maxBlocksUsed[r] = Int.max }
        hash.mix(9)
        hash.mix(r)
        switch out.mode {
        case .merged(let a): hash.mix(a)
        case .unmerged: hash.mix(-2)
        }
        for run in out.runs {
            hash.mix(run.request.rawValue)
            hash.mix(run.tokens)
        }
        // The number of actions of each kind, in kind order (counted in place: an array of counts was an
        // allocation per iteration).
        for k in 0..<10 {
            var n = 0
            for a in out.actions where Self.kind(a) == k { n += 1 }
            hash.mix(n)
        }
        if config.recordSteps || onStep != nil {
            let record = StepRecord(replica: r, start: now, output: out, actionSeconds: actions, forwardSeconds: forward)
            if config.recordSteps { stepLog.append(record) }
            onStep?(record)
        }
        replicas[r].stepEnds = now + max(actions + forward, 1e-9)
        queue.push(.stepDone(r), at: replicas[r].stepEnds)
    }

    /// The share of the next `seconds` during which busy replica `o` is expected inside an iteration: all of
    /// them when it has work beyond its iteration in progress (requests that do not finish in it, or requests
    /// waiting to be delivered); else until its iteration ends. (`SimulationConfig.coRunSlowdown`.)
    func expectedOverlap(_ o: Int, seconds: Double) -> Double {
        let rest = min(1, max(0, replicas[o].stepEnds - now) / seconds)
        guard rest < 1 else { return 1 }
        if !replicas[o].inbox.isEmpty { return 1 }
        var finishing = 0
        if let out = replicas[o].current {
            for k in out.runs.indices where out.runs[k].samples {
                let i = out.runs[k].request.rawValue
                if Int(progress[i].generated) + 1 >= Int(progress[i].outputTokens) { finishing += 1 }
            }
        }
        return replicas[o].scheduler.liveCount > finishing ? 1 : rest
    }

    struct Progress {
        /// The replica it runs on; -1 for none.
        var owner: Int32 = -1
        var generated: Int32 = 0
        let outputTokens: Int32
        /// It has sampled its first token.
        var started = false
        /// It was stopped for a migration and has not sampled since (its stop time is in `stoppedAt`).
        var stopped = false
    }

    static func kind(_ a: SchedulerAction) -> Int {
        switch a {
        case .loadAdapter: 0
        case .evictAdapter: 1
        case .dropAdapter: 2
        case .swapOut: 3
        case .swapIn: 4
        case .dropSwap: 5
        case .merge: 6
        case .unmerge: 7
        case .free: 8
        }
    }

    /// `EngineCore.step()`'s second half: sample (each request ends at its workload length), update, take the
    /// between-iteration actions; then the next iteration.
    mutating func stepDone(_ r: Int) {
        // (Moved out, not copied: a copy retained each of the output's arrays.)
        guard let out = replicas[r].current.take() else { return }
        if !out.runs.isEmpty {
            var sampled: [SampledToken] = []
            // (By index, reading two fields: iterating the runs copied each one, and the copy's retain of its block
            // table was a cache miss per run, as this replica's memory has gone cold since its iteration began.)
            for k in out.runs.indices where out.runs[k].samples {
                let id = out.runs[k].request
                let p = progress[id.rawValue]
                guard p.owner == Int32(r), scheduler(r, { $0.isLive(id) }) else { continue }
                sampled.append(SampledToken(request: id, endsSequence: p.generated + 1 >= p.outputTokens))
            }
            let report = ExecutionReport(forwardSeconds: replicas[r].forwardSeconds, mergeSeconds: replicas[r].mergeSeconds,
                                         unmergeSeconds: replicas[r].unmergeSeconds)
            let outputs = replicas[r].scheduler.update(out, sampled: sampled, report: report)
            for o in outputs {
                let i = o.request.rawValue
                if o.finish != .error {
                    progress[i].generated += 1
                    if !progress[i].started {
                        progress[i].started = true
                        records[i].firstToken = now
                    }
                    if progress[i].stopped, let s = stoppedAt[i] {
                        stallSum += now - s
                        stallCount += 1
                        stoppedAt[i] = nil
                        progress[i].stopped = false
                    }
                }
                if let f = o.finish { resolve(i, replica: r, reason: f) }
            }
        }
        replicas[r].carrySeconds += actionSeconds(r, replicas[r].scheduler.takeActions())
        replicas[r].busy = false
        startStep(r)
    }

    mutating func resolve(_ i: Int, replica: Int, reason: FinishReason?) {
        if records[i].finish != nil {
            invariants.finishedTwice.append(i)
            return
        }
        records[i].finish = now
        records[i].finishReason = reason
        records[i].tokens = generated(i)
        records[i].replica = replica
        progress[i].owner = -1
        resolved += 1
        hash.mix(10)
        hash.mix(i)
    }

    func stepShape(_ out: SchedulerOutput, reference: Double) -> StepShape {
        var prefill = 0, context = 0, decodeContext = 0
        var lora = 0.0
        for run in out.runs {
            if run.tokens > 1 { prefill += run.tokens } else { decodeContext += run.start + run.tokens }
            context += run.start + run.tokens
            if run.adapter != Request.base { lora += Double(run.tokens) * Double(profiles[run.adapter].loraParameters) / reference }
        }
        return StepShape(mode: out.mode, sequences: out.runs.count, tokens: out.tokens, prefillTokens: prefill, contextTokens: context,
                         decodeContextTokens: decodeContext, distinctAdapters: out.loraSlots.count, loraTokens: out.mode == .unmerged ? lora : 0)
    }

    /// Seconds the engine spends carrying out `actions` (which adapters are resident and merged follows them);
    /// with `timing`, the merge and unmerge seconds are kept for the iteration's `ExecutionReport` (the real
    /// runner times them).
    mutating func actionSeconds(_ r: Int, _ actions: [SchedulerAction], timing: Bool = false) -> Double {
        var total = 0.0
        for a in actions {
            switch a {
            case .loadAdapter(let k):
                total += cost.adapterLoadSeconds(bytes: profiles[k].bytes)
                replicas[r].residentNames.insert(names[k])
                replicas[r].residentChanges.append((k, true))
            case .evictAdapter(let k):
                replicas[r].residentNames.remove(names[k])
                replicas[r].residentChanges.append((k, false))
            case .swapOut(_, let blocks), .swapIn(_, let blocks): total += cost.swapSeconds(bytes: blocks.count * shape.bytesPerBlock)
            case .merge(let k):
                let s = cost.mergeSeconds(profiles[k])
                total += s
                replicas[r].merged = k
                if timing { replicas[r].mergeSeconds = s }
            case .unmerge:
                let s = replicas[r].merged.map { cost.unmergeSeconds(profiles[$0]) } ?? 0
                total += s
                replicas[r].merged = nil
                if timing { replicas[r].unmergeSeconds = s }
            case .dropAdapter, .dropSwap, .free: break
            }
        }
        return total
    }

    // MARK: Results

    func result() -> SimulationResult {
        var inv = invariants
        inv.neverFinished = records.filter { $0.finish == nil }.map(\.id)
        let done = records.filter { $0.finish != nil && !$0.rejected }
        let tokens = done.reduce(0) { $0 + $1.tokens }
        let start = workload.first?.arrival ?? 0
        let end = done.compactMap(\.finish).max() ?? start
        let makespan = max(end - start, 1e-12)
        let latencies = done.compactMap(\.latency).sorted()
        let ttfts = done.compactMap { r in r.firstToken.map { $0 - r.arrival } }.sorted()
        let met = done.filter { ($0.latency ?? .infinity) / Double(max(1, $0.tokens)) <= config.slo }.count
        let stats = replicas.map(\.scheduler.stats)
        let summary = SimulationSummary(
            requests: workload.count, finished: done.count, rejected: records.filter(\.rejected).count, generatedTokens: tokens,
            makespan: makespan, throughput: Double(tokens) / makespan,
            avgLatencyPerToken: latencies.reduce(0, +) / Double(max(1, tokens)), p90Latency: percentile(latencies, 0.9),
            meanTTFT: ttfts.isEmpty ? 0 : ttfts.reduce(0, +) / Double(ttfts.count), p90TTFT: percentile(ttfts, 0.9),
            sloAttainment: workload.isEmpty ? 0 : Double(met) / Double(workload.count),
            steps: stats.reduce(0) { $0 + $1.mergedSteps + $1.unmergedSteps }, modeSwitches: stats.reduce(0) { $0 + $1.modeSwitches },
            preemptions: stats.reduce(0) { $0 + $1.preemptions }, adapterLoads: stats.reduce(0) { $0 + $1.adapterLoads },
            adapterFileLoads: replicas.reduce(0) { $0 + $1.files.loads }, adapterFileEvictions: replicas.reduce(0) { $0 + $1.files.evictions },
            migrations: migrationsDone, migrationChecks: migrationChecks, kvPressureTriggers: kvPressureTriggers,
            imbalanceTriggers: imbalanceTriggers, meanMigrationStall: stallCount > 0 ? stallSum / Double(stallCount) : 0,
            events: events, eventLogHash: hash.value)
        return SimulationResult(records: records, summary: summary, replicaStats: stats, invariants: inv, steps: stepLog)
    }
}
