import Foundation
import Testing
import TestSupport

extension TrainingSuites {
/// `dlora eval` end to end on the tiny model: two tasks, the base, a plain adapter and the MoLE fixture (whole
/// and restricted) scored; the JSON has every task's score in [0, 1] and, for the MoLE composition, its mean
/// gates per task (summing to 1 over the experts in use). Bad input is one line on stderr and a non-zero exit.
@Suite struct EvalCommandTests {
    @Test func evalCommand() async throws {
        let exe = try #require(BuiltExecutables.dlora, "build the dlora executable first (swift build --build-tests)")
        let dir = try TemporaryDirectory()
        let tasks = dir.path("tasks")
        let lines: [String: [String]] = [
            "count": (0..<4).map { #"{"prompt": "one two three", "references": [" four"], "metric": "exact_match"}"# + ($0 == 0 ? "" : " ") },
            "mood": [#"{"prompt": "It is good.\nSentiment:", "references": [" positive"], "metric": "choice_accuracy", "choices": [" positive", " negative"]}"#,
                     #"{"prompt": "A restaurant by the river", "references": [" The river restaurant"], "metric": "rougeL_max_ref"}"#],
        ]
        for (task, content) in lines {
            try FileManager.default.createDirectory(atPath: tasks + "/" + task, withIntermediateDirectories: true)
            try Data(content.joined(separator: "\n").utf8).write(to: URL(fileURLWithPath: tasks + "/" + task + "/test_eval.jsonl"))
        }
        let model = FixtureFiles.checkpoint(model: "tiny-llama", variant: "F32")
        let root = FixtureFiles.lora.appendingPathComponent("tiny-llama").path
        let out = dir.path("eval.json")
        func run(_ args: [String]) async throws -> CommandRun { try await runCommand(exe, args, timeout: 120) }
        let ok = try await run(["eval", "--model", model, "--tasks", tasks, "--adapter-root", root, "--max-tokens", "4",
                                "--adapters", "base,a-qv-r4,mole-abc,mole-abc:a-qv-r4+c-kod-r2", "--out", out])
        #expect(ok.status == 0, "\(ok.stderr)")
        let report = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: out))) as? [String: Any])
        #expect(report["tasks"] as? [String] == ["count", "mood"])
        let results = try #require(report["results"] as? [[String: Any]])
        #expect(results.map { $0["adapter"] as? String } == ["base", "a-qv-r4", "mole-abc", "mole-abc:a-qv-r4+c-kod-r2"])
        for r in results {
            let scores = try #require(r["tasks"] as? [String: Double])
            #expect(scores.count == 2 && scores.values.allSatisfy { (0...1).contains($0) })
            #expect(r["prompts"] as? Int == 6)
        }
        let gates = try #require(results[2]["gates"] as? [String: [Double]])
        #expect(Set(gates.keys) == ["count", "mood"] && gates.values.allSatisfy { $0.count == 3 && abs($0.reduce(0, +) - 1) < 1e-4 })
        let masked = try #require(results[3]["gates"] as? [String: [Double]])
        #expect(masked.values.allSatisfy { $0[1] == 0 && abs($0.reduce(0, +) - 1) < 1e-4 }, "\(masked)")
        #expect(results[0]["gates"] == nil)

        // A reference outside its line's choices is a broken line.
        try Data(#"{"prompt": "x", "references": [" red"], "metric": "choice_accuracy", "choices": [" blue"]}"#.utf8)
            .write(to: URL(fileURLWithPath: tasks + "/mood/test_eval.jsonl"))
        let outside = try await run(["eval", "--model", model, "--tasks", tasks, "--adapter-root", root, "--max-tokens", "2", "--adapters", "base"])
        #expect(outside.status != 0 && outside.stderr.contains("not among its \"choices\""), "\(outside.stderr)")
        try Data(#"{"prompt": "x", "references": [" y"], "metric": "bleu"}"#.utf8).write(to: URL(fileURLWithPath: tasks + "/mood/test_eval.jsonl"))
        for (args, expected) in [
            (["--adapters", "base", "--tasks", dir.path("none")], "no task directories"),
            (["--adapters", "base"], "\"metric\" must be one of"),
            (["--adapters", "nope", "--only", "count"], "nope"),
            (["--adapters", "a-qv-r4:a-qv-r4", "--only", "count"], "only a MoLE composition"),
            (["--adapters", "mole-abc:x", "--only", "count"], "'x' is not one of its experts"),
            (["--adapters", "base", "--only", "../count"], "not a plain directory name"),
            (["--adapters", "base", "--limit", "0"], "--limit must be between"),
            (["--adapters", "base,base", "--only", "count"], "names 'base' twice"),
            (["--adapters", "mole-abc:", "--only", "count"], "names no expert"),
            (["--adapters", "base,", "--only", "count"], "an empty name"),
        ] {
            var full = ["eval", "--model", model, "--tasks", tasks, "--adapter-root", root, "--max-tokens", "2"]
            for i in stride(from: 0, to: args.count, by: 2) {
                if let at = full.firstIndex(of: args[i]) { full[at + 1] = args[i + 1] } else { full += [args[i], args[i + 1]] }
            }
            let bad = try await run(full)
            #expect(bad.status != 0)
            let errorLines = bad.stderr.split(separator: "\n").filter { $0.hasPrefix("dlora: ") }
            #expect(errorLines.count == 1 && errorLines[0].contains(expected), "\(args): \(bad.stderr)")
        }
    }
}
}
