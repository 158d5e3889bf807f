import Testing
import ClusterPolicy

@Suite struct DispatchTests {
    /// Every policy, fresh.
    func policies() -> [any DispatchPolicy] {
        [RoundRobin(), LeastLoaded(), LoRAAffinity(), DLoRAProactive(), PlacedRoundRobin(placement: ["x": [0, 1, 3]])]
    }

    @Test func noUsableReplicaMeansNil() {
        let replicas = [replica(0, healthy: false), replica(1, draining: true)]
        for var policy in policies() {
            #expect(policy.choose(adapter: "x", promptTokens: 10, replicas: replicas) == nil, "\(type(of: policy))")
            #expect(policy.choose(adapter: "x", promptTokens: 10, replicas: []) == nil)
        }
    }

    @Test func unhealthyAndDrainingAreSkipped() {
        // The skipped ones are the most attractive by every measure: empty, adapter resident.
        let replicas = [replica(0, resident: ["x"], healthy: false), replica(1, resident: ["x"], draining: true),
                        replica(2, free: 10, waiting: ["y": 9], running: ["y": 9]), replica(3, healthy: false)]
        for var policy in policies() {
            for _ in 0..<3 {
                #expect(policy.choose(adapter: "x", promptTokens: 10, replicas: replicas) == 2, "\(type(of: policy))")
            }
        }
    }

    @Test func roundRobinCyclesOverUsableReplicas() {
        var policy = RoundRobin()
        let three = [replica(0), replica(1), replica(2)]
        #expect((0..<6).map { _ in policy.choose(adapter: "", promptTokens: 1, replicas: three) } == [0, 1, 2, 0, 1, 2])
        var skipping = RoundRobin()
        let middleDown = [replica(0), replica(1, healthy: false), replica(2)]
        #expect((0..<4).map { _ in skipping.choose(adapter: "", promptTokens: 1, replicas: middleDown) } == [0, 2, 0, 2])
    }

    /// A placed adapter cycles over its own replicas (in id order, skipping unusable ones), whatever their load;
    /// the base model and an adapter placed nowhere cycle over all, on a cursor of their own.
    @Test func placedRoundRobinKeepsEachAdapterOnItsReplicas() {
        var policy = PlacedRoundRobin(placement: ["a": [2, 0], "b": [1]])
        let four = [replica(0), replica(1, free: 1, waiting: ["b": 50]), replica(2), replica(3)]
        #expect((0..<4).map { _ in policy.choose(adapter: "a", promptTokens: 1, replicas: four) } == [0, 2, 0, 2])
        #expect((0..<3).map { _ in policy.choose(adapter: "b", promptTokens: 1, replicas: four) } == [1, 1, 1])
        #expect((0..<5).map { _ in policy.choose(adapter: "", promptTokens: 1, replicas: four) } == [0, 1, 2, 3, 0])
        #expect(policy.choose(adapter: "c", promptTokens: 1, replicas: four) == 1)
        // Replica 2 down: "a" stays on 0; "b"'s only replica down: the shared cursor takes it.
        let down = [replica(0), replica(1, healthy: false), replica(2, healthy: false), replica(3)]
        #expect((0..<3).map { _ in policy.choose(adapter: "a", promptTokens: 1, replicas: down) } == [0, 0, 0])
        #expect((0..<2).map { _ in policy.choose(adapter: "b", promptTokens: 1, replicas: down) } == [3, 0])
        // Ids that are not list positions.
        var shifted = PlacedRoundRobin(placement: ["a": [7, 5]])
        let renamed = [replica(5), replica(6), replica(7)]
        #expect((0..<3).map { _ in shifted.choose(adapter: "a", promptTokens: 1, replicas: renamed) } == [5, 7, 5])
    }

    @Test func leastLoadedPicksMostFreeBlocksPerRequest() {
        let policy = LeastLoaded()
        // 50 free / 5 requests = 10 per request; 30 free / 2 = 15 per request.
        let two = [replica(0, free: 50, waiting: ["a": 1], running: ["a": 4]), replica(1, free: 30, running: ["b": 2])]
        #expect(policy.choose(adapter: "a", promptTokens: 5, replicas: two) == 1)
        // A replica holding nothing is freest, however few blocks it has free.
        #expect(policy.choose(adapter: "a", promptTokens: 5, replicas: two + [replica(2, free: 1)]) == 2)
        // Equal freeness: the lower id.
        let tied = [replica(0, free: 40, running: ["a": 4]), replica(1, free: 20, running: ["a": 2])]
        #expect(policy.choose(adapter: "a", promptTokens: 5, replicas: tied) == 0)
        #expect(LeastLoaded.freeness(tied[1]) == 10)
    }

    /// 1.0 resident, 0.8 free slot, 0.6 waiting there, 0 otherwise.
    func affinityLadder() -> [ReplicaLoad] {
        [replica(0, resident: ["x"], waiting: ["a": 1]),
         replica(1, slots: 4, resident: ["a"], waiting: ["a": 1]),
         replica(2, slots: 2, resident: ["a", "b"], waiting: ["x": 1]),
         replica(3, slots: 2, resident: ["a", "b"], waiting: ["a": 1])]
    }

    @Test func loraAffinityScoresFollowGIE() {
        let ladder = affinityLadder()
        #expect(ladder.map { LoRAAffinity.affinity(adapter: "x", replica: $0) } == [1.0, 0.8, 0.6, 0])
        #expect(ladder.map { LoRAAffinity.affinity(adapter: "", replica: $0) } == [1, 1, 1, 1], "the base model needs no adapter")
        // A waiting-only adapter takes a slot in GIE's capacity test: resident 1 + waiting 1 of 2 slots → full.
        let full = replica(4, slots: 2, resident: ["a"], waiting: ["b": 1])
        #expect(LoRAAffinity.affinity(adapter: "x", replica: full) == 0)
    }

    @Test func loraAffinityOrderWhenQueueAndKVAreEqual() {
        // Each holds one waiting request and the same KV use, so only the affinity differs.
        var ladder = affinityLadder()
        let policy = LoRAAffinity()
        var picked: [Int] = []
        while let id = policy.choose(adapter: "x", promptTokens: 8, replicas: ladder) {
            picked.append(id)
            ladder.removeAll { $0.id == id }
        }
        #expect(picked == [0, 1, 2, 3])
    }

    @Test func loraAffinityCombinesQueueAndKV() {
        let policy = LoRAAffinity()
        // Both resident. Queue: waiting 5 vs 1 → 0 and 1. KV: 1 − 0.2 and 1 − 0.5.
        let replicas = [replica(0, free: 80, resident: ["x"], waiting: ["x": 5]),
                        replica(1, free: 50, resident: ["x"], waiting: ["x": 1])]
        let scores = policy.scores(adapter: "x", replicas: replicas)
        #expect(abs(scores[0]! - (1 + 0 + 0.8)) < 1e-12)
        #expect(abs(scores[1]! - (1 + 1 + 0.5)) < 1e-12)
        #expect(policy.choose(adapter: "x", promptTokens: 1, replicas: replicas) == 1)
        // A short queue beats affinity 1.0 vs 0 with equal weights: 0 + 1 + 1 > 1 + 0 + 0.9.
        let other = [replica(0, free: 90, resident: ["x"], waiting: ["x": 4]),
                     replica(1, slots: 1, resident: ["y"], waiting: ["y": 0])]
        #expect(policy.choose(adapter: "x", promptTokens: 1, replicas: other) == 1)
        // With the affinity weighted 3 (a common GIE LoRA profile) the resident replica wins.
        #expect(LoRAAffinity(loraWeight: 3).choose(adapter: "x", promptTokens: 1, replicas: other) == 0)
    }

    @Test func dispatchIsDeterministic() {
        var rng = SeededGenerator(seed: 42)
        let adapters = ["", "a", "b", "c"]
        var replicas: [ReplicaLoad] = []
        for id in 0..<5 {
            let free = Int.random(in: 0...100, using: &rng)
            replicas.append(replica(id, free: free, slots: 2, resident: [adapters[Int.random(in: 1...3, using: &rng)]],
                                    waiting: ["a": Int.random(in: 0...5, using: &rng)],
                                    running: ["b": Int.random(in: 0...5, using: &rng)]))
        }
        for var policy in policies() {
            var copy = policy
            let first = adapters.map { policy.choose(adapter: $0, promptTokens: 10, replicas: replicas) }
            let second = adapters.map { copy.choose(adapter: $0, promptTokens: 10, replicas: replicas) }
            #expect(first == second)
            #expect(first.allSatisfy { $0 != nil })
        }
    }
}
