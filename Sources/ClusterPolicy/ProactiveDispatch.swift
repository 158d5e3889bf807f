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
/// With `adapterSlotBound`, the mixed batches also need at least D / S steps, D the distinct adapters among the
/// leftovers and S the replica's adapter slots (an unmerged iteration serves at most S adapters):
///
///     units = Σ_k ⌊cnt_k / B⌋ · f  +  max(Σ_k (cnt_k mod B) / B, D / S)
///
/// The formula assumes any leftovers share a mixed batch; with more adapters than slots they cannot, and a
/// request for an adapter the replica does not hold adds an adapter its batches must take turns with, where
/// one for an adapter it holds adds only a request. (Floors as `fractionalLeftovers` says, on both terms.)
///
/// With a `placement`, the cheapest *placed* candidate wins unless it costs more than `placementSlackSteps`
/// decode steps (of the cheapest candidate) above the cheapest candidate overall; then that one wins.
/// Placement is a plan made from expected rates, so it yields to a measured backlog, but not to noise.
public struct DLoRAProactive: DispatchPolicy {
    /// Adapter name → ids of the replicas it is placed on (from `placeAdapters`); nil: no placement.
    public var placement: [String: Set<Int>]? { didSet { placedIDs = Self.marks(placement) } }
    /// `placement` as marks indexed by replica id (ids ≥ 0), so that `choose` tests each replica without
    /// hashing its id (a `Set` lookup per replica per request showed in the simulator's profile).
    private var placedIDs: [String: [Bool]] = [:]
    /// How many decode steps a placed replica may cost above the cheapest before dispatch falls back.
    public var placementSlackSteps: Double
    /// Count the leftover (mixed-batch) requests as a fraction of a batch step, Σ_k (cnt_k mod B) / B, instead
    /// of the artifact's ⌊Σ_k (cnt_k mod B) / B⌋. With the floor, every replica holding fewer than B leftover
    /// requests costs 0 steps: on a small cluster (B = 32, a few dozen requests in all) the formula cannot see
    /// load at all and the adapter-load term alone decides, piling an adapter's requests on one replica. The
    /// fraction equals the floor at multiples of B and grows by 1/B per request in between. The router uses
    /// it (docs/design/cluster-policy.md); `false` is the artifact's formula.
    public var fractionalLeftovers: Bool
    /// The mixed batches' steps are at least the leftover adapters over the replica's adapter slots (above);
    /// false: the artifact's formula, which prices any number of adapters as if one batch could hold them.
    public var adapterSlotBound: Bool
    /// `updatePlacement` keeps the current placement while the adapters' expected shares have moved by at most
    /// this much since it was made (total variation distance, ½ Σ |share − share then|, in [0, 1]) and its hosts
    /// are the same usable replicas: a re-placement moves adapters between replicas, and noise in the observed
    /// rates should not. 0: re-place every time.
    public var placementHysteresis: Double
    /// Weight of the previous estimate in the placement's per-adapter arrival rates, which are an exponential
    /// moving average over placement periods (`smoothedRate`): 0.5, the router's from the start, remembers about
    /// two periods; closer to 1 remembers longer, so a placement follows lasting shifts in popularity and not one
    /// period's sampling noise (0: the last period alone).
    public var rateMemory: Double
    /// The shares `placement` was made from, and the replica ids it could use.
    private var placedShares: [String: Double] = [:]
    private var placedHosts: [Int] = []

    public init(placement: [String: Set<Int>]? = nil, placementSlackSteps: Double = 1, fractionalLeftovers: Bool = false,
                adapterSlotBound: Bool = false, placementHysteresis: Double = 0, rateMemory: Double = 0.5) {
        self.placement = placement
        self.placementSlackSteps = placementSlackSteps
        self.fractionalLeftovers = fractionalLeftovers
        self.adapterSlotBound = adapterSlotBound
        self.placementHysteresis = placementHysteresis
        self.rateMemory = rateMemory
        placedIDs = Self.marks(placement)
    }

    /// Per adapter of `placement`: true at the ids (≥ 0) of the replicas it is placed on.
    private static func marks(_ placement: [String: Set<Int>]?) -> [String: [Bool]] {
        var result: [String: [Bool]] = [:]
        for (adapter, ids) in placement ?? [:] {
            var marks = [Bool](repeating: false, count: max(0, (ids.max() ?? -1) + 1))
            for id in ids where id >= 0 { marks[id] = true }
            result[adapter] = marks
        }
        return result
    }

    /// The replica with id `id` is in `placed` (the adapter's entry of `placement`; `marks` its `placedIDs`).
    private static func isPlaced(_ id: Int, marks: [Bool], placed: Set<Int>) -> Bool {
        id >= 0 ? id < marks.count && marks[id] : placed.contains(id)
    }

    /// The formula's batch-step units for per-adapter counts `counts` at batch size `batch`.
    /// `slots` > 0 applies the adapter-slot bound with S = slots (the base model, "", takes no slot).
    public static func queueUnits(counts: [String: Int], batch: Int, mergedCostFactor: Double, fractionalLeftovers: Bool = false,
                                  slots: Int = 0) -> Double {
        let b = max(1, batch)
        var full = 0
        var leftovers = 0
        var leftoverAdapters = 0
        for (name, count) in counts {
            full += count / b
            leftovers += count % b
            if !name.isEmpty && count % b != 0 { leftoverAdapters += 1 }
        }
        return units(fullBatches: full, leftovers: leftovers, leftoverAdapters: leftoverAdapters, slots: slots, batch: b,
                     mergedCostFactor: mergedCostFactor, fractionalLeftovers: fractionalLeftovers)
    }

    /// The formula from its integer sums (Σ ⌊count/B⌋, Σ count mod B, the leftover adapters), scaled once: the
    /// same value whatever order the counts were visited in. `slots` ≤ 0: no slot bound.
    static func units(fullBatches: Int, leftovers: Int, leftoverAdapters: Int, slots: Int, batch b: Int, mergedCostFactor: Double,
                      fractionalLeftovers: Bool) -> Double {
        var mixed = fractionalLeftovers ? Double(leftovers) / Double(b) : Double(leftovers / b)
        if slots > 0 {
            mixed = max(mixed, fractionalLeftovers ? Double(leftoverAdapters) / Double(slots) : Double(leftoverAdapters / slots))
        }
        return Double(fullBatches) * mergedCostFactor + mixed
    }

    /// Seconds a request for `adapter` would wait on `replica`: queueing cost plus adapter load time.
    /// (`queueUnits` over the replica's counts with the request added, from the sums the load keeps
    /// (`ReplicaLoad.fullBatches`, `leftoverRequests`): O(1) per replica, as dispatch asks it of every replica
    /// for every arrival.)
    public static func costSeconds(adapter: String, replica: ReplicaLoad, fractionalLeftovers: Bool = false,
                                   adapterSlotBound: Bool = false) -> Double {
        queueSeconds(adapter: adapter, replica: replica, fractionalLeftovers: fractionalLeftovers, adapterSlotBound: adapterSlotBound)
            + replica.loadSeconds(adapter)
    }

    /// `costSeconds` without the adapter's load time.
    static func queueSeconds(adapter: String, replica: ReplicaLoad, fractionalLeftovers: Bool, adapterSlotBound: Bool) -> Double {
        queueSeconds(count: replica.perAdapter[adapter]?.total ?? 0, named: !adapter.isEmpty, replica: replica,
                     fractionalLeftovers: fractionalLeftovers, adapterSlotBound: adapterSlotBound)
    }

    /// `queueSeconds` for an adapter with `c` requests on the replica: the replica's sums over its adapters, with
    /// that adapter's count c replaced by c + 1. `named`: an adapter, not the base model (which takes no slot).
    static func queueSeconds(count c: Int, named: Bool, replica: ReplicaLoad, fractionalLeftovers: Bool, adapterSlotBound: Bool) -> Double {
        let b = max(1, replica.maxBatch)
        let leftoverAdapters = replica.leftoverAdapters + (named ? ((c + 1) % b != 0 ? 1 : 0) - (c % b != 0 ? 1 : 0) : 0)
        return units(fullBatches: replica.fullBatches - c / b + (c + 1) / b, leftovers: replica.leftoverRequests - c % b + (c + 1) % b,
                     leftoverAdapters: leftoverAdapters, slots: adapterSlotBound ? replica.adapterSlots : 0, batch: b,
                     mergedCostFactor: replica.mergedCostFactor, fractionalLeftovers: fractionalLeftovers)
            * replica.decodeStepSeconds
    }

    /// Cheapest first: cost, then fewer requests held, then the lower id.
    private static func cheaper(_ a: Int, _ aCost: Double, than b: Int, _ bCost: Double, in replicas: UnsafeBufferPointer<ReplicaLoad>) -> Bool {
        if aCost != bCost { return aCost < bCost }
        let ra = replicas[a].requests, rb = replicas[b].requests
        if ra != rb { return ra < rb }
        return replicas[a].id < replicas[b].id
    }

    public func choose(adapter: String, promptTokens: Int, replicas: [ReplicaLoad]) -> Int? {
        // The loads are read in place: copying one (its dictionaries and sets) per replica per request showed.
        replicas.withUnsafeBufferPointer { loads in
            // Whether the adapter is resident, and its requests, per replica: looked up once each.
            var resident = [Bool](repeating: false, count: loads.count)
            var counts = [Int](repeating: 0, count: loads.count)
            for i in loads.indices where loads[i].usable {
                resident[i] = adapter.isEmpty || loads[i].residentAdapters.contains(adapter)
                counts[i] = loads[i].perAdapter[adapter]?.total ?? 0
            }
            return choose(adapter: adapter, in: loads, resident: resident, counts: counts)
        }
    }

    /// `choose(adapter:promptTokens:replicas:)` told where the adapter is: `presence` lists every position in
    /// `replicas` where it is resident or has requests, with its requests there (`perAdapter[adapter].total`);
    /// it is nowhere else. The same choice, without looking the adapter up in every replica's set and
    /// dictionary: a caller that keeps such an index (the simulator, at 1,000 replicas) saves those lookups,
    /// which were the largest cost of dispatch (a cache miss or more per replica per request). The caller
    /// keeps it in step with the loads; entries outside `replicas` are ignored.
    public func choose(adapter: String, presence: [AdapterPresence], replicas: [ReplicaLoad]) -> Int? {
        replicas.withUnsafeBufferPointer { loads in
            var resident = [Bool](repeating: adapter.isEmpty, count: loads.count)
            var counts = [Int](repeating: 0, count: loads.count)
            for p in presence where loads.indices.contains(p.position) {
                resident[p.position] = resident[p.position] || p.resident
                counts[p.position] = p.requests
            }
            return choose(adapter: adapter, in: loads, resident: resident, counts: counts)
        }
    }

    private func choose(adapter: String, in replicas: UnsafeBufferPointer<ReplicaLoad>, resident: [Bool], counts: [Int]) -> Int? {
        // Candidates: the usable replicas that can host the adapter, or every usable one if none can. One pass
        // finds the cheapest candidate and the cheapest placed one (in list order, first of equals, as `min`).
        var hosts = [Bool](repeating: false, count: replicas.count)
        var anyUsable = false, anyHost = false
        for i in replicas.indices where replicas[i].usable {
            anyUsable = true
            if resident[i] || replicas[i].canLoad {
                hosts[i] = true
                anyHost = true
            }
        }
        guard anyUsable else { return nil }
        let placed = placement?[adapter] ?? []
        let marks = placedIDs[adapter] ?? []
        var best = -1, bestCost = 0.0
        var bestPlaced = -1, bestPlacedCost = 0.0
        for i in replicas.indices where replicas[i].usable && (!anyHost || hosts[i]) {
            // = costSeconds: the queue, plus the load time where the adapter is not resident (`loadSeconds`).
            let cost = Self.queueSeconds(count: counts[i], named: !adapter.isEmpty, replica: replicas[i],
                                         fractionalLeftovers: fractionalLeftovers, adapterSlotBound: adapterSlotBound)
                + (resident[i] ? 0 : replicas[i].adapterLoadSeconds[adapter] ?? replicas[i].defaultAdapterLoadSeconds)
            if best < 0 || Self.cheaper(i, cost, than: best, bestCost, in: replicas) {
                best = i
                bestCost = cost
            }
            if !placed.isEmpty && Self.isPlaced(replicas[i].id, marks: marks, placed: placed)
                && (bestPlaced < 0 || Self.cheaper(i, cost, than: bestPlaced, bestPlacedCost, in: replicas)) {
                bestPlaced = i
                bestPlacedCost = cost
            }
        }
        if bestPlaced >= 0, bestPlacedCost - bestCost <= placementSlackSteps * replicas[best].decodeStepSeconds {
            return replicas[bestPlaced].id
        }
        return replicas[best].id
    }

    /// An adapter's arrival rate for the next placement: the previous estimate weighted by `rateMemory`, this
    /// period's arrivals per second by the rest. The router's placement loop and the simulator's both use it.
    public func smoothedRate(previous: Double, arrivals: Int, periodSeconds: Double) -> Double {
        rateMemory * previous + (1 - rateMemory) * Double(arrivals) / max(periodSeconds, 0.001)
    }

    /// `placeAdapters(rates:replicas:)` on this policy's behalf, kept as its placement.
    /// With `placementHysteresis` > 0, only once the shares have moved beyond it (or the usable hosts changed).
    public mutating func updatePlacement(rates: [String: Double], replicas: [ReplicaLoad]) {
        let total = rates.reduce(0.0) { $1.key.isEmpty ? $0 : $0 + max(0, $1.value) }
        var shares: [String: Double] = [:]
        if total > 0 { for (name, r) in rates where !name.isEmpty && r > 0 { shares[name] = r / total } }
        let hosts = replicas.filter { $0.usable && $0.adapterSlots > 0 }.map(\.id).sorted()
        if placementHysteresis > 0, placement != nil, hosts == placedHosts,
           Self.totalVariation(shares, placedShares) <= placementHysteresis {
            return
        }
        placement = placeAdapters(rates: rates, replicas: replicas)
        placedShares = shares
        placedHosts = hosts
    }

    /// ½ Σ |a − b| over the names of either (a missing name counts 0).
    public static func totalVariation(_ a: [String: Double], _ b: [String: Double]) -> Double {
        var sum = 0.0
        for (name, x) in a { sum += abs(x - (b[name] ?? 0)) }
        for (name, y) in b where a[name] == nil { sum += y }
        return sum / 2
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
        let hosts = replicas.indices.filter { replicas[$0].usable && replicas[$0].adapterSlots > 0 }.sorted { replicas[$0].id < replicas[$1].id }
        let slots = hosts.map { replicas[$0].adapterSlots }
        let totalSlots = slots.reduce(0, +)
        let ranked = rates.filter { !$0.key.isEmpty }.sorted { $0.value != $1.value ? $0.value > $1.value : $0.key < $1.key }
        let placedAdapters = Array(ranked.prefix(totalSlots))
        guard !placedAdapters.isEmpty else { return [:] }

        // D'Hondt: each spare slot to the highest rate per copy (ties: the higher-ranked adapter), through a heap
        // of the eligible adapters rather than a scan of all of them per slot.
        var copies = [Int](repeating: 1, count: placedAdapters.count)
        var heap = PlacementHeap<RatePerCopy>()
        for (i, entry) in placedAdapters.enumerated() where entry.value > 0 && copies[i] < hosts.count {
            heap.push(RatePerCopy(value: entry.value / Double(copies[i]), index: i))
        }
        for _ in 0..<(totalSlots - placedAdapters.count) {
            guard let p = heap.popFirst()?.index else { break }
            copies[p] += 1
            if copies[p] < hosts.count { heap.push(RatePerCopy(value: placedAdapters[p].value / Double(copies[p]), index: p)) }
        }

        var items: [(adapter: String, load: Double, index: Int)] = []
        for (i, entry) in placedAdapters.enumerated() {
            for _ in 0..<copies[i] { items.append((entry.key, max(0, entry.value) / Double(copies[i]), i)) }
        }
        items.sort { $0.load != $1.load ? $0.load > $1.load : $0.adapter < $1.adapter }

        // Where each placed adapter is resident (host positions), for the tie-break.
        var position: [String: Int] = [:]
        for (i, entry) in placedAdapters.enumerated() { position[entry.key] = i }
        var residentOn = [[Int]](repeating: [], count: placedAdapters.count)
        for (h, r) in hosts.enumerated() {
            for name in replicas[r].residentAdapters { if let i = position[name] { residentOn[i].append(h) } }
        }
        var used = [Int](repeating: 0, count: hosts.count)
        var load = [Double](repeating: 0, count: hosts.count)
        var holds = [[Int]](repeating: [], count: placedAdapters.count)
        // The adapter (its index) whose copy a host took last. `items` holds each adapter's copies side by side (they
        // share its load and name, the sort's keys), so while one adapter's copies are laid out, the hosts marked
        // with its index are exactly those already holding it: no re-marking per copy, which was quadratic in an
        // adapter's copies (10,000 hosts × a few hot adapters took seconds per placement).
        var held = [Int](repeating: -1, count: hosts.count)
        // The hosts with a free slot by (expected load, position), so a copy finds its host without a scan of all
        // of them (1,000 hosts × their slots' copies was most of a placement at the simulator's scale). A host's
        // entry is current while its version is; an update pushes a new one and the old is skipped when it surfaces.
        var free = PlacementHeap<HostLoad>()
        var version = [Int](repeating: 0, count: hosts.count)
        for h in hosts.indices where slots[h] > 0 { free.push(HostLoad(load: 0, host: h, version: 0)) }
        // A host that takes a copy re-enters the heap only once the next adapter's copies begin: while this adapter's
        // are laid out it cannot take another, so the heap's current entries are exactly the hosts that may (left in
        // the heap, the holders would surface and be passed over again for every later copy: quadratic in the copies,
        // as they are the least loaded).
        var deferred: [HostLoad] = []
        var current = -1
        for item in items {
            let n = item.index
            if n != current {
                for e in deferred { free.push(e) }
                deferred.removeAll(keepingCapacity: true)
                current = n
            }
            // The least loaded host with a free slot not holding the adapter; among equal loads the first where
            // the adapter is resident, else the first.
            // (An entry whose version is behind its host's is stale: the host has taken a copy since.)
            while let top = free.first, top.version != version[top.host] { free.popFirst() }
            guard let first = free.first else { continue }
            var h = first.host
            // (`first` is the least (load, position) of those hosts, so a resident one of equal load comes after it.)
            for r in residentOn[item.index] where used[r] < slots[r] && held[r] != n && load[r] == first.load {
                h = r
                break
            }
            used[h] += 1
            load[h] += item.load
            version[h] += 1
            if used[h] < slots[h] { deferred.append(HostLoad(load: load[h], host: h, version: version[h])) }
            holds[item.index].append(h)
            held[h] = n
        }
        var result: [String: Set<Int>] = [:]
        for (i, entry) in placedAdapters.enumerated() where !holds[i].isEmpty {
            result[entry.key] = Set(holds[i].map { replicas[hosts[$0]].id })
        }
        return result
    }
}

/// One adapter on one replica, as dispatch needs it (`DLoRAProactive.choose(adapter:presence:replicas:)`).
public struct AdapterPresence: Sendable, Equatable {
    /// Position of the replica in the list of loads.
    public var position: Int
    /// The adapter is in its `residentAdapters`.
    public var resident: Bool
    /// Its requests there, waiting and running (`perAdapter[adapter].total`).
    public var requests: Int

    public init(position: Int, resident: Bool, requests: Int) {
        self.position = position
        self.resident = resident
        self.requests = requests
    }
}

/// What `PlacementHeap` orders: `before` is a strict order, ties broken inside it.
private protocol PlacementHeapEntry {
    func before(_ other: Self) -> Bool
}

/// A binary heap, the entry that comes `before` all others first: D'Hondt's adapters by rate per copy and the
/// layout's hosts by expected load (`placeAdapters`).
private struct PlacementHeap<Entry: PlacementHeapEntry> {
    private var entries: [Entry] = []

    var first: Entry? { entries.first }

    mutating func push(_ e: Entry) {
        entries.append(e)
        var child = entries.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            guard entries[child].before(entries[parent]) else { break }
            entries.swapAt(child, parent)
            child = parent
        }
    }

    /// Removes and returns the first entry; nil when empty.
    @discardableResult
    mutating func popFirst() -> Entry? {
        guard let top = entries.first else { return nil }
        let last = entries.removeLast()
        if !entries.isEmpty {
            entries[0] = last
            var parent = 0
            while true {
                let left = 2 * parent + 1, right = left + 1
                var first = parent
                if left < entries.count && entries[left].before(entries[first]) { first = left }
                if right < entries.count && entries[right].before(entries[first]) { first = right }
                if first == parent { break }
                entries.swapAt(parent, first)
                parent = first
            }
        }
        return top
    }
}

/// An adapter's rate per copy: the highest first, the lower position among equals.
private struct RatePerCopy: PlacementHeapEntry {
    let value: Double
    let index: Int
    func before(_ other: RatePerCopy) -> Bool { value != other.value ? value > other.value : index < other.index }
}

/// A host with a free slot: the least expected load first, the lower position among equals. Current while its
/// version is the host's.
private struct HostLoad: PlacementHeapEntry {
    let load: Double
    let host: Int
    let version: Int
    func before(_ other: HostLoad) -> Bool { load != other.load ? load < other.load : host < other.host }
}
