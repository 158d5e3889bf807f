import ClusterPolicy
import Scheduling

/// Which router dispatch policy runs (`ClusterPolicy`'s, as `dlora router --dispatch` names them).
public enum SimDispatch: String, CaseIterable, Sendable {
    case roundRobin = "round-robin"
    /// Round-robin over each adapter's replicas under a static placement made once from the whole workload's
    /// per-adapter rates (`PlacedRoundRobin`): our reading of the baseline in dLoRA's Fig 11. Simulator only.
    case roundRobinPlaced = "round-robin-placed"
    case leastLoaded = "least-loaded"
    case loraAffinity = "lora-affinity"
    case dlora
}

/// Reactive migration: off, or on with moved requests recomputing their K/V at the destination (dLoRA's own)
/// or copying it in stages while they keep decoding (Llumnix's pre-copy; the stall is the last stage).
public enum SimMigration: String, CaseIterable, Sendable {
    case off, recompute, kv
}

public struct SimulationConfig: Sendable {
    public var replicas: Int
    public var cost: any ReplicaCostModel
    public var policy: BatchingPolicyKind
    public var dispatch: SimDispatch
    public var migration: SimMigration
    /// Trigger and planner settings; `periodSeconds` is the migration loop's period.
    public var migrationConfig = MigrationConfiguration()
    /// How often the router reads the replicas' status (`dlora router --poll-ms`, 200 ms); 0: dispatch sees
    /// every replica's state as it is at that instant.
    public var pollInterval = 0.2
    /// Seconds between a request's arrival at the router and its arrival in the replica's queue: on the real
    /// system the HTTP parse, tokenization and the router's relay (bench/simulator-validate.sh measures it).
    /// 0 (the default) delivers at once, as before.
    public var requestOverheadSeconds = 0.0
    /// Adapter files read into a replica's host memory when it first gets a request for the adapter (and again
    /// after an eviction from its host cache), before the request reaches the engine's queue
    /// (`AdapterFileModel`). nil (the default): all adapters' files in host memory from the start.
    public var adapterFiles: AdapterFileModel?
    /// How often dLoRA dispatch re-places adapters from their smoothed arrival rates (the router's 5 s).
    public var placementPeriod = 5.0
    /// dLoRA dispatch's settings (its placement starts empty): the router's by default, leftovers counted as a
    /// fraction of a batch step (`fractionalLeftovers`; false: the artifact's floor), no adapter-slot bound, a
    /// placement slack of one decode step, no placement hysteresis.
    public var dloraDispatch = DLoRAProactive(fractionalLeftovers: true)
    /// dLoRA dispatch finds an adapter's replicas from an index kept with the polled statuses
    /// (`PresenceIndex`); false: it looks the adapter up in every replica's status, as the router does. The same
    /// choices either way (tested); the index is what makes dispatch cheap at 1,000 replicas.
    public var indexedDispatch = true
    /// Running requests with fewer tokens left are never moved (the router's `migrationMinRemainingTokens`).
    public var migrationMinRemainingTokens = 16
    /// Adapter i has rank `adapterRanks[i % count]`.
    public var adapterRanks = [16]
    /// SLO on a request's latency per generated token, seconds.
    public var slo = 0.5
    /// Keep every iteration's `SchedulerOutput` (cross-checks; memory grows with the run).
    public var recordSteps = false
    /// K/V pre-copy: at most this many stages; the request stops once at most `stopBlocks` full blocks are
    /// left to copy (the router's rule, docs/design/cluster.md).
    public var maxStages = 3
    public var stopBlocks = 2
    /// Simulated seconds after which the run stops (requests not finished by then are reported).
    public var timeLimit = Double.infinity
    /// Threads that simulate the replicas between two polls of their status (docs/design/simulator.md,
    /// "Parallel replicas"): the router's dispatch sees only polled statuses, so the replicas are independent
    /// from one poll to the next. Used when the router polls (`pollInterval` > 0), migration is off and no
    /// iteration is recorded (`recordSteps`, `onStep`); other runs are sequential. The same requests, records
    /// and summary as one thread (tested), except `events` and `eventLogHash`, which log a parallel run's own order.
    public var threads = 1
    /// Each request goes to the replica its `SimRequest.replica` names (a recorded run's router decisions) instead
    /// of the one the dispatch policy picks; the policy still runs on every arrival, so its state (placement
    /// rates, the polled loads it keeps) evolves as it would. Isolates the replicas' simulation from dispatch
    /// decisions that hang on when the last status poll landed (docs/design/simulator.md).
    public var replayDispatch = false
    /// Cross-replica interference on one machine (docs/design/simulator.md, "Cross-replica interference"): replicas
    /// that share cores, caches and memory bandwidth slow each other down. An iteration's forward pass is priced
    /// × (1 + s·b) / (1 + s·u), where b is the share of it the other replicas are expected to spend inside an
    /// iteration (one with work beyond its iteration in progress: all of it; else until that iteration ends),
    /// s = `coRunSlowdown` (0.06: 6 % slower beside busy replicas than alone) and u = `coRunBaseline`, the mean
    /// share the cost model was calibrated at (its price holds there). 0 (the default): every iteration at its price.
    /// A run with interference is sequential (its replicas' iterations depend on each other's timing).
    public var coRunSlowdown = 0.0
    public var coRunBaseline = 0.0

    /// The run can simulate its replicas in parallel (`threads`): the router polls, nothing migrates, no iteration is
    /// recorded, the replicas do not slow each other down. (A run with an `onStep` callback stays sequential too.)
    public var parallelizable: Bool { pollInterval > 0 && migration == .off && !recordSteps && coRunSlowdown == 0 }

    public init(replicas: Int, cost: any ReplicaCostModel, policy: BatchingPolicyKind = .dlora, dispatch: SimDispatch = .dlora,
                migration: SimMigration = .off) {
        self.replicas = replicas
        self.cost = cost
        self.policy = policy
        self.dispatch = dispatch
        self.migration = migration
    }

    public var problem: String? {
        if replicas < 1 { return "there must be at least one replica" }
        if adapterRanks.isEmpty || adapterRanks.contains(where: { $0 < 1 }) { return "adapter ranks must be positive" }
        if !(slo > 0) { return "the SLO must be positive" }
        if !(pollInterval >= 0) || !(placementPeriod > 0) || !(migrationConfig.periodSeconds > 0) { return "periods must be positive" }
        if threads < 1 { return "threads must be at least 1" }
        if !(coRunSlowdown >= 0 && coRunSlowdown <= 10) { return "the co-run slowdown must be in [0, 10]" }
        if !(coRunBaseline >= 0 && coRunBaseline <= 1) { return "the co-run baseline must be a share in [0, 1]" }
        if let p = adapterFiles?.problem { return p }
        return nil
    }
}
