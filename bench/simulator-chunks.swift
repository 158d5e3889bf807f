// Driver for bench/simulator-scale.sh with CHUNKS="replicas adapters seconds rate chunk": one simulation at scale
// (A800/7B, dLoRA batching and dispatch, no migration, ranks 8/16), printing per `chunk` seconds of simulated time
// the process CPU seconds it took, the iterations, the mean batch and distinct adapters per iteration, and the CPU
// per iteration and per scheduled sequence: whether the cost per request grows as the run goes on.
import Simulator
import Scheduling
#if canImport(Glibc)
import Glibc
#endif

func cpuSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}
func f(_ x: Double, _ digits: Int) -> String {
    var scale = 1.0
    for _ in 0..<digits { scale *= 10 }
    return String(Double((x * scale).rounded()) / scale)
}

let a = CommandLine.arguments
guard a.count == 7, let replicas = Int(a[1]), let adapters = Int(a[2]), let seconds = Double(a[3]), let rate = Double(a[4]),
      let chunk = Double(a[5]), chunk > 0, let file = fopen(a[6], "r") else {
    print("usage: simulator-chunks replicas adapters seconds rate chunk trace.csv")
    exit(2)
}
var text = ""
var line: UnsafeMutablePointer<CChar>?
var capacity = 0
while getline(&line, &capacity, file) > 0 { text += String(cString: line!) }
fclose(file)
let trace = Workload.azureTrace(csv: text)
let w = Workload.generate(WorkloadSpec(requests: nil, duration: seconds, rate: rate, adapters: adapters, alpha: 1,
                                       arrivals: .traceGaps(Workload.gaps(trace.times)), lengths: .pairs(trace.lengths),
                                       maxPrompt: 2048, maxOutput: 1024, seed: 1))
let chunks = Int((seconds / chunk).rounded(.up)) + 1
var arrivals = [Int](repeating: 0, count: chunks)
for r in w { arrivals[min(chunks - 1, Int(r.arrival / chunk))] += 1 }
var config = SimulationConfig(replicas: replicas, cost: RooflineCostModel.named("a800-7b")!, policy: .dlora, dispatch: .dlora, migration: .off)
config.adapterRanks = [8, 16]
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
print("(drain to the end: \(f(cpuSeconds() - last, 1)) CPU s, \(steps) iterations; \(r.summary.requests) requests, "
      + "\(r.summary.events) events, invariants hold: \(r.invariants.holds))")
