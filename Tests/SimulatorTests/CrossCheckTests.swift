import Scheduling
import Testing

@testable import Simulator

/// The simulator drives the real `Scheduler` through an event queue, inboxes and a router; this drives a second
/// `Scheduler` by hand, the way `EngineCore.step()` does on one thread (add what has arrived, schedule, carry
/// out the actions, forward, sample, update, take the between-iteration actions), with times from the same cost
/// model computed here independently. Both must make the same decisions — every `SchedulerOutput` (mode, runs
/// with their block tables, ordered actions, LoRA slots, deferred requests) — at the same simulated times.
@Suite struct CrossCheckTests {
    struct HandStep: Equatable {
        let start: Double
        let output: SchedulerOutput
    }

    /// The hand loop: one replica, requests in arrival order.
    static func handLoop(_ w: [SimRequest], cost: any ReplicaCostModel, policy: BatchingPolicyKind, ranks: [Int]) throws -> [HandStep] {
        let config = cost.shape.schedulerConfig(policy: policy, costs: cost.schedulerPrior)
        var s = Scheduler(config: config)
        let profiles = (0..<((w.map(\.adapter).max() ?? 0) + 1)).map { cost.adapterProfile(key: $0, rank: ranks[$0 % ranks.count]) }
        var generated = [Int](repeating: 0, count: w.count)
        var merged: Int?
        var steps: [HandStep] = []
        var t = 0.0, carry = 0.0
        var next = 0
        func seconds(_ actions: [SchedulerAction]) -> (total: Double, merge: Double?, unmerge: Double?) {
            var total = 0.0
            var merge: Double?, unmerge: Double?
            for a in actions {
                switch a {
                case .loadAdapter(let k): total += cost.adapterLoadSeconds(bytes: profiles[k].bytes)
                case .swapIn(_, let b), .swapOut(_, let b): total += cost.swapSeconds(bytes: b.count * config.bytesPerBlock)
                case .merge(let k):
                    merge = cost.mergeSeconds(profiles[k])
                    total += merge!
                    merged = k
                case .unmerge:
                    unmerge = merged.map { cost.unmergeSeconds(profiles[$0]) } ?? 0
                    total += unmerge!
                    merged = nil
                default: break
                }
            }
            return (total, merge, unmerge)
        }
        while true {
            while next < w.count && w[next].arrival <= t {
                let r = w[next]
                s.addAdapter(profiles[r.adapter])
                try s.add(RequestID(r.id), adapter: r.adapter, promptCount: r.promptTokens, maxNewTokens: r.outputTokens)
                next += 1
            }
            guard s.hasWork else {
                carry += seconds(s.takeActions()).total
                if next == w.count { break }
                t = w[next].arrival
                continue
            }
            let out = s.schedule(now: t)
            let act = seconds(out.actions)
            let actions = carry + act.total
            carry = 0
            var forward = 0.0
            if !out.runs.isEmpty {
                var prefill = 0, context = 0, decodeContext = 0
                var lora = 0.0
                for run in out.runs {
                    if run.tokens > 1 { prefill += run.tokens } else { decodeContext += run.start + 1 }
                    context += run.start + run.tokens
                    lora += Double(run.tokens) * Double(profiles[run.adapter].loraParameters) / s.policy.config.costs.referenceLoRAParameters
                }
                forward = cost.stepSeconds(StepShape(mode: out.mode, sequences: out.runs.count, tokens: out.tokens, prefillTokens: prefill,
                                                     contextTokens: context, decodeContextTokens: decodeContext,
                                                     distinctAdapters: out.loraSlots.count,
                                                     loraTokens: out.mode == .unmerged ? lora : 0))
            }
            steps.append(HandStep(start: t, output: out))
            t += max(actions + forward, 1e-9)
            if !out.runs.isEmpty {
                let sampled = out.runs.filter(\.samples).map {
                    SampledToken(request: $0.request, endsSequence: generated[$0.request.rawValue] + 1 >= w[$0.request.rawValue].outputTokens)
                }
                for o in s.update(out, sampled: sampled, report: ExecutionReport(forwardSeconds: forward, mergeSeconds: act.merge,
                                                                                   unmergeSeconds: act.unmerge))
                where o.finish != .error {
                    generated[o.request.rawValue] += 1
                }
            }
            carry += seconds(s.takeActions()).total
        }
        return steps
    }

    @Test(arguments: [BatchingPolicyKind.dlora, .unmergedOnly, .mergedOnly, .peftLike])
    func simulatedReplicaDecidesAsTheHandLoop(policy: BatchingPolicyKind) throws {
        // Tight memory (48 blocks), 6 adapters of four ranks, a burst: loads, evictions, swaps, merges.
        var cost = CPUCostModel(kvCacheMegabytes: 34, adapterSlots: 4, maxBatchSequences: 16, maxBatchTokens: 256)
        cost.perContextTokenSeconds = 2e-6  // decode attention priced by context, as a measured profile does
        let ranks = [8, 16, 32, 64]
        let w = Workload.generate(WorkloadSpec(requests: 80, rate: 20, adapters: 6, alpha: 1.2,
                                               lengths: .logNormal(promptMedian: 48, outputMedian: 16), maxPrompt: 200, maxOutput: 64, seed: 21))
        var config = SimulationConfig(replicas: 1, cost: cost, policy: policy, dispatch: .roundRobin)
        config.adapterRanks = ranks
        config.recordSteps = true
        let sim = Simulation.run(config, workload: w)
        let hand = try Self.handLoop(w, cost: cost, policy: policy, ranks: ranks)
        #expect(sim.invariants.holds)
        #expect(sim.steps.count == hand.count)
        for (a, b) in zip(sim.steps, hand) {
            #expect(a.output == b.output, "step \(b.output.step)")
            #expect(abs(a.start - b.start) < 1e-9, "step \(b.output.step)")
            if a.output != b.output { break }
        }
        let kinds = Set(hand.flatMap(\.output.actions).map(SimulationRun.kind))
        #expect(kinds.contains(0) && (kinds.contains(1) || kinds.contains(3)), "loads and evictions or swaps happened")
        if policy == .dlora || policy == .mergedOnly { #expect(kinds.contains(6), "merges happened") }
    }
}
