/// Request dispatch: which replica takes a new request. Every policy skips unhealthy and draining replicas,
/// answers nil when none is left, and breaks ties towards the lower replica id, so that the router and the
/// simulator make the same choice from the same status values.

/// A dispatch policy. `mutating` because some keep state between calls (round-robin's cursor).
public protocol DispatchPolicy: Sendable {
    /// The id of the replica that should take a request for `adapter` ("" = base model) with a prompt of
    /// `promptTokens` tokens, or nil when no replica is healthy and not draining.
    mutating func choose(adapter: String, promptTokens: Int, replicas: [ReplicaLoad]) -> Int?
}

/// The replica with the highest score (ties → lower id), among usable replicas.
func argmaxUsable(_ replicas: [ReplicaLoad], score: (ReplicaLoad) -> Double) -> Int? {
    var best: (id: Int, score: Double)?
    for replica in replicas where replica.usable {
        let s = score(replica)
        if let b = best, !(s > b.score || (s == b.score && replica.id < b.id)) { continue }
        best = (replica.id, s)
    }
    return best?.id
}

/// Round-robin over the usable replicas in list order: the baseline dLoRA's dispatching beats by 3.6×.
public struct RoundRobin: DispatchPolicy {
    /// Position in the replica list to try first on the next call.
    public private(set) var cursor = 0

    public init() {}

    public mutating func choose(adapter: String, promptTokens: Int, replicas: [ReplicaLoad]) -> Int? {
        guard !replicas.isEmpty else { return nil }
        for step in 0..<replicas.count {
            let index = (cursor + step) % replicas.count
            if replicas[index].usable {
                cursor = (index + 1) % replicas.count
                return replicas[index].id
            }
        }
        return nil
    }
}

/// Round-robin under a static adapter placement: a request for a placed adapter goes to the next usable replica
/// of those the adapter is placed on (its own cursor, in id order); the base model, an adapter placed nowhere, or
/// one whose replicas are all unusable, to the next usable replica of all (a shared cursor). What "static
/// adapter placement" means in dLoRA's account of load imbalance: each adapter's requests stay on the replicas
/// chosen for it ahead of time (`DLoRAProactive.placeAdapters` from expected rates), whatever their load.
public struct PlacedRoundRobin: DispatchPolicy {
    /// Adapter name → the ids of the replicas it is placed on, in id order.
    public let placement: [String: [Int]]
    private var cursors: [String: Int] = [:]
    private var fallback = RoundRobin()

    public init(placement: [String: Set<Int>]) {
        self.placement = placement.mapValues { $0.sorted() }
    }

    public mutating func choose(adapter: String, promptTokens: Int, replicas: [ReplicaLoad]) -> Int? {
        if let placed = placement[adapter], !placed.isEmpty {
            let start = cursors[adapter] ?? 0
            for step in 0..<placed.count {
                let k = (start + step) % placed.count
                let id = placed[k]
                // Ids are list positions where the router built the list (the simulator's always are).
                let replica = id < replicas.count && replicas[id].id == id ? replicas[id] : replicas.first { $0.id == id }
                if let replica, replica.usable {
                    cursors[adapter] = (k + 1) % placed.count
                    return id
                }
            }
        }
        return fallback.choose(adapter: adapter, promptTokens: promptTokens, replicas: replicas)
    }
}

/// Llumnix's load-balancing dispatch: to the freest replica, freeness = free KV blocks per request it holds
/// (how many more decode steps its batch can take). A replica holding no request is the freest (ties → lower
/// id). Requests counted are running *and* waiting ones: Llumnix's virtual usage charges queued requests
/// too, and without them a burst between two status reports would all land on the same replica.
public struct LeastLoaded: DispatchPolicy {
    public init() {}

    /// Free KV blocks per request held; +∞ when it holds none.
    public static func freeness(_ replica: ReplicaLoad) -> Double {
        let held = replica.requests
        return held == 0 ? .infinity : Double(replica.kvBlocksFree) / Double(held)
    }

    public func choose(adapter: String, promptTokens: Int, replicas: [ReplicaLoad]) -> Int? {
        argmaxUsable(replicas, score: Self.freeness)
    }
}

/// The Gateway API Inference Extension's endpoint picker as it ships, without the prefix-cache scorer (we
/// have no prefix index): the weighted sum of three scorers, highest total wins (ties → lower id, where GIE's
/// max-score picker draws at random).
/// - LoRA affinity: 1.0 the adapter is resident (active) on the replica, 0.8 it has a free adapter slot
///   (resident plus waiting-only adapters below `adapterSlots`), 0.6 requests for the adapter wait there,
///   else 0. The base model scores 1.0 everywhere.
/// - Queue: (max − waiting) / (max − min) over the candidates' waiting counts; 1 for all when equal.
/// - KV cache: 1 − KV usage.
/// Weights default to 1 each, as in the EPP configuration of GIE's integration tests, whose default
/// profile lists its scorers without weights (a plugin reference without a weight counts 1); published
/// LoRA-heavy profiles weight the affinity higher (docs/design/cluster-policy.md).
public struct LoRAAffinity: DispatchPolicy {
    public var loraWeight: Double
    public var queueWeight: Double
    public var kvCacheWeight: Double

    public init(loraWeight: Double = 1, queueWeight: Double = 1, kvCacheWeight: Double = 1) {
        self.loraWeight = loraWeight
        self.queueWeight = queueWeight
        self.kvCacheWeight = kvCacheWeight
    }

    /// GIE's LoRA-affinity score of `replica` for `adapter`.
    public static func affinity(adapter: String, replica: ReplicaLoad) -> Double {
        if adapter.isEmpty || replica.residentAdapters.contains(adapter) { return 1.0 }
        let waitingOnly = replica.perAdapter.filter { name, counts in
            !name.isEmpty && counts.waiting > 0 && !replica.residentAdapters.contains(name)
        }
        if replica.residentAdapters.count + waitingOnly.count < replica.adapterSlots { return 0.8 }
        if (replica.perAdapter[adapter]?.waiting ?? 0) > 0 { return 0.6 }
        return 0
    }

    /// The weighted score of every usable replica, by id (for tests and logs).
    public func scores(adapter: String, replicas: [ReplicaLoad]) -> [Int: Double] {
        let candidates = replicas.filter(\.usable)
        let waiting = candidates.map(\.waitingRequests)
        guard let low = waiting.min(), let high = waiting.max() else { return [:] }
        var result: [Int: Double] = [:]
        for replica in candidates {
            let queue = high == low ? 1 : Double(high - replica.waitingRequests) / Double(high - low)
            result[replica.id] = loraWeight * Self.affinity(adapter: adapter, replica: replica)
                + queueWeight * queue + kvCacheWeight * (1 - replica.kvUsage)
        }
        return result
    }

    public func choose(adapter: String, promptTokens: Int, replicas: [ReplicaLoad]) -> Int? {
        let byID = scores(adapter: adapter, replicas: replicas)
        return argmaxUsable(replicas) { byID[$0.id] ?? -.infinity }
    }
}
