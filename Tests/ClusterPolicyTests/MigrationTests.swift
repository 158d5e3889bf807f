import Testing
import ClusterPolicy

/// A replica for migration cases: `fixedKV` blocks held by what cannot move, its running requests on top.
func host(_ id: Int, total: Int = 100, fixedKV: Int = 0, slots: Int = 2, resident: Set<String> = [],
          waiting: [String: Int] = [:], requests: [RequestInfo] = [], loadSeconds: Double = 1,
          healthy: Bool = true, draining: Bool = false) -> ReplicaLoad {
    var r = ReplicaLoad(id: id, healthy: healthy, draining: draining, kvBlocksTotal: total,
                        kvBlocksFree: total - fixedKV - requests.reduce(0) { $0 + $1.kvBlocks }, adapterSlots: slots,
                        residentAdapters: resident, defaultAdapterLoadSeconds: loadSeconds, running: requests)
    for request in requests { r.perAdapter[request.adapter, default: AdapterCounts()].running += 1 }
    for (name, n) in waiting { r.perAdapter[name, default: AdapterCounts()].waiting += n }
    return r
}

func request(_ id: UInt64, _ adapter: String, seconds: Double, kv: Int = 5) -> RequestInfo {
    RequestInfo(id: id, adapter: adapter, tokens: kv * 16, kvBlocks: kv, remainingEstimate: Int(seconds * 10),
                remainingSeconds: seconds)
}

/// Where `moves` leave `replicas`, computed independently of the library's model: whether every receiving
/// replica keeps within its KV limit and adapter slots, and the makespan.
func outcome(of moves: [MigrationMove], _ replicas: [ReplicaLoad], destinationKVLimit: Double = 0.9)
    -> (feasible: Bool, makespan: Double) {
    var place: [UInt64: Int] = [:]
    var info: [UInt64: RequestInfo] = [:]
    for r in replicas where r.healthy { for q in r.running { place[q.id] = r.id; info[q.id] = q } }
    for move in moves { place[move.requestID] = move.to }
    let received = Set(moves.map(\.to))
    var feasible = true
    var makespan = 0.0
    for r in replicas where r.healthy {
        let mine = place.filter { $0.value == r.id }.keys.map { info[$0]! }
        let original = r.running.reduce(0) { $0 + $1.kvBlocks }
        let used = r.kvBlocksTotal - r.kvBlocksFree - original + mine.reduce(0) { $0 + $1.kvBlocks }
        let adapters = Set(mine.map(\.adapter).filter { !$0.isEmpty })
        let required = adapters.union(r.perAdapter.filter { !$0.key.isEmpty && $0.value.waiting > 0 }.keys)
        if received.contains(r.id) {
            if r.draining || Double(used) > destinationKVLimit * Double(r.kvBlocksTotal) { feasible = false }
            if !required.isSubset(of: r.residentAdapters) && required.count > r.adapterSlots { feasible = false }
        }
        let time = r.pinnedWorkSeconds + mine.reduce(0) { $0 + $1.remainingSeconds }
            + adapters.subtracting(r.residentAdapters).reduce(0) { $0 + (r.adapterLoadSeconds[$1] ?? r.defaultAdapterLoadSeconds) }
        makespan = max(makespan, time)
    }
    return (feasible, makespan)
}

/// Checks `plan` against `replicas`: each request moves once, from where it runs, to a usable replica,
/// flagged for an adapter load exactly when the adapter is not resident there; the limits hold; the
/// plan's makespan is what its moves give. Returns that makespan.
func checkPlan(_ plan: MigrationPlan, _ replicas: [ReplicaLoad], sourceLocation: SourceLocation = #_sourceLocation) -> Double {
    var place: [UInt64: Int] = [:]
    for r in replicas where r.healthy { for q in r.running { place[q.id] = r.id } }
    var seen = Set<UInt64>()
    let byID = Dictionary(uniqueKeysWithValues: replicas.map { ($0.id, $0) })
    for move in plan.moves {
        #expect(seen.insert(move.requestID).inserted, "moved once", sourceLocation: sourceLocation)
        #expect(place[move.requestID] == move.from && move.from != move.to, sourceLocation: sourceLocation)
        let to = byID[move.to]!
        #expect(to.healthy && !to.draining, "a usable destination", sourceLocation: sourceLocation)
        #expect(move.needsAdapterLoad == (!move.adapter.isEmpty && !to.residentAdapters.contains(move.adapter)),
                sourceLocation: sourceLocation)
    }
    let result = outcome(of: plan.moves, replicas)
    #expect(result.feasible, "KV and slot limits hold", sourceLocation: sourceLocation)
    #expect(abs(result.makespan - plan.makespanAfter) < 1e-9, "the plan's makespan is what its moves give",
            sourceLocation: sourceLocation)
    return result.makespan
}

/// A small random instance: 2–3 replicas, 1–`maxRequests` requests, adapters "", a, b, c; integer seconds so
/// that ties happen.
func randomInstance(_ rng: inout SeededGenerator, maxRequests: Int = 8, replicas count: Int? = nil) -> [ReplicaLoad] {
    let names = ["", "a", "b", "c"]
    let replicaCount = count ?? Int.random(in: 2...3, using: &rng)
    var lists = [[RequestInfo]](repeating: [], count: replicaCount)
    for id in 0..<Int.random(in: 1...maxRequests, using: &rng) {
        // Skewed: replica 0 tends to hold more, as an overloaded one would.
        let at = Int.random(in: 0...2, using: &rng) == 0 ? Int.random(in: 0..<replicaCount, using: &rng) : 0
        lists[at].append(request(UInt64(id), names.randomElement(using: &rng)!,
                                 seconds: Double(Int.random(in: 1...20, using: &rng)), kv: Int.random(in: 1...25, using: &rng)))
    }
    return (0..<replicaCount).map { id in
        var resident = Set(lists[id].map(\.adapter).filter { !$0.isEmpty })
        if Bool.random(using: &rng) { resident.insert(names[Int.random(in: 1...3, using: &rng)]) }
        let slots = max(resident.count, Int.random(in: 1...3, using: &rng))
        let used = lists[id].reduce(0) { $0 + $1.kvBlocks }
        let fixed = Int.random(in: 0...40, using: &rng)
        let waiting: [String: Int] = Int.random(in: 0...4, using: &rng) == 0 ? [names[Int.random(in: 1...3, using: &rng)]: 1] : [:]
        return host(id, total: max(100, used + fixed + 5), fixedKV: fixed, slots: slots, resident: resident, waiting: waiting,
                    requests: lists[id], loadSeconds: Double(Int.random(in: 0...5, using: &rng)))
    }
}

@Suite struct MigrationTriggerTests {
    let trigger = MigrationTrigger()

    @Test func kvPressureNeedsALessFullReplica() {
        #expect(trigger.configuration.periodSeconds == 10)
        #expect(trigger.check([replica(0, free: 5), replica(1, free: 60)]) == .kvPressure(replica: 0, usage: 0.95))
        #expect(trigger.check([replica(0, free: 10), replica(1, free: 60)]) == .kvPressure(replica: 0, usage: 0.9), "≥ 90 % fires")
        #expect(trigger.check([replica(0, free: 11), replica(1, free: 60)]) == nil)
        #expect(trigger.check([replica(0, free: 5), replica(1, free: 8)]) == nil, "nowhere to go")
        #expect(trigger.check([replica(0, free: 5), replica(1, free: 60, healthy: false)]) == nil)
        let lower = MigrationTrigger(configuration: MigrationConfiguration(kvUsageThreshold: 0.5))
        #expect(lower.check([replica(0, free: 40), replica(1, free: 60)]) == .kvPressure(replica: 0, usage: 0.6))
    }

    @Test func requestImbalance() {
        // 20 vs 0 requests: average 10, excess 10 < 16.
        #expect(trigger.check([replica(0, waiting: ["a": 20]), replica(1)]) == nil)
        // 33 vs 1: average 17, excess 16.
        #expect(trigger.check([replica(0, waiting: ["a": 30], running: ["b": 3]), replica(1, running: ["a": 1])])
                == .requestImbalance(replica: 0, excess: 16))
        let tight = MigrationTrigger(configuration: MigrationConfiguration(requestExcess: 4))
        #expect(tight.check([replica(0, waiting: ["a": 10]), replica(1)]) == .requestImbalance(replica: 0, excess: 5))
    }

    @Test func drainingReplicaWithRequestsFires() {
        #expect(trigger.check([replica(0, running: ["a": 1], draining: true), replica(1)]) == .draining(replica: 0))
        #expect(trigger.check([replica(0, draining: true), replica(1)]) == nil, "already empty")
        #expect(trigger.check([replica(0, running: ["a": 1], draining: true)]) == nil, "nowhere to go")
    }
}
