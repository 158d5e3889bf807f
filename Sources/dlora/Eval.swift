import Adapters
import ArgumentParser
import Engine
import Foundation
import Kernels
import Models
import Scheduling
import Training

/// `dlora eval`: scores the base model and adapters (plain, static compositions, MoLE) on the held-out splits
/// of the MoLE task suite, greedy, and writes the scores and the throughput of each run as JSON.
struct Eval: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Score adapters on held-out task splits (greedy generation; exact match, choice accuracy, ROUGE-L).",
        discussion: """
        --tasks is a directory written by tools/build_mole_tasks.py: each task's test_eval.jsonl holds \
        {"prompt", "references", "metric"} lines. Every adapter in --adapters (names under --adapter-root; \
        "base" for none; NAME:EXPERT+EXPERT restricts a MoLE composition to those experts) answers the first \
        --limit prompts of every task in one engine run (continuous batching, unmerged); a generation ends at \
        a newline. Prints a table and writes --out as JSON.
        """
    )

    @OptionGroup var modelOptions: ModelOptions
    @Option(help: "The task-suite directory (tools/build_mole_tasks.py).")
    var tasks: String
    @Option(help: "Tasks to score, comma-separated (default: every directory with a test_eval.jsonl).")
    var only: String?
    @Option(help: "Adapters to score, comma-separated: names under --adapter-root, base, or NAME:EXPERT+EXPERT for a MoLE subset.")
    var adapters: String
    @Option(name: .customLong("adapter-root"), help: "Directory the adapter names are found in.")
    var adapterRoot: String?
    @Option(help: "Prompts per task at most (the first ones of test_eval.jsonl).")
    var limit: Int = 100
    @Option(name: .customLong("max-tokens"), help: "Tokens generated per prompt at most (default: the task's longest reference + 8).")
    var maxTokens: Int?
    @Option(name: .customLong("max-sequences"), help: "Sequences per iteration at most.")
    var maxSequences: Int = 32
    @Option(help: "Where to write the results (JSON).")
    var out: String?
    @OptionGroup var adapterPrecision: AdapterPrecisionOption

    static let maxPrompts = 100_000

    func validate() throws {
        guard (1...Self.maxPrompts).contains(limit) else { throw ValidationError("--limit must be between 1 and \(Self.maxPrompts)") }
        if let maxTokens, !(1...4096).contains(maxTokens) { throw ValidationError("--max-tokens must be between 1 and 4096") }
        guard (1...1024).contains(maxSequences) else { throw ValidationError("--max-sequences must be between 1 and 1024") }
        guard !adapters.isEmpty else { throw ValidationError("--adapters must name at least one adapter (or base)") }
    }

    struct Item {
        let task: String
        let prompt: String
        let references: [String]
        let metric: TaskMetric
    }

    /// Reads up to `limit` scored prompts of one task (untrusted lines: one clear error per bad line).
    static func items(task: String, path: String, limit: Int) throws -> [Item] {
        guard let data = FileManager.default.contents(atPath: path) else { throw CLIError("\(path): cannot be read") }
        guard data.count <= 256 << 20 else { throw CLIError("\(path): larger than 256 MiB") }
        var out: [Item] = []
        for (n, line) in data.split(separator: UInt8(ascii: "\n")).enumerated() where out.count < limit {
            guard !line.allSatisfy({ $0 == 32 || $0 == 13 || $0 == 9 }) else { continue }
            func bad(_ why: String) -> CLIError { CLIError("\(path):\(n + 1): \(why)") }
            guard let object = try? JSONSerialization.jsonObject(with: Data(line)) as? [String: Any] else { throw bad("not a JSON object") }
            guard let prompt = object["prompt"] as? String, !prompt.isEmpty else { throw bad("needs a non-empty \"prompt\" string") }
            guard let refs = object["references"] as? [String], !refs.isEmpty else { throw bad("needs a non-empty \"references\" list of strings") }
            guard let name = object["metric"] as? String, let metric = TaskMetric(rawValue: name) else {
                throw bad("\"metric\" must be one of \(TaskMetric.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            // The task builder's choices (tools/build_mole_tasks.py), when a line has them, must hold its references: a
            // reference outside them is a broken line, not one to score.
            if let choices = object["choices"], !(choices is NSNull) {
                guard let list = choices as? [String], !list.isEmpty else { throw bad("\"choices\" must be a non-empty list of strings") }
                let norm = { (s: String) in s.trimmingCharacters(in: .whitespacesAndNewlines).lowercased() }
                guard refs.allSatisfy({ r in list.contains { norm($0) == norm(r) } }) else { throw bad("a reference is not among its \"choices\"") }
            }
            out.append(Item(task: task, prompt: prompt, references: refs, metric: metric))
        }
        guard !out.isEmpty else { throw CLIError("\(path): no prompts") }
        return out
    }

    func run() throws {
        if let out { try OutputPath.check(out, option: "--out") }
        let (path, loaded) = try modelOptions.load()
        let model = loaded.model, tokenizer = loaded.tokenizer, c = model.config
        var taskNames: [String]
        if let only {
            taskNames = only.split(separator: ",").map(String.init)
        } else {
            let entries = (try? FileManager.default.contentsOfDirectory(atPath: tasks)) ?? []
            taskNames = entries.filter { FileManager.default.fileExists(atPath: tasks + "/" + $0 + "/test_eval.jsonl") }.sorted()
        }
        guard !taskNames.isEmpty else { throw CLIError("\(tasks): no task directories with a test_eval.jsonl") }
        for t in taskNames where !LoRAComposition.isPlainName(t) { throw CLIError("task '\(t.prefix(64))' is not a plain directory name") }
        let items = try taskNames.flatMap { try Self.items(task: $0, path: tasks + "/" + $0 + "/test_eval.jsonl", limit: limit) }
        let prompts = items.map { tokenizer.encode($0.prompt, addSpecial: true) }
        var budget: [String: Int] = [:]
        for item in items {
            let longest = item.references.map { tokenizer.encode($0, addSpecial: false).count }.max() ?? 1
            budget[item.task] = max(budget[item.task] ?? 0, maxTokens ?? (longest + 8))
        }
        let held = try adapterPrecision.resolved(for: model)
        let registry = try adapterRoot.map { try AdapterRegistry(root: $0, base: c, precision: held) }
        let longestPrompt = prompts.map(\.count).max() ?? 1
        let perSequence = EngineConfiguration.kvBlocks(tokens: longestPrompt + (budget.values.max() ?? 1) + 1)

        var results: [[String: Any]] = []
        // Every adapter loaded (and checked) before any is scored: a bad one fails the run at once, not after the others.
        let specs = adapters.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        if let twice = Dictionary(grouping: specs, by: { $0 }).first(where: { $0.value.count > 1 })?.key {
            throw CLIError("--adapters names '\(twice.prefix(64))' twice")
        }
        let resolved = try specs.map { spec -> (String, LoRAWeights?) in
            guard !spec.isEmpty else { throw CLIError("--adapters: an empty name") }
            let parts = spec.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
            guard parts.count == 1 || !parts[1].isEmpty else { throw CLIError("'\(spec.prefix(64))': an expert subset names no expert (give name:expert+expert)") }
            var weights: LoRAWeights?
            if parts[0] != "base" {
                guard let registry else { throw CLIError("adapter '\(parts[0].prefix(64))' needs --adapter-root") }
                weights = try registry.load(parts[0])
            }
            if parts.count == 2 {
                guard let w = weights, let gating = w.gating else { throw CLIError("'\(spec.prefix(64))': only a MoLE composition takes an expert subset") }
                weights = w.restricted(toExperts: try MoLEComposition.mask(parts[1].split(separator: "+").map(String.init), of: gating, adapter: w.name))
            }
            return (spec, weights)
        }
        for (spec, weights) in resolved {
            var seconds = 0.0, generated = 0
            var scores: [Double] = []
            var gates: [String: [Double]] = [:]
            var samples: [[String: Any]] = []
            // One engine run per task (all of its prompts batched), so a MoLE composition's gate statistics are per task.
            for task in taskNames {
                let engine = EngineCore(model: model, tokenizer: tokenizer, kvBlocks: perSequence * maxSequences + 64,
                                        maxSequences: maxSequences, adapterSlots: 4, policy: BatchPolicyConfig(kind: .unmergedOnly))
                var ids: [(RequestID, Item)] = []
                for (item, prompt) in zip(items, prompts) where item.task == task {
                    let params = SamplingParams(temperature: 0, maxTokens: budget[item.task]!, stop: ["\n"])
                    ids.append((try engine.submit(prompt: prompt, params: params, adapter: weights), item))
                }
                let start = DispatchTime.now().uptimeNanoseconds
                var text: [RequestID: String] = [:]
                for e in engine.runToCompletion() {
                    if e.finish == .error { throw CLIError("\(spec): a request failed: \(e.message ?? "?")") }
                    text[e.requestID, default: ""] += e.text
                }
                seconds += Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
                generated += engine.stats.generatedTokens
                if let w = weights, let tally = engine.stats.gates[w.name] { gates[task] = tally.meanGates }
                var sum = 0.0
                for (i, (id, item)) in ids.enumerated() {
                    let output = text[id] ?? ""
                    let s = item.metric.score(output, references: item.references)
                    sum += s
                    if i < 2 { samples.append(["task": task, "generated": output, "reference": item.references[0], "score": s]) }
                }
                scores.append(sum / Double(ids.count))
            }
            let mean = scores.reduce(0, +) / Double(scores.count)
            let line = taskNames.enumerated().map { String(format: "%@ %.3f", $1, scores[$0]) }.joined(separator: "  ")
            StandardError.write(String(format: "eval %@: %@  mean %.3f  (%d prompts in %.1f s, %d tokens generated)\n",
                                               spec, line, mean, items.count, seconds, generated))
            var entry: [String: Any] = ["adapter": spec, "mean": mean, "seconds": seconds, "prompts": items.count,
                                        "generated_tokens": generated, "samples": samples]
            entry["tasks"] = Dictionary(uniqueKeysWithValues: zip(taskNames, scores))
            if let g = weights?.gating {
                entry["experts"] = g.experts
                entry["gates"] = gates
            }
            results.append(entry)
        }
        let report: [String: Any] = ["model": path, "tasks_dir": tasks, "tasks": taskNames, "limit": limit,
                                     "threads": Kernels.threadCount, "adapter_precision": held.rawValue, "results": results]
        let json = try JSONSerialization.data(withJSONObject: report, options: [.prettyPrinted, .sortedKeys])
        if let out { try OutputPath.write(json, to: out, option: "--out") } else { try StandardOutput.write(json) }
    }
}
