import Adapters
import ArgumentParser
import Engine
import Foundation
import Kernels
import Models
import Scheduling
import Tokenizers

/// dLoRA's replica-level experiment on the real engine: many adapters with power-law popularity, arrivals
/// from a trace, prompt/response lengths from a conversation dataset; each batching policy serves the same
/// request stream in real time. Prints one markdown table (bench/replica.sh assembles bench/results/).
struct BenchReplica: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "replica", abstract: "Batching policies on a trace-driven multi-adapter workload.")

    @OptionGroup var modelOptions: ModelOptions
    @OptionGroup var engineOptions: EngineOptions
    @Option(help: "JSONL of {\"prompt\": …, \"response\": …} conversations (bench/replica.sh extracts it from ShareGPT).")
    var workload: String
    @Option(help: "Azure LLM inference trace CSV (TIMESTAMP,ContextTokens,GeneratedTokens): arrival times.")
    var trace: String
    @Option(help: "Number of adapters.")
    var adapters: Int = 8
    @Option(help: "Power-law skew of adapter popularity (P(k) ∝ k^-alpha).")
    var alpha: Double = 1.0
    @Option(help: "Requests per run.")
    var requests: Int = 40
    @Option(help: "Mean arrival rate in requests/s (the trace's gaps are scaled to it).")
    var rate: Double = 2.0
    @Option(help: "Comma-separated policies: \(PolicyOption.names).")
    var policies: String = "dlora,unmerged-only,merged-only,peft-like"
    @Option(help: "Prompt tokens at most (longer prompts are cut).")
    var maxPrompt: Int = 256
    @Option(help: "Generated tokens at most per request.")
    var maxOutput: Int = 48
    @Option(help: "SLO on a request's latency per generated token, seconds.")
    var slo: Double = 0.5
    @Option(help: "Adapter target modules: qv (q_proj, v_proj) or all (the seven linear layers).")
    var targets: String = "qv"
    @Option(help: "Seed for adapter popularity and weights.")
    var seed: UInt64 = 1
    @Option(help: "Runs per policy, in rotated policy order (round i starts with the i-th policy); the table gives means and the throughput range.")
    var repeats: Int = 1
    @Option(help: "Append one JSON line per iteration of every run to this file, as `serve --step-log` does.")
    var stepLog: String?

    func validate() throws {
        guard adapters >= 1, adapters <= 1024, requests >= 1, requests <= 1_000_000, maxPrompt >= 1, maxPrompt <= 1 << 20,
              maxOutput >= 1, maxOutput <= 1 << 20 else {
            throw ValidationError("--adapters (1...1024), --requests (1...1000000), --max-prompt and --max-output (1...1048576) out of range")
        }
        // The run is in real time: a rate of 1e-300 requests/s waited forever.
        guard rate.isFinite, rate >= 0.001, rate <= 100_000 else { throw ValidationError("--rate must be in 0.001...100000 requests/s") }
        guard slo.isFinite, slo > 0 else { throw ValidationError("--slo must be a positive number of seconds") }
        guard alpha.isFinite, alpha >= 0 else { throw ValidationError("--alpha must be a finite number >= 0") }
        guard repeats >= 1, repeats <= 100 else { throw ValidationError("--repeats must be in 1...100") }
        guard targets == "qv" || targets == "all" else { throw ValidationError("--targets must be qv or all") }
        let named = policies.split(separator: ",", omittingEmptySubsequences: false)
        guard !named.isEmpty, !named.contains(where: \.isEmpty) else {
            throw ValidationError("--policies must be a comma-separated list of policies (\(PolicyOption.names)), none empty")
        }
        for p in named { _ = try PolicyOption.parse(String(p), flag: "policy") }
    }

    struct Request {
        let arrival: Double
        let adapter: Int
        let prompt: [Int]
        let output: Int
    }

    func run() throws {
        let (_, loaded) = try modelOptions.load()
        let m = loaded.model, c = m.config
        try engineOptions.prepare(m)
        var rng = SamplerRNG(seed: seed)

        // Adapters: ranks 8–64, bf16, random; held as serve holds them (int8 beside int8 products).
        let ranks = [8, 16, 32, 64]
        let modules: [LoRATarget] = targets == "all" ? LoRATarget.allCases : [.q, .v]
        let weights = (0..<adapters).map { i in
            BenchLoRA.randomAdapter(config: c, rank: ranks[i % ranks.count], targets: modules, dtype: .bf16, seed: seed &* 7919 &+ UInt64(i))
                .held(as: .matching(m))
        }
        // Popularity: P(k) ∝ (k+1)^-alpha.
        let weightsK = (0..<adapters).map { pow(Double($0 + 1), -alpha) }
        let total = weightsK.reduce(0, +)
        func drawAdapter() -> Int {
            var u = rng.nextUnit() * total
            for (k, w) in weightsK.enumerated() {
                u -= w
                if u < 0 { return k }
            }
            return adapters - 1
        }

        // Arrivals: the trace's inter-arrival gaps, scaled to the requested mean rate.
        let stamps = try Self.traceTimes(trace)
        guard stamps.count > requests else { throw CLIError("\(trace): needs more than \(requests) rows") }
        let gaps = zip(stamps.dropFirst(), stamps).map { max(0, $0 - $1) }.prefix(requests)
        let meanGap = gaps.reduce(0, +) / Double(gaps.count)
        let scale = meanGap > 0 ? (1 / rate) / meanGap : 1
        var t = 0.0
        let conversations = try Self.conversations(workload, tokenizer: loaded.tokenizer, maxPrompt: maxPrompt, maxOutput: maxOutput)
        guard conversations.count >= requests else { throw CLIError("\(workload): needs at least \(requests) conversations") }
        var reqs: [Request] = []
        for (i, g) in gaps.enumerated() {
            reqs.append(Request(arrival: t, adapter: drawAdapter(), prompt: conversations[i].0, output: conversations[i].1))
            t += g * scale
        }

        // Every policy serves the same stream `repeats` times; the order rotates so that no policy always runs
        // first (cold caches) or right after a particular other one.
        let kinds = policies.split(separator: ",").map { BatchingPolicyKind(rawValue: String($0))! }
        var outcomes: [BatchingPolicyKind: [Outcome]] = [:]
        for round in 0..<repeats {
            for i in kinds.indices {
                let kind = kinds[(i + round) % kinds.count]
                outcomes[kind, default: []].append(try serve(reqs, model: m, tokenizer: loaded.tokenizer, weights: weights, policy: kind))
                StandardError.write("bench replica: \(kind.rawValue) done (\(adapters) adapters, alpha \(alpha), round \(round + 1))\n")
            }
        }
        print("| policy | throughput tok/s | avg latency per token s | P90 latency s | SLO attainment | mode switches | throughput min–max |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for kind in kinds {
            let runs = outcomes[kind]!
            func mean(_ f: (Outcome) -> Double) -> Double { runs.map(f).reduce(0, +) / Double(runs.count) }
            let tput = runs.map(\.throughput)
            // Only ASCII in String(format:): a non-ASCII format string corrupts the heap on Linux Foundation.
            let cells = String(format: "%.1f | %.3f | %.2f | %.0f %% | %.1f", mean(\.throughput), mean(\.latencyPerToken),
                               mean(\.p90), mean(\.slo) * 100, mean { Double($0.switches) })
            let range = String(format: "%.1f", tput.min()!) + "–" + String(format: "%.1f", tput.max()!)
            print("| \(kind.rawValue) | \(cells) | \(range) |")
        }
    }

    struct Outcome { var throughput: Double; var latencyPerToken: Double; var p90: Double; var slo: Double; var switches: Int }

    /// Serves the request stream in real time with one policy.
    func serve(_ reqs: [Request], model: LlamaModel, tokenizer: Tokenizer, weights: [LoRAWeights], policy: BatchingPolicyKind) throws -> Outcome {
        // The prior is timed per run, not once: the runs share the model, and a merge workspace an earlier run left
        // allocated makes this run's first merge cheaper, which the measurement sees.
        let prior = engineOptions.switchPrior(for: model, policy: policy)
        let g = EngineCore(model: model, tokenizer: tokenizer,
                           configuration: engineOptions.configuration(for: model, policy: policy, switchPrior: prior))
        if let stepLog { g.stepObserver = try Serve.stepWriter(path: stepLog) }
        let start = DispatchTime.now().uptimeNanoseconds
        func now() -> Double { Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9 }
        var next = 0
        var idOf: [RequestID: Int] = [:]  // engine id → request index
        var finish = [Double](repeating: .nan, count: reqs.count)
        var produced = [Int](repeating: 0, count: reqs.count)
        while next < reqs.count || g.hasWork {
            while next < reqs.count && reqs[next].arrival <= now() {
                let r = reqs[next]
                let id = try g.submit(prompt: r.prompt, params: SamplingParams(temperature: 0, maxTokens: r.output, ignoreEOS: true),
                                      adapter: weights[r.adapter])
                idOf[id] = next
                next += 1
            }
            if g.hasWork {
                for e in g.step() {
                    guard let i = idOf[e.requestID] else { continue }
                    if e.token != nil { produced[i] += 1 }
                    if e.finish != nil { finish[i] = now() }
                }
            } else if next < reqs.count {
                Thread.sleep(forTimeInterval: max(0, reqs[next].arrival - now()))
            }
        }
        let makespan = now()
        let latencies = reqs.indices.map { finish[$0] - reqs[$0].arrival }
        let tokens = produced.reduce(0, +)
        let sorted = latencies.sorted()
        let met = reqs.indices.filter { latencies[$0] / Double(max(1, produced[$0])) <= slo }.count
        return Outcome(throughput: Double(tokens) / makespan, latencyPerToken: latencies.reduce(0, +) / Double(max(1, tokens)),
                       p90: sorted[min(sorted.count - 1, Int(Double(sorted.count) * 0.9))], slo: Double(met) / Double(reqs.count),
                       switches: g.stats.modeSwitches)
    }

    /// Arrival times (seconds) from the Azure trace CSV.
    static func traceTimes(_ path: String) throws -> [Double] {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { throw CLIError("\(path): cannot read the trace") }
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "UTC")
        formatter.dateFormat = "yyyy-MM-dd HH:mm:ss"
        var out: [Double] = []
        for line in text.split(whereSeparator: \.isNewline).dropFirst().prefix(100_000) {
            guard let stamp = line.split(separator: ",").first else { continue }
            let parts = stamp.split(separator: ".")
            guard let date = formatter.date(from: String(parts[0])) else { continue }
            let frac = parts.count > 1 ? Double("0." + parts[1]) ?? 0 : 0
            out.append(date.timeIntervalSince1970 + frac)
        }
        return out
    }

    /// (prompt ids, output length) pairs from the JSONL workload, cut to the limits; drops prompts < 4 tokens.
    static func conversations(_ path: String, tokenizer: Tokenizer, maxPrompt: Int, maxOutput: Int) throws -> [([Int], Int)] {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { throw CLIError("\(path): cannot read the workload") }
        var out: [([Int], Int)] = []
        for line in text.split(whereSeparator: \.isNewline) {
            guard let obj = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: String],
                  let p = obj["prompt"], let r = obj["response"] else { continue }
            let ids = tokenizer.encode(p, addSpecial: true)
            guard ids.count >= 4 else { continue }
            let outLen = max(1, min(maxOutput, tokenizer.encode(r, addSpecial: false).count))
            out.append((Array(ids.prefix(maxPrompt)), outLen))
        }
        return out
    }
}
