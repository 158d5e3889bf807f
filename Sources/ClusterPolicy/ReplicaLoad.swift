/// What the cluster policies see of the replicas: plain values the router builds from each replica's status
/// report and the simulator builds from its own state. Nothing here reads a clock or the network
/// (shared/DESIGN.md, "Modules": `ClusterPolicy` is pure).

/// Waiting and running requests of one adapter on one replica.
public struct AdapterCounts: Sendable, Equatable {
    public var waiting: Int
    public var running: Int

    public init(waiting: Int = 0, running: Int = 0) {
        self.waiting = waiting
        self.running = running
    }

    /// Requests of the adapter the replica holds (queued or in the batch).
    public var total: Int { waiting + running }
}

/// One running request as the migration planner sees it.
public struct RequestInfo: Sendable, Equatable {
    /// The router's stable id of the request.
    public var id: UInt64
    /// Adapter name; "" is the base model (needs no adapter slot and no load).
    public var adapter: String
    /// Prompt plus tokens generated so far.
    public var tokens: Int
    /// KV blocks the request holds now (what a destination must have free to take it).
    public var kvBlocks: Int
    /// Tokens the request is still expected to generate.
    public var remainingEstimate: Int
    /// Seconds of its replica's time the request is still expected to take (what the planner balances).
    public var remainingSeconds: Double

    public init(id: UInt64, adapter: String, tokens: Int, kvBlocks: Int, remainingEstimate: Int, remainingSeconds: Double) {
        self.id = id
        self.adapter = adapter
        self.tokens = tokens
        self.kvBlocks = kvBlocks
        self.remainingEstimate = remainingEstimate
        self.remainingSeconds = remainingSeconds
    }
}

/// What a policy sees of one replica.
public struct ReplicaLoad: Sendable, Equatable {
    /// Index of the replica in the router's list; policies answer with it.
    public var id: Int
    public var healthy: Bool
    /// Being emptied (Llumnix: "infinite" virtual usage): never chosen by dispatch, never a migration
    /// destination, and the migration planner moves its requests away first.
    public var draining: Bool
    public var kvBlocksTotal: Int
    public var kvBlocksFree: Int
    public var blockSize: Int
    /// Most adapters it can hold resident at once (GIE's `max_lora`).
    public var adapterSlots: Int
    /// Adapters resident (active) on it.
    public var residentAdapters: Set<String> { didSet { tally() } }
    /// Waiting and running requests per adapter name ("" = base model).
    public var perAdapter: [String: AdapterCounts] {
        get { _perAdapter }
        set {
            _perAdapter = newValue
            tally()
        }
        // In place, as the stored property with `didSet` was (a `get`/`set` pair would copy the dictionary).
        _modify {
            yield &_perAdapter
            tally()
        }
    }
    private var _perAdapter: [String: AdapterCounts]
    /// Estimated seconds of one decode step at its current batch (from its step-cost model).
    public var decodeStepSeconds: Double
    /// Merged step time over unmerged step time: the cost of a full same-adapter batch relative to a mixed
    /// one (the dLoRA artifact's 0.6; profiled 15 ms / 27 ms on Llama-7B).
    public var mergedCostFactor: Double
    /// B, the batch size of the dLoRA dispatch formula.
    public var maxBatch: Int { didSet { tally() } }
    /// Estimated seconds to load an adapter that is not resident (bytes / bandwidth), per adapter name.
    public var adapterLoadSeconds: [String: Double]
    /// Load time of an adapter missing from `adapterLoadSeconds`.
    public var defaultAdapterLoadSeconds: Double
    /// Its running requests, for migration planning (may be empty for dispatch-only use).
    public var running: [RequestInfo]
    /// Work (seconds) that stays on the replica whatever the planner does, e.g. its waiting queue.
    public var pinnedWorkSeconds: Double

    public init(id: Int, healthy: Bool = true, draining: Bool = false, kvBlocksTotal: Int, kvBlocksFree: Int,
                blockSize: Int = 16, adapterSlots: Int, residentAdapters: Set<String> = [],
                perAdapter: [String: AdapterCounts] = [:], decodeStepSeconds: Double = 0.03,
                mergedCostFactor: Double = 0.6, maxBatch: Int = 32, adapterLoadSeconds: [String: Double] = [:],
                defaultAdapterLoadSeconds: Double = 0.05, running: [RequestInfo] = [], pinnedWorkSeconds: Double = 0) {
        self.id = id
        self.healthy = healthy
        self.draining = draining
        self.kvBlocksTotal = kvBlocksTotal
        self.kvBlocksFree = kvBlocksFree
        self.blockSize = blockSize
        self.adapterSlots = adapterSlots
        self.residentAdapters = residentAdapters
        _perAdapter = perAdapter
        self.decodeStepSeconds = decodeStepSeconds
        self.mergedCostFactor = mergedCostFactor
        self.maxBatch = maxBatch
        self.adapterLoadSeconds = adapterLoadSeconds
        self.defaultAdapterLoadSeconds = defaultAdapterLoadSeconds
        self.running = running
        self.pinnedWorkSeconds = pinnedWorkSeconds
        tally()
    }

    // Sums over `perAdapter` (and how many of its adapters are resident), kept as they change: dispatch reads
    // them for every replica on every arrival, and summing there made a dispatch cost O(requests queued in the
    // cluster) (the simulator's profile at 1,000 replicas). With B = max(1, maxBatch):
    /// Σ waiting.
    public private(set) var waitingRequests = 0
    /// Σ running.
    public private(set) var runningRequests = 0
    /// Σ ⌊total / B⌋: the full same-adapter batches it holds.
    public private(set) var fullBatches = 0
    /// Σ total mod B: the requests left over from full batches.
    public private(set) var leftoverRequests = 0
    /// Adapters (the base model not counted: it takes no slot) with requests left over from full batches
    /// (total mod B ≠ 0): the distinct adapters its mixed batches must serve.
    public private(set) var leftoverAdapters = 0
    /// Resident adapters with requests here (what `canLoad` cannot evict).
    private var busyResidentAdapters = 0
    /// `residentAdapters.count`, kept with the load: `canLoad` reads it for every replica on every arrival, and
    /// reading the set's own count touched its storage (a cache miss per replica in the simulator's profile).
    private var residentCount = 0

    private mutating func tally() {
        let b = max(1, maxBatch)
        var waiting = 0, running = 0, full = 0, left = 0, leftAdapters = 0, busy = 0
        for (name, counts) in perAdapter {
            waiting += counts.waiting
            running += counts.running
            full += counts.total / b
            left += counts.total % b
            if !name.isEmpty && counts.total % b != 0 { leftAdapters += 1 }
            if counts.total != 0 && residentAdapters.contains(name) { busy += 1 }
        }
        waitingRequests = waiting
        runningRequests = running
        fullBatches = full
        leftoverRequests = left
        leftoverAdapters = leftAdapters
        busyResidentAdapters = busy
        residentCount = residentAdapters.count
    }

    /// Adds `count` (≥ 0) waiting requests for `adapter`: `perAdapter[adapter].waiting += count`, with the sums
    /// updated for that one adapter instead of recounted over all of them (what the router does for every
    /// request it dispatches until the replica's next status; recounting hashed every adapter's name).
    public mutating func addWaiting(adapter: String, count: Int = 1) {
        precondition(count >= 0, "addWaiting takes a non-negative count")
        let b = max(1, maxBatch)
        let old = _perAdapter[adapter, default: AdapterCounts()]
        let c = old.total
        _perAdapter[adapter, default: AdapterCounts()].waiting += count
        waitingRequests += count
        fullBatches += (c + count) / b - c / b
        leftoverRequests += (c + count) % b - c % b
        if !adapter.isEmpty { leftoverAdapters += ((c + count) % b != 0 ? 1 : 0) - (c % b != 0 ? 1 : 0) }
        if c == 0 && count > 0 && residentAdapters.contains(adapter) { busyResidentAdapters += 1 }
    }

    /// Dispatch may send it new requests.
    public var usable: Bool { healthy && !draining }

    /// Fraction of its KV blocks in use (0 when it reports no blocks).
    public var kvUsage: Double {
        kvBlocksTotal > 0 ? Double(kvBlocksTotal - kvBlocksFree) / Double(kvBlocksTotal) : 0
    }

    /// Requests it holds, queued or running.
    public var requests: Int { waitingRequests + runningRequests }

    /// Seconds to load `adapter` here: 0 if resident or the base model.
    public func loadSeconds(_ adapter: String) -> Double {
        if adapter.isEmpty || residentAdapters.contains(adapter) { return 0 }
        return adapterLoadSeconds[adapter] ?? defaultAdapterLoadSeconds
    }

    /// The adapter could be made resident without waiting: it is resident, or a slot is free, or a resident
    /// adapter is idle and can be evicted (the artifact's "swap in for an idle one").
    public func canHost(_ adapter: String) -> Bool {
        adapter.isEmpty || residentAdapters.contains(adapter) || canLoad
    }

    /// A slot is free, or a resident adapter is idle and can be evicted: a new adapter can be made resident now.
    /// (From the tally: dispatch asks it of every replica per request, and walking the resident adapters there
    /// grew with the adapters a replica keeps resident.)
    var canLoad: Bool {
        adapterSlots > 0 && (residentCount < adapterSlots || busyResidentAdapters < residentCount)
    }
}
