import Testing

@testable import Scheduling

/// The whole scheduler on scripted workloads: its output is checked as values, with a fake runner that
/// tracks which request's K/V each block holds, so lost or misplaced KV after a swap shows up.
@Suite struct SchedulerTests {
    struct RNG {
        var state: UInt64
        mutating func next(_ n: Int) -> Int {
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return Int((state >> 33) % UInt64(n))
        }
    }

    /// A stand-in for the model runner: per block, per slot, the (request, position) whose K/V it holds.
    struct FakeRunner {
        var blocks: [[(RequestID, Int)?]]
        var host: [RequestID: [[(RequestID, Int)?]]] = [:]
        var merged: Int?
        var resident = Set<Int>()
        let blockSize: Int

        init(numBlocks: Int, blockSize: Int) {
            self.blockSize = blockSize
            blocks = Array(repeating: Array(repeating: nil, count: blockSize), count: numBlocks)
        }

        mutating func perform(_ actions: [SchedulerAction]) {
            for a in actions {
                switch a {
                case .swapOut(let id, let ids):
                    #expect(host[id] == nil, "\(id) swapped out twice")
                    host[id] = ids.map { blocks[Int($0)] }
                case .swapIn(let id, let ids):
                    let data = host.removeValue(forKey: id)
                    #expect(data?.count == ids.count, "swap-in of \(id) without a matching host copy")
                    for (b, d) in zip(ids, data ?? []) { blocks[Int(b)] = d }
                case .dropSwap(let id):
                    #expect(host.removeValue(forKey: id) != nil, "dropSwap of \(id) without a host copy")
                case .merge(let m):
                    #expect(merged == nil && resident.contains(m), "merge of \(m) over \(String(describing: merged)) or not resident")
                    merged = m
                case .unmerge:
                    #expect(merged != nil)
                    merged = nil
                case .loadAdapter(let x):
                    #expect(!resident.contains(x))
                    resident.insert(x)
                case .evictAdapter(let x):
                    #expect(resident.remove(x) != nil)
                    #expect(merged != x, "evicted the merged adapter")
                case .dropAdapter(let x):
                    #expect(!resident.contains(x), "dropped a resident adapter")
                case .free:
                    continue
                }
            }
        }

        /// Checks the run's earlier positions are where its block table says, then writes its new ones.
        mutating func forward(_ run: ScheduledRun) {
            for p in 0..<run.start {
                let cell = blocks[Int(run.blockTable[p / blockSize])][p % blockSize]
                #expect(cell?.0 == run.request && cell?.1 == p, "\(run.request) position \(p) holds \(String(describing: cell))")
            }
            for p in run.start..<(run.start + run.tokens) {
                blocks[Int(run.blockTable[p / blockSize])][p % blockSize] = (run.request, p)
            }
        }
    }

    static func config(_ kind: BatchingPolicyKind, hostSwapBlocks: Int) -> SchedulerConfig {
        var p = BatchPolicyConfig(kind: kind)
        p.maxBatchSequences = 6
        p.maxBatchTokens = 24
        p.maxAdapters = 3
        p.creditBound = 5
        p.costs = StepCostModel(fixedSeconds: 0.010, perTokenSeconds: 0.0006, perLoRATokenSeconds: 0.0012,
                                perAdapterSeconds: 0.0005, switchSeconds: 0.020)
        var c = SchedulerConfig(numBlocks: 64, blockSize: 4, bytesPerBlock: 1000, contextLimit: 128, policy: p)
        c.hostSwapLimitBytes = hostSwapBlocks * 1000
        return c
    }

    /// Random arrivals, finishes, cancellations and adapter retirements over 3,000 iterations under memory
    /// pressure (12 adapters of 6–14 blocks each and requests of up to 64 tokens in 64 blocks; no swap space, so
    /// preempted requests recompute, or 16 blocks of it, so they swap): blocks and bytes are conserved, the budget is never
    /// exceeded, every run's adapter is resident and its KV is where it left it (swap → resume lossless), and
    /// — counting only runs that executed — no adapter with queued requests is passed over for more than the
    /// credit bound (plus the rounds needed when several starve at once) under the credited policies.
    @Test(arguments: BatchingPolicyKind.allCases, [0, 16])
    func propertiesUnderMemoryPressure(_ kind: BatchingPolicyKind, swapBlocks: Int) async {
        let c = Self.config(kind, hostSwapBlocks: swapBlocks)
        var s = Scheduler(config: c)
        var runner = FakeRunner(numBlocks: c.numBlocks, blockSize: c.blockSize)
        var rng = RNG(state: 0x5eed ^ UInt64(kind.rawValue.utf8.count))
        var nextID = 0
        var nextAdapter = 0
        var live: [Int] = []  // adapter keys that accept requests
        func newAdapter() {
            let bytes = (6 + rng.next(9)) * 1000 - rng.next(999)
            s.addAdapter(AdapterProfile(key: nextAdapter, bytes: bytes, loraParameters: 100_000 * (1 + rng.next(8)),
                                        mergeElements: 1_000_000))
            live.append(nextAdapter)
            nextAdapter += 1
        }
        for _ in 0..<12 { newAdapter() }
        var passedOver: [Int: Int] = [:], policyPassedOver: [Int: Int] = [:]
        var maxPassedOver = 0, maxPolicyPassedOver = 0
        var executedRuns = 0, finished = 0
        for step in 0..<3000 {
            // Long and synchronous: give the cooperative pool (two threads in CI) back now and then, so the
            // timing-bounded server suites running beside it are not starved.
            if step % 100 == 0 { await Task.yield() }
            // Arrivals: adapter 0..2 hot, the rest cold, some base.
            for _ in 0..<(rng.next(10) < 5 ? 1 + rng.next(2) : 0) {
                let adapter = rng.next(4) == 0 ? Request.base : (rng.next(2) == 0 ? live[rng.next(min(3, live.count))] : live[rng.next(live.count)])
                let prompt = 1 + rng.next(40)
                if (try? s.add(RequestID(nextID), adapter: adapter, promptCount: prompt, maxNewTokens: 1 + rng.next(24))) != nil { nextID += 1 }
            }
            // Now and then a cancellation, or an adapter retired and a new one registered.
            if rng.next(40) == 0 && s.liveCount > 0 { s.finish(s.liveRequests[rng.next(s.liveCount)].id, reason: .cancelled) }
            if rng.next(150) == 0 && live.count > 4 {
                let gone = live.remove(at: rng.next(live.count))
                s.retire(adapter: gone)
                newAdapter()
            }
            let queue = s.liveRequests
            let out = s.schedule(now: Double(step) * 0.01)
            runner.perform(out.actions)

            // Budget and conservation.
            #expect(s.pool.usedCount == s.requestBlocks + s.residentAdapterBlocks, "step \(step): blocks not conserved")
            #expect(s.hostSwapBytes <= c.hostSwapLimitBytes)
            #expect(s.hostSwapBytes == s.liveRequests.reduce(0) { $0 + $1.swappedBlocks } * c.bytesPerBlock)
            #expect(runner.host.count == s.swappedCount, "step \(step): host copies \(runner.host.count) vs swapped \(s.swappedCount)")
            #expect(Set(s.residentAdapters) == runner.resident)
            #expect(runner.merged == s.merged)
            var owner: [Int32: RequestID] = [:]
            for r in s.liveRequests {
                for b in r.blockTable {
                    #expect(owner[b] == nil, "block \(b) held twice")
                    owner[b] = r.id
                }
            }
            // The runs.
            #expect(out.runs.count <= c.policy.maxBatchSequences && out.tokens <= c.policy.maxBatchTokens)
            #expect(Set(out.runs.map(\.request)).count == out.runs.count)
            #expect(out.loraSlots.count <= c.policy.maxAdapters)
            if !queue.isEmpty && out.runs.isEmpty {
                // Allowed only as the recovery step that frees everything.
                #expect(s.runningCount == 0 && s.residentAdapterBlocks == 0)
            }
            for run in out.runs {
                let r = s.request(run.request)!
                #expect(r.status == .running && run.tokens >= 1 && run.tokens <= r.pendingTokens && run.start == r.computed)
                #expect(run.blockTable.count * c.blockSize >= run.start + run.tokens)
                if run.adapter != Request.base { #expect(runner.resident.contains(run.adapter), "run of a non-resident adapter") }
                if case .merged(let m) = out.mode {
                    #expect(run.adapter == m && run.loraSlot == -1)
                } else if run.adapter != Request.base {
                    #expect(out.loraSlots[Int(run.loraSlot)] == run.adapter)
                }
                runner.forward(run)
            }
            executedRuns += out.runs.count

            // Passed-over accounting, from what executed.
            let servedAdapters = Set(out.runs.map(\.adapter))
            let waitingAdapters = Set(queue.map(\.adapter))
            // The policy's own passing over: iterations in which the adapter neither ran nor had a proposed run
            // deferred for memory.
            let deferredAdapters = Set(out.deferred.map { id in queue.first { $0.id == id }!.adapter })
            for a in waitingAdapters {
                passedOver[a] = servedAdapters.contains(a) ? 0 : (passedOver[a] ?? 0) + 1
                maxPassedOver = max(maxPassedOver, passedOver[a]!)
                policyPassedOver[a] = servedAdapters.contains(a) ? 0 : (policyPassedOver[a] ?? 0) + (deferredAdapters.contains(a) ? 0 : 1)
                maxPolicyPassedOver = max(maxPolicyPassedOver, policyPassedOver[a]!)
            }
            for a in Array(passedOver.keys) where !waitingAdapters.contains(a) { passedOver[a] = nil; policyPassedOver[a] = nil }

            // Close the iteration: a few end early (end of sequence).
            let sampled = out.runs.filter(\.samples).map { SampledToken(request: $0.request, endsSequence: rng.next(25) == 0) }
            let outputs = s.update(out, sampled: sampled, report: ExecutionReport(forwardSeconds: 0.01 + 0.001 * Double(out.tokens)))
            #expect(outputs.count == sampled.count)
            finished += outputs.filter { $0.finish != nil }.count
            runner.perform(s.takeActions())
        }
        // Drain: everything finishes; retiring every adapter then empties the scheduler.
        var guardSteps = 0
        while s.hasWork && guardSteps < 20000 {
            let out = s.schedule()
            runner.perform(out.actions)
            for run in out.runs { runner.forward(run) }
            _ = s.update(out, sampled: out.runs.filter(\.samples).map { SampledToken(request: $0.request) }, report: ExecutionReport(forwardSeconds: 0.01))
            runner.perform(s.takeActions())
            guardSteps += 1
        }
        #expect(!s.hasWork)
        for a in s.knownAdapters { s.retire(adapter: a) }
        runner.perform(s.takeActions())
        #expect(s.knownAdapters.isEmpty && s.pool.freeCount == c.numBlocks && s.hostSwapBytes == 0 && runner.host.isEmpty)
        #expect(s.merged == nil && runner.merged == nil && runner.resident.isEmpty)
        #expect(executedRuns > 3000 && finished > 400, "\(kind): \(finished) finished")
        #expect(s.stats.preemptions > 0 && s.stats.adapterEvictions > 0, "\(kind): the workload should press on memory")
        #expect(swapBlocks == 0 ? s.stats.swapOuts == 0 && s.stats.recomputes > 0 : s.stats.swapOuts > 0,
                "\(kind): preempted requests should \(swapBlocks == 0 ? "recompute" : "swap")")
        print("\(kind) swap \(swapBlocks): passed over \(maxPolicyPassedOver) by the policy, \(maxPassedOver) in all, finished \(finished), \(s.stats)")
        if kind == .dlora {
            // The credit bound, plus the rounds needed to serve every adapter that starves at once (up to 13
            // including the base, 3 slots per iteration).
            #expect(maxPolicyPassedOver <= c.policy.creditBound + 5, "\(kind): an adapter was passed over \(maxPolicyPassedOver) executed iterations")
        }
        if kind == .dlora { #expect(s.stats.modeSwitches > 0, "the skewed workload should make dLoRA merge at times") }
    }

    /// A run the policy proposed but memory could not hold does not count as served: once FCFS would run it, its
    /// adapter's credit grows each iteration it does not run, until it goes first.
    @Test func creditsCountOnlyExecutedRuns() throws {
        var c = Self.config(.dlora, hostSwapBlocks: 64)
        c.numBlocks = 20
        c.policy.maxAdapters = 2
        c.policy.creditBound = 3
        var s = Scheduler(config: c)
        // Adapter 0 is large (12 blocks); adapter 1 small (2 blocks). Long requests of adapter 1 hold KV.
        s.addAdapter(AdapterProfile(key: 0, bytes: 12_000, loraParameters: 1, mergeElements: 1))
        s.addAdapter(AdapterProfile(key: 1, bytes: 2_000, loraParameters: 1, mergeElements: 1))
        for i in 0..<3 { try s.add(RequestID(i), adapter: 1, promptCount: 12, maxNewTokens: 40) }
        try s.add(RequestID(10), adapter: 0, promptCount: 4, maxNewTokens: 2)
        var sawZeroRun = false
        var charged = 0
        for _ in 0..<40 where s.request(RequestID(10)) != nil {
            let queue = s.liveRequests.map { QueuedRequest(id: $0.id, adapter: $0.adapter, pendingTokens: $0.pendingTokens) }
            let before = s.policy.credits[0] ?? 0
            let out = s.schedule()
            let ran0 = out.runs.contains { $0.adapter == 0 }
            if ran0 {
                sawZeroRun = true
            } else if BatchPolicyTests.fcfsSet(queue, c.policy).contains(RequestID(10)) && !out.runs.isEmpty {
                #expect(s.policy.credits[0] ?? 0 == before + 1, "FCFS would have run adapter 0's request: its credit must grow")
                charged += 1
            }
            _ = s.update(out, sampled: out.runs.filter(\.samples).map { SampledToken(request: $0.request) }, report: ExecutionReport(forwardSeconds: 0.01))
            _ = s.takeActions()
        }
        #expect(charged > 0, "memory should have refused adapter 0's request at least once")
        #expect(sawZeroRun, "adapter 0's request must run within the bound")
        #expect(s.stats.recomputes == 0, "older requests give way to a starving adapter only by swapping")
        #expect(s.request(RequestID(10)) == nil, "adapter 0's request finished")
    }

    /// A request refused at admission leaves no adapter behind that was added only for it.
    @Test func refusedRequestLeavesNoAdapterBehind() throws {
        var s = Scheduler(config: Self.config(.dlora, hostSwapBlocks: 0))
        s.addAdapter(AdapterProfile(key: 3, bytes: 5_000, loraParameters: 1, mergeElements: 1))
        #expect(throws: SchedulerError.self) { try s.add(1, adapter: 3, promptCount: 500, maxNewTokens: 1) }
        #expect(!s.knows(adapter: 3))
        #expect(s.takeActions() == [.dropAdapter(3)])
        // One that other requests use stays.
        s.addAdapter(AdapterProfile(key: 4, bytes: 5_000, loraParameters: 1, mergeElements: 1))
        try s.add(2, adapter: 4, promptCount: 3, maxNewTokens: 1)
        #expect(throws: SchedulerError.self) { try s.add(3, adapter: 4, promptCount: 500, maxNewTokens: 1) }
        #expect(s.knows(adapter: 4) && s.takeActions().isEmpty)
    }

    /// An idle resident adapter stays cached until the budget needs it; a retired one leaves at once, or
    /// when its last request ends — a request added after the retirement (its weights were handed out before the
    /// unload) included.
    @Test func retiredAdaptersLeaveWhenUnused() throws {
        var s = Scheduler(config: Self.config(.unmergedOnly, hostSwapBlocks: 0))
        s.addAdapter(AdapterProfile(key: 7, bytes: 5_000, loraParameters: 1, mergeElements: 1))
        try s.add(1, adapter: 7, promptCount: 3, maxNewTokens: 1)
        let out = s.schedule()
        #expect(out.actions.contains(.loadAdapter(7)) && out.runs.count == 1 && out.loraSlots == [7])
        s.retire(adapter: 7)
        #expect(s.knows(adapter: 7), "a request still needs it")
        try s.add(2, adapter: 7, promptCount: 3, maxNewTokens: 1)
        _ = s.update(out, sampled: [SampledToken(request: 1)], report: ExecutionReport(forwardSeconds: 0.01))
        #expect(s.knows(adapter: 7) && !s.takeActions().contains(.dropAdapter(7)), "request 2 still needs it")
        let late = s.schedule()
        #expect(late.runs.map(\.request) == [2] && late.loraSlots == [7])
        _ = s.update(late, sampled: [SampledToken(request: 2)], report: ExecutionReport(forwardSeconds: 0.01))
        let actions = s.takeActions()
        #expect(actions.contains(.evictAdapter(7)) && actions.contains(.dropAdapter(7)))
        #expect(!s.knows(adapter: 7) && s.pool.freeCount == s.pool.numBlocks)
        // Not retired: stays resident while idle, then is forgotten when evicted for room.
        s.addAdapter(AdapterProfile(key: 8, bytes: 5_000, loraParameters: 1, mergeElements: 1))
        try s.add(3, adapter: 8, promptCount: 3, maxNewTokens: 1)
        let o2 = s.schedule()
        _ = s.update(o2, sampled: [SampledToken(request: 3)], report: ExecutionReport(forwardSeconds: 0.01))
        #expect(s.takeActions() == [.free(3, .length)])
        #expect(s.residentAdapters == [8])
    }

    /// dLoRA leaves merged mode when the queue empties and the scheduler unmerges the weights: a lone request of the
    /// adapter that was merged is weighed afresh, and with these prices (a switch costs more than a lone request's
    /// LoRA work saves) it runs unmerged. Before, the policy stayed merged across the gap, and every lone request
    /// paid a merge and an unmerge it never weighed (a probe saw one per request after a burst, and greedy text that
    /// changed with the traffic before it).
    @Test func anIdleUnmergeEndsTheMergedStretch() throws {
        var c = Self.config(.dlora, hostSwapBlocks: 0)
        c.switchPrior = SwitchPrior(mergeSecondsPerElement: 1e-7, mergeSecondsPerMultiplyAdd: 0, unmergeSeconds: 0)
        var s = Scheduler(config: c)
        // LoRA work per token as the cost model's reference adapter's (1.2 ms a token, 0.5 ms per adapter).
        s.addAdapter(AdapterProfile(key: 7, bytes: 1_000, loraParameters: Int(c.policy.costs.referenceLoRAParameters), mergeElements: 1_000_000))
        for i in 1...6 { try s.add(RequestID(i), adapter: 7, promptCount: 2, maxNewTokens: 4) }
        var merges = 0, mergedRuns = 0, unmerges = 0
        for _ in 0..<40 where s.hasWork {
            let out = s.schedule()
            merges += out.actions.filter { $0 == .merge(7) }.count
            if out.mode != .unmerged { mergedRuns += out.runs.count }
            _ = s.update(out, sampled: out.runs.map { SampledToken(request: $0.request) }, report: ExecutionReport(forwardSeconds: 0.01))
            unmerges += s.takeActions().filter { $0 == .unmerge }.count
        }
        #expect(!s.hasWork && merges == 1 && mergedRuns > 0 && unmerges == 1, "merges \(merges), merged runs \(mergedRuns), unmerges \(unmerges)")
        try s.add(100, adapter: 7, promptCount: 2, maxNewTokens: 4)
        let out = s.schedule()
        #expect(out.mode == .unmerged && !out.actions.contains(.merge(7)), "\(out.mode) \(out.actions)")
    }

    /// A merge is priced by the base elements it rewrites plus its update's multiply-adds (rank-dependent), and a
    /// timed merge moves both terms halfway to what it measured; without a rank term the update is per element,
    /// as before.
    @Test func mergesArePricedByElementsAndRank() throws {
        func mergeOnce(perElement: Double, perMultiplyAdd: Double, measured: Double) throws -> Scheduler {
            var c = Self.config(.mergedOnly, hostSwapBlocks: 0)
            c.switchPrior = SwitchPrior(mergeSecondsPerElement: perElement, mergeSecondsPerMultiplyAdd: perMultiplyAdd,
                                        unmergeSeconds: SwitchPrior.cpu.unmergeSeconds)
            var s = Scheduler(config: c)
            let profile = AdapterProfile(key: 5, bytes: 5_000, loraParameters: 1, mergeElements: 1_000_000,
                                         mergeMultiplyAdds: 64_000_000)
            s.addAdapter(profile)
            try s.add(1, adapter: 5, promptCount: 3, maxNewTokens: 2)
            let out = s.schedule()
            #expect(out.actions.contains(.merge(5)))
            _ = s.update(out, sampled: [SampledToken(request: 1)], report: ExecutionReport(forwardSeconds: 0.01, mergeSeconds: measured))
            return s
        }
        let profile = AdapterProfile(key: 5, bytes: 5_000, loraParameters: 1, mergeElements: 1_000_000, mergeMultiplyAdds: 64_000_000)
        // 1 ms for the elements, 0.64 ms for the rank-64 update; measured at twice that: both terms × 1.5.
        let ranked = try mergeOnce(perElement: 1e-9, perMultiplyAdd: 1e-11, measured: 3.28e-3)
        #expect(abs(ranked.mergeSecondsPerElement - 1.5e-9) < 1e-15)
        #expect(abs(ranked.mergeSecondsPerMultiplyAdd - 1.5e-11) < 1e-17)
        #expect(abs(ranked.predictedMergeSeconds(profile) - 2.46e-3) < 1e-9)
        // No rank term: halfway to the measured seconds per element.
        let flat = try mergeOnce(perElement: 1e-9, perMultiplyAdd: 0, measured: 3e-3)
        #expect(flat.mergeSecondsPerElement == 0.5 * 1e-9 + 0.5 * 3e-3 / 1e6)
        #expect(flat.mergeSecondsPerMultiplyAdd == 0)
    }

    /// Until a merge has allocated the workspace, a switch's estimate carries the allocation for the elements beyond
    /// the largest merge so far; once an adapter of at least that size has merged, the untimed adapters' estimates
    /// drop it (the policy's cost for them is revised), and a timed adapter keeps its measured figure.
    @Test func theFirstMergePaysForTheWorkspace() throws {
        var c = Self.config(.mergedOnly, hostSwapBlocks: 0)
        c.switchPrior = SwitchPrior(mergeSecondsPerElement: 1e-9, allocationSecondsPerElement: 4e-9, unmergeSeconds: 0)
        var s = Scheduler(config: c)
        let small = AdapterProfile(key: 5, bytes: 5_000, loraParameters: 1, mergeElements: 1_000_000)
        let large = AdapterProfile(key: 6, bytes: 5_000, loraParameters: 1, mergeElements: 3_000_000)
        s.addAdapter(small)
        s.addAdapter(large)
        #expect(abs(s.predictedSwitchSeconds(small) - 5e-3) < 1e-12)
        #expect(abs(s.predictedSwitchSeconds(large) - 15e-3) < 1e-12)
        try s.add(1, adapter: 5, promptCount: 3, maxNewTokens: 1)
        let out = s.schedule()
        #expect(out.actions.contains(.merge(5)))
        // The first merge allocated (the runner reports no seconds for it).
        _ = s.update(out, sampled: [SampledToken(request: 1)], report: ExecutionReport(forwardSeconds: 0.01))
        #expect(s.mergedElementsHigh == 1_000_000)
        #expect(abs(s.predictedSwitchSeconds(small) - 1e-3) < 1e-12)
        #expect(abs(s.predictedSwitchSeconds(large) - (3e-3 + 2_000_000 * 4e-9)) < 1e-12)
    }
}
