import ClusterPolicy
import Scheduling
import Testing

@testable import Simulator

/// A small cluster under memory pressure: 4 replicas of the CPU model with 24 MiB of KV each (34 blocks), 16
/// adapters, prompts up to 256 tokens.
private func pressured(seed: UInt64, dispatch: SimDispatch = .dlora, migration: SimMigration = .kv, requests: Int = 120) -> SimulationResult {
    var config = SimulationConfig(replicas: 4, cost: CPUCostModel(kvCacheMegabytes: 24), policy: .dlora, dispatch: dispatch, migration: migration)
    config.migrationConfig = MigrationConfiguration(periodSeconds: 2, requestExcess: 3)
    config.adapterRanks = [8, 16, 32, 64]
    let spec = WorkloadSpec(requests: requests, rate: 20, adapters: 16, alpha: 1, lengths: .logNormal(promptMedian: 64, outputMedian: 24),
                            maxPrompt: 256, maxOutput: 96, seed: seed)
    return Simulation.run(config, workload: Workload.generate(spec))
}

@Suite struct EventQueueTests {
    @Test func popsInTimeOrderAndTiesInPushOrder() {
        var q = EventQueue<Int>()
        let times = [3.0, 1.0, 2.0, 1.0, 5.0, 2.0, 1.0]
        for (i, t) in times.enumerated() { q.push(i, at: t) }
        var out: [(Double, Int)] = []
        while let e = q.pop() { out.append((e.time, e.payload)) }
        #expect(out.map(\.0) == [1, 1, 1, 2, 2, 3, 5])
        #expect(out.map(\.1) == [1, 3, 6, 2, 5, 0, 4])
    }

    @Test func randomHeapMatchesSort() {
        var rng = SimRandom(seed: 7)
        var q = EventQueue<Int>()
        var reference: [(Double, Int)] = []
        for i in 0..<2000 {
            let t = Double(rng.next() % 100)
            q.push(i, at: t)
            reference.append((t, i))
        }
        reference.sort { $0.0 != $1.0 ? $0.0 < $1.0 : $0.1 < $1.1 }
        var popped: [Int] = []
        while let e = q.pop() { popped.append(e.payload) }
        #expect(popped == reference.map(\.1))
    }
}

@Suite struct WorkloadTests {
    @Test func parsesTheAzureTrace() throws {
        let csv = """
        TIMESTAMP,ContextTokens,GeneratedTokens
        2023-11-16 18:15:46.6805900,374,44
        2023-11-16 18:15:50.9951690,396,109
        garbage
        2023-11-17 00:00:00,10,1
        """
        let (times, lengths) = try Workload.azureTrace(csv: csv)
        #expect(times.count == 3)
        #expect(abs((times[1] - times[0]) - 4.314579) < 1e-6)
        #expect(abs((times[2] - times[0]) - (86_400 - (18 * 3600 + 15 * 60 + 46.68059))) < 1e-6)
        #expect(lengths.count == 3 && lengths[0].prompt == 374 && lengths[1].output == 109)
        // The trace file ends its lines with CR LF (one Character in Swift).
        let crlf = try Workload.azureTrace(csv: "TIMESTAMP,ContextTokens,GeneratedTokens\r\n2023-11-16 18:15:46.5,3,4\r\n2023-11-16 18:15:47,5,6\r\n")
        #expect(crlf.times.count == 2 && crlf.lengths.count == 2 && abs(crlf.times[1] - crlf.times[0] - 0.5) < 1e-9)
        // 1970-01-01 is day 0.
        #expect(Workload.parseTimestamp("1970-01-02 00:00:01") == 86_401)
        // A row that generated nothing counts as one token; a negative count is refused, naming its line.
        let zero = try Workload.azureTrace(csv: "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.5,3,0\n")
        #expect(zero.lengths.count == 1 && zero.lengths[0].output == 1)
        #expect(throws: WorkloadError.self) {
            try Workload.azureTrace(csv: "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.5,3,4\n\n2023-11-16 18:15:47,-5,6\n")
        }
        do {
            _ = try Workload.azureTrace(csv: "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.5,3,4\n\n2023-11-16 18:15:47,-5,6\n")
        } catch {
            #expect("\(error)".hasPrefix("line 4: negative token count"))
        }
    }

    @Test func poissonRateAndPowerLawPopularity() {
        let spec = WorkloadSpec(requests: 20_000, rate: 5, adapters: 8, alpha: 1, seed: 3)
        let w = Workload.generate(spec)
        let rate = Double(w.count - 1) / w.last!.arrival
        #expect(abs(rate - 5) / 5 < 0.03)
        var counts = [Int](repeating: 0, count: 8)
        for r in w { counts[r.adapter] += 1 }
        // P(k) ∝ 1/(k+1): adapter 0 twice as popular as adapter 1, 8 times adapter 7.
        #expect(abs(Double(counts[0]) / Double(counts[1]) - 2) < 0.15)
        #expect(abs(Double(counts[0]) / Double(counts[7]) - 8) < 1.2)
        #expect(Workload.generate(spec) == w)
    }

    /// Per-adapter bursts: off, the workload is exactly the unbursted one; on, it is seeded, each window has its
    /// own hot adapters (the top adapter differs between windows; within a window the shares follow the factors,
    /// far from the power law), and over many windows the factors average out (mean 1): the long-run shares keep
    /// the power law's order.
    @Test func perAdapterBurstsDriftBetweenWindows() {
        var spec = WorkloadSpec(requests: 40_000, rate: 20, adapters: 16, alpha: 1, seed: 5)
        let plain = Workload.generate(spec)
        spec.burstSigma = 0
        #expect(Workload.generate(spec) == plain)
        spec.burstSigma = 1.5
        spec.burstWindow = 10
        let bursty = Workload.generate(spec)
        #expect(Workload.generate(spec) == bursty)
        #expect(bursty.map(\.arrival) == plain.map(\.arrival))
        var tops = Set<Int>()
        var maxShare = 0.0
        for w in 0..<20 {
            var counts = [Int](repeating: 0, count: 16)
            for r in bursty where r.arrival >= Double(w) * 10 && r.arrival < Double(w + 1) * 10 { counts[r.adapter] += 1 }
            let top = counts.indices.max { counts[$0] < counts[$1] }!
            tops.insert(top)
            maxShare = max(maxShare, Double(counts[top]) / Double(max(1, counts.reduce(0, +))))
        }
        #expect(tops.count >= 5, "the hottest adapter should change between windows: \(tops)")
        // Unbursted, adapter 0's share is 1/H(16) ≈ 0.30; a window's hottest adapter goes well beyond it.
        #expect(maxShare > 0.5)
        var counts = [Int](repeating: 0, count: 16)
        for r in bursty { counts[r.adapter] += 1 }
        #expect(counts[0] > counts[7] && counts[1] > counts[15], "\(counts)")
        spec.burstWindow = 0
        #expect(spec.problem != nil)
    }

    @Test func traceGapsAreScaledToTheRate() {
        let gaps = [1.0, 3.0, 0.0, 4.0]
        let w = Workload.generate(WorkloadSpec(requests: 5, rate: 1, adapters: 1, arrivals: .traceGaps(gaps), lengths: .fixed(prompt: 4, output: 2)))
        #expect(w.map(\.arrival) == [0, 0.5, 2, 2, 4])
    }
}

@Suite struct CostModelTests {
    /// The roofline is calibrated to dLoRA's profiled Llama-2 7B / A800 points at a full batch of 32 decodes
    /// with ~500 tokens of context each: merged 15 ms, unmerged (32 adapters) 27 ms, switch 20 ms.
    @Test func rooflineMeetsTheProfiledPoints() throws {
        let m = try #require(RooflineCostModel.named("a800-7b") as? RooflineCostModel)
        let merged = m.stepSeconds(StepShape(mode: .merged(adapter: 0), sequences: 32, tokens: 32, prefillTokens: 0, contextTokens: 32 * 500,
                                             distinctAdapters: 0, loraTokens: 0))
        let unmerged = m.stepSeconds(StepShape(mode: .unmerged, sequences: 32, tokens: 32, prefillTokens: 0, contextTokens: 32 * 500,
                                               distinctAdapters: 32, loraTokens: 32))
        #expect(abs(merged - 0.015) < 0.001)
        #expect(abs(unmerged - 0.027) < 0.0015)
        let a = m.adapterProfile(key: 0, rank: 16)
        #expect(abs(m.mergeSeconds(a) + m.unmergeSeconds(a) - 0.020) < 1e-9)
        // Faster memory → faster decode; 70B runs on 4 GPUs.
        let h200 = try #require(RooflineCostModel.named("h200-7b"))
        #expect(h200.stepSeconds(StepShape(mode: .unmerged, sequences: 32, tokens: 32, prefillTokens: 0, contextTokens: 16000,
                                           distinctAdapters: 4, loraTokens: 32)) < unmerged)
        #expect((RooflineCostModel.named("a100-70b") as? RooflineCostModel)?.tensorParallel == 4)
        #expect(RooflineCostModel.named("tpu-7b") == nil)
        #expect(RooflineCostModel.names.count == 13)
    }

    /// A GPU replica's scheduler starts from the GPU's merge cost, not the CPU's 0.7 ns per element (which
    /// prices a 7B q/v merge at 0.75 s): with every request on one adapter and a full queue, dLoRA's switch
    /// then amortizes and the replica runs merged, as on the real hardware the roofline models. With the CPU
    /// prior it never merged, so it never timed a merge to correct the prior.
    @Test func aGPUReplicaPricesMergesAtItsOwnCost() throws {
        let m = try #require(RooflineCostModel.named("a800-7b") as? RooflineCostModel)
        let reference = m.adapterProfile(key: 0, rank: 16)
        let prior = m.switchPrior
        #expect(abs(prior.mergeSecondsPerElement * Double(reference.mergeElements) + prior.unmergeSeconds - 0.020) < 1e-9)
        // A CPU replica starts, as `dlora serve` does, from its own merge measured at start: its model's figures.
        var cpu = CPUCostModel()
        cpu.mergeSecondsPerElement = 1.5e-9
        #expect(cpu.switchPrior == SwitchPrior(mergeSecondsPerElement: 1.5e-9, unmergeSeconds: cpu.unmergeSecondsFixed))
        let spec = WorkloadSpec(requests: 300, rate: 40, adapters: 1, alpha: 1, lengths: .logNormal(promptMedian: 64, outputMedian: 64),
                                maxPrompt: 256, maxOutput: 128, seed: 3)
        var results: [String: SimulationResult] = [:]
        for (name, policy) in [("dlora", BatchingPolicyKind.dlora), ("unmerged", .unmergedOnly)] {
            let config = SimulationConfig(replicas: 1, cost: m, policy: policy, dispatch: .roundRobin, migration: .off)
            results[name] = Simulation.run(config, workload: Workload.generate(spec))
        }
        let dlora = try #require(results["dlora"]), unmerged = try #require(results["unmerged"])
        #expect(dlora.invariants.holds)
        // Nearly every step merged (the first ones run before the queue fills).
        #expect(dlora.replicaStats[0].mergedSteps > 9 * dlora.replicaStats[0].unmergedSteps)
        #expect(dlora.summary.avgLatencyPerToken < 0.8 * unmerged.summary.avgLatencyPerToken)
    }

    /// The status a simulated replica reports carries the adapter load time its real counterpart reports: a CPU
    /// replica the fixed 1 ms `dlora serve` reports (whatever the modelled load takes), a GPU replica its modelled
    /// PCIe load. The simulated router's dispatch then weighs a load as the real router does.
    @Test func replicasReportTheLoadTimeTheirServerReports() throws {
        var cpu = CPUCostModel()
        cpu.adapterLoadFixedSeconds = 0.004
        #expect(cpu.reportedAdapterLoadSeconds(bytes: 1_800_000) == AdapterResidency.reportedLoadSeconds)
        #expect(cpu.adapterLoadSeconds(bytes: 1_800_000) > 0.004)
        let gpu = try #require(RooflineCostModel.named("a800-7b"))
        #expect(gpu.reportedAdapterLoadSeconds(bytes: 8_000_000) == gpu.adapterLoadSeconds(bytes: 8_000_000))
    }

    @Test func cpuModelReproducesTheBenchRows() {
        let m = CPUCostModel()
        func decode(_ b: Int) -> Double {
            m.stepSeconds(StepShape(mode: .unmerged, sequences: b, tokens: b, prefillTokens: 0, contextTokens: 128 * b, distinctAdapters: 0,
                                    loraTokens: 0))
        }
        // bench/results/core.md: 8.79 / 25.14 / 76.79 ms per decode step at batch 1 / 8 / 32.
        #expect(abs(decode(1) - 0.00879) < 0.0005)
        #expect(abs(decode(8) - 0.02514) < 0.0015)
        #expect(abs(decode(32) - 0.07679) < 0.001)
        // bench/results/lora.md: a q/v rank-16 merge 10.64 ms; the adapter 1.8 MB.
        let a = m.adapterProfile(key: 0, rank: 16)
        #expect(abs(m.mergeSeconds(a) - 0.01064) < 0.0005)
        #expect(abs(Double(a.bytes) / 1e6 - 1.84) < 0.05)
        #expect(Double(a.loraParameters) == StepCostModel.smolLM2Reference.referenceLoRAParameters)
    }
}

@Suite struct SimulationTests {
    @Test func sameSeedSameLogDifferentSeedDifferentLog() {
        let a = pressured(seed: 11), b = pressured(seed: 11), c = pressured(seed: 12)
        #expect(a.summary.eventLogHash == b.summary.eventLogHash)
        #expect(a.summary == b.summary)
        #expect(a.records == b.records)
        #expect(a.summary.eventLogHash != c.summary.eventLogHash)
    }

    /// Every request finishes exactly once with exactly its workload's tokens (moves lose and repeat none), no
    /// replica ever holds more blocks than it has (and requests' plus adapters' blocks add up to the pool's
    /// used blocks), simulated time never goes back.
    @Test(arguments: [SimMigration.off, .recompute, .kv])
    func invariantsHold(migration: SimMigration) {
        for dispatch in SimDispatch.allCases {
            let r = pressured(seed: 5, dispatch: dispatch, migration: migration, requests: 100)
            #expect(r.invariants.holds, "\(dispatch) \(migration): \(r.invariants)")
            #expect(r.summary.finished == 100)
            let w = Workload.generate(WorkloadSpec(requests: 100, rate: 20, adapters: 16, alpha: 1,
                                                   lengths: .logNormal(promptMedian: 64, outputMedian: 24), maxPrompt: 256, maxOutput: 96, seed: 5))
            for (rec, req) in zip(r.records, w) where rec.finishReason != .length {
                #expect(rec.tokens == req.outputTokens, "request \(rec.id)")
                #expect(rec.finishReason == .stop)
            }
            #expect(r.summary.preemptions > 0, "the workload is meant to press on memory")
        }
    }

    /// dLoRA dispatch's index (`PresenceIndex`) says what the polled statuses say after every status and every
    /// dispatch, through loads, evictions and moves; and dispatch chooses with it exactly as without it (the
    /// router's way: every replica's status looked up).
    @Test(arguments: [SimMigration.off, .kv])
    func dispatchIndexFollowsTheStatuses(migration: SimMigration) {
        var config = SimulationConfig(replicas: 4, cost: CPUCostModel(kvCacheMegabytes: 24), policy: .dlora, dispatch: .dlora, migration: migration)
        config.migrationConfig = MigrationConfiguration(periodSeconds: 2, requestExcess: 3)
        config.adapterRanks = [8, 16, 32, 64]
        let w = Workload.generate(WorkloadSpec(requests: 200, rate: 20, adapters: 16, alpha: 1,
                                               lengths: .logNormal(promptMedian: 64, outputMedian: 24), maxPrompt: 256, maxOutput: 96, seed: 7))
        var run = SimulationRun(config: config, workload: w)
        run.verifyIndex = true
        run.run()
        let indexed = run.result()
        #expect(run.indexChecks > 200 && run.indexMismatches == 0, "\(run.indexMismatches) of \(run.indexChecks)")
        #expect(indexed.replicaStats.reduce(0) { $0 + $1.adapterEvictions } > 0, "adapters are meant to leave memory")
        config.indexedDispatch = false
        let looked = Simulation.run(config, workload: w)
        let sameSummary = indexed.summary == looked.summary, sameRecords = indexed.records == looked.records
        #expect(sameSummary && sameRecords)
    }

    /// Parallel replicas (`SimulationConfig.threads`) make the same decisions as one thread: the same records,
    /// summary (but for the event count and log hash), invariants and scheduler statistics, under memory
    /// pressure, with every dispatch policy, 2 and 3 lanes over 4 replicas (uneven lanes), requests that reach
    /// the replica later than they reach the router, adapter file loads with a host cache that evicts, and a
    /// time limit that stops the run with requests unfinished. The log hash differs: the parallel path ran.
    @Test(arguments: SimDispatch.allCases)
    func parallelReplicasMatchOneThread(dispatch: SimDispatch) {
        let w = Workload.generate(WorkloadSpec(requests: 160, rate: 20, adapters: 24, alpha: 1,
                                               lengths: .logNormal(promptMedian: 64, outputMedian: 24), maxPrompt: 256, maxOutput: 96, seed: 9))
        for variant in 0..<4 {
            var config = SimulationConfig(replicas: 4, cost: CPUCostModel(kvCacheMegabytes: 24), policy: .dlora, dispatch: dispatch, migration: .off)
            config.adapterRanks = [8, 16, 32, 64]
            config.pollInterval = [0.2, 0.05, 0.2, 0.1][variant]
            if variant == 1 { config.requestOverheadSeconds = 0.03 }
            if variant == 2 { config.adapterFiles = AdapterFileModel(fixedSeconds: 0.05, cacheBytes: 3 * CPUCostModel().adapterProfile(key: 0, rank: 64).bytes) }
            if variant == 3 { config.timeLimit = 4 }
            let one = Simulation.run(config, workload: w)
            for threads in [2, 3] {
                config.threads = threads
                let many = Simulation.run(config, workload: w)
                var a = one.summary, b = many.summary
                #expect(a.eventLogHash != b.eventLogHash, "variant \(variant), \(threads) threads: the parallel path did not run")
                (a.events, a.eventLogHash, b.events, b.eventLogHash) = (0, 0, 0, 0)
                #expect(a == b, "variant \(variant), \(threads) threads")
                let sameRecords = one.records == many.records, sameStats = one.replicaStats == many.replicaStats
                #expect(sameRecords && sameStats && one.invariants == many.invariants, "variant \(variant), \(threads) threads")
            }
            #expect(one.summary.preemptions > 0, "the workload is meant to press on memory")
            if variant == 2 { #expect(one.summary.adapterFileEvictions > 0) }
            if variant == 3 { #expect(one.summary.finished < 160 && one.summary.finished > 0) }
        }
    }

    @Test func migrationMovesRequestsAndCountsItsTriggers() {
        let kv = pressured(seed: 5, dispatch: .roundRobin, migration: .kv)
        let recompute = pressured(seed: 5, dispatch: .roundRobin, migration: .recompute)
        #expect(kv.summary.migrations > 0)
        #expect(recompute.summary.migrations > 0)
        #expect(kv.records.contains { $0.migrations > 0 })
        #expect(kv.summary.migrationChecks > 0 && kv.summary.kvPressureTriggers + kv.summary.imbalanceTriggers > 0)
        #expect(pressured(seed: 5, dispatch: .roundRobin, migration: .off).summary.migrationChecks == 0)
    }

    /// docs/design/simulator.md, "A closed-form case": one replica, every iteration τ, Poisson arrivals at λ,
    /// prompts that fit one iteration, L output tokens, batch limits never binding. A request waits only for
    /// the iteration in progress: W ≤ τ always, and E[W] = P(busy)·τ/2 ≤ λ·L·τ·τ/2.
    @Test func queueingDelayWithinTheMD1BatchingBound() {
        let tau = 0.01, lambda = 2.0, L = 10
        let shape = CPUCostModel().shape
        var config = SimulationConfig(replicas: 1, cost: FixedStepCostModel(stepSeconds: tau, shape: shape), policy: .unmergedOnly,
                                      dispatch: .roundRobin)
        config.pollInterval = 0
        let w = Workload.generate(WorkloadSpec(requests: 3000, rate: lambda, adapters: 4, lengths: .fixed(prompt: 8, output: L), seed: 9))
        let r = Simulation.run(config, workload: w)
        #expect(r.invariants.holds)
        let waits = r.records.map { $0.firstToken! - $0.arrival - tau }
        #expect(waits.allSatisfy { $0 >= -1e-9 && $0 <= tau + 1e-9 })
        let n = Double(waits.count)
        let mean = waits.reduce(0, +) / n
        let sd = (waits.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / (n - 1)).squareRoot()
        let bound = lambda * Double(L) * tau * tau / 2
        #expect(mean <= bound + 3 * sd / n.squareRoot(), "mean wait \(mean) s, bound \(bound) s")
        #expect(mean > 0.25 * bound, "the load is light but not empty")
        // Every request then takes exactly L iterations.
        #expect(r.records.allSatisfy { abs($0.finish! - $0.firstToken! - Double(L - 1) * tau) < 1e-9 })
    }

    /// Cross-replica interference (`coRunSlowdown` s, `coRunBaseline` u): an iteration of base price τ is priced
    /// τ·(1 + s·b)/(1 + s·u), b the share of it the other replica is expected to spend inside an iteration (all of
    /// it while that one has work beyond its iteration in progress, else until its iteration ends). Request 0 (12
    /// tokens) on replica 0 at 0, request 1 (L = 10) on replica 1 1 ms later, request 2 alone at 5 s. By hand:
    /// request 1's L iterations all start beside replica 0 with more to do (b = 1); request 0's first runs alone,
    /// its next nine beside replica 1 with more to do, its eleventh while replica 1 runs its last iteration
    /// (b = the part of τ left of it), its last alone; request 2's all alone.
    @Test func coRunningReplicasSlowEachOtherDown() {
        let tau = 0.01, L = 10
        let shape = CPUCostModel().shape
        let w = [SimRequest(id: 0, arrival: 0, adapter: 0, promptTokens: 8, outputTokens: L + 2, replica: 0),
                 SimRequest(id: 1, arrival: 0.001, adapter: 1, promptTokens: 8, outputTokens: L, replica: 1),
                 SimRequest(id: 2, arrival: 5, adapter: 0, promptTokens: 8, outputTokens: L, replica: 1)]
        func run(_ s: Double, _ u: Double) -> [Double] {
            var config = SimulationConfig(replicas: 2, cost: FixedStepCostModel(stepSeconds: tau, shape: shape), policy: .unmergedOnly,
                                          dispatch: .roundRobin)
            config.pollInterval = 0
            config.replayDispatch = true
            config.coRunSlowdown = s
            config.coRunBaseline = u
            config.threads = 2
            var polled = config
            polled.pollInterval = 0.2
            #expect(polled.parallelizable == (s == 0), "a run with interference stays on one thread")
            let r = Simulation.run(config, workload: w)
            #expect(r.invariants.holds)
            return r.records.map { $0.finish! - $0.arrival }
        }
        let n = Double(L)
        for (s, u) in [(0.0, 0.0), (0.5, 0.0), (0.5, 1.0), (0.2, 0.4)] {
            let together = tau * (1 + s) / (1 + s * u), alone = tau / (1 + s * u)
            // Replica 1's last iteration ends at 0.001 + L·together; request 0's eleventh starts at alone + 9·together.
            let b = min(1, max(0, (0.001 + n * together - (alone + 9 * together)) / tau))
            let expected = [alone + 9 * together + tau * (1 + s * b) / (1 + s * u) + alone, n * together, n * alone]
            let got = run(s, u)
            #expect(zip(got, expected).allSatisfy { abs($0 - $1) < 1e-9 }, "s \(s), u \(u): \(got) against \(expected)")
        }
        var bad = SimulationConfig(replicas: 2, cost: FixedStepCostModel(stepSeconds: tau, shape: shape))
        bad.coRunSlowdown = -0.1
        #expect(bad.problem != nil)
        bad.coRunSlowdown = 0.1
        bad.coRunBaseline = 1.5
        #expect(bad.problem != nil)
    }
}

/// The decisions pinned: event-log hashes of runs recorded before the scheduler, policy, dispatch and placement
/// were made faster (bench/simulator-hashes.sh, its "small" rows; docs/design/simulator.md, "Speed"). The hash
/// covers every iteration's mode and runs, every action kind, dispatch targets, moves and finishes, and is the
/// same in every process (nothing it covers depends on hash-seeded iteration order). A change to these paths
/// that moves a decision, a tie-break included, changes it.
/// `round-robin-placed`: adapters placed once by their share of the workload, each adapter's requests kept on its
/// own replicas. 4 replicas × 6 adapter slots for 16 adapters: 24 copies, so at most 24 (adapter, replica) pairs
/// serve requests (plain round-robin spreads every adapter over all four: about 64), the most popular adapter has
/// several replicas and the least popular ones one each.
@Suite struct PlacedRoundRobinSimulationTests {
    @Test func eachAdapterStaysOnItsPlacedReplicas() {
        var pairs: [SimDispatch: Set<[Int]>] = [:]
        for dispatch in [SimDispatch.roundRobinPlaced, .roundRobin] {
            let config = SimulationConfig(replicas: 4, cost: CPUCostModel(kvCacheMegabytes: 24, adapterSlots: 6), policy: .dlora,
                                          dispatch: dispatch, migration: .off)
            let spec = WorkloadSpec(requests: 400, rate: 20, adapters: 16, alpha: 1, lengths: .logNormal(promptMedian: 32, outputMedian: 8),
                                    maxPrompt: 128, maxOutput: 32, seed: 5)
            let result = Simulation.run(config, workload: Workload.generate(spec))
            #expect(result.invariants.holds)
            #expect(result.summary.finished == 400)
            pairs[dispatch] = Set(result.records.compactMap { r in r.replica.map { [r.adapter, $0] } })
        }
        let placed = pairs[.roundRobinPlaced] ?? [], spread = pairs[.roundRobin] ?? []
        #expect(placed.count <= 24)
        #expect(spread.count > 40)
        func replicas(of adapter: Int) -> Int { placed.filter { $0[0] == adapter }.count }
        #expect(replicas(of: 0) > 1)
        #expect(replicas(of: 15) == 1)
    }
}

@Suite struct PinnedDecisionTests {
    @Test(arguments: [
        // Re-pinned 2026-12-05 (was 0x6dd2_e9dd_407c_8789) when the simulated CPU replicas began to report the adapter
        // load time `dlora serve` reports (1 ms, not the modelled 0.06 ms), which dLoRA dispatch weighs; the rows whose
        // dispatch does not read it kept their hashes. All five re-pinned 2026-12-07 (were 0xa5f0_82a6_1ac0_85ee,
        // 0x90f9_f01d_7a7c_0552, 0x5028_400c_5756_3ba3, 0x6b94_7d9e_4b7d_e14d, 0x22de_bef1_46bc_7c4d) when credits began
        // to count displacement from FCFS order instead of every wait (docs/design/scheduler.md): dLoRA's order changes,
        // and every policy's memory decisions read the credits (a starving adapter's request may swap others out).
        (BatchingPolicyKind.dlora, SimDispatch.dlora, SimMigration.kv, UInt64(0x2f19_b62b_31a3_db68)),
        (.dlora, .roundRobin, .recompute, 0x7a8d_ed64_bad1_6b6d),
        (.unmergedOnly, .leastLoaded, .recompute, 0x0111_9dfe_9921_6c81),
        (.mergedOnly, .loraAffinity, .off, 0xd7e1_e94e_5e9f_7be4),
        (.peftLike, .roundRobin, .kv, 0x680d_2cd6_75d6_8a59),
    ])
    func eventLogHashIsUnchanged(policy: BatchingPolicyKind, dispatch: SimDispatch, migration: SimMigration, hash: UInt64) {
        var config = SimulationConfig(replicas: 4, cost: CPUCostModel(kvCacheMegabytes: 24), policy: policy, dispatch: dispatch,
                                      migration: migration)
        config.migrationConfig = MigrationConfiguration(periodSeconds: 2, requestExcess: 3)
        config.adapterRanks = [8, 16, 32, 64]
        let spec = WorkloadSpec(requests: 400, rate: 20, adapters: 16, alpha: 1, lengths: .logNormal(promptMedian: 64, outputMedian: 24),
                                maxPrompt: 256, maxOutput: 96, seed: 11)
        let r = Simulation.run(config, workload: Workload.generate(spec))
        #expect(r.invariants.holds)
        #expect(r.summary.finished == 400 && r.summary.generatedTokens == 12762)
        #expect(String(r.summary.eventLogHash, radix: 16) == String(hash, radix: 16))
    }
}

/// The adapter registry's file loads as the simulator models them (`AdapterFileCache`): one loader per replica,
/// a request for an adapter being read waits for that read, a host cache bounded in bytes, least recently used out.
@Suite struct AdapterFileTests {
    @Test func oneLoaderAndOneReadPerAdapter() {
        var cache = AdapterFileCache()
        let model = AdapterFileModel(fixedSeconds: 0.5)
        #expect(cache.ready(key: 0, size: 100, at: 1.0, model: model) == 1.5)  // read from 1.0
        #expect(cache.ready(key: 0, size: 100, at: 1.2, model: model) == 1.5)  // waits for that read, reads nothing
        #expect(cache.ready(key: 1, size: 100, at: 1.2, model: model) == 2.0)  // queued behind it on the one loader
        #expect(cache.ready(key: 0, size: 100, at: 1.6, model: model) == 1.6)  // in host memory: at once
        #expect(cache.ready(key: 1, size: 100, at: 1.7, model: model) == 2.0)  // still being read
        #expect(cache.ready(key: 2, size: 100, at: 3.0, model: model) == 3.5)  // the loader is idle again
        #expect(cache.loads == 3 && cache.evictions == 0)
        var rate = AdapterFileCache()
        #expect(abs(rate.ready(key: 0, size: 500, at: 0, model: AdapterFileModel(fixedSeconds: 0.1, bytesPerSecond: 1000)) - 0.6) < 1e-12)
    }

    @Test func theHostCacheEvictsTheLeastRecentlyUsed() {
        var cache = AdapterFileCache()
        let model = AdapterFileModel(fixedSeconds: 1, cacheBytes: 250)
        _ = cache.ready(key: 0, size: 100, at: 0, model: model)   // 0 … 1
        _ = cache.ready(key: 1, size: 100, at: 2, model: model)   // 2 … 3
        #expect(cache.ready(key: 0, size: 100, at: 4, model: model) == 4)  // a hit: 0 is now the more recent
        #expect(cache.ready(key: 2, size: 100, at: 5, model: model) == 6)  // 300 bytes > 250: 1 goes
        #expect(cache.evictions == 1 && !cache.holds(1) && cache.holds(0) && cache.holds(2))
        #expect(cache.ready(key: 1, size: 100, at: 7, model: model) == 8)  // read again; 0 (used at 4) goes
        #expect(!cache.holds(0) && cache.holds(2))
        #expect(cache.loads == 4 && cache.evictions == 2)
        // An adapter larger than the whole cache is still loaded (and stays until another needs the room).
        var small = AdapterFileCache()
        _ = small.ready(key: 0, size: 1000, at: 0, model: model)
        #expect(small.holds(0) && small.evictions == 0)
        #expect(AdapterFileModel(fixedSeconds: -1).problem != nil && AdapterFileModel(fixedSeconds: 0, bytesPerSecond: 0).problem != nil)
    }

    /// In a whole run (moves included: a migration's reservation loads the adapter on the destination), every
    /// request still finishes once, every replica a request ended on holds that adapter's files (the cache is
    /// unbounded here; with 64 adapters behind dLoRA's placement, moves reach replicas that had not served the
    /// adapter, and a mutation that skips the destination's load fails this), the same seed gives the same log,
    /// and the loads delay requests: the first request reaches an idle cluster and waits for its read.
    @Test(arguments: [SimMigration.off, .recompute, .kv])
    func runsWithFileLoads(migration: SimMigration) {
        func config(_ files: AdapterFileModel?) -> SimulationConfig {
            var config = SimulationConfig(replicas: 4, cost: CPUCostModel(kvCacheMegabytes: 24), policy: .dlora, dispatch: .dlora, migration: migration)
            config.migrationConfig = MigrationConfiguration(periodSeconds: 2, requestExcess: 3)
            config.adapterRanks = [8, 16, 32, 64]
            config.adapterFiles = files
            return config
        }
        let w = Workload.generate(WorkloadSpec(requests: 120, rate: 20, adapters: 64, alpha: 1, lengths: .logNormal(promptMedian: 64, outputMedian: 24),
                                               maxPrompt: 256, maxOutput: 96, seed: 5))
        let files = AdapterFileModel(fixedSeconds: 0.25)
        var run = SimulationRun(config: config(files), workload: w)
        run.run()
        let a = run.result()
        let b = Simulation.run(config(files), workload: w), none = Simulation.run(config(nil), workload: w)
        #expect(a.invariants.holds, "\(a.invariants)")
        #expect(a.summary.finished == 120)
        #expect(a.summary.eventLogHash == b.summary.eventLogHash && a.records == b.records)
        #expect(a.summary.eventLogHash != none.summary.eventLogHash)
        #expect(none.summary.adapterFileLoads == 0 && a.summary.adapterFileEvictions == 0)
        if migration != .off { #expect(a.summary.migrations > 0, "the workload is meant to move requests") }
        for r in a.records {
            guard let rep = r.replica else { continue }
            let holds = run.replicas[rep].files.holds(r.adapter)
            #expect(holds, "request \(r.id) ended on replica \(rep) without adapter \(r.adapter)'s files")
        }
        let first = a.records.min { $0.arrival < $1.arrival }!
        #expect(first.firstToken! - first.arrival >= 0.25)
        #expect(none.records.min { $0.arrival < $1.arrival }!.firstToken! - first.arrival < 0.25)
    }
}
