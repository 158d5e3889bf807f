import Foundation
import Simulator
import TestSupport
import Testing

/// `dlora simulate` as a process: a replayed request list (`--requests-file`) under a measured profile
/// (`--cost-profile`) gives the times worked out by hand, and bad files get one-line errors and a non-zero exit.
@Suite struct SimulateCommandTests {
    /// Runs `dlora simulate ARGS` (bounded: terminated after 60 s) on a thread of its own, not the test pool's.
    static func simulate(_ args: [String]) async throws -> CommandRun {
        guard let binary = BuiltExecutables.dlora else { throw CocoaError(.fileNoSuchFile) }
        return try await runCommand(binary, ["simulate"] + args, timeout: 60)
    }

    /// A CPU profile where every iteration costs 10 ms and nothing else costs anything (bandwidths huge), plus
    /// `extra` JSON members.
    static func fixedProfile(_ extra: String = "") -> String {
        #"{"fixed_seconds": 0.01, "per_decode_seconds": 0, "per_prefill_token_seconds": 0, "per_lora_token_seconds": 0, "per_adapter_seconds": 0, "merged_extra_seconds": 0, "merge_seconds_per_element": 0, "memory_bytes_per_second": 1e18, "transfer_bytes_per_second": 1e18"#
            + (extra.isEmpty ? "" : ", " + extra) + "}"
    }

    /// Every iteration costs 10 ms and nothing else costs anything (bandwidths huge): a request with a 4-token
    /// prompt and 5 output tokens arriving at an idle replica at t takes 5 iterations (the prompt's iteration
    /// samples the first token), so it finishes at t + 0.05. Of two requests arriving at the same instant, the
    /// first wakes the idle replica and starts an iteration at once (as the real engine loop does); the second
    /// waits for the next one and then shares iterations with the first.
    @Test func replayedRequestsFollowTheProfile() async throws {
        let dir = try TemporaryDirectory(prefix: "dlora-simulate")
        let profile = dir.file("profile.json"), requests = dir.file("requests.jsonl")
        let records = dir.file("records.csv")
        try Self.fixedProfile(#""source": "test""#)
            .write(to: profile, atomically: true, encoding: .utf8)
        // Out of order on purpose: the replay sorts by arrival.
        try """
            {"arrival": 2.0, "adapter": 1, "prompt_tokens": 4, "output_tokens": 3}
            {"arrival": 0, "adapter": 0, "prompt_tokens": 4, "output_tokens": 5}

            {"arrival": 2.0, "adapter": 1, "prompt_tokens": 8, "output_tokens": 3}
            """.write(to: requests, atomically: true, encoding: .utf8)
        let r = try await Self.simulate(["--requests-file", requests.path, "--cost-profile", profile.path, "--policy", "unmerged-only",
                                   "--dispatch", "round-robin", "--records", records.path, "--json"])
        #expect(r.status == 0, "\(r.stderr)")
        let summary = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
        #expect(summary["requests"] as? Int == 3)
        #expect(summary["generated_tokens"] as? Int == 11)
        let rows = try String(contentsOf: records, encoding: .utf8).split(separator: "\n").dropFirst().map { $0.split(separator: ",", omittingEmptySubsequences: false) }
        #expect(rows.count == 3)
        var finish: [Int: Double] = [:]
        for row in rows { finish[Int(row[0])!] = Double(row[4]) }
        // ids follow arrival order: the t = 0 request is 0, the two at t = 2 keep their file order.
        #expect(abs(finish[0]! - 0.05) < 1e-9, "\(rows)")
        #expect(abs(finish[1]! - 2.03) < 1e-9, "\(rows)")
        #expect(abs(finish[2]! - 2.04) < 1e-9, "\(rows)")
    }

    /// The profile's per-request overhead delays each request's arrival in the replica's queue (latency still
    /// counts from its arrival at the router), and a fixed cost per adapter load delays the first iteration
    /// that needs the adapter; `--request-overhead-ms` overrides the profile's overhead.
    @Test func requestOverheadAndAdapterLoadCost() async throws {
        let dir = try TemporaryDirectory(prefix: "dlora-simulate")
        let profile = dir.file("profile.json"), requests = dir.file("requests.jsonl")
        let records = dir.file("records.csv")
        try Self.fixedProfile(#""adapter_load_seconds": 0.2, "request_overhead_seconds": 0.1"#)
            .write(to: profile, atomically: true, encoding: .utf8)
        try #"{"arrival": 1.0, "adapter": 0, "prompt_tokens": 4, "output_tokens": 5}"#.write(to: requests, atomically: true, encoding: .utf8)
        func finish(_ extra: [String]) async throws -> (first: Double, finish: Double) {
            let r = try await Self.simulate(["--requests-file", requests.path, "--cost-profile", profile.path, "--policy", "unmerged-only",
                                             "--dispatch", "round-robin", "--records", records.path] + extra)
            #expect(r.status == 0, "\(r.stderr)")
            let row = try #require(try String(contentsOf: records, encoding: .utf8).split(separator: "\n").dropFirst().first)
                .split(separator: ",", omittingEmptySubsequences: false)
            #expect(Double(row[2]) == 1.0, "arrival as given: \(row)")
            return (try #require(Double(row[3])), try #require(Double(row[4])))
        }
        // Queued at 1.1; the adapter's load (0.2 s) is charged to the first iteration: first token at 1.31,
        // four more iterations of 10 ms.
        let profiled = try await finish([])
        #expect(abs(profiled.first - 1.31) < 1e-9 && abs(profiled.finish - 1.35) < 1e-9, "\(profiled)")
        let flag = try await finish(["--request-overhead-ms", "300"])
        #expect(abs(flag.first - 1.51) < 1e-9 && abs(flag.finish - 1.55) < 1e-9, "\(flag)")
        let bad = try await Self.simulate(["--requests-file", requests.path, "--request-overhead-ms", "-1"])
        #expect(bad.status != 0 && bad.stderr.contains("--request-overhead-ms"))
    }

    /// Adapter file loads (`adapter_file_load_seconds` in a profile, or `--adapter-file-load-ms`): the first request
    /// for an adapter on a replica waits for its files to be read before it is queued, a later one does not, and with
    /// a host cache too small for two adapters a third adapter's read evicts the first, which is read again on its
    /// next request. Every iteration costs 10 ms, so a lone request queued at q has its first token at q + 0.01 and
    /// finishes at q + 0.05.
    @Test func adapterFileLoadsDelayTheFirstRequestOfEachAdapter() async throws {
        let dir = try TemporaryDirectory(prefix: "dlora-simulate")
        let profile = dir.file("profile.json"), requests = dir.file("requests.jsonl")
        let records = dir.file("records.csv")
        try Self.fixedProfile(#""adapter_file_load_seconds": 0.5"#).write(to: profile, atomically: true, encoding: .utf8)
        try """
            {"arrival": 1.0, "adapter": 0, "prompt_tokens": 4, "output_tokens": 5}
            {"arrival": 3.0, "adapter": 0, "prompt_tokens": 4, "output_tokens": 5}
            {"arrival": 5.0, "adapter": 1, "prompt_tokens": 4, "output_tokens": 5}
            {"arrival": 7.0, "adapter": 0, "prompt_tokens": 4, "output_tokens": 5}
            """.write(to: requests, atomically: true, encoding: .utf8)
        func firstTokens(_ extra: [String]) async throws -> (first: [Double], loads: Int?, evictions: Int?) {
            let r = try await Self.simulate(["--requests-file", requests.path, "--cost-profile", profile.path, "--policy", "unmerged-only",
                                             "--dispatch", "round-robin", "--records", records.path, "--json"] + extra)
            #expect(r.status == 0, "\(r.stderr)")
            let summary = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
            let rows = try String(contentsOf: records, encoding: .utf8).split(separator: "\n").dropFirst()
                .map { $0.split(separator: ",", omittingEmptySubsequences: false) }
            return (try rows.map { try #require(Double($0[3])) }, summary["adapter_file_loads"] as? Int, summary["adapter_file_evictions"] as? Int)
        }
        let profiled = try await firstTokens([])
        for (got, want) in zip(profiled.first, [1.51, 3.01, 5.51, 7.01]) { #expect(abs(got - want) < 1e-9, "\(profiled)") }
        #expect(profiled.loads == 2 && profiled.evictions == 0)
        let flag = try await firstTokens(["--adapter-file-load-ms", "200"])
        for (got, want) in zip(flag.first, [1.21, 3.01, 5.21, 7.01]) { #expect(abs(got - want) < 1e-9, "\(flag)") }
        // A cache of 1 MB holds one SmolLM2 q/v adapter (1.8 MB) at a time: adapter 1 evicts 0, which is read again.
        let small = try await firstTokens(["--adapter-host-cache-mb", "1"])
        for (got, want) in zip(small.first, [1.51, 3.01, 5.51, 7.51]) { #expect(abs(got - want) < 1e-9, "\(small)") }
        #expect(small.loads == 3 && small.evictions == 2)
        for (args, message) in [(["--adapter-file-load-ms", "-1"], "--adapter-file-load-ms"), (["--adapter-file-gbps", "0", "--adapter-file-load-ms", "1"], "--adapter-file-gbps"),
                                (["--adapter-host-cache-mb", "5"], "need --adapter-file-load-ms")] {
            let bad = try await Self.simulate(["--requests-file", requests.path] + args)
            #expect(bad.status != 0 && bad.stderr.contains(message), "\(args): \(bad.stderr)")
        }
    }

    /// Extreme values are refused in one line, before a run that would crash (a length median of 1e19 converted to
    /// Int, `--max-prompt` at Int.max overflowing, a burst window of 1e-300 s) or never end (delays of 1e10 ms, periods
    /// of 1e-6 s, a load bandwidth of 1e-300 GB/s): each exited by a signal or ran past 30 s for 20 requests before.
    /// A large median inside the bound runs, its draws clamped to the length limits.
    @Test func extremeValuesAreRefusedInOneLine() async throws {
        for (args, flag) in [(["--prompt-median", "1e19"], "--prompt-median"), (["--output-median", "inf"], "--prompt-median"),
                             (["--max-prompt", "9223372036854775807"], "--max-prompt"),
                             (["--adapter-burst-sigma", "10", "--adapter-burst-window", "1e-300"], "--adapter-burst-window"),
                             (["--request-overhead-ms", "1e10"], "--request-overhead-ms"), (["--adapter-file-load-ms", "1e12"], "--adapter-file-load-ms"),
                             (["--adapter-file-load-ms", "1", "--adapter-file-gbps", "1e-300"], "--adapter-file-gbps"),
                             (["--replicas", "2", "--poll-ms", "1e-3"], "--poll-ms"), (["--migration", "kv", "--migration-period", "1e-6"], "--migration-period"),
                             (["--placement-period", "1e-300"], "--placement-period")] {
            let r = try await Self.simulate(["--requests", "20"] + args)
            #expect(r.status == 64 && r.stderr.contains(flag) && !r.stderr.contains("Fatal") && r.stderr.split(separator: "\n").count <= 3,
                    "\(args): \(r.status) \(r.stderr.prefix(300))")
        }
        let large = try await Self.simulate(["--requests", "20", "--prompt-median", "1e9", "--output-median", "1e9", "--json"])
        #expect(large.status == 0, "\(large.stderr.prefix(300))")
    }

    /// A trace row with a negative token count is refused in one line naming the file and the line (it was taken as
    /// one token).
    @Test func aTraceWithNegativeLengthsIsRefused() async throws {
        let dir = try TemporaryDirectory(prefix: "dlora-simulate")
        let trace = dir.file("trace.csv")
        try "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.5,30,4\n2023-11-16 18:15:47,12,-6\n2023-11-16 18:15:48,5,6\n"
            .write(to: trace, atomically: true, encoding: .utf8)
        let r = try await Self.simulate(["--requests", "20", "--trace", trace.path, "--trace-lengths"])
        #expect(r.status != 0 && r.stderr.contains("line 3: negative token count") && r.stderr.contains(trace.path)
                && r.stderr.split(separator: "\n").count <= 2, "\(r.status) \(r.stderr.prefix(300))")
    }

    /// A profile's `per_context_token_seconds` prices each decode run's attention by the positions it attends
    /// (start + 1), and only decode runs: a 4-token prompt's iteration costs the fixed 10 ms (its first token at
    /// 0.01), then the four decodes at starts 4…7 attend 5…8 positions, 1 ms each: 0.01 + 0.04 + 0.026 = 0.076.
    @Test func decodeAttentionCostGrowsWithTheContext() async throws {
        let dir = try TemporaryDirectory(prefix: "dlora-simulate")
        let profile = dir.file("profile.json"), requests = dir.file("requests.jsonl")
        let records = dir.file("records.csv")
        try Self.fixedProfile(#""per_context_token_seconds": 0.001"#).write(to: profile, atomically: true, encoding: .utf8)
        try #"{"arrival": 0, "adapter": 0, "prompt_tokens": 4, "output_tokens": 5}"#.write(to: requests, atomically: true, encoding: .utf8)
        let r = try await Self.simulate(["--requests-file", requests.path, "--cost-profile", profile.path, "--policy", "unmerged-only",
                                         "--dispatch", "round-robin", "--records", records.path])
        #expect(r.status == 0, "\(r.stderr)")
        let row = try #require(try String(contentsOf: records, encoding: .utf8).split(separator: "\n").dropFirst().first)
            .split(separator: ",", omittingEmptySubsequences: false)
        let first = try #require(Double(row[3])), finish = try #require(Double(row[4]))
        #expect(abs(first - 0.01) < 1e-9 && abs(finish - 0.076) < 1e-9, "\(row)")
    }

    /// A GPU model takes a profile of its roofline knobs. With γ = 0 (an unmerged step costs what a merged one
    /// does), +10 ms of `fixed_seconds` delays a lone request's finish by exactly its iterations × 10 ms (one for
    /// the prompt, one per further token); with γ = 0.5 each iteration's forward is 1.5 × the γ = 0 one, and δ
    /// adds its HBM-scaled price per iteration's adapter; with
    /// `adapter_load_seconds` raised by 0.3 s its first token comes 0.3 s later still (the load is charged to
    /// the first iteration that needs the adapter). Unknown knobs and utilisations outside (0, 1] are refused.
    @Test func aGPUModelTakesAProfileOfItsRooflineKnobs() async throws {
        let dir = try TemporaryDirectory(prefix: "dlora-simulate")
        let profile = dir.file("profile.json"), requests = dir.file("requests.jsonl")
        let records = dir.file("records.csv")
        try #"{"arrival": 0.5, "adapter": 0, "prompt_tokens": 64, "output_tokens": 6}"#.write(to: requests, atomically: true, encoding: .utf8)
        func times(_ profileJSON: String?) async throws -> (first: Double, finish: Double) {
            var args = ["--cost", "h200-7b", "--requests-file", requests.path, "--policy", "unmerged-only", "--dispatch", "round-robin",
                        "--records", records.path]
            if let profileJSON {
                try profileJSON.write(to: profile, atomically: true, encoding: .utf8)
                args += ["--cost-profile", profile.path]
            }
            let r = try await Self.simulate(args)
            #expect(r.status == 0, "\(r.stderr)")
            let row = try #require(try String(contentsOf: records, encoding: .utf8).split(separator: "\n").dropFirst().first)
                .split(separator: ",", omittingEmptySubsequences: false)
            return (try #require(Double(row[3])), try #require(Double(row[4])))
        }
        let base = try await times(#"{"unmerged_gamma": 0, "per_adapter_seconds_7b": 0}"#)
        let slower = try await times(#"{"unmerged_gamma": 0, "per_adapter_seconds_7b": 0, "fixed_seconds": 0.0115, "source": "test"}"#)
        #expect(abs((slower.first - base.first) - 0.01) < 1e-9, "first token \(base) → \(slower)")
        #expect(abs((slower.finish - base.finish) - 0.06) < 1e-9, "finish \(base) → \(slower)")
        // The decodes after the first token: 5 iterations, each 1.5 × its γ = 0 price under γ = 0.5.
        let half = try await times(#"{"unmerged_gamma": 0.5, "per_adapter_seconds_7b": 0}"#)
        #expect(abs((half.finish - half.first) - 1.5 * (base.finish - base.first)) < 1e-9, "γ 0.5: \(half) against γ 0: \(base)")
        let defaults = try await times(#"{"per_adapter_seconds_7b": 0}"#)
        #expect(abs((defaults.finish - defaults.first) - 1.6 * (base.finish - base.first)) < 1e-9, "default γ 0.6: \(defaults)")
        // δ: each of the 5 decodes (one adapter each) pays 0.1 ms at 7B/A800 × (A800 / H200 bandwidth) more.
        let withDelta = try await times(#"{"per_adapter_seconds_7b": 0.0001}"#)
        #expect(abs((withDelta.finish - withDelta.first) - (defaults.finish - defaults.first) - 5 * 0.0001 * 2039 / 4800) < 1e-9,
                "δ: \(withDelta) against \(defaults)")
        let loaded = try await times(#"{"unmerged_gamma": 0, "per_adapter_seconds_7b": 0, "fixed_seconds": 0.0115, "adapter_load_seconds": 0.301}"#)
        #expect(abs((loaded.first - slower.first) - 0.3) < 1e-9 && abs((loaded.finish - slower.finish) - 0.3) < 1e-9, "\(slower) → \(loaded)")
        for (json, expected) in [(#"{"gamma": 0.3}"#, #"unknown coefficient "gamma""#),
                                 (#"{"memory_bandwidth_utilization": 1.5}"#, #""memory_bandwidth_utilization" must be in (0, 1]"#),
                                 (#"{"unmerged_gamma": -0.1}"#, #""unmerged_gamma" must be a finite number >= 0"#)] {
            try json.write(to: profile, atomically: true, encoding: .utf8)
            let bad = try await Self.simulate(["--cost", "h200-7b", "--requests-file", requests.path, "--cost-profile", profile.path])
            let lines = bad.stderr.split(separator: "\n")
            #expect(bad.status != 0 && lines.count == 1 && lines[0].contains(expected), "\(json): \(bad.stderr)")
        }
    }

    /// The knob files the GPU profilers committed (bench/results/*.knobs.json: tools/gpu_profile_report.py,
    /// gpu_profile_lora.py and gpu_profile_peft.py --knobs) still load into the GPU models they were measured for, and
    /// price as they say: a request served unmerged under a measured γ below the assumed 0.6 finishes sooner, and under
    /// HF PEFT's fixed time per step (tens of ms against the roofline's 1.5) later.
    @Test func theCommittedKnobFilesLoadAndPriceAsMeasured() async throws {
        let results = FixtureFiles.root.deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("bench/results")
        let files = try FileManager.default.contentsOfDirectory(atPath: results.path).filter { $0.hasSuffix(".knobs.json") }.sorted()
        #expect(files.count >= 6, "\(files)")
        let dir = try TemporaryDirectory(prefix: "dlora-simulate")
        let requests = dir.file("requests.jsonl"), records = dir.file("records.csv")
        try #"{"arrival": 0.5, "adapter": 0, "prompt_tokens": 64, "output_tokens": 6}"#.write(to: requests, atomically: true, encoding: .utf8)
        func finish(_ cost: String, _ profile: String?) async throws -> Double {
            var args = ["--cost", cost, "--requests-file", requests.path, "--policy", "unmerged-only", "--dispatch", "round-robin",
                        "--records", records.path]
            if let profile { args += ["--cost-profile", results.appendingPathComponent(profile).path] }
            let r = try await Self.simulate(args)
            #expect(r.status == 0, "\(profile ?? cost): \(r.stderr)")
            let row = try #require(try String(contentsOf: records, encoding: .utf8).split(separator: "\n").dropFirst().first)
                .split(separator: ",", omittingEmptySubsequences: false)
            return try #require(Double(row[4]))
        }
        for file in files {
            let gpu = file.contains("h100") ? "h100" : "h200"
            let model = file.contains("13b") ? "13b" : "7b"
            let cost = "\(gpu)-\(model)"
            let assumed = try await finish(cost, nil), measured = try await finish(cost, file)
            if file.contains("peft") {
                #expect(measured > assumed + 6 * 0.02, "\(file): \(assumed) → \(measured)")
            } else {
                #expect(measured < assumed, "\(file): \(assumed) → \(measured)")
            }
        }
    }

    /// `merged_extra_seconds` is signed: at −4 ms a merged iteration costs the fixed 10 ms less 4 ms, so one request
    /// (4-token prompt, 5 tokens) served merged-only finishes after 5 × 6 ms; unmerged-only, after 5 × 10 ms.
    @Test func aNegativeMergedExtraPricesMergedIterationsBelowTheBase() async throws {
        let dir = try TemporaryDirectory(prefix: "dlora-simulate")
        let profile = dir.file("profile.json"), requests = dir.file("requests.jsonl")
        let records = dir.file("records.csv")
        try Self.fixedProfile().replacingOccurrences(of: #""merged_extra_seconds": 0"#, with: #""merged_extra_seconds": -0.004"#)
            .write(to: profile, atomically: true, encoding: .utf8)
        try #"{"arrival": 0, "adapter": 0, "prompt_tokens": 4, "output_tokens": 5}"#.write(to: requests, atomically: true, encoding: .utf8)
        for (policy, want) in [("merged-only", 0.03), ("unmerged-only", 0.05)] {
            let r = try await Self.simulate(["--requests-file", requests.path, "--cost-profile", profile.path, "--policy", policy,
                                             "--dispatch", "round-robin", "--records", records.path])
            #expect(r.status == 0, "\(r.stderr)")
            let row = try #require(try String(contentsOf: records, encoding: .utf8).split(separator: "\n").dropFirst().first)
                .split(separator: ",", omittingEmptySubsequences: false)
            let finish = try #require(Double(row[4]))
            #expect(abs(finish - want) < 1e-9, "\(policy): \(row)")
        }
    }

    /// `single_token_seconds` prices an iteration of one token (one decode, nothing else) and no other: at −3 ms
    /// a lone 4-token prompt's request (first token with the prompt, four decodes alone) takes 10 + 4 × 7 ms. Two
    /// arriving together: the first's prompt runs alone (10 ms), the second's joins the first's first decode, the
    /// next three iterations hold both (10 ms each: the first is done at 50 ms), the second's last decode runs alone
    /// (7 ms: done at 57 ms).
    @Test func aSingleTokenIterationHasItsOwnTerm() async throws {
        let dir = try TemporaryDirectory(prefix: "dlora-simulate")
        let profile = dir.file("profile.json"), requests = dir.file("requests.jsonl")
        let records = dir.file("records.csv")
        try Self.fixedProfile(#""single_token_seconds": -0.003"#).write(to: profile, atomically: true, encoding: .utf8)
        let one = #"{"arrival": 0, "adapter": 0, "prompt_tokens": 4, "output_tokens": 5}"#
        for (text, want) in [(one, [0.038]), (one + "\n" + one, [0.05, 0.057])] {
            try text.write(to: requests, atomically: true, encoding: .utf8)
            let r = try await Self.simulate(["--requests-file", requests.path, "--cost-profile", profile.path, "--policy", "unmerged-only",
                                             "--dispatch", "round-robin", "--records", records.path])
            #expect(r.status == 0, "\(r.stderr)")
            let rows = try String(contentsOf: records, encoding: .utf8).split(separator: "\n").dropFirst()
            let finish = try rows.map { try #require(Double($0.split(separator: ",", omittingEmptySubsequences: false)[4])) }
            #expect(finish.count == want.count && zip(finish, want).allSatisfy { abs($0 - $1) < 1e-9 }, "\(rows)")
        }
    }

    /// `--kv-cache-dtype f16` halves a cpu replica's bytes per K/V block, as `dlora serve`'s default on the model does:
    /// 12 MiB hold 17 blocks of 16 positions in f32 and 34 in f16, so a 305-token request fits only in f16 (beside
    /// its adapter, which shares the budget). Not a knob of the GPU models, and only f32 or f16.
    @Test func kvCacheDTypeSizesTheCPUReplicasBlocks() async throws {
        #expect(CPUCostModel(kvCacheMegabytes: 24, kvElementBytes: 2).shape.numBlocks == 2 * CPUCostModel(kvCacheMegabytes: 24).shape.numBlocks)
        let dir = try TemporaryDirectory(prefix: "dlora-simulate")
        let requests = dir.file("requests.jsonl")
        try #"{"arrival": 0, "adapter": 0, "prompt_tokens": 300, "output_tokens": 5}"#.write(to: requests, atomically: true, encoding: .utf8)
        let f32 = try await Self.simulate(["--requests-file", requests.path, "--kv-cache-mb", "12", "--json"])
        #expect(f32.status != 0 && f32.stderr.contains("do not fit the replica's 272-token limit"), "\(f32.stderr)")
        let f16 = try await Self.simulate(["--requests-file", requests.path, "--kv-cache-mb", "12", "--kv-cache-dtype", "f16", "--json"])
        #expect(f16.status == 0, "\(f16.stderr)")
        let summary = try #require(try JSONSerialization.jsonObject(with: Data(f16.stdout.utf8)) as? [String: Any])
        #expect(summary["finished"] as? Int == 1 && summary["generated_tokens"] as? Int == 5, "\(summary)")
        for (args, message) in [(["--kv-cache-dtype", "f8"], "must be f32 or f16"),
                                (["--cost", "h200-7b", "--kv-cache-dtype", "f16"], "applies to --cost cpu only")] {
            let bad = try await Self.simulate(["--requests-file", requests.path] + args)
            #expect(bad.status != 0 && bad.stderr.contains(message), "\(args): \(bad.stderr)")
        }
    }

    /// `--replay-dispatch` sends each request to the replica its "replica" field names (a real router's recorded
    /// decisions) instead of where the dispatch policy would; round-robin's own choices differ, so the test fails
    /// if the field is ignored. Missing or out-of-range replicas are one-line errors.
    @Test func replayedDispatchSendsEachRequestWhereTheRouterDid() async throws {
        let dir = try TemporaryDirectory(prefix: "dlora-simulate")
        let profile = dir.file("profile.json"), requests = dir.file("requests.jsonl"), records = dir.file("records.csv")
        try Self.fixedProfile().write(to: profile, atomically: true, encoding: .utf8)
        // Round-robin would alternate 0, 1, 2, 0, …; the recorded router sent them elsewhere.
        let recorded = [2, 2, 0, 1, 1, 2, 0, 0]
        try recorded.enumerated().map { i, r in
            #"{"arrival": \#(Double(i) * 0.5), "adapter": \#(i % 3), "prompt_tokens": 4, "output_tokens": 3, "replica": \#(r)}"#
        }.joined(separator: "\n").write(to: requests, atomically: true, encoding: .utf8)
        func replicas(_ extra: [String]) async throws -> [Int] {
            let r = try await Self.simulate(["--requests-file", requests.path, "--cost-profile", profile.path, "--replicas", "3",
                                             "--dispatch", "round-robin", "--records", records.path] + extra)
            #expect(r.status == 0, "\(r.stderr)")
            let rows = try String(contentsOf: records, encoding: .utf8).split(separator: "\n").dropFirst()
                .map { $0.split(separator: ",", omittingEmptySubsequences: false) }
            return rows.sorted { Int($0[0])! < Int($1[0])! }.map { Int($0[6])! }
        }
        #expect(try await replicas(["--replay-dispatch"]) == recorded)
        #expect(try await replicas([]) == [0, 1, 2, 0, 1, 2, 0, 1])

        let bad = try await Self.simulate(["--requests-file", requests.path, "--replay-dispatch", "--replicas", "2"])
        #expect(bad.status != 0 && bad.stderr.contains("names replica 2, but --replicas is 2"), "\(bad.stderr)")
        try #"{"arrival": 0, "adapter": 0, "prompt_tokens": 4, "output_tokens": 3}"#.write(to: requests, atomically: true, encoding: .utf8)
        let missing = try await Self.simulate(["--requests-file", requests.path, "--replay-dispatch"])
        #expect(missing.status != 0 && missing.stderr.contains("needs a \"replica\" on every request"), "\(missing.stderr)")
        try #"{"arrival": 0, "adapter": 0, "prompt_tokens": 4, "output_tokens": 3, "replica": -1}"#.write(to: requests, atomically: true, encoding: .utf8)
        let negative = try await Self.simulate(["--requests-file", requests.path])
        #expect(negative.status != 0 && negative.stderr.contains("\"replica\" must be an integer"), "\(negative.stderr)")
        let alone = try await Self.simulate(["--replay-dispatch", "--requests", "4"])
        #expect(alone.status != 0 && alone.stderr.contains("--replay-dispatch needs --requests-file"), "\(alone.stderr)")
    }

    @Test func badFilesAreOneLineErrors() async throws {
        let dir = try TemporaryDirectory(prefix: "dlora-simulate")
        let requests = dir.file("requests.jsonl"), profile = dir.file("profile.json")
        let cases: [(String, String)] = [
            (#"{"arrival": 0, "adapter": 0, "prompt_tokens": 4, "output_tokens": 5}"# + "\nnot json\n", "requests.jsonl:2: not a JSON object"),
            (#"{"arrival": -1, "adapter": 0, "prompt_tokens": 4, "output_tokens": 5}"#, "\"arrival\" must be"),
            // An arrival centuries out reported a makespan of 1e-12 s and 5e12 tok/s.
            (#"{"arrival": 1e300, "adapter": 0, "prompt_tokens": 4, "output_tokens": 5}"#, "\"arrival\" must be a number of seconds in 0...10000000"),
            (#"{"arrival": 0, "adapter": 0.5, "prompt_tokens": 4, "output_tokens": 5}"#, "\"adapter\" must be an integer"),
            (#"{"arrival": 0, "adapter": 0, "prompt_tokens": 0, "output_tokens": 5}"#, "\"prompt_tokens\" must be an integer"),
            (#"{"arrival": 0, "adapter": 0, "prompt_tokens": 9000, "output_tokens": 5}"#, "do not fit"),
            ("\n\n", "no requests"),
        ]
        for (text, message) in cases {
            try text.write(to: requests, atomically: true, encoding: .utf8)
            let r = try await Self.simulate(["--requests-file", requests.path])
            #expect(r.status != 0)
            #expect(r.stderr.contains(message), "\(message): \(r.stderr)")
        }
        try #"{"arrival": 0, "adapter": 0, "prompt_tokens": 4, "output_tokens": 5}"#.write(to: requests, atomically: true, encoding: .utf8)
        for (text, message) in [(#"{"fixed_secs": 0.01}"#, "unknown coefficient \"fixed_secs\""), (#"{"fixed_seconds": -1}"#, "must be a finite number"),
                                (#"{"memory_bytes_per_second": 0}"#, "must be at least 1000 bytes per second"), ("[1]", "not a JSON object"),
                                // Prices that would run the simulation for hours of wall time (an iteration of 1e6 s).
                                (#"{"fixed_seconds": 1e6}"#, "\"fixed_seconds\" must be at most 3600 seconds"),
                                (#"{"adapter_load_seconds": 1e9}"#, "\"adapter_load_seconds\" must be at most 3600 seconds"),
                                (#"{"transfer_bytes_per_second": 10}"#, "must be at least 1000 bytes per second"),
                                (#"{"fixed_seconds": 0.01, "merged_extra_seconds": -0.02}"#, "below -\"fixed_seconds\""),
                                (#"{"fixed_seconds": 0.01, "merged_extra_seconds": -0.006, "single_token_seconds": -0.006}"#, "below -\"fixed_seconds\""),
                                (#"{"merged_extra_seconds": "x"}"#, "\"merged_extra_seconds\" must be a finite number")] {
            try text.write(to: profile, atomically: true, encoding: .utf8)
            let r = try await Self.simulate(["--requests-file", requests.path, "--cost-profile", profile.path])
            #expect(r.status != 0)
            #expect(r.stderr.contains(message), "\(message): \(r.stderr)")
        }
        let missing = try await Self.simulate(["--requests-file", requests.path, "--cost-profile", dir.file("none.json").path])
        #expect(missing.status != 0 && missing.stderr.contains("none.json: cannot read the cost profile"), "\(missing.stderr)")
        let both = try await Self.simulate(["--requests-file", requests.path, "--requests", "5"])
        #expect(both.status != 0 && both.stderr.contains("--requests-file replaces"))
    }

    /// A workload past `WorkloadSpec.maxRequests` is refused before anything is generated: a huge rate over a short
    /// duration used to generate arrivals until memory ran out (each gap ~0 s, so the duration never passed).
    @Test func anOversizedWorkloadIsAOneLineError() async throws {
        for (args, message) in [(["--rate", "1e308", "--duration", "1"], "at most 20000000"),
                                (["--rate", "30000", "--duration", "1000"], "about 30000000"),
                                (["--requests", "1000000000000"], "at most 20000000 requests"),
                                // A span the polls would tick through for ever (the probe's --rate 1e-300 never ended).
                                (["--rate", "1e-300", "--requests", "10"], "more than 10000000 simulated seconds"),
                                (["--duration", "1e9"], "--duration must be at most 10000000 seconds")] {
            let r = try await Self.simulate(args)
            #expect(r.status != 0)
            #expect(r.stderr.contains(message), "\(args): \(r.stderr)")
            #expect(r.stderr.split(separator: "\n").count == 1, "\(args): \(r.stderr)")
        }
    }
}
