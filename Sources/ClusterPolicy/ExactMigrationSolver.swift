/// The exact answer to the migration model, for small instances: the yardstick `MigrationPlanner` is tested
/// against. Not meant for the router (its search is exponential in the number of requests).

/// Exhaustive search over every assignment of running requests to healthy replicas (a request stays where it
/// is or goes to any non-draining replica), with the same model and limits as `MigrationPlanner`
/// (`MigrationProblem`). Depth-first, longest requests first, pruning a branch once its partial
/// (requests left on draining replicas, makespan) cannot beat the best found, or once a limit is broken
/// (both only grow as requests are added). The makespan bound of a partial assignment is the larger of its
/// slowest replica and (Σ replica times + Σ unassigned requests' seconds) / replicas. The search starts
/// from `MigrationPlanner`'s plan as the best found, so it only has to look for better ones (the artifact
/// warm-starts its integer program from the current placement the same way). Among optimal plans it
/// returns one with the fewest moves.
public struct ExactMigrationSolver: Sendable {
    public var configuration: MigrationConfiguration
    /// Instances with more running requests than this are refused (nil).
    public var maxRequests: Int

    public init(configuration: MigrationConfiguration = MigrationConfiguration(), maxRequests: Int = 12) {
        self.configuration = configuration
        self.maxRequests = maxRequests
    }

    /// The optimal plan, or nil when the instance has more than `maxRequests` running requests.
    public func solve(replicas: [ReplicaLoad]) -> MigrationPlan? {
        let problem = MigrationProblem(replicas: replicas, configuration: configuration)
        guard problem.requests.count <= maxRequests else { return nil }
        var search = ExhaustiveSearch(problem: problem,
                                      start: MigrationPlanner.search(problem, maxIterations: configuration.maxIterations))
        search.run()
        return problem.plan(search.bestAssignment)
    }
}

struct ExhaustiveSearch {
    let problem: MigrationProblem
    let order: [Int]
    /// Seconds of the requests from `order[depth]` on.
    let remaining: [Double]
    var assignment: [Int]
    var loads: [MigrationProblem.NodeLoad]
    var bestAssignment: [Int]
    var best: (left: Int, makespan: Double, moves: Int)

    init(problem: MigrationProblem, start: [Int]) {
        self.problem = problem
        let order = problem.requests.indices.sorted {
            problem.requests[$0].info.remainingSeconds != problem.requests[$1].info.remainingSeconds
                ? problem.requests[$0].info.remainingSeconds > problem.requests[$1].info.remainingSeconds : $0 < $1
        }
        self.order = order
        var suffix = [Double](repeating: 0, count: order.count + 1)
        for depth in order.indices.reversed() { suffix[depth] = suffix[depth + 1] + problem.requests[order[depth]].info.remainingSeconds }
        remaining = suffix
        assignment = problem.origins
        loads = problem.nodes.indices.map(problem.emptyLoad)
        bestAssignment = start
        best = (problem.leftOnDraining(start), problem.makespan(start),
                start.indices.filter { start[$0] != problem.requests[$0].origin }.count)
    }

    mutating func run() { visit(depth: 0, left: 0, moves: 0) }

    /// A lower bound on the makespan of any completion of the current partial assignment.
    func makespanBound(depth: Int) -> Double {
        var slowest = 0.0, total = 0.0
        for n in problem.nodes.indices {
            let t = problem.time(loads[n], at: n)
            slowest = max(slowest, t)
            total += t
        }
        return max(slowest, (total + remaining[depth]) / Double(max(1, problem.nodes.count)))
    }

    func worse(left: Int, makespan: Double, moves: Int, orEqual: Bool) -> Bool {
        if left != best.left { return left > best.left }
        let eps = MigrationProblem.epsilon * max(1, best.makespan)
        if makespan > best.makespan + eps { return true }
        if makespan < best.makespan - eps { return false }
        return orEqual ? moves >= best.moves : moves > best.moves
    }

    mutating func visit(depth: Int, left: Int, moves: Int) {
        let makespan = makespanBound(depth: depth)
        if depth == order.count {
            if !worse(left: left, makespan: makespan, moves: moves, orEqual: true) {
                best = (left, makespan, moves)
                bestAssignment = assignment
            }
            return
        }
        if worse(left: left, makespan: makespan, moves: moves, orEqual: false) { return }
        let r = order[depth]
        let origin = problem.requests[r].origin
        // Staying first: ties then keep the plan with fewer moves.
        let choices = [origin] + problem.nodes.indices.filter { $0 != origin && !problem.nodes[$0].draining }
        for n in choices {
            problem.add(r, to: &loads[n], at: n)
            if problem.feasible(loads[n], at: n) {
                assignment[r] = n
                visit(depth: depth + 1, left: left + (problem.nodes[n].draining ? 1 : 0), moves: moves + (n == origin ? 0 : 1))
            }
            problem.remove(r, from: &loads[n], at: n)
        }
        assignment[r] = origin
    }
}
