// Driver for bench/simulator-scale.sh: one simulation at scale, timed; prints one markdown table row.
// Arguments: replicas adapters seconds rate cost dispatch migration trace.csv [chunk]
// With `chunk` (seconds of simulated time; CHUNK= in the script) it first prints, per chunk, the process CPU seconds
// it took, the iterations, the mean batch and distinct adapters per iteration, and the CPU per iteration and per
// scheduled sequence: whether the cost per request grows as the run goes on. (The per-iteration callback that counts
// them adds to the row's wall time, and keeps a chunked run on one thread.)
import Simulator
import Scheduling
#if canImport(Glibc)
import Glibc
#endif

func clockSeconds(_ clock: clockid_t) -> Double {
    var ts = timespec()
    clock_gettime(clock, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}
func wallSeconds() -> Double { clockSeconds(CLOCK_MONOTONIC) }
func cpuSeconds() -> Double { clockSeconds(CLOCK_PROCESS_CPUTIME_ID) }

let a = CommandLine.arguments
guard a.count == 9 || a.count == 10, let replicas = Int(a[1]), let adapters = Int(a[2]), let seconds = Double(a[3]), let rate = Double(a[4]),
      let cost = RooflineCostModel.named(a[5]), let dispatch = SimDispatch(rawValue: a[6]), let migration = SimMigration(rawValue: a[7]),
      a.count == 9 || (Double(a[9]) ?? 0) > 0, let file = fopen(a[8], "r") else {
    print("usage: simulator-scale replicas adapters seconds rate cost dispatch migration trace.csv [chunk]")
    exit(2)
}
var text = ""
var line: UnsafeMutablePointer<CChar>?
var capacity = 0
while getline(&line, &capacity, file) > 0 { text += String(cString: line!) }
fclose(file)
let trace = try! Workload.azureTrace(csv: text)
let t0 = wallSeconds()
let w = Workload.generate(WorkloadSpec(requests: nil, duration: seconds, rate: rate, adapters: adapters, alpha: 1,
                                       arrivals: .traceGaps(Workload.gaps(trace.times)), lengths: .pairs(trace.lengths),
                                       maxPrompt: 2048, maxOutput: 1024, seed: 1))
var config = SimulationConfig(replicas: replicas, cost: cost, policy: .dlora, dispatch: dispatch, migration: migration)
config.adapterRanks = [8, 16]
// THREADS= (the script's environment): threads simulating the replicas between polls (`SimulationConfig.threads`).
config.threads = max(1, Int(getenv("THREADS").map { String(cString: $0) } ?? "") ?? 1)
let r: SimulationResult
if a.count == 10, let chunk = Double(a[9]) {
    r = runInChunks(config, w, chunk: chunk)
} else {
    r = Simulation.run(config, workload: w)
}
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

func runInChunks(_ config: SimulationConfig, _ w: [SimRequest], chunk: Double) -> SimulationResult {
    let chunks = Int((seconds / chunk).rounded(.up)) + 1
    var arrivals = [Int](repeating: 0, count: chunks)
    for r in w { arrivals[min(chunks - 1, Int(r.arrival / chunk))] += 1 }
    print("| simulated s | arrivals | CPU s | iterations | mean batch | mean distinct adapters | µs per iteration | µs per sequence |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    var next = chunk, last = cpuSeconds(), steps = 0, sequences = 0, distinct = 0
    func report(until t: Double) {
        let now = cpuSeconds()
        let n = Double(max(steps, 1))
        print("| \(Int(t)) | \(arrivals[min(chunks - 1, Int(t / chunk) - 1)]) | \(f(now - last, 1)) | \(steps) | \(f(Double(sequences) / n, 1)) | "
              + "\(f(Double(distinct) / n, 1)) | \(f((now - last) / n * 1e6, 2)) | \(f((now - last) / Double(max(sequences, 1)) * 1e6, 3)) |")
        fflush(stdout)
        last = now
        steps = 0
        sequences = 0
        distinct = 0
    }
    let r = Simulation.run(config, workload: w, onStep: { record in
        while record.start >= next {
            report(until: next)
            next += chunk
        }
        steps += 1
        sequences += record.output.runs.count
        distinct += record.output.loraSlots.count
    })
    print("(drain to the end: \(f(cpuSeconds() - last, 1)) CPU s, \(steps) iterations)")
    print("")
    return r
}
