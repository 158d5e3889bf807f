import Foundation
import Testing

/// `dlora generate` as a user runs it: the executable built next to the test bundle.
@Suite struct CLITests {
    struct Run {
        let status: Int32
        let stdout: String
        let stderr: String
    }

    static var binary: URL {
        // swift build --build-tests puts the executable beside the test bundle.
        var dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        while dir.path != "/" && !FileManager.default.fileExists(atPath: dir.appendingPathComponent("dlora").path) {
            dir.deleteLastPathComponent()
        }
        return dir.appendingPathComponent("dlora")
    }

    static func dlora(_ args: [String]) throws -> Run {
        let p = Process()
        p.executableURL = binary
        p.arguments = args
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let o = out.fileHandleForReading.readDataToEndOfFile()
        let e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return Run(status: p.terminationStatus, stdout: String(decoding: o, as: UTF8.self), stderr: String(decoding: e, as: UTF8.self))
    }

    static let tiny = ModelFixtures.checkpointPath(model: "tiny-llama", variant: "Q8_0")

    @Test(arguments: [
        (["generate", "--model", tiny], "exactly one of --prompt and --chat"),
        (["generate", "--model", tiny, "--prompt", "a", "--chat", "b"], "exactly one of --prompt and --chat"),
        (["generate", "--model", tiny, "--prompt", "a", "--temperature", "-1"], "--temperature"),
        (["generate", "--model", tiny, "--prompt", "a", "--top-p", "0"], "--top-p"),
        (["generate", "--model", tiny, "--prompt", "a", "--max-tokens", "0"], "--max-tokens"),
        (["generate", "--model", tiny, "--prompt", "a", "--bogus"], "--bogus"),
        (["generate", "--model", "/nonexistent/model.gguf", "--prompt", "a"], "/nonexistent/model.gguf"),
        (["generate", "--model", ModelFixtures.root.appendingPathComponent("summary.json").path, "--prompt", "a"], "summary.json"),
        (["frobnicate"], "frobnicate"),
    ])
    func badInputIsOneLineAndNonZeroExit(_ args: [String], _ mention: String) throws {
        let r = try Self.dlora(args)
        #expect(r.status != 0)
        #expect(r.stdout.isEmpty)
        let lines = r.stderr.split(separator: "\n")
        #expect(lines.count == 1, "stderr: \(r.stderr)")
        #expect(r.stderr.contains(mention), "stderr: \(r.stderr)")
    }

    @Test func generatesWithATinyModelAndReportsThroughput() throws {
        let r = try Self.dlora(["generate", "--model", Self.tiny, "--prompt", "hello world", "--max-tokens", "12", "--temperature", "0"])
        #expect(r.status == 0, "stderr: \(r.stderr)")
        #expect(!r.stdout.isEmpty)
        let last = r.stderr.split(separator: "\n").last.map(String.init) ?? ""
        #expect(last.range(of: #"^prompt: \d+ tokens, [0-9.]+ tok/s; generation: 12 tokens, [0-9.]+ tok/s$"#, options: .regularExpression) != nil,
                "stderr: \(r.stderr)")
    }

    /// The README's main job, shortened: a chat prompt on the default model, greedy, matches transformers'
    /// continuation (the chat case of the SmolLM2 goldens) and stops at the end-of-turn token.
    @Test func chatOnTheDefaultModelMatchesTheReference() throws {
        try #require(FileManager.default.fileExists(atPath: ModelFixtures.smolPath), "default model missing: run scripts/fetch-model.sh")
        let golden = try #require(try ModelFixtures.smolGoldens().cases.first { $0.kind == "chat" })
        let r = try Self.dlora(["generate", "--chat", "What is the boiling point of water at sea level? Answer in one sentence.",
                                "--max-tokens", "40", "--temperature", "0"])
        #expect(r.status == 0, "stderr: \(r.stderr)")
        let reference = golden.continuationText.components(separatedBy: "<|im_end|>")[0]
        #expect(r.stdout == reference + "\n")
    }

    @Test func stopStringsEndTheOutput() throws {
        try #require(FileManager.default.fileExists(atPath: ModelFixtures.smolPath), "default model missing: run scripts/fetch-model.sh")
        let r = try Self.dlora(["generate", "--chat", "What is the boiling point of water at sea level? Answer in one sentence.",
                                "--max-tokens", "40", "--temperature", "0", "--stop", "point"])
        #expect(r.status == 0, "stderr: \(r.stderr)")
        #expect(r.stdout == "At sea level, the boiling \n")
    }
}
