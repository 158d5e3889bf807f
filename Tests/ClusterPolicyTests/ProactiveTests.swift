import Testing
import ClusterPolicy

@Suite struct ProactiveTests {
    func proactiveReplica(_ id: Int, resident: Set<String>, counts: [String: Int], step: Double,
                          slots: Int = 4, loadSeconds: Double = 0.1) -> ReplicaLoad {
        var r = replica(id, slots: slots, resident: resident, running: counts)
        r.maxBatch = 4
        r.mergedCostFactor = 0.6
        r.decodeStepSeconds = step
        r.defaultAdapterLoadSeconds = loadSeconds
        return r
    }

    /// Worked by hand, B = 4, f = 0.6, a new request for "x":
    /// - A: x resident, counts x 5 + 1 new = 6, y 2 → ⌊6/4⌋·0.6 + ⌊(2 + 2)/4⌋ = 0.6 + 1 = 1.6 steps;
    ///   at 0.05 s a step: 0.08 s, no load.
    /// - B: x not resident, y 7, x 0 + 1 → ⌊7/4⌋·0.6 + ⌊(3 + 1)/4⌋ = 1.6 steps = 0.08 s, + 0.1 s load = 0.18 s.
    /// - C: empty, x not resident → 0 steps + 0.1 s load = 0.1 s.
    /// A is cheapest; with a 0.07 s step A costs 0.112 s and C (0.1 s) wins.
    @Test func costFormulaWorkedExample() {
        #expect(DLoRAProactive.queueUnits(counts: ["x": 6, "y": 2], batch: 4, mergedCostFactor: 0.6) == 1.6)
        #expect(DLoRAProactive.queueUnits(counts: ["x": 1, "y": 7], batch: 4, mergedCostFactor: 0.6) == 1.6)
        #expect(DLoRAProactive.queueUnits(counts: ["x": 3], batch: 4, mergedCostFactor: 0.6) == 0)
        #expect(DLoRAProactive.queueUnits(counts: ["x": 8, "y": 8], batch: 4, mergedCostFactor: 0.6) == 2.4)
        // The router's variant counts leftovers as a fraction of a step: x 3 → 3/4; x 6, y 2 → 0.6 + (2 + 2)/4;
        // equal to the floor at multiples of B.
        #expect(DLoRAProactive.queueUnits(counts: ["x": 3], batch: 4, mergedCostFactor: 0.6, fractionalLeftovers: true) == 0.75)
        #expect(DLoRAProactive.queueUnits(counts: ["x": 6, "y": 2], batch: 4, mergedCostFactor: 0.6, fractionalLeftovers: true) == 1.6)
        #expect(DLoRAProactive.queueUnits(counts: ["x": 5, "y": 2], batch: 4, mergedCostFactor: 0.6, fractionalLeftovers: true) == 0.6 + 0.75)

        let a = proactiveReplica(0, resident: ["x", "y"], counts: ["x": 5, "y": 2], step: 0.05)
        let b = proactiveReplica(1, resident: ["y"], counts: ["y": 7], step: 0.05)
        let c = proactiveReplica(2, resident: [], counts: [:], step: 0.05)
        #expect(abs(DLoRAProactive.costSeconds(adapter: "x", replica: a) - 0.08) < 1e-12)
        #expect(abs(DLoRAProactive.costSeconds(adapter: "x", replica: b) - 0.18) < 1e-12)
        #expect(abs(DLoRAProactive.costSeconds(adapter: "x", replica: c) - 0.1) < 1e-12)
        let policy = DLoRAProactive()
        #expect(policy.choose(adapter: "x", promptTokens: 20, replicas: [a, b, c]) == 0)
        var slowA = a
        slowA.decodeStepSeconds = 0.07
        #expect(policy.choose(adapter: "x", promptTokens: 20, replicas: [slowA, b, c]) == 2)
    }

    /// The adapter-slot bound, by hand (B = 4, S = 2 slots, f = 0.6): leftovers a 1, b 1, c 1 and the base model 3
    /// are 6 requests, 6/4 = 1.5 steps as a fraction; the named adapters among them are 3, 3/2 = 1.5 steps; with d
    /// as well, 4/2 = 2 steps bind. Floors: ⌊6/4⌋ = 1 against ⌊4/2⌋ = 2. A full batch of a (4) leaves it out.
    @Test func adapterSlotBoundWorkedExample() {
        let three: [String: Int] = ["a": 1, "b": 1, "c": 1, "": 3]
        #expect(DLoRAProactive.queueUnits(counts: three, batch: 4, mergedCostFactor: 0.6, fractionalLeftovers: true, slots: 2) == 1.5)
        #expect(DLoRAProactive.queueUnits(counts: three.merging(["d": 1]) { $1 }, batch: 4, mergedCostFactor: 0.6,
                                          fractionalLeftovers: true, slots: 2) == 2)
        #expect(DLoRAProactive.queueUnits(counts: three.merging(["d": 1]) { $1 }, batch: 4, mergedCostFactor: 0.6, slots: 2) == 2)
        #expect(DLoRAProactive.queueUnits(counts: three.merging(["d": 1]) { $1 }, batch: 4, mergedCostFactor: 0.6) == 1)
        #expect(DLoRAProactive.queueUnits(counts: ["a": 4, "b": 1, "c": 1], batch: 4, mergedCostFactor: 0.6, fractionalLeftovers: true,
                                          slots: 2) == 0.6 + 1)

        // Two replicas with 2 slots, 4 requests each at 0.05 s a step, loads free: P holds x among four adapters (x 1,
        // y 1, z 1, w 1), Q two others (y 2, z 2; a slot free). A new x on P: leftovers 5/4, adapters 4/2 = 2 steps;
        // on Q: 5/4, adapters 3/2 = 1.5 steps. Without the bound both cost 5/4 and the tie goes to P (equal
        // requests, lower id), whose batches already take turns among four adapters; with it, Q wins.
        let p = proactiveReplica(0, resident: ["x", "y"], counts: ["x": 1, "y": 1, "z": 1, "w": 1], step: 0.05, slots: 2, loadSeconds: 0)
        let q = proactiveReplica(1, resident: ["y"], counts: ["y": 2, "z": 2], step: 0.05, slots: 2, loadSeconds: 0)
        let plain = DLoRAProactive(fractionalLeftovers: true)
        let bound = DLoRAProactive(fractionalLeftovers: true, adapterSlotBound: true)
        #expect(abs(DLoRAProactive.costSeconds(adapter: "x", replica: p, fractionalLeftovers: true, adapterSlotBound: true) - 0.1) < 1e-12)
        #expect(abs(DLoRAProactive.costSeconds(adapter: "x", replica: q, fractionalLeftovers: true, adapterSlotBound: true) - 0.075) < 1e-12)
        #expect(plain.choose(adapter: "x", promptTokens: 8, replicas: [p, q]) == 0)
        #expect(bound.choose(adapter: "x", promptTokens: 8, replicas: [p, q]) == 1)
        // A request for y, which both hold: the bound adds no adapter on either, and P (2 steps) costs more than Q.
        #expect(bound.choose(adapter: "y", promptTokens: 8, replicas: [p, q]) == 1)
        // The base model takes no slot: on P it costs 5/4 steps, the adapters' 4/2 = 2 still bind.
        #expect(abs(DLoRAProactive.costSeconds(adapter: "", replica: p, fractionalLeftovers: true, adapterSlotBound: true) - 0.1) < 1e-12)
    }

    @Test func replicasThatCannotTakeTheAdapterAreNotCandidates() {
        // Replica 0 is idle but its only slot holds a busy adapter; replica 1 holds x with a backlog.
        let busy = proactiveReplica(0, resident: ["y"], counts: ["y": 1], step: 0.05, slots: 1)
        let loaded = proactiveReplica(1, resident: ["x"], counts: ["x": 9, "z": 3], step: 0.05)
        #expect(!busy.canHost("x") && loaded.canHost("x"))
        #expect(DLoRAProactive().choose(adapter: "x", promptTokens: 1, replicas: [busy, loaded]) == 1)
        // An idle resident adapter can be evicted: then replica 0 is a candidate, and cheaper.
        let idle = proactiveReplica(0, resident: ["y"], counts: [:], step: 0.05, slots: 1)
        #expect(idle.canHost("x"))
        #expect(DLoRAProactive().choose(adapter: "x", promptTokens: 1, replicas: [idle, loaded]) == 0)
        // No replica can take it: every usable replica is a candidate, cheapest wins.
        let busy2 = proactiveReplica(1, resident: ["z"], counts: ["z": 9], step: 0.05, slots: 1)
        #expect(DLoRAProactive().choose(adapter: "x", promptTokens: 1, replicas: [busy, busy2]) == 0)
    }

    /// Random loads on 8 replicas (resident sets, counts, unhealthy and draining ones, slots full or not).
    func randomLoads(_ rng: inout SeededGenerator) -> [ReplicaLoad] {
        let names = ["", "a", "b", "c", "d", "e"]
        return (0..<8).map { id in
            var resident: Set<String> = []
            var waiting: [String: Int] = [:], running: [String: Int] = [:]
            for name in names.dropFirst() where Int.random(in: 0..<3, using: &rng) == 0 { resident.insert(name) }
            for name in names where Int.random(in: 0..<2, using: &rng) == 0 {
                waiting[name] = Int.random(in: 0...9, using: &rng)
                running[name] = Int.random(in: 0...9, using: &rng)
            }
            var r = replica(id, slots: Int.random(in: 0...4, using: &rng), resident: resident, waiting: waiting, running: running,
                            healthy: Int.random(in: 0..<8, using: &rng) != 0, draining: Int.random(in: 0..<8, using: &rng) == 0)
            r.maxBatch = Int.random(in: 1...6, using: &rng)
            r.decodeStepSeconds = Double(Int.random(in: 1...5, using: &rng)) * 0.01
            r.defaultAdapterLoadSeconds = Double(Int.random(in: 0...3, using: &rng)) * 0.02
            if Int.random(in: 0..<4, using: &rng) == 0 { r.adapterLoadSeconds["b"] = 0.5 }
            return r
        }
    }

    /// Told where the adapter is (`presence`), dispatch chooses what it chooses by looking the adapter up in every
    /// load: random loads, placements and both leftover formulas, every adapter and the base model.
    @Test func presenceIndexGivesTheSameChoice() {
        var rng = SeededGenerator(seed: 13)
        var differentFromFirst = 0
        for trial in 0..<300 {
            let loads = randomLoads(&rng)
            var placement: [String: Set<Int>]?
            if trial % 2 == 0 {
                placement = ["a": [Int.random(in: 0..<8, using: &rng)], "c": [1, Int.random(in: 0..<8, using: &rng)]]
            }
            let policy = DLoRAProactive(placement: placement, fractionalLeftovers: trial % 3 != 0)
            for adapter in ["", "a", "b", "c", "d", "e", "unknown"] {
                var presence: [AdapterPresence] = []
                for (position, load) in loads.enumerated().reversed() {
                    let resident = load.residentAdapters.contains(adapter)
                    let requests = load.perAdapter[adapter]?.total ?? 0
                    if resident || requests > 0 { presence.append(AdapterPresence(position: position, resident: resident, requests: requests)) }
                }
                let expected = policy.choose(adapter: adapter, promptTokens: 1, replicas: loads)
                #expect(policy.choose(adapter: adapter, presence: presence, replicas: loads) == expected)
                if expected != nil && expected != loads.first(where: \.usable)?.id { differentFromFirst += 1 }
            }
        }
        // The cases are not all won by the first usable replica.
        #expect(differentFromFirst > 300)
    }

    /// `addWaiting` keeps the load equal (sums included) to one whose counts were set through `perAdapter`.
    @Test func addWaitingMatchesPerAdapter() {
        var rng = SeededGenerator(seed: 5)
        for _ in 0..<200 {
            for load in randomLoads(&rng) {
                for adapter in ["", "a", "b", "f"] {
                    let n = Int.random(in: 0...7, using: &rng)
                    var incremental = load, recounted = load
                    incremental.addWaiting(adapter: adapter, count: n)
                    recounted.perAdapter[adapter, default: AdapterCounts()].waiting += n
                    #expect(incremental == recounted)
                    #expect(incremental.requests == load.requests + n)
                    #expect(incremental.canHost("x") == recounted.canHost("x"))
                    #expect(DLoRAProactive.costSeconds(adapter: "a", replica: incremental)
                        == DLoRAProactive.costSeconds(adapter: "a", replica: recounted))
                    #expect(DLoRAProactive.costSeconds(adapter: "a", replica: incremental, fractionalLeftovers: true, adapterSlotBound: true)
                        == DLoRAProactive.costSeconds(adapter: "a", replica: recounted, fractionalLeftovers: true, adapterSlotBound: true))
                    // A fresh load built from the same counts has the same sums.
                    let rebuilt = ReplicaLoad(id: load.id, healthy: load.healthy, draining: load.draining, kvBlocksTotal: load.kvBlocksTotal,
                                              kvBlocksFree: load.kvBlocksFree, adapterSlots: load.adapterSlots,
                                              residentAdapters: load.residentAdapters, perAdapter: recounted.perAdapter,
                                              decodeStepSeconds: load.decodeStepSeconds, mergedCostFactor: load.mergedCostFactor,
                                              maxBatch: load.maxBatch, adapterLoadSeconds: load.adapterLoadSeconds,
                                              defaultAdapterLoadSeconds: load.defaultAdapterLoadSeconds)
                    #expect(rebuilt == incremental)
                }
            }
        }
    }

    @Test func placementIsPreferredWithinTheSlack() {
        // Both hold x; replica 1 costs 0.6 steps more (two full x batches vs one: 1.2 vs 0.6 steps).
        let cheap = proactiveReplica(0, resident: ["x"], counts: ["x": 3], step: 0.05)
        let placed = proactiveReplica(1, resident: ["x"], counts: ["x": 7], step: 0.05)
        var policy = DLoRAProactive()
        #expect(policy.choose(adapter: "x", promptTokens: 1, replicas: [cheap, placed]) == 0)
        policy.placement = ["x": [1]]
        #expect(policy.choose(adapter: "x", promptTokens: 1, replicas: [cheap, placed]) == 1, "0.6 steps dearer: within 1 step")
        // Far costlier (2.4 + 1 steps vs 0.6): fall back to the cheapest.
        let swamped = proactiveReplica(1, resident: ["x"], counts: ["x": 15, "y": 2, "z": 2], step: 0.05)
        #expect(policy.choose(adapter: "x", promptTokens: 1, replicas: [cheap, swamped]) == 0)
        // Other adapters ignore x's placement.
        #expect(policy.choose(adapter: "", promptTokens: 1, replicas: [cheap, placed]) == 0)
    }

    /// Rates 6 : 3 : 1 on 3 replicas × 2 slots. One copy each, then D'Hondt for the 3 other slots:
    /// a (6/1) → 2 copies; a (6/2 = 3) ties b (3/1), a ranks first → 3 copies (= all replicas);
    /// b (3/1) → 2 copies. Copies 3 : 2 : 1. Layout, largest per-copy load first: a's 2, 2, 2 on
    /// replicas 0, 1, 2; b's 1.5, 1.5 on 0 and 1; c's 1 on 2 → expected loads 3.5, 3.5, 3.
    @Test func placementFollowsShareAndSlots() {
        let replicas = (0..<3).map { replica($0, slots: 2) }
        let placement = DLoRAProactive().placeAdapters(rates: ["a": 6, "b": 3, "c": 1], replicas: replicas)
        #expect(placement == ["a": [0, 1, 2], "b": [0, 1], "c": [2]])
    }

    @Test func placementBoundsAndCoverage() {
        var rng = SeededGenerator(seed: 7)
        for _ in 0..<200 {
            let hosts = Int.random(in: 1...5, using: &rng)
            let replicas = (0..<hosts).map { replica($0, slots: Int.random(in: 1...4, using: &rng)) }
            let slots = replicas.reduce(0) { $0 + $1.adapterSlots }
            var rates: [String: Double] = [:]
            for k in 0..<Int.random(in: 1...12, using: &rng) { rates["a\(k)"] = Double(Int.random(in: 1...100, using: &rng)) }
            let placement = DLoRAProactive().placeAdapters(rates: rates, replicas: replicas)
            // No replica holds more adapters than it has slots.
            for r in replicas {
                #expect(placement.values.filter { $0.contains(r.id) }.count <= r.adapterSlots)
            }
            // Every adapter gets a replica when slots allow; else the most popular ones do.
            #expect(placement.count == min(rates.count, slots))
            let ranked = rates.sorted { $0.value != $1.value ? $0.value > $1.value : $0.key < $1.key }
            for (name, _) in ranked.prefix(slots) { #expect(placement[name] != nil) }
            // A more popular adapter never gets fewer replicas than a less popular one (up to a copy lost to
            // fragmentation).
            for x in ranked.indices.dropLast() {
                let more = placement[ranked[x].key]?.count ?? 0, less = placement[ranked[x + 1].key]?.count ?? 0
                #expect(more + 1 >= less)
            }
        }
    }

    /// The layout's heap of hosts chooses as a scan of every host does (the reference below: the least loaded host
    /// with a free slot not holding the adapter, among equal loads the first where it is resident, else the first).
    /// Random clusters with ids out of order, unusable hosts and hosts without slots, integer rates (so expected
    /// loads tie often) and random resident sets; more adapters than slots in some.
    @Test func placementMatchesAScanOfEveryHost() {
        var rng = SeededGenerator(seed: 13)
        var ties = 0
        for _ in 0..<400 {
            let count = Int.random(in: 1...24, using: &rng)
            let ids = (0..<count).shuffled(using: &rng)
            var rates: [String: Double] = [:]
            for k in 0..<Int.random(in: 1...40, using: &rng) { rates["a\(k)"] = Double(Int.random(in: 0...6, using: &rng)) }
            let names = Array(rates.keys)
            let replicas = ids.map { id in
                replica(id, slots: Int.random(in: 0...4, using: &rng),
                        resident: Set(names.filter { _ in Int.random(in: 0..<4, using: &rng) == 0 }),
                        healthy: Int.random(in: 0..<8, using: &rng) != 0)
            }
            let placement = DLoRAProactive().placeAdapters(rates: rates, replicas: replicas)
            let reference = scanPlacement(rates: rates, replicas: replicas)
            #expect(placement == reference.placement)
            ties += reference.ties
        }
        #expect(ties > 100, "the cases are meant to tie on load where the adapter is resident")
    }

    /// `placeAdapters` as it was before the heap: D'Hondt by a scan for the highest rate per copy, and each copy's
    /// host by a scan of every host. `ties`: copies placed on a resident host over an equally loaded earlier one.
    private func scanPlacement(rates: [String: Double], replicas: [ReplicaLoad]) -> (placement: [String: Set<Int>], ties: Int) {
        let hosts = replicas.indices.filter { replicas[$0].usable && replicas[$0].adapterSlots > 0 }.sorted { replicas[$0].id < replicas[$1].id }
        let slots = hosts.map { replicas[$0].adapterSlots }
        let ranked = rates.filter { !$0.key.isEmpty }.sorted { $0.value != $1.value ? $0.value > $1.value : $0.key < $1.key }
        let placed = Array(ranked.prefix(slots.reduce(0, +)))
        var copies = [Int](repeating: 1, count: placed.count)
        for _ in 0..<(slots.reduce(0, +) - placed.count) {
            var best: Int?
            for i in placed.indices where placed[i].value > 0 && copies[i] < hosts.count {
                if best == nil || placed[i].value / Double(copies[i]) > placed[best!].value / Double(copies[best!]) { best = i }
            }
            guard let b = best else { break }
            copies[b] += 1
        }
        var items: [(adapter: String, load: Double, index: Int)] = []
        for (i, e) in placed.enumerated() { for _ in 0..<copies[i] { items.append((e.key, max(0, e.value) / Double(copies[i]), i)) } }
        items.sort { $0.load != $1.load ? $0.load > $1.load : $0.adapter < $1.adapter }
        var used = [Int](repeating: 0, count: hosts.count), load = [Double](repeating: 0, count: hosts.count)
        var holds = [[Int]](repeating: [], count: placed.count)
        var ties = 0
        for item in items {
            let resident = { (h: Int) in replicas[hosts[h]].residentAdapters.contains(item.adapter) }
            var best: Int?
            for h in hosts.indices where used[h] < slots[h] && !holds[item.index].contains(h) {
                guard let b = best else { best = h; continue }
                if load[h] != load[b] {
                    if load[h] < load[b] { best = h }
                } else if resident(h) && !resident(b) {
                    best = h
                    ties += 1
                }
            }
            guard let h = best else { continue }
            used[h] += 1
            load[h] += item.load
            holds[item.index].append(h)
        }
        var result: [String: Set<Int>] = [:]
        for (i, e) in placed.enumerated() where !holds[i].isEmpty { result[e.key] = Set(holds[i].map { replicas[hosts[$0]].id }) }
        return (result, ties)
    }

    @Test func placementKeepsResidentAdaptersOnTies() {
        // "a" is laid out first (equal loads, name order) and both hosts are empty: it goes where it is resident.
        let replicas = [replica(0, slots: 1), replica(1, slots: 1, resident: ["a"])]
        let placement = DLoRAProactive().placeAdapters(rates: ["a": 1, "b": 1], replicas: replicas)
        #expect(placement == ["a": [1], "b": [0]])
        #expect(DLoRAProactive().placeAdapters(rates: ["a": 1], replicas: [replica(0, healthy: false)]).isEmpty)
    }

    @Test func placementThenDispatch() {
        var policy = DLoRAProactive()
        let replicas = (0..<3).map { replica($0, slots: 1) }
        policy.updatePlacement(rates: ["a": 5, "b": 1, "c": 1], replicas: replicas)
        let placed = policy.placement!
        #expect(placed["a"]!.count == 1)
        #expect(policy.choose(adapter: "b", promptTokens: 1, replicas: replicas) == placed["b"]!.first)
        #expect(policy.choose(adapter: "c", promptTokens: 1, replicas: replicas) == placed["c"]!.first)
    }

    /// With hysteresis 0.2 the placement stays while the shares move by ≤ 0.2 (total variation) and the hosts are
    /// the same; a larger move, a replica lost, or hysteresis 0 re-places. Shares a 0.5, b 0.3, c 0.2 → a 0.4,
    /// b 0.4, c 0.2 is a move of 0.1; → a 0.1, b 0.1, c 0.8 a move of 0.6.
    @Test func placementHysteresisKeepsThePlacementThroughNoise() {
        #expect(abs(DLoRAProactive.totalVariation(["a": 0.5, "b": 0.3, "c": 0.2], ["a": 0.4, "b": 0.4, "c": 0.2]) - 0.1) < 1e-12)
        #expect(abs(DLoRAProactive.totalVariation(["a": 1], ["b": 1]) - 1) < 1e-12)
        let four = (0..<4).map { replica($0, slots: 2) }
        var sticky = DLoRAProactive(placementHysteresis: 0.2)
        var eager = DLoRAProactive()
        sticky.updatePlacement(rates: ["a": 5, "b": 3, "c": 2], replicas: four)
        eager.updatePlacement(rates: ["a": 5, "b": 3, "c": 2], replicas: four)
        let first = sticky.placement
        #expect(first == eager.placement)
        // A move of 0.1 (in rates ×2, so the shares, not the totals, count): kept; the eager policy re-places.
        sticky.updatePlacement(rates: ["a": 8, "b": 8, "c": 4], replicas: four)
        eager.updatePlacement(rates: ["a": 8, "b": 8, "c": 4], replicas: four)
        #expect(sticky.placement == first)
        #expect(eager.placement != first)
        // A move of 0.6: re-placed, as the eager policy places it.
        sticky.updatePlacement(rates: ["a": 1, "b": 1, "c": 8], replicas: four)
        eager.updatePlacement(rates: ["a": 1, "b": 1, "c": 8], replicas: four)
        #expect(sticky.placement == eager.placement)
        let second = sticky.placement
        // Replica 3 lost, shares the same: re-placed on the three left.
        let three = Array(four.prefix(3))
        sticky.updatePlacement(rates: ["a": 1, "b": 1, "c": 8], replicas: three)
        #expect(sticky.placement != second)
        #expect(sticky.placement?.values.allSatisfy { !$0.contains(3) } == true)
    }
    /// The placement's rates are an exponential moving average per period: previous 4 req/s, 10 arrivals in a
    /// 5 s period (2 req/s) → 3 with memory 0.5 (the router's), 3.6 with 0.8, 2 with 0. A rate that stops decays by
    /// the memory per period: 0.8⁵ ≈ 0.33 of it after five empty periods.
    @Test func placementRatesAreAMovingAverage() {
        #expect(DLoRAProactive().smoothedRate(previous: 4, arrivals: 10, periodSeconds: 5) == 3)
        #expect(abs(DLoRAProactive(rateMemory: 0.8).smoothedRate(previous: 4, arrivals: 10, periodSeconds: 5) - 3.6) < 1e-12)
        #expect(DLoRAProactive(rateMemory: 0).smoothedRate(previous: 4, arrivals: 10, periodSeconds: 5) == 2)
        let slow = DLoRAProactive(rateMemory: 0.8)
        var r = 1.0
        for _ in 0..<5 { r = slow.smoothedRate(previous: r, arrivals: 0, periodSeconds: 5) }
        #expect(abs(r - 0.32768) < 1e-12)
    }
}
