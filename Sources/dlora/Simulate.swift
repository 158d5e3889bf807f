import ArgumentParser
import Foundation
import Scheduling
import Simulator

/// `dlora simulate`: the cluster at a scale this machine cannot serve — replicas running the real scheduler
/// and router policies on modelled time (docs/design/simulator.md). Prints a summary table, or JSON.
struct Simulate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Simulate replicas and the router on modelled hardware (the real scheduler and cluster policies).")

    @Option(help: "Replicas.")
    var replicas: Int = 1
    @Option(help: "Adapters of a generated workload (popularity P(k) ∝ (k+1)^-alpha); a --requests-file brings its own (the indices it names).")
    var adapters: Int = 8
    @Option(help: "Power-law skew of adapter popularity.")
    var alpha: Double = 1.0
    @Option(name: .customLong("adapter-burst-sigma"),
            help: "Per-adapter bursts: each adapter's popularity × a log-normal factor (this σ, mean 1) redrawn every --adapter-burst-window seconds (0: off).")
    var adapterBurstSigma: Double = 0
    @Option(name: .customLong("adapter-burst-window"), help: "Seconds between redraws of the per-adapter burst factors.")
    var adapterBurstWindow: Double = 60
    @Option(help: "Comma-separated LoRA ranks, adapter i gets the (i mod n)-th.")
    var ranks: String = "16"
    @Option(help: "Mean arrival rate, requests/s.")
    var rate: Double = 2.0
    @Option(help: "Requests to simulate (default 200 unless --duration is given).")
    var requests: Int?
    @Option(help: "Simulated seconds of arrivals (instead of --requests).")
    var duration: Double?
    @Option(help: "Azure LLM inference trace CSV (TIMESTAMP,…): arrival gaps scaled to --rate (default: Poisson).")
    var trace: String?
    @Flag(help: "Take prompt and output lengths from the trace's ContextTokens and GeneratedTokens columns.")
    var traceLengths = false
    @Option(help: "JSONL of conversations: {\"prompt_tokens\", \"output_tokens\"} or {\"prompt\", \"response\"} (≈ 4 bytes per token).")
    var workload: String?
    @Option(help: "JSONL of requests to replay exactly, one per line: {\"arrival\": seconds, \"adapter\": index, \"prompt_tokens\", \"output_tokens\"} and optionally \"replica\" (the replica the real router chose) (instead of generating them; e.g. a real run's requests).")
    var requestsFile: String?
    @Flag(help: "With --requests-file: send each request to the replica its \"replica\" field names (a real run's router decisions, from the x-dlora-replica header) instead of the one the dispatch policy picks.")
    var replayDispatch = false
    @Option(help: "Median prompt tokens of the seeded log-normal lengths (no --workload or --trace-lengths).")
    var promptMedian: Double = 128
    @Option(help: "Median output tokens of the seeded log-normal lengths.")
    var outputMedian: Double = 128
    @Option(help: "Prompt tokens at most.")
    var maxPrompt: Int = 1024
    @Option(help: "Output tokens at most.")
    var maxOutput: Int = 1024
    @Option(help: "Batching policy: \(PolicyOption.names).")
    var policy: String = "dlora"
    @Option(help: "Dispatch: \(SimDispatch.allCases.map(\.rawValue).joined(separator: ", ")).")
    var dispatch: String = "dlora"
    @OptionGroup var dloraDispatch: DLoRADispatchFlags
    @Option(help: "dLoRA dispatch: seconds between re-placements of the adapters from their smoothed arrival rates (the router's 5).")
    var placementPeriod: Double = 5
    @Option(help: "Migration: off, recompute, kv.")
    var migration: String = "off"
    @Option(help: "Migration loop period, seconds (the router's default 10).")
    var migrationPeriod: Double = 10
    @Option(help: "Migration fires when a replica holds this many requests above the average (dLoRA: 16).")
    var migrationRequestExcess: Int?
    @Option(help: "Router status poll interval, ms (0: dispatch sees replicas' state at each instant).")
    var pollMs: Double = 200
    @Option(name: .customLong("request-overhead-ms"),
            help: "Milliseconds from a request's arrival at the router to its arrival in the replica's queue (HTTP, tokenization, relay).")
    var requestOverheadMs: Double = 0
    @Option(name: .customLong("adapter-file-load-ms"),
            help: "Milliseconds to read an adapter's files into a replica's host memory when it first gets a request for it (one load at a time per replica; default: a measured cpu profile's, else none: all adapters in host memory).")
    var adapterFileLoadMs: Double?
    @Option(name: .customLong("adapter-file-gbps"),
            help: "With file loads: GB/s at which an adapter's bytes are read, on top of --adapter-file-load-ms (default: the fixed part only).")
    var adapterFileGBps: Double?
    @Option(name: .customLong("adapter-host-cache-mb"),
            help: "With file loads: each replica's host cache of loaded adapters, MB (least recently used evicted first; default unbounded).")
    var adapterHostCacheMb: Double?
    @Option(help: "Cost model: \(RooflineCostModel.names.joined(separator: ", ")).")
    var cost: String = "cpu"
    @Option(help: "JSON of measured coefficients replacing the cost model's: the cpu model's (keys as in CPUCostModel, snake_case) or a GPU model's roofline knobs (RooflineCostModel.profileKeys, e.g. unmerged_gamma, per_adapter_seconds_7b, switch_seconds_7b_a800, adapter_load_seconds; docs/design/simulator.md).")
    var costProfile: String?
    @Option(name: .customLong("kv-cache-mb"), help: "KV cache of a cpu replica, MiB (GPU models size it from the GPU's memory).")
    var kvCacheMb: Int?
    @Option(name: .customLong("kv-cache-dtype"), help: "What a cpu replica's KV cache stores: f32 (the cpu model's fitted runs) or f16 (dlora serve's default on the model, twice the positions per MiB).")
    var kvCacheDType: String?
    @Option(help: "Distinct adapters per unmerged iteration (LoRA slots).")
    var adapterSlots: Int?
    @Option(help: "Sequences per iteration at most (B).")
    var maxBatchSequences: Int?
    @Option(help: "SLO on latency per generated token, seconds.")
    var slo: Double = 0.5
    @Option(help: "Seed of the workload.")
    var seed: UInt64 = 1
    @Flag(help: "Print the summary as JSON.")
    var json = false
    @Option(help: "Write per-request records (CSV: id,adapter,arrival,first_token,finish,tokens,replica,migrations) to this file.")
    var records: String?
    @Option(help: "Write one JSON line per simulated iteration (the fields `dlora serve --step-log` writes) to this file.")
    var stepLog: String?
    @Option(name: .customLong("co-run-slowdown"),
            help: "Cross-replica interference on one machine: an iteration's forward pass × (1 + S·b) / (1 + S·U), b the share of it the other replicas are expected to spend inside an iteration (bench/step_log.py --overlap --co-run measures S and U from a served cluster's step log; default 0: none). The run is then sequential.")
    var coRunSlowdown: Double = 0
    @Option(name: .customLong("co-run-baseline"),
            help: "With --co-run-slowdown: U, the overlap (weighted by price) of the run the cost profile was calibrated on (its price holds there).")
    var coRunBaseline: Double = 0
    @Option(name: .customLong("sim-threads"),
            help: "Threads simulating the replicas between status polls (needs --poll-ms > 0, migration off and no --step-log; other runs use one). The same records and summary as one thread; the event count and log hash are the parallel run's own.")
    var simThreads = 1

    var rankList: [Int] { intList(ranks, in: 1...1024) ?? [] }

    func validate() throws {
        guard replicas >= 1, replicas <= 100_000 else { throw ValidationError("--replicas must be in 1...100000") }
        guard adapters >= 1, adapters <= 1_000_000 else { throw ValidationError("--adapters must be in 1...1000000") }
        guard rate > 0, rate.isFinite else { throw ValidationError("--rate must be positive") }
        guard alpha >= 0, alpha.isFinite else { throw ValidationError("--alpha must be >= 0") }
        guard simThreads >= 1, simThreads <= 256 else { throw ValidationError("--sim-threads must be in 1...256") }
        guard requests == nil || duration == nil else { throw ValidationError("give --requests or --duration, not both") }
        if let requests { guard requests >= 1 else { throw ValidationError("--requests must be >= 1") } }
        if let duration { guard duration > 0, duration.isFinite else { throw ValidationError("--duration must be positive") } }
        // The simulated span: status polls and placement periods tick through it, so a span of centuries (a rate of
        // 1e-300) would run for ever.
        if let duration {
            guard duration <= Self.maxSpanSeconds else { throw ValidationError("--duration must be at most \(Int(Self.maxSpanSeconds)) seconds") }
        } else if requestsFile == nil, requests ?? 200 <= WorkloadSpec.maxRequests, Double(requests ?? 200) / rate > Self.maxSpanSeconds {
            throw ValidationError("--rate \(rate) spreads \(requests ?? 200) requests over more than \(Int(Self.maxSpanSeconds)) simulated seconds")
        }
        guard intList(ranks, in: 1...1024) != nil else {
            throw ValidationError("--ranks must be a comma-separated list of ranks in 1...1024")
        }
        guard maxPrompt >= 1, maxOutput >= 1, promptMedian >= 1, outputMedian >= 1 else {
            throw ValidationError("--max-prompt, --max-output, --prompt-median and --output-median must be >= 1")
        }
        guard maxPrompt <= WorkloadSpec.maxLength, maxOutput <= WorkloadSpec.maxLength else {
            throw ValidationError("--max-prompt and --max-output must be at most \(WorkloadSpec.maxLength)")
        }
        guard promptMedian <= WorkloadSpec.maxMedian, outputMedian <= WorkloadSpec.maxMedian else {
            throw ValidationError("--prompt-median and --output-median must be at most \(Int(WorkloadSpec.maxMedian))")
        }
        guard adapterBurstWindow >= 1e-3, adapterBurstWindow.isFinite else { throw ValidationError("--adapter-burst-window must be at least 0.001 s") }
        // Periods tick through the whole simulated span, and delays push requests along it: below these floors and above
        // these ceilings a run of a few requests would take hours of wall time (or never end).
        guard placementPeriod >= 1e-2, placementPeriod.isFinite else { throw ValidationError("--placement-period must be at least 0.01 s") }
        guard slo > 0, slo.isFinite else { throw ValidationError("--slo must be positive") }
        guard migrationPeriod >= 1e-2, migrationPeriod.isFinite else { throw ValidationError("--migration-period must be at least 0.01 s") }
        guard pollMs == 0 || (pollMs >= 1 && pollMs <= 3_600_000) else { throw ValidationError("--poll-ms must be 0 or in 1...3600000") }
        guard requestOverheadMs >= 0, requestOverheadMs <= 60_000 else { throw ValidationError("--request-overhead-ms must be in 0...60000") }
        if let v = adapterFileLoadMs { guard v >= 0, v <= 60_000 else { throw ValidationError("--adapter-file-load-ms must be in 0...60000") } }
        if let v = adapterFileGBps { guard v >= 1e-3, v.isFinite else { throw ValidationError("--adapter-file-gbps must be a finite number >= 0.001") } }
        if let v = adapterHostCacheMb { guard v >= 1e-6, v <= 1e9 else { throw ValidationError("--adapter-host-cache-mb must be in [0.000001, 1e9] (at least a byte)") } }
        guard adapterFileLoadMs != nil || (adapterFileGBps == nil && adapterHostCacheMb == nil) || costProfile != nil else {
            throw ValidationError("--adapter-file-gbps and --adapter-host-cache-mb need --adapter-file-load-ms (or a profile that has it)")
        }
        if let s = adapterSlots { guard s >= 1 else { throw ValidationError("--adapter-slots must be >= 1") } }
        if let b = maxBatchSequences { guard b >= 1 else { throw ValidationError("--max-batch-sequences must be >= 1") } }
        _ = try PolicyOption.parse(policy, flag: "policy")
        guard SimDispatch(rawValue: dispatch) != nil else {
            throw ValidationError("unknown dispatch '\(dispatch)' (\(SimDispatch.allCases.map(\.rawValue).joined(separator: ", ")))")
        }
        guard SimMigration(rawValue: migration) != nil else { throw ValidationError("unknown migration '\(migration)' (off, recompute, kv)") }
        guard RooflineCostModel.named(cost) != nil else {
            throw ValidationError("unknown cost model '\(cost)' (\(RooflineCostModel.names.joined(separator: ", ")))")
        }
        if let e = migrationRequestExcess { guard e >= 1 else { throw ValidationError("--migration-request-excess must be >= 1") } }
        guard requestsFile == nil || (trace == nil && workload == nil && !traceLengths && requests == nil && duration == nil) else {
            throw ValidationError("--requests-file replaces --trace, --workload, --requests and --duration")
        }
        guard !replayDispatch || requestsFile != nil else { throw ValidationError("--replay-dispatch needs --requests-file") }
        guard coRunSlowdown >= 0, coRunSlowdown <= 10 else { throw ValidationError("--co-run-slowdown must be in [0, 10]") }
        guard coRunBaseline >= 0, coRunBaseline <= 1 else { throw ValidationError("--co-run-baseline must be a share in [0, 1]") }
        guard coRunBaseline == 0 || coRunSlowdown > 0 else { throw ValidationError("--co-run-baseline needs --co-run-slowdown") }
        if let kv = kvCacheMb {
            guard cost == "cpu" else { throw ValidationError("--kv-cache-mb applies to --cost cpu only") }
            guard kv >= 1, kv <= 1 << 20 else { throw ValidationError("--kv-cache-mb must be in 1...1048576") }
        }
        if let d = kvCacheDType {
            guard cost == "cpu" else { throw ValidationError("--kv-cache-dtype applies to --cost cpu only") }
            guard d == "f32" || d == "f16" else { throw ValidationError("--kv-cache-dtype must be f32 or f16") }
        }
        guard !traceLengths || trace != nil else { throw ValidationError("--trace-lengths needs --trace") }
        guard !traceLengths || workload == nil else { throw ValidationError("give --trace-lengths or --workload, not both") }
    }

    func run() throws {
        if let records { try OutputPath.check(records, option: "--records") }
        var model = RooflineCostModel.named(cost, adapterSlots: adapterSlots, maxBatchSequences: maxBatchSequences)!
        var profiledOverhead = 0.0
        var profiledFiles: AdapterFileModel?
        if cost == "cpu" && (kvCacheMb != nil || costProfile != nil || kvCacheDType != nil) {
            var cpu = CPUCostModel(kvCacheMegabytes: kvCacheMb ?? 1024, adapterSlots: adapterSlots ?? 32, maxBatchSequences: maxBatchSequences ?? 256,
                                   kvElementBytes: kvCacheDType == "f16" ? 2 : 4)
            if let costProfile { try Self.applyProfile(costProfile, to: &cpu) }
            profiledOverhead = cpu.requestOverheadSeconds
            if let f = cpu.adapterFileLoadSeconds {
                profiledFiles = AdapterFileModel(fixedSeconds: f, bytesPerSecond: cpu.adapterFileBytesPerSecond ?? .infinity)
            }
            model = cpu
        } else if let costProfile, var roofline = model as? RooflineCostModel {
            try Self.applyProfile(costProfile, to: &roofline)
            model = roofline
        }
        var arrivals = ArrivalProcess.poisson
        var lengths = LengthSource.logNormal(promptMedian: promptMedian, outputMedian: outputMedian)
        if let trace {
            guard let text = try? String(contentsOfFile: trace, encoding: .utf8) else { throw CLIError("\(trace): cannot read the trace") }
            let parsed: (times: [Double], lengths: [(prompt: Int, output: Int)])
            do { parsed = try Workload.azureTrace(csv: text) } catch { throw CLIError("\(trace): \(error)") }
            let gaps = Workload.gaps(parsed.times)
            guard gaps.contains(where: { $0 > 0 }) else {
                throw CLIError("\(trace): no arrival gaps (a TIMESTAMP column with at least two distinct times is needed)")
            }
            arrivals = .traceGaps(gaps)
            if traceLengths { lengths = .pairs(parsed.lengths) }
        }
        if let workload { lengths = .pairs(try Self.conversations(workload)) }
        let requestsList: [SimRequest]
        // A request must fit a replica beside its adapter (the scheduler would reject it).
        let limit = model.shape.schedulerConfig(policy: .dlora, costs: model.schedulerPrior).contextLimit
        if let requestsFile {
            requestsList = try Self.replay(requestsFile, contextLimit: limit)
            if replayDispatch {
                if let i = requestsList.firstIndex(where: { $0.replica == nil }) {
                    throw CLIError("\(requestsFile): --replay-dispatch needs a \"replica\" on every request (the request arriving at \(requestsList[i].arrival) s has none)")
                }
                if let r = requestsList.first(where: { $0.replica! >= replicas }) {
                    throw CLIError("\(requestsFile): a request names replica \(r.replica!), but --replicas is \(replicas)")
                }
            }
        } else {
            var spec = WorkloadSpec(requests: duration == nil ? (requests ?? 200) : nil, duration: duration, rate: rate, adapters: adapters,
                                    alpha: alpha, arrivals: arrivals, lengths: lengths, maxPrompt: maxPrompt, maxOutput: maxOutput, seed: seed)
            spec.burstSigma = adapterBurstSigma
            spec.burstWindow = adapterBurstWindow
            if let problem = spec.problem { throw CLIError(problem) }
            requestsList = Workload.generate(spec)
            guard maxPrompt < limit - 1 else { throw CLIError("--max-prompt \(maxPrompt) does not fit the \(model.name) replica's \(limit)-token limit") }
        }

        var config = SimulationConfig(replicas: replicas, cost: model, policy: BatchingPolicyKind(rawValue: policy)!,
                                      dispatch: SimDispatch(rawValue: dispatch)!, migration: SimMigration(rawValue: migration)!)
        config.migrationConfig.periodSeconds = migrationPeriod
        dloraDispatch.apply(to: &config.dloraDispatch)
        config.placementPeriod = placementPeriod
        if let migrationRequestExcess { config.migrationConfig.requestExcess = migrationRequestExcess }
        config.pollInterval = pollMs / 1000
        config.replayDispatch = replayDispatch
        // The flag, else a measured profile's.
        config.requestOverheadSeconds = requestOverheadMs > 0 ? requestOverheadMs / 1000 : profiledOverhead
        // Adapter file loads: the flags, else a measured profile's.
        var files = profiledFiles
        if let ms = adapterFileLoadMs { files = AdapterFileModel(fixedSeconds: ms / 1000, bytesPerSecond: files?.bytesPerSecond ?? .infinity) }
        if files != nil {
            if let g = adapterFileGBps { files!.bytesPerSecond = g * 1e9 }
            if let mb = adapterHostCacheMb { files!.cacheBytes = Int(mb * 1e6) }
        } else if adapterFileGBps != nil || adapterHostCacheMb != nil {
            throw CLIError("--adapter-file-gbps and --adapter-host-cache-mb need --adapter-file-load-ms (the profile has no adapter_file_load_seconds)")
        }
        config.adapterFiles = files
        config.adapterRanks = rankList
        config.slo = slo
        config.threads = simThreads
        config.coRunSlowdown = coRunSlowdown
        config.coRunBaseline = coRunBaseline
        if let problem = config.problem { throw CLIError(problem) }
        let steps = try stepLog.map { try StepLogWriter(path: $0) }
        let started = DispatchTime.now().uptimeNanoseconds
        let result = Simulation.run(config, workload: requestsList, onStep: steps.map { $0.append })
        let wall = Double(DispatchTime.now().uptimeNanoseconds - started) / 1e9
        let s = result.summary
        if let records { try Self.writeRecords(result.records, to: records) }
        if let steps { try steps.finish() }
        guard result.invariants.holds else { throw CLIError("an invariant broke: \(result.invariants)") }

        let rows: [(String, String)] = [
            ("cost model", model.name), ("replicas", "\(replicas)"), ("adapters", "\(adapters)"), ("policy", policy), ("dispatch", dispatch),
            ("migration", migration), ("requests", "\(s.requests)"), ("finished", "\(s.finished)"), ("rejected", "\(s.rejected)"),
            ("generated tokens", "\(s.generatedTokens)"), ("makespan s", fmt(s.makespan, 2)), ("throughput tok/s", fmt(s.throughput, 1)),
            ("avg latency per token s", fmt(s.avgLatencyPerToken, 4)), ("P90 latency s", fmt(s.p90Latency, 3)),
            ("mean TTFT s", fmt(s.meanTTFT, 3)), ("P90 TTFT s", fmt(s.p90TTFT, 3)), ("SLO attainment", fmt(s.sloAttainment * 100, 1) + " %"),
            ("iterations", "\(s.steps)"), ("mode switches", "\(s.modeSwitches)"), ("preemptions", "\(s.preemptions)"),
            ("adapter loads", "\(s.adapterLoads)"), ("adapter file loads (evictions)", "\(s.adapterFileLoads) (\(s.adapterFileEvictions))"),
            ("migrations", "\(s.migrations)"),
            ("migration checks (fired: KV pressure / imbalance)", "\(s.migrationChecks) (\(s.kvPressureTriggers) / \(s.imbalanceTriggers))"), ("mean migration stall s", fmt(s.meanMigrationStall, 4)),
            ("events", "\(s.events)"), ("event log hash", String(s.eventLogHash, radix: 16)), ("wall s", fmt(wall, 2)),
            ("events/s (wall)", fmt(Double(s.events) / max(wall, 1e-9), 0)), ("simulated/wall", fmt(s.makespan / max(wall, 1e-9), 1)),
        ]
        if json {
            var object: [String: Any] = [:]
            object["cost_model"] = model.name
            object["replicas"] = replicas
            object["adapters"] = adapters
            object["policy"] = policy
            object["dispatch"] = dispatch
            object["migration"] = migration
            object["requests"] = s.requests
            object["finished"] = s.finished
            object["rejected"] = s.rejected
            object["generated_tokens"] = s.generatedTokens
            object["makespan_seconds"] = s.makespan
            object["throughput_tokens_per_second"] = s.throughput
            object["avg_latency_per_token_seconds"] = s.avgLatencyPerToken
            object["p90_latency_seconds"] = s.p90Latency
            object["mean_ttft_seconds"] = s.meanTTFT
            object["p90_ttft_seconds"] = s.p90TTFT
            object["slo_attainment"] = s.sloAttainment
            object["iterations"] = s.steps
            object["mode_switches"] = s.modeSwitches
            object["preemptions"] = s.preemptions
            object["adapter_loads"] = s.adapterLoads
            object["adapter_file_loads"] = s.adapterFileLoads
            object["adapter_file_evictions"] = s.adapterFileEvictions
            object["migrations"] = s.migrations
            object["migration_checks"] = s.migrationChecks
            object["kv_pressure_triggers"] = s.kvPressureTriggers
            object["imbalance_triggers"] = s.imbalanceTriggers
            object["mean_migration_stall_seconds"] = s.meanMigrationStall
            object["events"] = s.events
            object["event_log_hash"] = String(s.eventLogHash, radix: 16)
            object["wall_seconds"] = wall
            let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
            print(String(decoding: data, as: UTF8.self))
        } else {
            print("| | |")
            print("|---|---:|")
            for (k, v) in rows { print("| \(k) | \(v) |") }
        }
    }

    private func fmt(_ x: Double, _ digits: Int) -> String { String(format: "%.\(digits)f", x) }

    /// (prompt, output) token counts from a JSONL file: integer `prompt_tokens`/`output_tokens`, or the text
    /// of `prompt`/`response` at ≈ 4 UTF-8 bytes per token (no tokenizer here: docs/design/simulator.md).
    static func conversations(_ path: String) throws -> [(prompt: Int, output: Int)] {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { throw CLIError("\(path): cannot read the workload") }
        var out: [(prompt: Int, output: Int)] = []
        for line in text.split(whereSeparator: \.isNewline) {
            guard let obj = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else { continue }
            if let p = obj["prompt_tokens"] as? Int, let o = obj["output_tokens"] as? Int, p >= 1, o >= 1 {
                out.append((p, o))
            } else if let p = obj["prompt"] as? String, let r = obj["response"] as? String {
                let pt = (p.utf8.count + 3) / 4
                guard pt >= 4 else { continue }
                out.append((pt, max(1, (r.utf8.count + 3) / 4)))
            }
        }
        guard !out.isEmpty else { throw CLIError("\(path): no conversations found") }
        return out
    }

    /// The longest simulated span a run may cover (115 days).
    static let maxSpanSeconds = 1e7

    /// The requests of a JSONL file, in arrival order (ids are their line order): every line an object with a
    /// finite `arrival` ≥ 0 (seconds), an `adapter` index in 0..<1,000,000, and `prompt_tokens`/`output_tokens` ≥ 1
    /// whose sum fits the replica's context. Anything else is an error naming the line.
    static func replay(_ path: String, contextLimit: Int) throws -> [SimRequest] {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { throw CLIError("\(path): cannot read the requests") }
        var rows: [(arrival: Double, adapter: Int, prompt: Int, output: Int, replica: Int?)] = []
        for (n, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            if line.allSatisfy({ $0 == " " || $0 == "\t" || $0 == "\r" }) { continue }
            guard rows.count < 10_000_000 else { throw CLIError("\(path): more than 10,000,000 requests") }
            func bad(_ why: String) -> CLIError { CLIError("\(path):\(n + 1): \(why)") }
            guard let obj = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else { throw bad("not a JSON object") }
            guard let arrival = (obj["arrival"] as? NSNumber)?.doubleValue, arrival.isFinite, arrival >= 0, arrival <= maxSpanSeconds else {
                throw bad("\"arrival\" must be a number of seconds in 0...\(Int(maxSpanSeconds))")
            }
            func integer(_ key: String, _ range: ClosedRange<Int>) throws -> Int {
                guard let v = obj[key] as? NSNumber, let i = Int(exactly: v.doubleValue), range.contains(i) else {
                    throw bad("\"\(key)\" must be an integer in \(range.lowerBound)...\(range.upperBound)")
                }
                return i
            }
            let adapter = try integer("adapter", 0...999_999)
            let prompt = try integer("prompt_tokens", 1...1 << 24), output = try integer("output_tokens", 1...1 << 24)
            guard prompt + output + 1 < contextLimit else { throw bad("\(prompt) + \(output) tokens do not fit the replica's \(contextLimit)-token limit") }
            let replica = obj["replica"] == nil || obj["replica"] is NSNull ? nil : try integer("replica", 0...999_999)
            rows.append((arrival, adapter, prompt, output, replica))
        }
        guard !rows.isEmpty else { throw CLIError("\(path): no requests") }
        // A stable sort: requests arriving at the same instant keep their order in the file.
        let order = rows.indices.sorted { rows[$0].arrival < rows[$1].arrival || (rows[$0].arrival == rows[$1].arrival && $0 < $1) }
        return order.enumerated().map { id, i in
            SimRequest(id: id, arrival: rows[i].arrival, adapter: rows[i].adapter, promptTokens: rows[i].prompt, outputTokens: rows[i].output,
                       replica: rows[i].replica)
        }
    }

    /// A JSON object of `keys`' numbers (and an optional "source", ignored) into `model`: unknown keys (so a
    /// misspelt coefficient is not silently the default), non-numbers, negative values (except `signed` keys) and
    /// non-positive bandwidths are refused in one line.
    static func profileValues<M>(_ path: String, keys: [String: WritableKeyPath<M, Double>], signed: Set<String> = [],
                                 into model: inout M) throws {
        guard let data = FileManager.default.contents(atPath: path) else { throw CLIError("\(path): cannot read the cost profile") }
        guard let obj = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw CLIError("\(path): not a JSON object")
        }
        for (key, value) in obj where key != "source" {
            guard let keyPath = keys[key] else {
                throw CLIError("\(path): unknown coefficient \"\(key)\" (\(keys.keys.sorted().joined(separator: ", ")))")
            }
            let isSigned = signed.contains(key)
            guard let number = value as? NSNumber, case let x = number.doubleValue, x.isFinite, isSigned || x >= 0 else {
                throw CLIError("\(path): \"\(key)\" must be a finite number\(isSigned ? "" : " >= 0")")
            }
            if key.hasSuffix("bytes_per_second") {
                // Huge is harmless (a transfer costs nothing); tiny would price a transfer at years of simulated time.
                guard x >= 1000 else { throw CLIError("\(path): \"\(key)\" must be at least 1000 bytes per second") }
            } else if key.contains("second") || key.contains("latency") {
                // Simulated time runs as far as the costs take it, and the router's polls with it: an iteration priced
                // at 1e6 s ran for hours of wall time.
                guard abs(x) <= 3600 else { throw CLIError("\(path): \"\(key)\" must be at most 3600 seconds in magnitude") }
            } else {
                guard abs(x) <= 1e6 else { throw CLIError("\(path): \"\(key)\" must be at most 1e6 in magnitude") }
            }
            model[keyPath: keyPath] = x
        }
    }

    /// Replaces `model`'s coefficients by a measured profile's: a JSON object whose keys are among
    /// `CPUCostModel.profileKeys` (non-negative finite numbers, the two bandwidths positive; those of
    /// `CPUCostModel.signedProfileKeys` may be negative, as long as `fixed_seconds` covers them, so no iteration is
    /// priced below zero); `source` (text) is allowed and ignored. An unknown key is an error, so a misspelt coefficient is
    /// not silently the default.
    static func applyProfile(_ path: String, to model: inout CPUCostModel) throws {
        try profileValues(path, keys: CPUCostModel.profileKeys, signed: CPUCostModel.signedProfileKeys, into: &model)
        let signed = CPUCostModel.signedProfileKeys.sorted()
        let below = signed.reduce(0.0) { $0 + min(0, model[keyPath: CPUCostModel.profileKeys[$1]!]) }
        if model.fixedSeconds + below < 0 {
            throw CLIError("\(path): the negative \(signed.map { "\"\($0)\"" }.joined(separator: " and ")) (\(below)) are below -\"fixed_seconds\" (\(model.fixedSeconds)): an iteration would cost less than nothing")
        }
    }

    /// A GPU model's knobs (`RooflineCostModel.profileKeys`): utilisations in (0, 1], the rest ≥ 0.
    static func applyProfile(_ path: String, to model: inout RooflineCostModel) throws {
        try profileValues(path, keys: RooflineCostModel.profileKeys, into: &model)
        for key in RooflineCostModel.utilizationKeys.sorted() {
            let x = model[keyPath: RooflineCostModel.profileKeys[key]!]
            guard x > 0, x <= 1 else { throw CLIError("\(path): \"\(key)\" must be in (0, 1], not \(x)") }
        }
    }

    static func writeRecords(_ records: [RequestRecord], to path: String) throws {
        var text = "id,adapter,arrival,first_token,finish,tokens,replica,migrations\n"
        for r in records {
            text += "\(r.id),\(r.adapter),\(r.arrival),\(r.firstToken.map { "\($0)" } ?? ""),\(r.finish.map { "\($0)" } ?? ""),"
                + "\(r.tokens),\(r.replica.map(String.init) ?? ""),\(r.migrations)\n"
        }
        try OutputPath.write(Data(text.utf8), to: path, option: "--records")
    }
}

/// `dlora simulate --step-log`: each simulated iteration's line (`StepSummary.jsonLine`), written as the run goes
/// through a 1 MiB buffer, so a long run's log never sits in memory.
final class StepLogWriter {
    private let path: String
    private let handle: FileHandle
    private var buffer = Data()
    private var failed = false

    init(path: String) throws {
        self.path = path
        // (Opened in place, not created by FileManager, which writes a new file over the path: over a device too.)
        handle = try OutputPath.openStream(path, option: "--step-log")
        buffer.reserveCapacity(1 << 20)
    }

    func append(_ s: StepRecord) {
        buffer.append(contentsOf: (StepSummary(s.output).jsonLine(replica: s.replica, start: s.start, actionSeconds: s.actionSeconds,
                                                                   forwardSeconds: s.forwardSeconds) + "\n").utf8)
        if buffer.count >= 1 << 20 { flush() }
    }

    private func flush() {
        if !failed && !buffer.isEmpty {
            do { try handle.write(contentsOf: buffer) } catch { failed = true }
        }
        buffer.removeAll(keepingCapacity: true)
    }

    /// Writes what is buffered and closes the file; an error if any write failed.
    func finish() throws {
        flush()
        try? handle.close()
        if failed { throw CLIError("\(path): cannot write the step log") }
    }
}
