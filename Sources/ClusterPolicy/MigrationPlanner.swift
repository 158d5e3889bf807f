/// dLoRA's request–adapter co-migration, as a local search instead of the artifact's integer program
/// (which it warm-starts from the current placement; we start from it too, and stop at a local optimum).
///
/// The model (`MigrationProblem`): each healthy replica's work time is its pinned work plus the remaining
/// seconds of its requests plus the load time of each adapter it must newly load; the plan minimises the
/// makespan (the slowest replica's time) under the receivers' KV and adapter-slot limits.
///
/// Algorithm, deterministic: three descents, keep the best plan.
/// 1. Start A, from where requests run now. Drain first: requests on draining replicas, longest first, each
///    go to the allowed destination whose time after taking it is least (the adapter's load counted); a
///    request no destination can take stays.
///    Start B, an LPT rebuild: every movable request, longest first, goes to the allowed replica whose time
///    after taking it is least (its current replica on ties), within the limits; one that fits nowhere
///    stays where it is (if that breaks its replica's limits, start B falls back to start A).
///    Start C, the same rebuild with the largest KV holders first (first-fit decreasing on the scarce
///    resource: it finds the exchanges that tight KV limits allow). B and C only with at most 64 movable
///    requests: they serve small tightly packed instances, and would churn large ones.
/// 2. Descend from each start, at most `maxIterations` steps. A step tries, in this order until one helps:
///    a. out of the sources — the replicas at the makespan and the draining ones still holding requests —
///       one request to another replica, or all of the source's requests of one adapter to another
///       replica (the adapter's load paid once: this is how an adapter "moves with its requests"; not for
///       base-model requests, which need none);
///    b. the same out of every replica slower than the mean (a move between two others can make room);
///    c. out of the sources again, adding swaps of one source request with one request elsewhere;
///    d. adding compound moves: any two source requests at once, and two-for-one swaps either way, which
///       get past tight KV limits (only between replicas holding at most 16 movable requests each).
///    Within a level it takes the move with the best (requests left on draining replicas, makespan,
///    Σ time²) if strictly better than now; when no level has one, the descent ends. Σ time² lets a move
///    off one of several equally slow replicas, or one that makes room, count as progress.
/// 3. The best end point wins: fewer requests left on draining replicas, then the lower makespan, then
///    fewer moves (migration is not free), then Σ time².
/// Each candidate is evaluated in O(1) (only two replicas change). A step costs O(n·R) evaluations for n
/// requests on the sources and R replicas in level a, at most O(N·R) in b, O(n·N) in c, O(n²·N) in d (N requests);
/// every step strictly improves the ranking, so a descent never cycles.
public struct MigrationPlanner: Sendable {
    public var configuration: MigrationConfiguration

    public init(configuration: MigrationConfiguration = MigrationConfiguration()) {
        self.configuration = configuration
    }

    /// The moves that balance `replicas` (their `running` lists are what can move).
    public func plan(replicas: [ReplicaLoad]) -> MigrationPlan {
        let problem = MigrationProblem(replicas: replicas, configuration: configuration)
        return problem.plan(Self.search(problem, maxIterations: configuration.maxIterations))
    }

    enum Start { case current, longestFirst, largestKVFirst }

    /// Starts B and C are tried only up to this many movable requests: they are for small, tightly packed
    /// instances, and on large ones they would trade many moves for little.
    static let rebuildLimit = 64

    /// The best assignment of the three descents (see the type's comment).
    static func search(_ problem: MigrationProblem, maxIterations: Int) -> [Int] {
        var best: (assignment: [Int], rank: PlanRank)?
        let starts: [Start] = problem.requests.count <= rebuildLimit ? [.current, .longestFirst, .largestKVFirst] : [.current]
        for start in starts {
            var search = LocalSearch(problem: problem)
            switch start {
            case .current: search.drain()
            case .longestFirst: search.rebuild { $0.remainingSeconds > $1.remainingSeconds }
            case .largestKVFirst: search.rebuild { $0.kvBlocks > $1.kvBlocks }
            }
            var steps = 0
            while steps < maxIterations && (search.improve(.bottleneck) || search.improve(.everyReplica) || search.improve(.swaps)
                                              || search.improve(.compound)) { steps += 1 }
            let rank = PlanRank(key: search.key, moves: search.moves)
            if best == nil || rank.better(than: best!.rank) { best = (search.assignment, rank) }
        }
        return best!.assignment
    }
}

/// The final choice between descents: the key, then fewer moves.
struct PlanRank {
    var key: PlanKey
    var moves: Int

    func better(than other: PlanRank) -> Bool {
        if key.leftOnDraining != other.key.leftOnDraining { return key.leftOnDraining < other.key.leftOnDraining }
        let eps = MigrationProblem.epsilon * max(1, abs(other.key.makespan))
        if abs(key.makespan - other.key.makespan) > eps { return key.makespan < other.key.makespan }
        if moves != other.moves { return moves < other.moves }
        return key.better(than: other.key)
    }
}

/// Ranking of a candidate assignment: lexicographic, smaller is better.
struct PlanKey {
    var leftOnDraining: Int
    var makespan: Double
    var sumOfSquares: Double

    func better(than other: PlanKey) -> Bool {
        if leftOnDraining != other.leftOnDraining { return leftOnDraining < other.leftOnDraining }
        let eps = MigrationProblem.epsilon * max(1, abs(other.makespan))
        if makespan < other.makespan - eps { return true }
        if makespan > other.makespan + eps { return false }
        return sumOfSquares < other.sumOfSquares - MigrationProblem.epsilon * max(1, other.sumOfSquares)
    }
}

struct LocalSearch {
    let problem: MigrationProblem
    var assignment: [Int]
    var loads: [MigrationProblem.NodeLoad]
    var members: [[Int]]

    init(problem: MigrationProblem) {
        self.problem = problem
        assignment = problem.origins
        loads = problem.loads(assignment)
        members = problem.nodes.indices.map { n in problem.requests.indices.filter { problem.requests[$0].origin == n } }
    }

    var times: [Double] { problem.nodes.indices.map { problem.time(loads[$0], at: $0) } }

    var key: PlanKey {
        let t = times
        return PlanKey(leftOnDraining: problem.leftOnDraining(assignment), makespan: t.max() ?? 0,
                       sumOfSquares: t.reduce(0) { $0 + $1 * $1 })
    }

    mutating func move(_ r: Int, to n: Int) {
        let from = assignment[r]
        problem.remove(r, from: &loads[from], at: from)
        members[from].removeAll { $0 == r }
        problem.add(r, to: &loads[n], at: n)
        members[n].append(r)
        assignment[r] = n
    }

    var moves: Int { problem.requests.indices.filter { assignment[$0] != problem.requests[$0].origin }.count }

    /// Starts B and C: every request placed afresh in the given order, where its replica's time ends least.
    mutating func rebuild(by before: (RequestInfo, RequestInfo) -> Bool) {
        let order = problem.requests.indices.sorted {
            let a = problem.requests[$0].info, b = problem.requests[$1].info
            return before(a, b) ? true : before(b, a) ? false : $0 < $1
        }
        assignment = problem.origins
        loads = problem.nodes.indices.map(problem.emptyLoad)
        members = problem.nodes.map { _ in [] }
        var placed = [Bool](repeating: false, count: problem.requests.count)
        // A request that fits nowhere goes home at the end; if that breaks its home's limits (others
        // moved in first), this start is abandoned for the current placement.
        for r in order {
            let origin = problem.requests[r].origin
            var best: (node: Int, time: Double)?
            for n in [origin] + problem.nodes.indices.filter({ $0 != origin && !problem.nodes[$0].draining }) {
                var load = loads[n]
                problem.add(r, to: &load, at: n)
                guard problem.feasible(load, at: n) else { continue }
                let t = problem.time(load, at: n)
                if best == nil || t < best!.time - MigrationProblem.epsilon { best = (n, t) }
            }
            guard let b = best else { continue }
            problem.add(r, to: &loads[b.node], at: b.node)
            members[b.node].append(r)
            assignment[r] = b.node
            placed[r] = true
        }
        for r in order where !placed[r] {
            let origin = problem.requests[r].origin
            problem.add(r, to: &loads[origin], at: origin)
            members[origin].append(r)
        }
        if !problem.nodes.indices.allSatisfy({ problem.feasible(loads[$0], at: $0) }) {
            self = LocalSearch(problem: problem)
            drain()
        }
    }

    mutating func drain() {
        let stranded = problem.requests.indices.filter { problem.nodes[assignment[$0]].draining }
            .sorted { problem.requests[$0].info.remainingSeconds > problem.requests[$1].info.remainingSeconds }
        for r in stranded {
            var best: (node: Int, time: Double)?
            for n in problem.nodes.indices where !problem.nodes[n].draining {
                var load = loads[n]
                problem.add(r, to: &load, at: n)
                guard problem.feasible(load, at: n) else { continue }
                let t = problem.time(load, at: n)
                if best == nil || t < best!.time { best = (n, t) }
            }
            if let b = best { move(r, to: b.node) }
        }
    }

    /// A candidate step: requests `out` leave `source` for `target`, requests `back` go the other way.
    struct Step {
        var source: Int
        var target: Int
        var out: [Int]
        var back: [Int]
    }

    /// What `evaluate` needs of the current state, computed once per step.
    struct Snapshot {
        var times: [Double]
        /// The three slowest replicas (time, index), slowest first: the makespan without two given
        /// replicas is the first of these that is neither.
        var top: [(time: Double, node: Int)]
        var sumOfSquares: Double
        var leftOnDraining: Int
    }

    func snapshot() -> Snapshot {
        let t = times
        let top = t.indices.map { (time: t[$0], node: $0) }
            .sorted { $0.time != $1.time ? $0.time > $1.time : $0.node < $1.node }.prefix(3)
        return Snapshot(times: t, top: Array(top), sumOfSquares: t.reduce(0) { $0 + $1 * $1 },
                        leftOnDraining: problem.leftOnDraining(assignment))
    }

    /// The key after `step`, or nil if it breaks a limit.
    func evaluate(_ step: Step, _ now: Snapshot) -> PlanKey? {
        let s = problem.whatIf(loads[step.source], at: step.source, removing: step.out, adding: step.back)
        guard problem.feasible(s, at: step.source) else { return nil }
        let t = problem.whatIf(loads[step.target], at: step.target, removing: step.back, adding: step.out)
        guard problem.feasible(t, at: step.target) else { return nil }
        let ts = problem.time(s, at: step.source), tt = problem.time(t, at: step.target)
        var makespan = max(ts, tt)
        if let other = now.top.first(where: { $0.node != step.source && $0.node != step.target }) {
            makespan = max(makespan, other.time)
        }
        let oldS = now.times[step.source], oldT = now.times[step.target]
        let squares = now.sumOfSquares - oldS * oldS - oldT * oldT + ts * ts + tt * tt
        var left = now.leftOnDraining
        if problem.nodes[step.source].draining { left -= step.out.count - step.back.count }
        return PlanKey(leftOnDraining: left, makespan: makespan, sumOfSquares: squares)
    }

    /// Which steps `improve` looks at (see `MigrationPlanner`).
    enum Neighbourhood {
        /// Single and adapter-group moves out of the slowest (and draining) replicas.
        case bottleneck
        /// Single and adapter-group moves out of every replica slower than the mean.
        case everyReplica
        /// Out of the slowest replicas: single and adapter-group moves, and swaps.
        case swaps
        /// Out of the slowest replicas: also two requests at once, and two-for-one swaps either way.
        case compound
    }

    /// Compound moves are tried only between replicas holding at most this many movable requests each (the
    /// pairs grow quadratically; large replicas have enough single moves to balance with).
    static let compoundLimit = 16

    func pairs(_ list: [Int]) -> [[Int]] {
        var result: [[Int]] = []
        for i in list.indices { for j in list.indices where j > i { result.append([list[i], list[j]]) } }
        return result
    }

    /// Takes the best strictly improving step; false when there is none.
    mutating func improve(_ neighbourhood: Neighbourhood) -> Bool {
        let now = snapshot()
        let t = now.times
        let current = PlanKey(leftOnDraining: now.leftOnDraining, makespan: now.top.first?.time ?? 0,
                              sumOfSquares: now.sumOfSquares)
        let eps = MigrationProblem.epsilon * max(1, current.makespan)
        let fromAll = neighbourhood == .everyReplica
        let mean = t.reduce(0, +) / Double(max(1, t.count))
        let sources = problem.nodes.indices.filter { n in
            !members[n].isEmpty && (fromAll ? t[n] > mean + eps : t[n] >= current.makespan - eps) || problem.nodes[n].draining
        }
        var best: (step: Step, key: PlanKey)?
        func consider(_ step: Step) {
            guard let k = evaluate(step, now), k.better(than: best?.key ?? current) else { return }
            best = (step, k)
        }
        for source in sources {
            let groups = Dictionary(grouping: members[source]) { problem.requests[$0].info.adapter }
            let adapters = groups.keys.sorted()
            for target in problem.nodes.indices where target != source && !problem.nodes[target].draining {
                for r in members[source] { consider(Step(source: source, target: target, out: [r], back: [])) }
                for adapter in adapters where !adapter.isEmpty && groups[adapter]!.count > 1 {
                    consider(Step(source: source, target: target, out: groups[adapter]!, back: []))
                }
                guard neighbourhood == .swaps || neighbourhood == .compound else { continue }
                for r in members[source] {
                    for q in members[target] { consider(Step(source: source, target: target, out: [r], back: [q])) }
                }
                guard neighbourhood == .compound, members[source].count <= Self.compoundLimit,
                      members[target].count <= Self.compoundLimit else { continue }
                for pair in pairs(members[source]) {
                    consider(Step(source: source, target: target, out: pair, back: []))
                    for q in members[target] { consider(Step(source: source, target: target, out: pair, back: [q])) }
                }
                for pair in pairs(members[target]) {
                    for r in members[source] { consider(Step(source: source, target: target, out: [r], back: pair)) }
                }
            }
        }
        guard let step = best?.step else { return false }
        for r in step.out { move(r, to: step.target) }
        for r in step.back { move(r, to: step.source) }
        return true
    }
}
