/// dLoRA's proactive dispatching (OSDI'24 §inter-replica; the authors' artifact for the formula): send a
/// request where its queueing delay plus its adapter's load time is least, and place adapters ahead of time
/// in proportion to their expected load.

/// dLoRA's proactive dispatch.
///
/// A replica's queueing cost, in batch-step units, counts what it holds per adapter k (waiting + running,
/// the new request included under its adapter):
///
///     units = Σ_k ⌊cnt_k / B⌋ · f  +  ⌊Σ_k (cnt_k mod B) / B⌋
///
/// full same-adapter batches run merged at cost factor f (`mergedCostFactor`, 0.6 in the artifact), the
/// leftovers share mixed (unmerged) batches. Seconds = units · `decodeStepSeconds` + the adapter's load
/// time where it is not resident. Candidates hold the adapter or can take it now (a free slot or an idle
/// resident adapter to evict); if no replica can, every usable replica is a candidate (the request waits
/// for a slot). Cheapest wins; equal costs (the floors make many) go to the replica holding fewer
/// requests, then the lower id.
///
/// With a `placement`, the cheapest *placed* candidate wins unless it costs more than `placementSlackSteps`
/// decode steps (of the cheapest candidate) above the cheapest candidate overall; then that one wins.
/// Placement is a plan made from expected rates, so it yields to a measured backlog, but not to noise.
public struct DLoRAProactive: DispatchPolicy {
    /// Adapter name → ids of the replicas it is placed on (from `placeAdapters`); nil: no placement.
    public var placement: [String: Set<Int>]?
    /// How many decode steps a placed replica may cost above the cheapest before dispatch falls back.
    public var placementSlackSteps: Double
    /// Count the leftover (mixed-batch) requests as a fraction of a batch step, Σ_k (cnt_k mod B) / B, instead
    /// of the artifact's ⌊Σ_k (cnt_k mod B) / B⌋. With the floor, every replica holding fewer than B leftover
    /// requests costs 0 steps: on a small cluster (B = 32, a few dozen requests in all) the formula cannot see
    /// load at all and the adapter-load term alone decides, piling an adapter's requests on one replica. The
    /// fraction equals the floor at multiples of B and grows by 1/B per request in between. The router uses
    /// it (docs/design/cluster-policy.md); `false` is the artifact's formula.
    public var fractionalLeftovers: Bool

    public init(placement: [String: Set<Int>]? = nil, placementSlackSteps: Double = 1, fractionalLeftovers: Bool = false) {
        self.placement = placement
        self.placementSlackSteps = placementSlackSteps
        self.fractionalLeftovers = fractionalLeftovers
    }

    /// The formula's batch-step units for per-adapter counts `counts` at batch size `batch`.
    public static func queueUnits(counts: [String: Int], batch: Int, mergedCostFactor: Double, fractionalLeftovers: Bool = false) -> Double {
        let b = max(1, batch)
        var full = 0.0
        var leftovers = 0
        for count in counts.values {
            full += Double(count / b) * mergedCostFactor
            leftovers += count % b
        }
        return full + (fractionalLeftovers ? Double(leftovers) / Double(b) : Double(leftovers / b))
    }

    /// Seconds a request for `adapter` would wait on `replica`: queueing cost plus adapter load time.
    public static func costSeconds(adapter: String, replica: ReplicaLoad, fractionalLeftovers: Bool = false) -> Double {
        var counts = replica.perAdapter.mapValues(\.total)
        counts[adapter, default: 0] += 1
        let units = queueUnits(counts: counts, batch: replica.maxBatch, mergedCostFactor: replica.mergedCostFactor,
                               fractionalLeftovers: fractionalLeftovers)
        return units * replica.decodeStepSeconds + replica.loadSeconds(adapter)
    }

    public func choose(adapter: String, promptTokens: Int, replicas: [ReplicaLoad]) -> Int? {
        let usable = replicas.filter(\.usable)
        guard !usable.isEmpty else { return nil }
        let hosts = usable.filter { $0.canHost(adapter) }
        let candidates = (hosts.isEmpty ? usable : hosts).map { (replica: $0, cost: Self.costSeconds(adapter: adapter, replica: $0,
                                                                                                  fractionalLeftovers: fractionalLeftovers)) }
        func cheapest(_ list: [(replica: ReplicaLoad, cost: Double)]) -> (replica: ReplicaLoad, cost: Double)? {
            list.min { a, b in
                if a.cost != b.cost { return a.cost < b.cost }
                if a.replica.requests != b.replica.requests { return a.replica.requests < b.replica.requests }
                return a.replica.id < b.replica.id
            }
        }
        guard let best = cheapest(candidates) else { return nil }
        if let placed = placement?[adapter], !placed.isEmpty,
           let bestPlaced = cheapest(candidates.filter { placed.contains($0.replica.id) }),
           bestPlaced.cost - best.cost <= placementSlackSteps * best.replica.decodeStepSeconds {
            return bestPlaced.replica.id
        }
        return best.replica.id
    }

    /// `placeAdapters(rates:replicas:)` on this policy's behalf, kept as its placement.
    public mutating func updatePlacement(rates: [String: Double], replicas: [ReplicaLoad]) {
        placement = placeAdapters(rates: rates, replicas: replicas)
    }

    /// Greedy adapter placement by expected share (dLoRA: "place adapters on replicas ahead of time from
    /// observed load patterns"; the artifact: replica capacity in proportion to the expected request share).
    ///
    /// 1. Hosts are the usable replicas with `adapterSlots > 0`; S = their total slots. Adapters ("" excluded:
    ///    the base model needs no slot) are ranked by rate, highest first (ties by name); the first
    ///    min(S, count) get one copy each, so every adapter gets a replica when slots allow.
    /// 2. The remaining slots go one at a time to the adapter with the highest rate per copy, rate / copies
    ///    (D'Hondt apportionment: copies end up proportional to share), only to adapters with a positive
    ///    rate and fewer copies than hosts.
    /// 3. Copies are laid out largest per-copy load first (LPT): each goes to a host with a free slot that
    ///    does not hold the adapter yet, the one with the least expected load so far (Σ rate/copies of what it
    ///    holds); ties prefer a host where the adapter is already resident (no load), then the lower id.
    ///    A copy that finds no such host is dropped (possible only for adapters with several copies).
    /// Adapters with no rate entry are not placed; dispatch loads them on demand.
    public func placeAdapters(rates: [String: Double], replicas: [ReplicaLoad]) -> [String: Set<Int>] {
        let hosts = replicas.filter { $0.usable && $0.adapterSlots > 0 }.sorted { $0.id < $1.id }
        let totalSlots = hosts.reduce(0) { $0 + $1.adapterSlots }
        let ranked = rates.filter { !$0.key.isEmpty }.sorted { $0.value != $1.value ? $0.value > $1.value : $0.key < $1.key }
        let placedAdapters = Array(ranked.prefix(totalSlots))
        guard !placedAdapters.isEmpty else { return [:] }

        var copies = [Int](repeating: 1, count: placedAdapters.count)
        for _ in 0..<(totalSlots - placedAdapters.count) {
            var pick: Int?
            for (i, entry) in placedAdapters.enumerated() where entry.value > 0 && copies[i] < hosts.count {
                if let p = pick, entry.value / Double(copies[i]) <= placedAdapters[p].value / Double(copies[p]) { continue }
                pick = i
            }
            guard let p = pick else { break }
            copies[p] += 1
        }

        var items: [(adapter: String, load: Double)] = []
        for (i, entry) in placedAdapters.enumerated() {
            for _ in 0..<copies[i] { items.append((entry.key, max(0, entry.value) / Double(copies[i]))) }
        }
        items.sort { $0.load != $1.load ? $0.load > $1.load : $0.adapter < $1.adapter }

        var used = [Int](repeating: 0, count: hosts.count)
        var load = [Double](repeating: 0, count: hosts.count)
        var result: [String: Set<Int>] = [:]
        for item in items {
            var best: Int?
            for h in hosts.indices where used[h] < hosts[h].adapterSlots && !(result[item.adapter]?.contains(hosts[h].id) ?? false) {
                guard let b = best else { best = h; continue }
                if load[h] != load[b] {
                    if load[h] < load[b] { best = h }
                    continue
                }
                let hResident = hosts[h].residentAdapters.contains(item.adapter)
                let bResident = hosts[b].residentAdapters.contains(item.adapter)
                if hResident && !bResident { best = h }
            }
            guard let h = best else { continue }
            used[h] += 1
            load[h] += item.load
            result[item.adapter, default: []].insert(hosts[h].id)
        }
        return result
    }
}
