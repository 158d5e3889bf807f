import Testing
import ClusterPolicy

@Suite struct MigrationPlannerTests {
    let planner = MigrationPlanner()

    @Test func balancesTwoReplicas() {
        let replicas = [host(0, resident: ["a"], requests: (0..<4).map { request($0, "a", seconds: 10) }),
                        host(1, resident: ["a"])]
        let plan = planner.plan(replicas: replicas)
        #expect(plan.makespanBefore == 40 && plan.makespanAfter == 20)
        #expect(plan.moves.count == 2 && plan.moves.allSatisfy { $0.from == 0 && $0.to == 1 && !$0.needsAdapterLoad })
        _ = checkPlan(plan, replicas)
    }

    @Test func adapterMovesWithItsRequestsAndIsLoadedOnce() {
        // Moving two of x's four 10 s requests costs replica 1 one 3 s load: 20 + 3 = 23 < 30.
        let replicas = [host(0, resident: ["x"], requests: (0..<4).map { request($0, "x", seconds: 10) }),
                        host(1, resident: ["y"], loadSeconds: 3)]
        let plan = planner.plan(replicas: replicas)
        #expect(plan.makespanAfter == 23)
        #expect(plan.moves.count == 2 && plan.moves.allSatisfy { $0.needsAdapterLoad && $0.adapter == "x" })
        #expect(checkPlan(plan, replicas) == 23)
    }

    @Test func noFreeSlotNoMove() {
        // Replica 1's only slot holds y, which has a request waiting: x cannot come.
        let replicas = [host(0, resident: ["x"], requests: (0..<4).map { request($0, "x", seconds: 10) }),
                        host(1, slots: 1, resident: ["y"], waiting: ["y": 1])]
        let plan = planner.plan(replicas: replicas)
        #expect(plan.moves.isEmpty && plan.makespanAfter == 40)
        // An idle resident adapter is evicted instead.
        let idle = [replicas[0], host(1, slots: 1, resident: ["y"])]
        #expect(planner.plan(replicas: idle).makespanAfter == 21)
        // The base model needs no slot.
        let base = [host(0, requests: (0..<4).map { request($0, "", seconds: 10) }), host(1, slots: 0)]
        #expect(planner.plan(replicas: base).makespanAfter == 20)
    }

    @Test func destinationKVLimit() {
        // Replica 1 holds 80 of 100 blocks; the limit is 90, each request needs 6: only one fits.
        let replicas = [host(0, resident: ["a"], requests: (0..<4).map { request($0, "a", seconds: 10, kv: 6) }),
                        host(1, fixedKV: 80, resident: ["a"])]
        let plan = planner.plan(replicas: replicas)
        #expect(plan.moves.count == 1 && plan.makespanAfter == 30)
        _ = checkPlan(plan, replicas)
    }

    @Test func drainingReplicaIsEmptied() {
        let replicas = [host(0, resident: ["a"], requests: (0..<5).map { request($0, $0 % 2 == 0 ? "a" : "", seconds: 4) }, draining: true),
                        host(1, resident: ["a"], requests: [request(10, "a", seconds: 10)]),
                        host(2, resident: [])]
        let plan = planner.plan(replicas: replicas)
        #expect(plan.requestsLeftOnDraining == 0)
        #expect(Set(plan.moves.filter { $0.from == 0 }.map(\.requestID)) == [0, 1, 2, 3, 4])
        #expect(plan.moves.allSatisfy { $0.to != 0 })
        _ = checkPlan(plan, replicas)
        // With nowhere to go, requests stay.
        let stuck = [replicas[0], host(1, fixedKV: 90)]
        #expect(planner.plan(replicas: stuck).requestsLeftOnDraining == 5)
    }

    @Test func unhealthyReplicasTakeNoPart() {
        let replicas = [host(0, resident: ["a"], requests: (0..<4).map { request($0, "a", seconds: 10) }),
                        host(1, resident: ["a"], healthy: false),
                        host(2, resident: ["a"], requests: [request(9, "a", seconds: 100)], healthy: false)]
        let plan = planner.plan(replicas: replicas)
        #expect(plan.moves.isEmpty && plan.makespanBefore == 40)
    }

    /// The heuristic against the exact optimum on 400 seeded random instances (2–3 replicas, ≤ 8 requests,
    /// random adapters, slots, residency, waiting adapters, KV and load times; KV is often tight).
    /// Observed (seed 2024): optimal on 394 of 400, mean ratio 1.0013, worst 1.258 (39 s vs
    /// 31 s: two replicas both near the 90 % KV limit, where the optimum exchanges 6 of the 7 requests; no
    /// sequence of one- or two-request moves gets there). The bound asserted is 1.3, and optimal on ≥ 95 %.
    @Test func heuristicIsCloseToExact() {
        var rng = SeededGenerator(seed: 2024)
        let exact = ExactMigrationSolver()
        var equal = 0, worst = 1.0, sum = 0.0
        let instances = 400
        for _ in 0..<instances {
            let replicas = randomInstance(&rng)
            let heuristic = planner.plan(replicas: replicas)
            guard let optimum = exact.solve(replicas: replicas) else { Issue.record("too big for the exact solver"); continue }
            _ = checkPlan(heuristic, replicas)
            _ = checkPlan(optimum, replicas)
            #expect(heuristic.requestsLeftOnDraining == optimum.requestsLeftOnDraining)
            #expect(optimum.makespanAfter <= heuristic.makespanAfter + 1e-9, "exact is optimal")
            #expect(heuristic.makespanAfter <= heuristic.makespanBefore + 1e-9, "never worse than not moving")
            let ratio = optimum.makespanAfter > 0 ? heuristic.makespanAfter / optimum.makespanAfter : 1
            #expect(ratio <= 1.3, "heuristic \(heuristic.makespanAfter) vs optimum \(optimum.makespanAfter): \(replicas)")
            if abs(heuristic.makespanAfter - optimum.makespanAfter) < 1e-9 { equal += 1 }
            worst = max(worst, ratio)
            sum += ratio
        }
        print("ClusterPolicy heuristic vs exact: optimal on \(equal)/\(instances), worst ratio \(worst), mean \(sum / Double(instances))")
        #expect(equal * 20 >= instances * 19, "optimal on at least 95 % (\(equal)/\(instances))")
    }

    /// The exact solver starts from the heuristic's plan; this checks it against plain enumeration of every
    /// assignment, scored by the tests' own `outcome` (not the library's model).
    @Test func exactSolverMatchesBruteForce() {
        var rng = SeededGenerator(seed: 5)
        for _ in 0..<150 {
            let replicas = randomInstance(&rng, maxRequests: 5)
            let requests = replicas.flatMap { r in r.running.map { (info: $0, from: r.id) } }
            var best = Double.infinity
            var choice = [Int](repeating: 0, count: requests.count)
            while true {
                let moves = requests.indices.compactMap { i -> MigrationMove? in
                    let to = replicas[choice[i]].id
                    guard to != requests[i].from else { return nil }
                    return MigrationMove(requestID: requests[i].info.id, from: requests[i].from, to: to,
                                         adapter: requests[i].info.adapter, needsAdapterLoad: false)
                }
                let result = outcome(of: moves, replicas)
                if result.feasible { best = min(best, result.makespan) }
                var i = 0
                while i < choice.count && choice[i] == replicas.count - 1 { choice[i] = 0; i += 1 }
                if i == choice.count { break }
                choice[i] += 1
            }
            let exact = ExactMigrationSolver().solve(replicas: replicas)!
            #expect(abs(exact.makespanAfter - best) < 1e-9, "exact \(exact.makespanAfter) vs enumeration \(best)")
        }
    }

    @Test func largerInstancesStayWithinLimitsAndAreDeterministic() {
        var rng = SeededGenerator(seed: 99)
        for _ in 0..<10 {
            let replicas = randomInstance(&rng, maxRequests: 40, replicas: 6)
            let plan = planner.plan(replicas: replicas)
            #expect(plan == planner.plan(replicas: replicas))
            #expect(plan.makespanAfter <= plan.makespanBefore + 1e-9)
            _ = checkPlan(plan, replicas)
        }
    }

    @Test func exactSolverRefusesLargeInstances() {
        let replicas = [host(0, requests: (0..<13).map { request($0, "", seconds: 1, kv: 1) }), host(1)]
        #expect(ExactMigrationSolver().solve(replicas: replicas) == nil)
        #expect(ExactMigrationSolver(maxRequests: 13).solve(replicas: replicas)?.makespanAfter == 7)
    }
}
