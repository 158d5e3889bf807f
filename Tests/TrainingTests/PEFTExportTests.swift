import Adapters
import Engine
import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Kernels
import Models
import Testing
import TestSupport

@testable import Training

/// The adapter `train lora` writes is a PEFT directory our loader reads back into the engine with the
/// very weights that were trained, on both checkpoint layouts (GGUF: Q/K rows permuted; HF: not).
extension TrainingSuites {
@Suite struct PEFTExportTests {
    /// Logits of every position of `tokens` through the engine's model runner (private KV cache).
    static func engineLogits(_ model: LlamaModel, _ tokens: [Int], adapter: LoRAWeights?) -> [[Float]] {
        let blockSize = 16, blocks = (tokens.count + blockSize - 1) / blockSize
        let runner = ModelRunner(model: model, numBlocks: blocks, blockSize: blockSize, maxBatchTokens: 64, adapterSlots: 1)
        var batch = ForwardBatch()
        var slots: LoRASlots?
        if let adapter {
            slots = LoRASlots(capacity: 1)
            slots?[0] = adapter
        }
        batch.append(sequence: tokens, start: 0, blockTable: (0..<blocks).map(Int32.init), blockSize: blockSize, logits: .all,
                     adapterSlot: adapter == nil ? -1 : 0)
        _ = runner.forward(batch, lora: slots)
        return (0..<tokens.count).map { Array(runner.logitsRow($0)) }
    }

    /// Greedy continuation by recomputing the prompt each step (tiny model: simple over fast).
    static func greedy(_ model: LlamaModel, _ prompt: [Int], adapter: LoRAWeights?, steps: Int) -> [Int] {
        var tokens = prompt
        for _ in 0..<steps {
            let last = engineLogits(model, tokens, adapter: adapter).last!
            tokens.append(last.indices.max { last[$0] < last[$1] }!)
        }
        return Array(tokens[prompt.count...])
    }

    @Test(arguments: ["F32", "hf"]) func writtenAdapterReproducesTrainedWeights(variant: String) throws {
        let path = FixtureFiles.checkpoint(model: "tiny-llama", variant: variant)
        let base = try FrozenBase(path: path)
        let c = base.config
        // Trained weights stand-in with every target and a non-zero B (a real training run: the CLI test).
        let lora = LoRAParameters(config: c, rank: 4, alpha: 8, targets: LoRATarget.allCases, seed: 5, bScale: 0.5)
        let dir = try TemporaryDirectory()
        let out = dir.path("adapter")
        try PEFTAdapterWriter.write(lora, to: out, baseModelName: path)

        // PEFT's names and config.
        let file = try SafetensorsFile(path: out + "/adapter_model.safetensors")
        #expect(file.tensors.count == 2 * 7 * c.numLayers)
        let q = try #require(file.tensors["base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight"])
        #expect(q.shape == [4, c.hiddenSize] && q.dtype == .f32)
        #expect(file.tensors["base_model.model.model.layers.0.mlp.down_proj.lora_B.weight"]?.shape == [c.hiddenSize, 4])
        let config = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: out + "/adapter_config.json"))) as? [String: Any]
        #expect(config?["peft_type"] as? String == "LORA" && config?["r"] as? Int == 4 && config?["lora_alpha"] as? Double == 8)
        #expect(config?["target_modules"] as? [String] == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
        #expect(config?["base_model_name_or_path"] as? String == path)

        // Loaded through the engine's loader: the same logits as the in-memory weights, bit for bit.
        let model = try LlamaModel(checkpoint: openCheckpoint(path: path))
        let loaded = try AdapterLoader.load(path: out, base: c)
        let inMemory = lora.engineWeights(name: "in-memory")
        let prompt = [5, 17, 200, 3, 9, 44, 61]
        let fromFile = Self.engineLogits(model, prompt, adapter: loaded)
        let fromMemory = Self.engineLogits(model, prompt, adapter: inMemory)
        #expect(fromFile == fromMemory)
        let baseOnly = Self.engineLogits(model, prompt, adapter: nil)
        #expect(maxAbsDiff(fromFile, baseOnly) > 0.1, "the adapter must change the outputs for the check to mean anything")
        #expect(Self.greedy(model, prompt, adapter: loaded, steps: 8) == Self.greedy(model, prompt, adapter: inMemory, steps: 8))

        // The training forward computes what the engine computes.
        let batch = TrainingBatch(batch: 1, length: prompt.count, tokens: prompt.map(Int32.init),
                                  labels: Array(repeating: -1, count: prompt.count))
        let trainLogits = LoRATrainingModel(base: base, lora: lora).logits(batch)
        let rows = (0..<prompt.count).map { Array(trainLogits[($0 * c.vocabSize)..<(($0 + 1) * c.vocabSize)]) }
        #expect(maxAbsDiff(rows, fromMemory) < 1e-3)
    }

    /// `dlora train mole` end to end on the tiny model over three fixture experts (different targets and ranks):
    /// the loss falls, `mole_config.json` names the experts in order with the block granularity, and
    /// `gates.safetensors` holds every block's W (N × H, trained away from its zero start) and τ (≥ the floor).
    /// Bad input is one line on stderr and a non-zero exit.
    @Test func trainMoLECommand() async throws {
        let exe = try #require(BuiltExecutables.dlora, "build the dlora executable first (swift build --build-tests)")
        let dir = try TemporaryDirectory()
        let data = dir.path("mixed.jsonl")
        let lines = (0..<8).map { #"{"prompt": "item \#($0) is", "completion": " number \#($0)"}"# }
        try Data(lines.joined(separator: "\n").utf8).write(to: URL(fileURLWithPath: data))
        let model = FixtureFiles.checkpoint(model: "tiny-llama", variant: "Q8_0")
        let root = FixtureFiles.lora.appendingPathComponent("tiny-llama").path
        let experts = ["a-qv-r4", "b-all-r8-rslora", "c-kod-r2"]
        func run(_ args: [String]) async throws -> CommandRun { try await runCommand(exe, args) }
        let out = dir.path("mole")
        let ok = try await run(["train", "mole", "--model", model, "--experts", experts.joined(separator: ","), "--adapter-root", root,
                                "--data", data, "--steps", "15", "--lr", "5e-2", "--batch", "8", "--balance", "0.1", "--out", out])
        #expect(ok.status == 0, "\(ok.stderr)")
        // Written away from its experts: it says where the composition must go to load.
        #expect(ok.stderr.contains("finds its experts beside it: move \(out) into"), "\(ok.stderr)")
        let losses = ok.stderr.split(separator: "\n").filter { $0.hasPrefix("step ") }
            .compactMap { line in line.split(separator: " ").firstIndex(of: "loss").flatMap { Double(line.split(separator: " ")[$0 + 1]) } }
        #expect(losses.count == 15)
        #expect(losses.last! < losses.first!, "loss \(losses.first!) → \(losses.last!)")

        let config = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: out + "/mole_config.json"))) as? [String: Any])
        #expect(config["granularity"] as? String == "block" && config["format"] as? String == "dlora-mole")
        #expect((config["experts"] as? [[String: String]])?.map { $0["name"] } == experts)
        let c = try openCheckpoint(path: model).config
        #expect(config["num_layers"] as? Int == c.numLayers && config["hidden_size"] as? Int == c.hiddenSize)
        // The safetensors header: 8-byte little-endian length, then JSON; f32 data after it.
        let file = try Data(contentsOf: URL(fileURLWithPath: out + "/gates.safetensors"))
        let headerLength = file.prefix(8).enumerated().reduce(0) { $0 | Int($1.element) << (8 * $1.offset) }
        let header = try #require(try JSONSerialization.jsonObject(with: file.subdata(in: 8..<(8 + headerLength))) as? [String: Any])
        for l in 0..<c.numLayers {
            let w = try #require(header["layers.\(l).gate.weight"] as? [String: Any])
            #expect(w["dtype"] as? String == "F32" && w["shape"] as? [Int] == [experts.count, c.hiddenSize])
            let range = try #require(w["data_offsets"] as? [Int])
            let values = file.subdata(in: (8 + headerLength + range[0])..<(8 + headerLength + range[1])).withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
            #expect(values.count == experts.count * c.hiddenSize && values.contains { $0 != 0 }, "layer \(l): the gate did not train")
            let t = try #require(header["layers.\(l).gate.temperature"] as? [String: Any])
            let tr = try #require(t["data_offsets"] as? [Int])
            let tau = file.subdata(in: (8 + headerLength + tr[0])..<(8 + headerLength + tr[1])).withUnsafeBytes { $0.load(as: Float.self) }
            #expect(tau >= 0.05 && tau.isFinite)
        }

        for (args, expected) in [
            (["--experts", "a-qv-r4"], "--experts must name between 2 and 64"),
            (["--experts", "a-qv-r4,a-qv-r4"], "appears twice"),
            (["--experts", "a-qv-r4,../etc"], "invalid adapter name"),
            (["--experts", "a-qv-r4,nope"], "nope"),
            (["--experts", "a-qv-r4,mole-abc"], "mole-abc is a composition (mole_config.json); experts must be plain LoRA adapters"),
            (["--experts", "a-qv-r4,mix-cat"], "mix-cat is a composition"),
            (["--data", dir.path("missing.jsonl")], "missing.jsonl"),
            (["--granularity", "neuron"], "block, layer, network or matrix"),
            (["--temperature", "0"], "--temperature must be between"),
            (["--out", out], "already holds"),
            // Checked before the run, not after it.
            (["--out", "/proc/dlora-no/adapter"], "--out /proc/dlora-no/adapter: cannot create /proc/dlora-no"),
        ] {
            var full = ["train", "mole", "--model", model, "--experts", "a-qv-r4,c-kod-r2", "--adapter-root", root, "--data", data,
                        "--steps", "1", "--out", dir.path("other")]
            for i in stride(from: 0, to: args.count, by: 2) {
                if let at = full.firstIndex(of: args[i]) { full[at + 1] = args[i + 1] } else { full += [args[i], args[i + 1]] }
            }
            let bad = try await run(full)
            #expect(bad.status != 0)
            let lines = bad.stderr.split(separator: "\n")
            #expect(lines.count == 1 && lines[0].hasPrefix("dlora: ") && lines[0].contains(expected), "\(args): \(bad.stderr)")
            // A failed run leaves no empty output directory behind.
            #expect(!FileManager.default.fileExists(atPath: dir.path("other")), "\(args): --out was left behind")
        }
    }

    /// SIGINT during `train lora`: the process exits 130 at once, saying so, and the output directory it made (empty:
    /// nothing is written before the end) is gone; it was left behind before.
    @Test func anInterruptedTrainingLeavesNoDirectory() throws {
        let exe = try #require(BuiltExecutables.dlora, "build the dlora executable first (swift build --build-tests)")
        let dir = try TemporaryDirectory()
        let data = dir.path("train.jsonl")
        try Data((0..<6).map { #"{"prompt": "item \#($0) is", "completion": " number \#($0)"}"# }.joined(separator: "\n").utf8)
            .write(to: URL(fileURLWithPath: data))
        let out = dir.path("adapter")
        let process = Process()
        process.executableURL = exe
        process.arguments = ["train", "lora", "--model", FixtureFiles.checkpoint(model: "tiny-llama", variant: "Q8_0"), "--data", data,
                             "--rank", "4", "--steps", "1000000", "--batch", "2", "--max-length", "16", "--out", out]
        let stderr = PipeLog()
        process.standardError = stderr.pipe
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        stderr.startReading()
        defer { if process.isRunning { kill(process.processIdentifier, SIGKILL) } }
        var stepped = false
        for _ in 0..<600 where !stepped && process.isRunning {
            Thread.sleep(forTimeInterval: 0.05)
            stepped = stderr.text.contains("step 1 ")
        }
        kill(process.processIdentifier, SIGINT)
        for _ in 0..<200 where process.isRunning { Thread.sleep(forTimeInterval: 0.05) }
        let exited = !process.isRunning
        #expect(stepped, "training never started: \(stderr.text.suffix(500))")
        #expect(exited, "still running 10 s after SIGINT")
        if exited { #expect(process.terminationStatus == 130 && process.terminationReason == .exit, "\(process.terminationStatus)") }
        #expect(stderr.text.contains("dlora: interrupted; the empty --out"), "\(stderr.text.suffix(500))")
        #expect(!FileManager.default.fileExists(atPath: out))
    }

    /// `dlora train lora` end to end on the tiny model: trains, writes the adapter, and the adapter loads.
    /// Bad input is one line on stderr and a non-zero exit.
    @Test func trainCommand() async throws {
        let exe = try #require(BuiltExecutables.dlora, "build the dlora executable first (swift build --build-tests)")
        let dir = try TemporaryDirectory()
        let data = dir.path("train.jsonl")
        let lines = (0..<6).map { #"{"prompt": "item \#($0) is", "completion": " number \#($0)"}"# } + [#"{"text": "plain text works too"}"#]
        try Data(lines.joined(separator: "\n").utf8).write(to: URL(fileURLWithPath: data))
        let model = FixtureFiles.checkpoint(model: "tiny-llama", variant: "Q8_0")
        func run(_ args: [String]) async throws -> CommandRun { try await runCommand(exe, args) }
        let out = dir.path("adapter")
        let ok = try await run(["train", "lora", "--model", model, "--data", data, "--targets", "q_proj,v_proj", "--rank", "4", "--alpha", "8",
                          "--steps", "20", "--lr", "1e-2", "--batch", "4", "--max-length", "32", "--seed", "7", "--out", out])
        #expect(ok.status == 0, "\(ok.stderr)")
        let losses = ok.stderr.split(separator: "\n").filter { $0.hasPrefix("step ") }
            .compactMap { line in line.split(separator: " ").firstIndex(of: "loss").flatMap { Double(line.split(separator: " ")[$0 + 1]) } }
        #expect(losses.count == 20)
        #expect(losses.last! < losses.first!, "loss \(losses.first!) → \(losses.last!)")
        let weights = try AdapterLoader.load(path: out, base: try openCheckpoint(path: model).config)
        #expect(weights.targets == [.q, .v] && weights.scale == 2)

        // --precision bf16: the same run trains (products in bf16 where the CPU has AVX-512 BF16, else it says
        // so once and stays f32), and the loss falls as in f32.
        let bf16 = try await run(["train", "lora", "--model", model, "--data", data, "--targets", "q_proj,v_proj", "--rank", "4", "--alpha", "8",
                                  "--steps", "20", "--lr", "1e-2", "--batch", "4", "--max-length", "32", "--seed", "7",
                                  "--precision", "bf16", "--out", dir.path("adapter-bf16")])
        #expect(bf16.status == 0, "\(bf16.stderr)")
        #expect(bf16.stderr.contains(Kernels.hasBF16Dot ? "bf16 products (" : "needs AVX-512 BF16, which this CPU lacks"), "\(bf16.stderr)")
        let bf16Losses = bf16.stderr.split(separator: "\n").filter { $0.hasPrefix("step ") }
            .compactMap { line in line.split(separator: " ").firstIndex(of: "loss").flatMap { Double(line.split(separator: " ")[$0 + 1]) } }
        #expect(bf16Losses.count == 20 && bf16Losses.last! < 0.8 * bf16Losses.first!, "bf16 loss \(bf16Losses)")
        #expect(abs(bf16Losses.last! - losses.last!) < 0.1 * losses.last! + 0.05, "bf16 \(bf16Losses.last!) vs f32 \(losses.last!)")

        for (args, expected) in [
            (["--targets", "q_proj,wq"], "--targets: unknown module 'wq'"),
            (["--data", dir.path("missing.jsonl")], "missing.jsonl: no such file"),
            (["--rank", "0"], "--rank must be between 1 and 1024"),
            (["--precision", "fp8"], "--precision fp8: f32 or bf16"),
            (["--max-length", "300"], "--max-length 300 exceeds the model's context length 256"),
            (["--out", out], "already holds"),
            // Checked before the run, not after it.
            (["--out", "/proc/dlora-no/adapter"], "--out /proc/dlora-no/adapter: cannot create /proc/dlora-no"),
            // A run whose weights grow past what the loader accepts: refused, nothing left behind as if valid.
            (["--lr", "0.99", "--alpha", "1024", "--rank", "1", "--steps", "5"], "the trained adapter would be refused where it is used"),
        ] {
            var full = ["train", "lora", "--model", model, "--data", data, "--steps", "1", "--out", dir.path("other")]
            for i in stride(from: 0, to: args.count, by: 2) {
                if let at = full.firstIndex(of: args[i]) { full[at + 1] = args[i + 1] } else { full += [args[i], args[i + 1]] }
            }
            let bad = try await run(full)
            #expect(bad.status != 0)
            #expect(!FileManager.default.fileExists(atPath: dir.path("other/adapter_model.safetensors")), "\(args) left an adapter behind")
            // (A run that trained has its progress lines first; the error is the last line.)
            let lines = bad.stderr.split(separator: "\n").filter { !$0.hasPrefix("train lora:") && !$0.hasPrefix("step ") }
            #expect(lines.count == 1 && lines[0].hasPrefix("dlora: ") && lines[0].contains(expected), "\(args): \(bad.stderr)")
        }
    }

    /// Training and serving compute the same MoLE: gates trained in memory (here: random, sharp enough that
    /// the mix varies per token) over the three fixture experts, written by `MoLEWriter` next to those experts,
    /// load in the engine as one composition whose logits at every prompt position are the training
    /// forward's; with uniform gates instead they differ (the check sees the gates).
    /// (Matrix gates over a and c only, so gate_proj and up_proj, which neither adapts, have no gate.)
    @Test(arguments: [("F32", MoLEGranularity.block), ("hf", .block), ("F32", .layer), ("hf", .network), ("F32", .matrix), ("hf", .matrix)])
    func writtenMoLEServesTheTrainedGates(variant: String, granularity: MoLEGranularity) throws {
        let path = FixtureFiles.checkpoint(model: "tiny-llama", variant: variant)
        let base = try FrozenBase(path: path)
        let c = base.config
        let dir = try TemporaryDirectory()
        let names = granularity == .matrix ? ["a-qv-r4", "c-kod-r2"] : ["a-qv-r4", "b-all-r8-rslora", "c-kod-r2"]
        for name in names {
            try FileManager.default.copyItem(at: FixtureFiles.lora.appendingPathComponent("tiny-llama/\(name)"), to: dir.file(name))
        }
        let experts = try names.map { try AdapterLoader.load(path: dir.path($0), base: c) }
        let mole = MoLEMixture(config: c, experts: experts.map { LoRAParameters(weights: $0, config: c) }, granularity: granularity,
                               balanceWeight: 0.1, temperature: 0.6, gateScale: 4, seed: 91)
        try MoLEWriter.write(mole, experts: names.map { MoLEWriter.Expert(name: $0, path: $0) }, to: dir.path("mole"), baseModel: path)
        let served = try AdapterLoader.load(path: dir.path("mole"), base: c)
        #expect(served.gating?.granularity == granularity && served.gating?.weights.count == mole.units)
        #expect(served.gating?.weights.map { $0.rows > 0 } == mole.inUse)
        #expect(mole.inUse.filter { $0 }.count == (granularity == .matrix ? 5 * c.numLayers : mole.units))
        let model = try LlamaModel(checkpoint: openCheckpoint(path: path))
        let prompt = [5, 17, 200, 3, 9, 44, 61, 7, 120]
        let batch = TrainingBatch(batch: 1, length: prompt.count, tokens: prompt.map(Int32.init), labels: Array(repeating: -1, count: prompt.count))
        let none = LoRAParameters(config: c, rank: 1, alpha: 1, targets: [], seed: 0)
        let ours = LoRATrainingModel(base: base, lora: none, mole: mole).logits(batch)
        let rows = (0..<prompt.count).map { Array(ours[($0 * c.vocabSize)..<(($0 + 1) * c.vocabSize)]) }
        let engine = Self.engineLogits(model, prompt, adapter: served)
        #expect(maxAbsDiff(rows, engine) < 1e-3)
        let gates = mole.gateValues(layer: 0)
        #expect(gates.max()! > 0.6 && gates.min()! < 0.2, "gates \(gates.prefix(9)): too even to tell")
        for u in 0..<mole.units {
            #expect(mole.gateValues(unit: u).count == (mole.inUse[u] ? prompt.count * names.count : 0), "unit \(u)")
        }
        let uniform = MoLEMixture(config: c, experts: experts.map { LoRAParameters(weights: $0, config: c) }, balanceWeight: 0.1)
        let even = LoRATrainingModel(base: base, lora: none, mole: uniform).logits(batch)
        let evenRows = (0..<prompt.count).map { Array(even[($0 * c.vocabSize)..<(($0 + 1) * c.vocabSize)]) }
        #expect(maxAbsDiff(evenRows, engine) > 0.05)
    }

    /// A PEFT adapter as the engine loads it (rsLoRA, all seven targets, on the GGUF base: Q/K permuted) turned
    /// back into training parameters computes, in the training forward, the engine's logits with that adapter.
    @Test func loadedAdapterBecomesTrainingParameters() throws {
        let path = FixtureFiles.checkpoint(model: "tiny-llama", variant: "F32")
        let base = try FrozenBase(path: path)
        let weights = try AdapterLoader.load(path: FixtureFiles.lora.appendingPathComponent("tiny-llama/b-all-r8-rslora").path, base: base.config)
        let lora = LoRAParameters(weights: weights, config: base.config)
        #expect(lora.rank == 8 && lora.targets == LoRATarget.allCases && abs(lora.scale - weights.scale) < 1e-6)
        let model = try LlamaModel(checkpoint: openCheckpoint(path: path))
        let prompt = [5, 17, 200, 3, 9, 44, 61]
        let engine = Self.engineLogits(model, prompt, adapter: weights)
        let batch = TrainingBatch(batch: 1, length: prompt.count, tokens: prompt.map(Int32.init), labels: Array(repeating: -1, count: prompt.count))
        let ours = LoRATrainingModel(base: base, lora: lora).logits(batch)
        let rows = (0..<prompt.count).map { Array(ours[($0 * base.config.vocabSize)..<(($0 + 1) * base.config.vocabSize)]) }
        #expect(maxAbsDiff(rows, engine) < 1e-3)
        #expect(maxAbsDiff(engine, Self.engineLogits(model, prompt, adapter: nil)) > 0.1)
    }
}
}
