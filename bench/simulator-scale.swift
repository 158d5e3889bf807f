// Driver for bench/simulator-scale.sh: one simulation at scale, timed; prints one markdown table row.
// Arguments: replicas adapters seconds rate cost dispatch migration trace.csv
import Simulator
import Scheduling
#if canImport(Glibc)
import Glibc
#endif

func wallSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

let a = CommandLine.arguments
guard a.count == 9, let replicas = Int(a[1]), let adapters = Int(a[2]), let seconds = Double(a[3]), let rate = Double(a[4]),
      let cost = RooflineCostModel.named(a[5]), let dispatch = SimDispatch(rawValue: a[6]), let migration = SimMigration(rawValue: a[7]),
      let file = fopen(a[8], "r") else {
    print("usage: simulator-scale replicas adapters seconds rate cost dispatch migration trace.csv")
    exit(2)
}
var text = ""
var line: UnsafeMutablePointer<CChar>?
var capacity = 0
while getline(&line, &capacity, file) > 0 { text += String(cString: line!) }
fclose(file)
let trace = Workload.azureTrace(csv: text)
let t0 = wallSeconds()
let w = Workload.generate(WorkloadSpec(requests: nil, duration: seconds, rate: rate, adapters: adapters, alpha: 1,
                                       arrivals: .traceGaps(Workload.gaps(trace.times)), lengths: .pairs(trace.lengths),
                                       maxPrompt: 2048, maxOutput: 1024, seed: 1))
var config = SimulationConfig(replicas: replicas, cost: cost, policy: .dlora, dispatch: dispatch, migration: migration)
config.adapterRanks = [8, 16]
let r = Simulation.run(config, workload: w)
let wall = wallSeconds() - t0
let s = r.summary
func f(_ x: Double, _ digits: Int) -> String {
    let scale = power10(digits)
    return String(Double((x * scale).rounded()) / scale)
}
func power10(_ n: Int) -> Double { n == 0 ? 1 : 10 * power10(n - 1) }
print("| \(replicas) | \(adapters) | \(Int(seconds)) | \(rate) | \(a[5]) | \(a[6]) | \(a[7]) | \(s.requests) | \(s.events) | "
      + "\(f(wall, 1)) | \(Int(Double(s.events) / wall)) | \(f(s.makespan / wall, 2)) | \(Int(s.throughput)) | "
      + "\(f(s.avgLatencyPerToken, 4)) | \(s.migrations) | \(r.invariants.holds) |")
