/// The model both migration solvers optimise, so that the heuristic and the exact search agree on what a
/// plan costs and which plans are allowed.
///
/// - A replica's work time = its pinned work + Σ remaining seconds of the requests assigned to it + the load
///   time of every adapter its requests need that is not resident there (each adapter once).
/// - The makespan is the largest work time over the healthy replicas; unhealthy replicas take no part.
/// - A replica that receives at least one request must end with KV use ≤ `destinationKVLimit` of its
///   blocks, and the adapters it must hold (those of its requests, plus adapters with requests waiting
///   there) must fit its `adapterSlots` unless all are already resident (idle resident adapters are evicted
///   to make room). Draining replicas receive nothing.
/// - Plans are ranked by (requests left on draining replicas, makespan), then a tie-breaker.
struct MigrationProblem {
    struct Node {
        var id: Int
        var draining: Bool
        /// KV blocks in use by what cannot move (everything but its running requests).
        var kvFixed: Int
        var kvLimit: Int
        var slots: Int
        var resident: Set<String>
        /// Adapters with requests waiting there: they stay, and need a slot.
        var pinnedAdapters: Set<String>
        var pinnedWork: Double
        var loadSeconds: [String: Double]
        var defaultLoadSeconds: Double

        func load(_ adapter: String) -> Double {
            adapter.isEmpty || resident.contains(adapter) ? 0 : loadSeconds[adapter] ?? defaultLoadSeconds
        }
    }

    struct Request {
        var info: RequestInfo
        var origin: Int
    }

    /// What is assigned to one node, kept incrementally.
    struct NodeLoad {
        var seconds = 0.0
        var kv = 0
        var counts: [String: Int] = [:]
        /// Requests assigned here that came from elsewhere.
        var received = 0
        var loadCost = 0.0
        /// |pinned adapters ∪ adapters of assigned requests| ("" excluded).
        var required = 0
        /// How many of those are not resident.
        var nonResident = 0
    }

    var nodes: [Node]
    var requests: [Request]
    static let epsilon = 1e-9

    init(replicas: [ReplicaLoad], configuration: MigrationConfiguration) {
        nodes = []
        requests = []
        for replica in replicas where replica.healthy {
            let index = nodes.count
            let movable = replica.running.reduce(0) { $0 + $1.kvBlocks }
            let used = replica.kvBlocksTotal - replica.kvBlocksFree
            let pinned = Set(replica.perAdapter.filter { !$0.key.isEmpty && $0.value.waiting > 0 }.keys)
            nodes.append(Node(id: replica.id, draining: replica.draining, kvFixed: max(0, used - movable),
                              kvLimit: Int(max(0, configuration.destinationKVLimit * Double(replica.kvBlocksTotal))),  // truncation = floor here
                              slots: replica.adapterSlots, resident: replica.residentAdapters, pinnedAdapters: pinned,
                              pinnedWork: replica.pinnedWorkSeconds, loadSeconds: replica.adapterLoadSeconds,
                              defaultLoadSeconds: replica.defaultAdapterLoadSeconds))
            for info in replica.running { requests.append(Request(info: info, origin: index)) }
        }
    }

    /// The original assignment: every request where it runs.
    var origins: [Int] { requests.map(\.origin) }

    func emptyLoad(_ n: Int) -> NodeLoad {
        var load = NodeLoad()
        load.required = nodes[n].pinnedAdapters.count
        load.nonResident = nodes[n].pinnedAdapters.filter { !nodes[n].resident.contains($0) }.count
        return load
    }

    func add(_ r: Int, to load: inout NodeLoad, at n: Int) {
        let request = requests[r]
        let adapter = request.info.adapter
        load.seconds += request.info.remainingSeconds
        load.kv += request.info.kvBlocks
        if request.origin != n { load.received += 1 }
        let before = load.counts[adapter, default: 0]
        load.counts[adapter] = before + 1
        if before == 0 && !adapter.isEmpty {
            load.loadCost += nodes[n].load(adapter)
            if !nodes[n].pinnedAdapters.contains(adapter) {
                load.required += 1
                if !nodes[n].resident.contains(adapter) { load.nonResident += 1 }
            }
        }
    }

    func remove(_ r: Int, from load: inout NodeLoad, at n: Int) {
        let request = requests[r]
        let adapter = request.info.adapter
        load.seconds -= request.info.remainingSeconds
        load.kv -= request.info.kvBlocks
        if request.origin != n { load.received -= 1 }
        let after = load.counts[adapter, default: 0] - 1
        load.counts[adapter] = after > 0 ? after : nil
        if after == 0 && !adapter.isEmpty {
            load.loadCost -= nodes[n].load(adapter)
            if !nodes[n].pinnedAdapters.contains(adapter) {
                load.required -= 1
                if !nodes[n].resident.contains(adapter) { load.nonResident -= 1 }
            }
        }
    }

    /// `load` after `removing` and `adding` requests, its adapter counts left as they were (only the
    /// totals the limits and the time read are updated), so that trying a move copies no dictionary.
    func whatIf(_ load: NodeLoad, at n: Int, removing: [Int], adding: [Int]) -> NodeLoad {
        var result = load
        var deltas: [(adapter: String, delta: Int)] = []
        func note(_ adapter: String, _ delta: Int) {
            if let i = deltas.firstIndex(where: { $0.adapter == adapter }) { deltas[i].delta += delta } else { deltas.append((adapter, delta)) }
        }
        for r in removing {
            result.seconds -= requests[r].info.remainingSeconds
            result.kv -= requests[r].info.kvBlocks
            if requests[r].origin != n { result.received -= 1 }
            note(requests[r].info.adapter, -1)
        }
        for r in adding {
            result.seconds += requests[r].info.remainingSeconds
            result.kv += requests[r].info.kvBlocks
            if requests[r].origin != n { result.received += 1 }
            note(requests[r].info.adapter, 1)
        }
        for (adapter, delta) in deltas where delta != 0 && !adapter.isEmpty {
            let before = load.counts[adapter, default: 0], after = before + delta
            let sign = before == 0 && after > 0 ? 1.0 : before > 0 && after == 0 ? -1.0 : 0
            guard sign != 0 else { continue }
            result.loadCost += sign * nodes[n].load(adapter)
            if !nodes[n].pinnedAdapters.contains(adapter) {
                result.required += Int(sign)
                if !nodes[n].resident.contains(adapter) { result.nonResident += Int(sign) }
            }
        }
        return result
    }

    func time(_ load: NodeLoad, at n: Int) -> Double { nodes[n].pinnedWork + load.seconds + max(0, load.loadCost) }

    func feasible(_ load: NodeLoad, at n: Int) -> Bool {
        guard load.received > 0 else { return true }
        if nodes[n].draining { return false }
        if nodes[n].kvFixed + load.kv > nodes[n].kvLimit { return false }
        return load.required <= nodes[n].slots || load.nonResident == 0
    }

    func loads(_ assignment: [Int]) -> [NodeLoad] {
        var result = nodes.indices.map(emptyLoad)
        for (r, n) in assignment.enumerated() { add(r, to: &result[n], at: n) }
        return result
    }

    func makespan(_ assignment: [Int]) -> Double {
        let all = loads(assignment)
        return nodes.indices.map { time(all[$0], at: $0) }.max() ?? 0
    }

    func allFeasible(_ assignment: [Int]) -> Bool {
        let all = loads(assignment)
        return nodes.indices.allSatisfy { feasible(all[$0], at: $0) }
    }

    func leftOnDraining(_ assignment: [Int]) -> Int { assignment.filter { nodes[$0].draining }.count }

    /// The plan value for `assignment`.
    func plan(_ assignment: [Int]) -> MigrationPlan {
        var moves: [MigrationMove] = []
        for (r, n) in assignment.enumerated() where n != requests[r].origin {
            let info = requests[r].info
            moves.append(MigrationMove(requestID: info.id, from: nodes[requests[r].origin].id, to: nodes[n].id,
                                       adapter: info.adapter,
                                       needsAdapterLoad: !info.adapter.isEmpty && !nodes[n].resident.contains(info.adapter)))
        }
        return MigrationPlan(moves: moves, makespanBefore: makespan(origins), makespanAfter: makespan(assignment),
                             requestsLeftOnDraining: leftOnDraining(assignment))
    }
}
