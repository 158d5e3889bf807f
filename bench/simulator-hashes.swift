// Driver for bench/simulator-hashes.sh: runs a fixed matrix of simulations (policies × dispatch × migration, a
// memory-pressured CPU cluster and a medium A800/7B one) and prints each run's event-log hash, a fingerprint of
// its request records and its summary. Optimizations of the scheduler, dispatch, placement or the simulator
// loop must leave every line identical (docs/design/simulator.md, "Speed").
// Arguments: trace.csv
import ClusterPolicy
import Scheduling
import Simulator
#if canImport(Glibc)
import Glibc
#endif

let a = CommandLine.arguments
guard a.count == 2, let file = fopen(a[1], "r") else {
    print("usage: simulator-hashes trace.csv")
    exit(2)
}
var text = ""
var line: UnsafeMutablePointer<CChar>?
var capacity = 0
while getline(&line, &capacity, file) > 0 { text += String(cString: line!) }
fclose(file)
let trace = try! Workload.azureTrace(csv: text)

func recordsHash(_ records: [RequestRecord]) -> UInt64 {
    var h = EventLogHash()
    for r in records {
        h.mix(r.id)
        h.mix(r.firstToken ?? -1)
        h.mix(r.finish ?? -1)
        h.mix(r.tokens)
        h.mix(r.replica ?? -1)
        h.mix(r.migrations)
        h.mix(r.rejected ? 1 : 0)
    }
    return h.value
}

func report(_ name: String, _ r: SimulationResult) {
    let s = r.summary
    print("\(name) hash=\(String(s.eventLogHash, radix: 16)) records=\(String(recordsHash(r.records), radix: 16)) "
          + "invariants=\(r.invariants.holds) \(s)")
}

// Runs eligible for parallel replicas (`SimulationConfig.threads`: polling on, migration off) run again on two threads:
// the records, invariants and summary must be the sequential run's (all but the event count and log hash).
var parallelChecked = 0
var parallelDiffering: [String] = []
func run(_ name: String, _ config: SimulationConfig, _ workload: [SimRequest]) {
    let r = Simulation.run(config, workload: workload)
    report(name, r)
    guard config.parallelizable else { return }
    var c = config
    c.threads = 2
    let p = Simulation.run(c, workload: workload)
    var a = r.summary, b = p.summary
    (a.events, a.eventLogHash, b.events, b.eventLogHash) = (0, 0, 0, 0)
    parallelChecked += 1
    if a != b || r.records != p.records || r.invariants != p.invariants || r.replicaStats != p.replicaStats { parallelDiffering.append(name) }
}

// Small, memory-pressured: 4 CPU replicas with 24 MiB of KV (34 blocks), 16 adapters (SimulatorTests' `pressured`).
for policy in BatchingPolicyKind.allCases {
    for dispatch in SimDispatch.allCases {
        for migration in SimMigration.allCases {
            var config = SimulationConfig(replicas: 4, cost: CPUCostModel(kvCacheMegabytes: 24), policy: policy, dispatch: dispatch,
                                          migration: migration)
            config.migrationConfig = MigrationConfiguration(periodSeconds: 2, requestExcess: 3)
            config.adapterRanks = [8, 16, 32, 64]
            let spec = WorkloadSpec(requests: 400, rate: 20, adapters: 16, alpha: 1,
                                    lengths: .logNormal(promptMedian: 64, outputMedian: 24), maxPrompt: 256, maxOutput: 96, seed: 11)
            run("small \(policy.rawValue) \(dispatch.rawValue) \(migration.rawValue)", config, Workload.generate(spec))
        }
    }
}

// Medium: 16 A800/7B replicas, 400 adapters, 40 s of the Azure conversation trace at 48 req/s.
let medium = Workload.generate(WorkloadSpec(requests: nil, duration: 40, rate: 48, adapters: 400, alpha: 1,
                                            arrivals: .traceGaps(Workload.gaps(trace.times)), lengths: .pairs(trace.lengths),
                                            maxPrompt: 2048, maxOutput: 1024, seed: 1))
for policy in BatchingPolicyKind.allCases {
    for dispatch in SimDispatch.allCases {
        for migration in SimMigration.allCases where policy == .dlora || migration != .recompute {
            var config = SimulationConfig(replicas: 16, cost: RooflineCostModel.named("a800-7b")!, policy: policy, dispatch: dispatch,
                                          migration: migration)
            config.adapterRanks = [8, 16]
            run("medium \(policy.rawValue) \(dispatch.rawValue) \(migration.rawValue)", config, medium)
        }
    }
}
// Medium with polling off and the artifact's floor.
for dispatch in [SimDispatch.dlora, .leastLoaded] {
    var config = SimulationConfig(replicas: 16, cost: RooflineCostModel.named("a800-7b")!, policy: .dlora, dispatch: dispatch, migration: .kv)
    config.adapterRanks = [8, 16]
    config.pollInterval = 0
    config.dloraDispatch.fractionalLeftovers = false
    run("medium-nopoll-floor dlora \(dispatch.rawValue) kv", config, medium)
}
print("parallel replicas: \(parallelChecked) runs checked against one thread, \(parallelDiffering.isEmpty ? "all the same" : "differing: " + parallelDiffering.joined(separator: ", "))")
if !parallelDiffering.isEmpty { exit(1) }
