import Foundation
import Models
import Kernels
import TestSupport
import Testing

/// `dlora generate` as a user runs it: the executable built next to the test bundle.
@Suite struct CLITests {
    typealias Run = CommandRun

    static var binary: URL {
        // swift build --build-tests puts the executable beside the test bundle.
        var dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        while dir.path != "/" && !FileManager.default.fileExists(atPath: dir.appendingPathComponent("dlora").path) {
            dir.deleteLastPathComponent()
        }
        return dir.appendingPathComponent("dlora")
    }

    /// Runs the executable and collects its output, on a thread of its own (not the test pool's).
    /// Runs the CLI to its end, stopped after 300 s (a command that should have failed at once but serves instead
    /// then fails its test rather than hanging the suite).
    static func dlora(_ args: [String], environment: [String: String] = [:]) async throws -> Run {
        try await runCommand(binary, args, environment: environment, timeout: 300)
    }

    static let tiny = ModelFixtures.checkpointPath(model: "tiny-llama", variant: "Q8_0")

    @Test(arguments: [
        (["generate", "--model", tiny], "exactly one of --prompt and --chat"),
        (["generate", "--model", tiny, "--prompt", "a", "--chat", "b"], "exactly one of --prompt and --chat"),
        (["generate", "--model", tiny, "--prompt", "a", "--temperature", "-1"], "--temperature"),
        (["generate", "--model", tiny, "--prompt", "a", "--top-p", "0"], "--top-p"),
        (["generate", "--model", tiny, "--prompt", "a", "--max-tokens", "0"], "--max-tokens"),
        (["generate", "--model", tiny, "--prompt", "a", "--json", "--choice", "x"], "at most one of --json, --json-schema and --choice"),
        (["generate", "--model", tiny, "--prompt", "a", "--json-schema", "/nonexistent/schema.json"], "--json-schema: cannot read"),
        (["generate", "--model", tiny, "--prompt", "a", "--json-schema", FixtureFiles.root.appendingPathComponent("README.md").path], "--json-schema: not JSON"),
        (["generate", "--model", tiny, "--prompt", "a", "--choice", ""], "--choice"),
        (["generate", "--model", tiny, "--prompt", "a", "--bogus"], "--bogus"),
        (["generate", "--model", "/nonexistent/model.gguf", "--prompt", "a"], "/nonexistent/model.gguf"),
        (["generate", "--model", ModelFixtures.root.appendingPathComponent("summary.json").path, "--prompt", "a"], "summary.json"),
        (["frobnicate"], "frobnicate"),
        (["generate", "--model", tiny, "--prompt", "a", "--threads", "0"], "--threads"),
        (["serve", "--model", tiny, "--policy", "fcfs"], "unknown --policy 'fcfs' (dlora, unmerged-only, merged-only, peft-like)"),
        (["serve", "--model", tiny, "--kv-cache-mb", "0"], "--kv-cache-mb"),
        (["serve", "--model", tiny, "--kv-cache-dtype", "fp8"], "--kv-cache-dtype"),
        (["generate", "--model", tiny, "--prompt", "a", "--kv-cache-dtype", "bf16"], "--kv-cache-dtype"),
        (["serve", "--model", tiny, "--matmul-precision", "int4"], "--matmul-precision"),
        (["bench", "core", "--model", tiny, "--matmul-precision", "f16"], "--matmul-precision"),
        (["bench", "core", "--model", ModelFixtures.checkpointPath(model: "tiny-llama", variant: "F16"), "--matmul-precision", "int8"],
         Kernels.hasInt8Products ? "--matmul-precision int8 needs Q4_0, Q4_1 or Q8_0 matrices" : "--matmul-precision int8 needs a CPU with AVX-512 VNNI or AVX2"),
        (["serve", "--model", tiny, "--block-size", "0"], "--block-size"),
        (["serve", "--model", tiny, "--host-swap-mb", "-1"], "--host-swap-mb"),
        (["serve", "--model", tiny, "--step-log", "/nonexistent/dir/steps.jsonl"], "--step-log: cannot write /nonexistent/dir/steps.jsonl"),
        (["bench", "replica", "--model", tiny, "--workload", "w", "--trace", "t", "--max-sequences", "0"], "--max-batch-sequences"),
        (["bench", "replica", "--model", tiny, "--workload", "w", "--trace", "t", "--horizon", "0"], "--horizon"),
        (["bench", "replica", "--model", tiny, "--workload", "w", "--trace", "t", "--policies", "dlora,fcfs"], "fcfs"),
        (["bench", "core", "--model", tiny, "--threads", "2000"], "--threads"),
        // Budgets the machine cannot hold, and output paths that cannot be written, before any work.
        (["serve", "--model", tiny, "--kv-cache-mb", "1000000000"], "--kv-cache-mb 1000000000 is not less than this machine's memory"),
        (["simulate", "--requests", "5", "--records", "/nonexistent/dir/r.csv"], "--records /nonexistent/dir/r.csv: the directory /nonexistent/dir does not exist"),
        (["simulate", "--requests", "5", "--records", NSTemporaryDirectory()], "is a directory"),
        (["router", "--replicas", ","], "--replicas names no replica"),
        (["generate", "--model", tiny, "--prompt", "a", "--adapter", "/nonexistent/adapter"], "--adapter /nonexistent/adapter: no such file or directory"),
        (["generate", "--model", tiny, "--prompt", "a", "--json-schema", NSTemporaryDirectory()], "is a directory, not a schema file"),
        (["bench", "core", "--model", tiny, "--batches", "1,x"], "--batches"),
        (["bench", "lora", "--model", tiny, "--batches", "1,x"], "--batches"),
        (["bench", "lora", "--model", tiny, "--context", "100000"], "--context 100000 does not fit the model's context length 256"),
        (["router", "--replicas", "http://127.0.0.1:1,http://127.0.0.1:1/"], "--replicas names http://127.0.0.1:1 twice"),
        // A black-box probe's: values that overflowed (traps), ran forever, or were accepted and then refused everything.
        (["generate", "--model", tiny, "--prompt", "a", "--max-tokens", "9223372036854775807"], "--max-tokens must be in 1...2147483647"),
        (["bench", "core", "--model", tiny, "--gen", "9223372036854775807"], "--prompt, --gen and --ubatch must be in"),
        (["bench", "lora", "--model", tiny, "--rounds", "9223372036854775807"], "--rounds (1...1000)"),
        (["bench", "replica", "--model", tiny, "--workload", "w", "--trace", "t", "--rate", "1e-300"], "--rate must be in 0.001...100000"),
        (["bench", "replica", "--model", tiny, "--workload", "w", "--trace", "t", "--policies", ","], "--policies must be a comma-separated list"),
        (["router", "--replicas", "http://127.0.0.1:99999"], "port 99999 is not in 1...65535"),
        (["router", "--replicas-dns", "localhost:99999"], "--replicas-dns must be HOST:PORT"),
        (["serve", "--model", tiny, "--api-key", ""], "--api-key is empty"),
        (["router", "--replicas", "http://127.0.0.1:1"], "router needs --admin-key"),
        (["cluster", "--replicas", "64", "--kv-cache-mb", "100000000"], "is not less than this machine's memory"),
        (["generate", "--model", tiny, "--prompt", "a", "--json-schema", "/dev/zero"], "'/dev/zero' is not a regular file"),
        (["generate", "--model", tiny, "--prompt", "a", "--adapter", "x", "--adapter-root", "/nonexistent/root"],
         "the adapter root '/nonexistent/root' is not a directory"),
        (["serve", "--model", tiny, "--kv-cache-mb", "100", "--host-swap-mb", "1000000000"], "is not less than this machine's memory"),
    ])
    func badInputIsOneLineAndNonZeroExit(_ args: [String], _ mention: String) async throws {
        let r = try await Self.dlora(args)
        #expect(r.status != 0)
        #expect(r.stdout.isEmpty)
        let lines = r.stderr.split(separator: "\n")
        #expect(lines.count == 1, "stderr: \(r.stderr)")
        #expect(r.stderr.contains(mention), "stderr: \(r.stderr)")
    }

    /// With standard error closed, a failing command still exits 1 and a working one 0 (writing to it trapped: SIGILL).
    @Test func aClosedStandardErrorIsNotACrash() throws {
        for (args, status) in [(["generate", "--model", "/nonexistent/model.gguf", "--prompt", "a"], Int32(1)),
                               (["generate", "--model", Self.tiny, "--prompt", "a", "--max-tokens", "2"], Int32(0))] {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/bin/sh")
            p.arguments = ["-c", "exec \"$0\" \"$@\" >/dev/null 2>&-", Self.binary.path] + args
            try p.run()
            p.waitUntilExit()
            #expect(p.terminationReason == .exit && p.terminationStatus == status, "\(args): \(p.terminationReason) \(p.terminationStatus)")
        }
    }

    /// A write that fails (standard output or a file on a full device) is a one-line error and exit 1, not a crash
    /// (generate's stream wrote through `FileHandle.write`, which traps) or a silent loss (exit 0); and a device given
    /// as an output file is written, not replaced by a regular file (an atomic write renames over the path).
    @Test(.enabled(if: CLITests.fullDevice)) func failedWritesAreErrors() async throws {
        let sh = URL(fileURLWithPath: "/bin/sh")
        for args in [["generate", "--model", Self.tiny, "--prompt", "hi", "--max-tokens", "5"], ["simulate", "--requests", "20"]] {
            let r = try await runCommand(sh, ["-c", "exec \"$0\" \"$@\" > /dev/full", Self.binary.path] + args, timeout: 300)
            #expect(r.status == 1 && r.stderr == "dlora: cannot write to standard output: No space left on device\n", "\(args[0]): \(r.status) \(r.stderr)")
        }
        for (option, mention) in [("--records", "--records /dev/full: No space left on device"), ("--step-log", "/dev/full")] {
            let r = try await Self.dlora(["simulate", "--requests", "20", option, "/dev/full"])
            #expect(r.status == 1 && r.stderr.contains(mention), "\(option): \(r.status) \(r.stderr)")
            #expect(Self.fullDevice, "\(option) replaced /dev/full")
        }
    }

    /// /dev/full is the character device that refuses writes (checked, since a test that replaced it would pass later).
    static var fullDevice: Bool {
        var st = stat()
        return stat("/dev/full", &st) == 0 && st.st_mode & S_IFMT == S_IFCHR
    }

    /// The shared option groups: every command takes the model flags, the engine commands the engine flags,
    /// each declared once (same help line, same default, taken from `EngineConfiguration`).
    @Test func commandsShareTheirOptionGroups() async throws {
        var helps: [([String], String)] = []
        for cmd in [["serve"], ["generate"], ["bench", "core"], ["bench", "lora"], ["bench", "replica"], ["train", "lora"]] {
            let r = try await Self.dlora(cmd + ["--help"])
            #expect(r.status == 0)
            helps.append((cmd, r.stdout))
        }
        func line(_ help: String, _ flag: String) -> String? {
            // The flag's entry: from its name to the next option (help text wraps over several lines).
            guard let start = help.range(of: "  " + flag + " ") ?? help.range(of: "  " + flag + ",") else { return nil }
            let rest = help[start.upperBound...]
            let end = rest.range(of: "\n  -")?.lowerBound ?? rest.endIndex
            return rest[..<end].split(whereSeparator: \.isWhitespace).joined(separator: " ")  // unwrapped
        }
        for flag in ["--model", "--no-mmap", "--threads"] {
            let entries = helps.map { line($0.1, flag) }
            #expect(entries.allSatisfy { $0 != nil } && Set(entries).count == 1, "\(flag): \(entries)")
        }
        let engine = helps.filter { $0.0 == ["serve"] || $0.0 == ["bench", "replica"] }
        for (flag, defaultValue) in [("--kv-cache-mb", "1024"), ("--block-size", "16"), ("--max-batch-tokens", "512"),
                                     ("--max-batch-sequences", "256"), ("--adapter-slots", "32"), ("--host-swap-mb", "1024"),
                                     ("--credit-bound", "8"), ("--horizon", "16")] {
            let entries = engine.map { line($0.1, flag) }
            #expect(entries.allSatisfy { $0?.contains("(default: \(defaultValue))") == true } && Set(entries).count == 1,
                    "\(flag): \(entries)")
        }
        #expect(line(helps[0].1, "--policy")?.contains("dlora, unmerged-only, merged-only, peft-like") == true)
        // The K/V cache type: one declaration for every command that runs the engine.
        let dtype = helps.filter { $0.0 != ["bench", "lora"] && $0.0 != ["train", "lora"] }.map { line($0.1, "--kv-cache-dtype") }
        #expect(dtype.count == 4 && dtype.allSatisfy { $0?.contains("(values: auto, f32, f16; default: auto)") == true } && Set(dtype).count == 1,
                "\(dtype)")
        let products = helps.filter { $0.0 != ["train", "lora"] }.map { line($0.1, "--matmul-precision") }
        #expect(products.count == 5 && products.allSatisfy { $0?.contains("(values: auto, f32, bf16, int8; default: auto)") == true } && Set(products).count == 1,
                "\(products)")
    }

    /// Without --model the CLI looks where `DefaultModel` (and every test) looks: under $XDG_CACHE_HOME when it
    /// is set, and says where it looked and how to fetch the model.
    @Test func missingDefaultModelNamesThePathAndTheFetchScript() async throws {
        let cache = FileManager.default.temporaryDirectory.appendingPathComponent("dlora-xdg-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: cache, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: cache) }
        let expected = cache.path + "/dlora/" + DefaultModel.fileName
        #expect(DefaultModel.path(environment: ["XDG_CACHE_HOME": cache.path]) == expected)
        for cmd in [["generate", "--prompt", "a"], ["bench", "core"]] {
            let r = try await Self.dlora(cmd, environment: ["XDG_CACHE_HOME": cache.path])
            #expect(r.status != 0 && r.stdout.isEmpty)
            #expect(r.stderr == "dlora: no --model given and the default model is not at \(expected) (run scripts/fetch-model.sh)\n",
                    "stderr: \(r.stderr)")
        }
        // Found there once it is there (a link to the real one, when it is present).
        let real = try DefaultModel.require()
        try FileManager.default.createDirectory(at: cache.appendingPathComponent("dlora"), withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: expected, withDestinationPath: real)
        let r = try await Self.dlora(["generate", "--prompt", "a", "--max-tokens", "2", "--temperature", "0"], environment: ["XDG_CACHE_HOME": cache.path])
        #expect(r.status == 0, "stderr: \(r.stderr)")
    }

    @Test func generatesWithATinyModelAndReportsThroughput() async throws {
        let r = try await Self.dlora(["generate", "--model", Self.tiny, "--prompt", "hello world", "--max-tokens", "12", "--temperature", "0"])
        #expect(r.status == 0, "stderr: \(r.stderr)")
        #expect(!r.stdout.isEmpty)
        let last = r.stderr.split(separator: "\n").last.map(String.init) ?? ""
        #expect(last.range(of: #"^prompt: \d+ tokens, [0-9.]+ tok/s; generation: 12 tokens, [0-9.]+ tok/s$"#, options: .regularExpression) != nil,
                "stderr: \(r.stderr)")
    }

    /// `--kv-cache-dtype f16` generates (the tiny model's greedy continuation is the same with K/V rounded to f16:
    /// ModelGoldenTests checks it against transformers).
    @Test func generatesWithAnF16Cache() async throws {
        let args = ["generate", "--model", Self.tiny, "--prompt", "hello world", "--max-tokens", "10", "--temperature", "0"]
        let full = try await Self.dlora(args + ["--kv-cache-dtype", "f32"])
        let half = try await Self.dlora(args + ["--kv-cache-dtype", "f16"])
        #expect(full.status == 0 && half.status == 0, "stderr: \(half.stderr)")
        #expect(!half.stdout.isEmpty && half.stdout == full.stdout)
    }

    /// `--kv-cache-dtype auto` (the default) stores K/V at the weights' precision: f16 for a quantized checkpoint,
    /// f32 for an f32 one. `bench core` names the type it ran with; the tiny model's greedy text is the same.
    @Test func autoCacheTypeFollowsTheCheckpoint() async throws {
        let f32Model = ModelFixtures.checkpointPath(model: "tiny-llama", variant: "F32")
        for (model, expected) in [(Self.tiny, "f16"), (f32Model, "f32")] {
            for choice in [[], ["--kv-cache-dtype", "auto"]] {
                let r = try await Self.dlora(["bench", "core", "--model", model, "--batches", "1", "--prompt", "8", "--gen", "2"] + choice)
                #expect(r.status == 0, "stderr: \(r.stderr)")
                #expect(r.stdout.contains("KV cache: \(expected);"), "\(model): \(r.stdout)")
            }
        }
        let args = ["generate", "--model", Self.tiny, "--prompt", "hello world", "--max-tokens", "10", "--temperature", "0"]
        let auto = try await Self.dlora(args)
        let full = try await Self.dlora(args + ["--kv-cache-dtype", "f32"])
        #expect(auto.status == 0 && full.status == 0 && !auto.stdout.isEmpty && auto.stdout == full.stdout, "stderr: \(auto.stderr)")
    }

    /// OpenBLAS picks its kernels by CPU model at load and falls back to its generic SSE3 ones ("Prescott") on a model
    /// newer than the library; `dlora` then runs itself again with OPENBLAS_CORETYPE naming the kernels of the CPU's
    /// vector instructions (`Kernels.blasCoreToAdopt`), and `bench core` names the core it ran. A core the library chose
    /// itself, or one the user names, stays.
    @Test func blasRunsTheKernelsOfThisCPU() async throws {
        let args = ["bench", "core", "--model", Self.tiny, "--batches", "1", "--prompt", "8", "--gen", "2"]
        // This test process's own detection, without the variable (a child with the variable removed).
        let own = try await runCommand(URL(fileURLWithPath: "/usr/bin/env"), ["-u", "OPENBLAS_CORETYPE", Self.binary.path] + args)
        let expected = Kernels.blasCoreToAdopt ?? Kernels.blasCoreName
        if ProcessInfo.processInfo.environment["OPENBLAS_CORETYPE"] == nil {
            #expect(own.status == 0 && own.stdout.contains("BLAS: \(expected);"), "\(own.stdout) \(own.stderr)")
            if Kernels.blasCoreName == "Prescott", let core = Kernels.blasCoreForCPU { #expect(expected == core) }
        }
        let named = try await Self.dlora(args, environment: ["OPENBLAS_CORETYPE": "Haswell"])
        #expect(named.status == 0 && named.stdout.contains("BLAS: Haswell;"), "\(named.stdout) \(named.stderr)")
    }

    /// `--matmul-precision auto` (the default) runs int8 activations where every matrix is Q4_0, Q4_1 or Q8_0 and the
    /// CPU has AVX-512 VNNI or AVX-VNNI; else bf16 products where they use the weights exactly and the CPU's VDPBF16PS
    /// does at least an FMA's multiply-adds per second; f32 otherwise (an f32 or f16 checkpoint, or neither
    /// instruction set); an explicit value wins.
    @Test func autoProductsFollowTheCheckpointAndTheCPU() async throws {
        let quantized = Kernels.hasInt8Dot ? "int8" : Kernels.bf16ProductsPay ? "bf16" : "f32"
        var cases: [(String, [String], String)] = [
            (Self.tiny, [], quantized),
            (Self.tiny, ["--matmul-precision", "auto"], quantized),
            (Self.tiny, ["--matmul-precision", "f32"], "f32"),
            (ModelFixtures.checkpointPath(model: "tiny-llama", variant: "Q4_1"), [], quantized),
            (ModelFixtures.checkpointPath(model: "tiny-llama", variant: "Q4_0"), [], quantized),
            (ModelFixtures.checkpointPath(model: "tiny-llama", variant: "F16"), [], "f32"),
            (ModelFixtures.checkpointPath(model: "tiny-llama", variant: "F32"), [], "f32"),
        ]
        if Kernels.hasInt8Dot { cases.append((Self.tiny, ["--matmul-precision", "int8"], "int8")) }
        for (model, flags, expected) in cases {
            let r = try await Self.dlora(["bench", "core", "--model", model, "--batches", "1", "--prompt", "8", "--gen", "2"] + flags)
            #expect(r.status == 0 && r.stdout.contains("products: \(expected)."), "\(model) \(flags): \(r.stdout) \(r.stderr)")
        }
    }

    /// `dlora serve` says in its start line which products `auto` picked: on a quantized checkpoint, int8 activations
    /// where the CPU has AVX-512 VNNI or AVX-VNNI, else bf16 where they pay (`Kernels.bf16ProductsPay`), else f32 with the reason,
    /// whether the server batches or runs one sequence at a time (`--max-batch-sequences 1`).
    @Test func serveSaysWhichProductsAutoPicked() throws {
        for single in [false, true] {
            let p = Process()
            p.executableURL = Self.binary
            p.arguments = ["serve", "--model", Self.tiny, "--port", "0", "--kv-cache-mb", "16", "--no-measure-switch-cost"]
                + (single ? ["--max-batch-sequences", "1"] : [])
            let err = Pipe()
            p.standardError = err
            p.standardOutput = FileHandle.nullDevice
            try p.run()
            defer { if p.isRunning { p.terminate() }; p.waitUntilExit() }
            // The start line, within 60 s (the process is stopped by PID either way).
            var text = ""
            let deadline = Date().addingTimeInterval(60)
            while !text.contains("dlora: serving"), Date() < deadline, p.isRunning {
                let chunk = err.fileHandleForReading.availableData
                if chunk.isEmpty { break }
                text += String(decoding: chunk, as: UTF8.self)
            }
            let line = try #require(text.split(separator: "\n").first { $0.contains("dlora: serving") }, "\(text)")
            let int8 = Kernels.hasInt8Dot, bf16 = !int8 && Kernels.bf16ProductsPay
            #expect(line.contains(", bf16 products") == bf16, "\(line)")
            #expect(line.contains(", int8 activations and adapters") == int8, "\(line)")
            #expect(line.contains("f32 products (auto: VDPBF16PS does") == (Kernels.hasBF16Dot && !bf16 && !int8), "\(line)")
        }
    }

    /// `--matmul-precision bf16` runs the base model's products in bf16: `bench core` says so, and `generate` gives the
    /// tiny model's greedy text (its margins are wide enough here; ModelGoldenTests holds the logits to transformers).
    @Test func generatesWithBF16Products() async throws {
        guard Kernels.hasBF16Dot else { return }  // (the flag is refused on a CPU without AVX-512 BF16)
        let r = try await Self.dlora(["bench", "core", "--model", Self.tiny, "--batches", "2", "--prompt", "8", "--gen", "2", "--matmul-precision", "bf16"])
        #expect(r.status == 0 && r.stdout.contains("products: bf16."), "\(r.stdout) \(r.stderr)")
        let args = ["generate", "--model", Self.tiny, "--prompt", "hello world", "--max-tokens", "6", "--temperature", "0"]
        let bf16 = try await Self.dlora(args + ["--matmul-precision", "bf16"])
        #expect(bf16.status == 0 && !bf16.stdout.isEmpty, "stderr: \(bf16.stderr)")
    }

    /// `--matmul-precision int8` (AVX-512 VNNI): `bench core` says so, and `generate` gives the f32 products' greedy text
    /// on the tiny model (its margins are wide enough here; ModelGoldenTests holds the logits to transformers).
    @Test(.enabled(if: Kernels.hasInt8Dot)) func generatesWithInt8Activations() async throws {
        let r = try await Self.dlora(["bench", "core", "--model", Self.tiny, "--batches", "2", "--prompt", "8", "--gen", "2", "--matmul-precision", "int8"])
        #expect(r.status == 0 && r.stdout.contains("products: int8."), "\(r.stdout) \(r.stderr)")
        let args = ["generate", "--model", Self.tiny, "--prompt", "hello world", "--max-tokens", "6", "--temperature", "0"]
        let int8 = try await Self.dlora(args + ["--matmul-precision", "int8"]), f32 = try await Self.dlora(args + ["--matmul-precision", "f32"])
        #expect(int8.status == 0 && f32.status == 0 && !int8.stdout.isEmpty, "stderr: \(int8.stderr)")
        #expect(int8.stdout == f32.stdout)
    }

    /// `--no-mmap` copies the model at load: the same greedy text as with the mapping.
    @Test func noMmapGeneratesTheSameText() async throws {
        let args = ["generate", "--model", Self.tiny, "--prompt", "hello world", "--max-tokens", "10", "--temperature", "0"]
        let mapped = try await Self.dlora(args)
        let copied = try await Self.dlora(args + ["--no-mmap"])
        #expect(mapped.status == 0 && copied.status == 0, "stderr: \(copied.stderr)")
        #expect(!copied.stdout.isEmpty && copied.stdout == mapped.stdout)
    }

    /// The README's main job, shortened: a chat prompt on the default model, greedy, matches transformers'
    /// continuation (the chat case of the SmolLM2 goldens) and stops at the end-of-turn token.
    /// A benchmark whose largest batch's K/V the machine cannot hold is refused before it allocates (it stopped with an
    /// allocation failure); on the default model, whose context admits it (8,000 tokens × 1,024 sequences, ~360 GiB).
    @Test func aBenchTooLargeForTheMachineIsRefused() async throws {
        _ = try DefaultModel.require()
        let r = try await Self.dlora(["bench", "core", "--batches", "1024", "--prompt", "4000", "--gen", "4000"])
        #expect(r.status == 1 && r.stderr.split(separator: "\n").count == 1, "stderr: \(r.stderr)")
        #expect(r.stderr.contains("the largest batch's K/V cache needs"), "stderr: \(r.stderr)")
    }

    @Test func chatOnTheDefaultModelMatchesTheReference() async throws {
        _ = try DefaultModel.require()
        let golden = try #require(try ModelFixtures.smolGoldens().cases.first { $0.kind == "chat" })
        let r = try await Self.dlora(["generate", "--chat", "What is the boiling point of water at sea level? Answer in one sentence.",
                                "--max-tokens", "40", "--temperature", "0"])
        #expect(r.status == 0, "stderr: \(r.stderr)")
        let reference = golden.continuationText.components(separatedBy: "<|im_end|>")[0]
        #expect(r.stdout == reference + "\n")
    }

    @Test func stopStringsEndTheOutput() async throws {
        _ = try DefaultModel.require()
        let r = try await Self.dlora(["generate", "--chat", "What is the boiling point of water at sea level? Answer in one sentence.",
                                "--max-tokens", "40", "--temperature", "0", "--stop", "point"])
        #expect(r.status == 0, "stderr: \(r.stderr)")
        #expect(r.stdout == "At sea level, the boiling \n")
    }

    /// Structured outputs from the CLI: --choice gives exactly one of the strings, --json-schema JSON valid against
    /// the schema file (on the default model, greedy and sampled).
    @Test func constrainedOutputs() async throws {
        _ = try DefaultModel.require()
        for seed in ["1", "2"] {
            let c = try await Self.dlora(["generate", "--chat", "Is the sky blue?", "--choice", "yes", "--choice", "no", "--seed", seed])
            #expect(c.status == 0 && ["yes\n", "no\n"].contains(c.stdout), "\(c.stdout) \(c.stderr)")
        }
        let dir = try TemporaryDirectory()
        let schema = dir.url.appendingPathComponent("schema.json")
        try Data(#"{"type":"object","properties":{"city":{"type":"string","maxLength":20},"rain":{"type":"boolean"}},"required":["city","rain"]}"#.utf8)
            .write(to: schema)
        for temperature in ["0", "0.8"] {
            let r = try await Self.dlora(["generate", "--chat", "The weather in Paris, as JSON.", "--json-schema", schema.path, "--max-tokens", "60",
                                          "--temperature", temperature, "--seed", "3"])
            #expect(r.status == 0, "stderr: \(r.stderr)")
            let object = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any], "\(r.stdout)")
            #expect(Set(object.keys) == ["city", "rain"] && object["rain"] is Bool && ((object["city"] as? String)?.count ?? 99) <= 20, "\(r.stdout)")
        }
    }
}

/// `dlora generate --adapter`: a PEFT adapter by path and by name under --adapter-root, merged and
/// unmerged giving the same greedy text, and bad adapters as one-line errors.
@Suite struct CLIAdapterTests {
    static let tinyGGUF = ModelFixtures.checkpointPath(model: "tiny-llama", variant: "Q8_0")

    /// A PEFT adapter for tiny-llama with random weights (q and v), written into `dir/name`.
    static func writeAdapter(_ dir: URL, name: String) throws {
        let path = dir.appendingPathComponent(name)
        try FileManager.default.createDirectory(at: path, withIntermediateDirectories: true)
        var entries: [String] = []
        var data: [UInt8] = []
        var state: UInt64 = 77
        for layer in 0..<2 {
            for (module, rows) in [("q_proj", 64), ("v_proj", 32)] {
                for (suffix, shape) in [("lora_A", [4, 64]), ("lora_B", [rows, 4])] {
                    let n = shape[0] * shape[1]
                    let values: [Float] = (0..<n).map { _ in
                        state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
                        return Float(state >> 40) / Float(1 << 24) - 0.5
                    }
                    entries.append("\"base_model.model.model.layers.\(layer).self_attn.\(module).\(suffix).weight\":{\"dtype\":\"F32\",\"shape\":\(shape),\"data_offsets\":[\(data.count),\(data.count + n * 4)]}")
                    data += values.flatMap { withUnsafeBytes(of: $0.bitPattern.littleEndian, Array.init) }
                }
            }
        }
        let header = Array(("{" + entries.joined(separator: ",") + "}").utf8)
        let file = withUnsafeBytes(of: UInt64(header.count).littleEndian, Array.init) + header + data
        try Data(file).write(to: path.appendingPathComponent("adapter_model.safetensors"))
        try Data(#"{"peft_type": "LORA", "r": 4, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}"#.utf8)
            .write(to: path.appendingPathComponent("adapter_config.json"))
    }

    @Test func adapterByPathAndByNameMergedAndUnmerged() async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("dlora-cli-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        try Self.writeAdapter(dir, name: "tuned")
        // f32 products: the merged forward is the unmerged one's arithmetic (with int8 activations a dense f32 or f16
        // merge runs in f32 while the unmerged base does not; generatesWithInt8Activations and the merge test below
        // cover that mode).
        let common = ["generate", "--model", Self.tinyGGUF, "--prompt", "hello world", "--max-tokens", "16", "--temperature", "0",
                      "--matmul-precision", "f32"]
        let base = try await CLITests.dlora(common)
        let byPath = try await CLITests.dlora(common + ["--adapter", dir.appendingPathComponent("tuned").path])
        let byName = try await CLITests.dlora(common + ["--adapter", "tuned", "--adapter-root", dir.path])
        let merged = try await CLITests.dlora(common + ["--adapter", "tuned", "--adapter-root", dir.path, "--lora-mode", "merged"])
        let zero = try await CLITests.dlora(common + ["--adapter", "tuned", "--adapter-root", dir.path, "--adapter-scale", "0"])
        for r in [base, byPath, byName, merged, zero] { #expect(r.status == 0, "stderr: \(r.stderr)") }
        #expect(byPath.stdout != base.stdout)
        #expect(byName.stdout == byPath.stdout)
        #expect(merged.stdout == byPath.stdout)
        #expect(zero.stdout == base.stdout)
        // The merge's precision: named on stderr, as asked (auto: as the model prefers, what serve picks too).
        #expect(merged.stderr.contains("merged 'tuned' into the weights in "), "stderr: \(merged.stderr)")
        for precision in ["f32", "q8_0", "f16"] {
            let r = try await CLITests.dlora(common + ["--adapter", "tuned", "--adapter-root", dir.path, "--lora-mode", "merged",
                                                       "--merge-precision", precision])
            #expect(r.status == 0 && r.stderr.contains("merged 'tuned' into the weights in \(precision)\n"), "stderr: \(r.stderr)")
            if precision == "f32" { #expect(r.stdout == byPath.stdout) }
        }
    }

    /// With int8 activations a merge is stored in Q8_0 (`--merge-precision auto`), whose codes the merged products read
    /// with int8 activations like the base's: stderr names it, and the tiny model's greedy text is the unmerged one's.
    @Test(.enabled(if: Kernels.hasInt8Dot)) func mergedWithInt8ActivationsIsStoredInQ8_0() async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("dlora-cli-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        try Self.writeAdapter(dir, name: "tuned")
        let common = ["generate", "--model", Self.tinyGGUF, "--prompt", "hello world", "--max-tokens", "16", "--temperature", "0",
                      "--matmul-precision", "int8", "--adapter", "tuned", "--adapter-root", dir.path]
        let unmerged = try await CLITests.dlora(common)
        let merged = try await CLITests.dlora(common + ["--lora-mode", "merged"])
        #expect(unmerged.status == 0 && merged.status == 0, "stderr: \(merged.stderr)")
        #expect(merged.stderr.contains("merged 'tuned' into the weights in q8_0\n"), "stderr: \(merged.stderr)")
        #expect(!merged.stdout.isEmpty && merged.stdout == unmerged.stdout)
    }

    /// `--adapter-precision`: auto holds the adapter in int8 beside int8 products and as stored beside f32 ones (the same
    /// text as the explicit choice), stored, int8 and int4 override that (stderr says how it is held, each run gives a
    /// text); an unknown value is a one-line error.
    @Test(.enabled(if: Kernels.hasInt8Dot)) func adapterPrecisionChoosesHowAdaptersAreHeld() async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("dlora-cli-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        try Self.writeAdapter(dir, name: "tuned")
        let common = ["generate", "--model", Self.tinyGGUF, "--prompt", "hello world", "--max-tokens", "16", "--temperature", "0",
                      "--adapter", "tuned", "--adapter-root", dir.path]
        let runs = [("int8", "auto", "in int8 (Q8_0)"), ("int8", "int8", "in int8 (Q8_0)"), ("int8", "stored", "as stored"),
                    ("int8", "int4", "in int4 (Q4_0)"), ("f32", "auto", "as stored"), ("f32", "stored", "as stored"),
                    ("f32", "int8", "in int8 (Q8_0)"), ("f32", "int4", "in int4 (Q4_0)")]
        var texts: [String: String] = [:]
        for (products, held, how) in runs {
            let r = try await CLITests.dlora(common + ["--matmul-precision", products, "--adapter-precision", held])
            #expect(r.status == 0 && !r.stdout.isEmpty, "stderr: \(r.stderr)")
            #expect(r.stderr.contains("adapter 'tuned' held \(how)\n"), "\(products)/\(held): \(r.stderr)")
            texts[products + "/" + held] = r.stdout
        }
        #expect(texts["int8/auto"] == texts["int8/int8"] && texts["f32/auto"] == texts["f32/stored"])
        let bad = try await CLITests.dlora(common + ["--adapter-precision", "int2"])
        #expect(bad.status != 0)
        #expect(bad.stderr.split(separator: "\n").count == 1 && bad.stderr.contains("--adapter-precision"), "stderr: \(bad.stderr)")
    }

    /// The AVX2 path as a CPU without AVX-512 sees it (`DLORA_SIMD_LIMIT=1`): with AVX-VNNI, `auto` picks int8 products and
    /// holds the adapter in int8 there too; without it (`DLORA_AVX_VNNI=0`: plain AVX2) `auto` stays f32, int8 products
    /// keep the adapter as stored, and asking for int8 adapters is a one-line error. The greedy text is the same on every
    /// path that holds the adapter in int8 (the kernels' forms give the same bits).
    @Test(.enabled(if: Kernels.simdLevel >= 1 && Kernels.hasInt8Dot)) func avx2PathsChooseAndRefuseInt8Adapters() async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("dlora-cli-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        try Self.writeAdapter(dir, name: "tuned")
        let common = ["generate", "--model", Self.tinyGGUF, "--prompt", "hello world", "--max-tokens", "16", "--temperature", "0",
                      "--adapter", "tuned", "--adapter-root", dir.path]
        let plain = ["DLORA_SIMD_LIMIT": "1", "DLORA_AVX_VNNI": "0"]
        let native = try await CLITests.dlora(common + ["--matmul-precision", "int8", "--adapter-precision", "int8"])
        #expect(native.status == 0 && !native.stdout.isEmpty, "stderr: \(native.stderr)")
        if Kernels.cpuHasAVXVNNI {
            let vnni = try await CLITests.dlora(common, environment: ["DLORA_SIMD_LIMIT": "1"])
            #expect(vnni.status == 0 && vnni.stderr.contains("adapter 'tuned' held in int8 (Q8_0)\n"), "AVX-VNNI: \(vnni.stderr)")
            #expect(vnni.stdout == native.stdout, "AVX-VNNI's text differs from the native path's")
        }
        let auto = try await CLITests.dlora(common, environment: plain)
        #expect(auto.status == 0 && auto.stderr.contains("adapter 'tuned' held as stored\n"), "plain AVX2, auto: \(auto.stderr)")
        let products = try await CLITests.dlora(common + ["--matmul-precision", "int8"], environment: plain)
        #expect(products.status == 0 && products.stderr.contains("adapter 'tuned' held as stored\n"), "plain AVX2, int8 products: \(products.stderr)")
        for held in ["int8", "int4"] {
            let refused = try await CLITests.dlora(common + ["--adapter-precision", held], environment: plain)
            #expect(refused.status != 0 && refused.stdout.isEmpty)
            #expect(refused.stderr.split(separator: "\n").count == 1
                    && refused.stderr.contains("--adapter-precision \(held) needs a CPU with AVX-512 VNNI or AVX-VNNI"),
                    "plain AVX2, \(held) adapters: \(refused.stderr)")
        }
    }

    @Test func badAdaptersAreOneLineErrors() async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("dlora-cli-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        try Data(#"{"peft_type": "LORA", "r": 4}"#.utf8).write(to: dir.appendingPathComponent("adapter_config.json"))
        let common = ["generate", "--model", Self.tinyGGUF, "--prompt", "hi"]
        for (args, mention) in [(["--adapter", dir.path], "adapter_model.safetensors"),
                                (["--adapter", "nope", "--adapter-root", dir.path], "not found"),
                                // A name with a path component that is not an existing path (relative to the working
                                // directory, `--adapter` would take it as a path): refused as a name.
                                (["--adapter", "../dlora-no-such-\(UUID().uuidString)", "--adapter-root", dir.path], "invalid adapter name"),
                                (["--adapter-scale", "2"], "--adapter"),
                                (["--lora-mode", "merged"], "--lora-mode need --adapter"),
                                (["--adapter", dir.path, "--lora-mode", "fused"], "--lora-mode"),
                                (["--adapter", dir.path, "--merge-precision", "f16"], "--lora-mode merged"),
                                (["--adapter", dir.path, "--lora-mode", "merged", "--merge-precision", "bf8"], "--merge-precision")] {
            let r = try await CLITests.dlora(common + args)
            #expect(r.status != 0)
            #expect(r.stderr.split(separator: "\n").count == 1 && r.stderr.contains(mention), "stderr: \(r.stderr)")
        }
    }
}
