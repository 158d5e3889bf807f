import ArgumentParser
import Foundation
import Kernels
import Models
import Adapters
import Tokenizers
import Training

struct Train: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Train adapters on the CPU (docs/design/training.md).",
        subcommands: [TrainLoRA.self, TrainMoLE.self, TrainLoRAHub.self]
    )
}

/// What every `train` command does first: threads and mmap from the model options, the model path, a refusal
/// to overwrite earlier outputs in `out` (before the time is spent), the checkpoint, its tokenizer and a check
/// of `maxLength` against the model's context.
final class TrainingSetup {
    let path: String
    let checkpoint: any ModelCheckpoint
    let tokenizer: Tokenizer
    var config: ModelConfig { checkpoint.config }
    /// `out` when this run made it: a run that fails (or is refused) before writing into it removes it again, rather
    /// than leaving an empty directory that a later `train mole --adapter-root` reads as a broken adapter.
    private let created: String?
    /// SIGINT/SIGTERM during the run: the directory goes as on a failure, then the process exits (130 / 143).
    private let interrupts: [any DispatchSourceSignal]

    init(_ modelOptions: ModelOptions, out: String, outputs: [String], maxLength: Int) throws {
        if let threads = modelOptions.threads { Kernels.setThreads(threads) }
        if modelOptions.noMmap { MappedFile.defaultLoading = .copy }
        path = try modelOptions.resolvedPath()
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: out, isDirectory: &isDirectory) {
            guard isDirectory.boolValue else { throw CLIError("--out \(out) exists and is not a directory") }
            for f in outputs where FileManager.default.fileExists(atPath: out + "/" + f) {
                throw CLIError("--out \(out) already holds \(f); choose a new directory")
            }
        }
        guard FileManager.default.fileExists(atPath: path) else { throw CLIError("\(path): no such file or directory") }
        // The output directory now, not after the training: one that cannot be made or written fails before the run.
        let existed = FileManager.default.fileExists(atPath: out)
        try OutputPath.prepareDirectory(out, option: "--out")
        let created = existed ? nil : out
        do {
            checkpoint = try openCheckpoint(path: path)
            tokenizer = try checkpoint.metadata.map { try Tokenizer(metadata: $0) } ?? Tokenizer(directory: URL(fileURLWithPath: path))
            guard checkpoint.config.maxPositionEmbeddings >= maxLength else {
                throw CLIError("--max-length \(maxLength) exceeds the model's context length \(checkpoint.config.maxPositionEmbeddings)")
            }
        } catch {
            Self.removeIfEmpty(created)
            throw error
        }
        self.created = created
        interrupts = watchTerminationSignals(on: .global()) { sig, _ in
            let removed = Self.removeIfEmpty(created)
            StandardError.write("dlora: interrupted\(removed ? "; the empty --out \(created!) was removed" : "")\n")
            _exit(128 + sig)
        }
    }

    /// Runs the rest of the command; if it fails, the output directory this run made goes again when it is empty.
    func guarding<T>(_ body: () throws -> T) throws -> T {
        do {
            return try body()
        } catch {
            Self.removeIfEmpty(created)
            throw error
        }
    }

    @discardableResult
    static func removeIfEmpty(_ directory: String?) -> Bool {
        guard let directory, (try? FileManager.default.contentsOfDirectory(atPath: directory))?.isEmpty == true else { return false }
        return rmdir(directory) == 0
    }
}

/// A written adapter read back as `serve` and `generate` read it (AdapterLoader: every bound they hold it to). One they
/// would refuse — a run whose weights grew past what the loader accepts, a learning rate too high for the scaling — is
/// an error here and its files are removed, rather than "adapter written" and a refusal later.
func checkWritten(_ out: String, base: ModelConfig, outputs: [String]) throws {
    do {
        _ = try AdapterLoader.load(path: out, base: base)
    } catch {
        for f in outputs { try? FileManager.default.removeItem(atPath: out + "/" + f) }
        throw CLIError("the trained adapter would be refused where it is used (\(error)); nothing was written: lower --lr or --alpha")
    }
}

/// How `train lora` and `train mole` run the frozen base's products.
struct PrecisionOptions: ParsableArguments {
    @Option(help: "The frozen base's products (projections and vocabulary, forward and input gradient): f32, or bf16 with f32 sums as torch's bf16 autocast runs them (needs AVX-512 BF16; elsewhere training stays f32 and says so). Gradients, the LoRA path, attention and the optimizer stay f32.")
    var precision: String = "f32"

    func validate() throws {
        guard precision == "f32" || precision == "bf16" else { throw ValidationError("--precision \(precision.prefix(16)): f32 or bf16") }
    }

    /// Extra bytes the bf16 copies take (4 per frozen weight: two packed copies of 2 bytes).
    func extraBytes(config c: ModelConfig) -> Int { precision == "bf16" ? FrozenBase.bytes(config: c) : 0 }

    /// Switches `base` to bf16 products when asked; returns what the log line says about it.
    func apply(to base: FrozenBase, command: String) -> String {
        guard precision == "bf16" else { return "f32 products" }
        guard let bytes = base.useBF16Products() else {
            StandardError.write("\(command): --precision bf16 needs AVX-512 BF16, which this CPU lacks; the products stay f32\n")
            return "f32 products"
        }
        // What is left on OpenBLAS (attention per head, the LoRA path) runs one product per thread instead,
        // attention's heads split over the threads (TrainingOps.attentionSlots).
        Kernels.capBLASThreads(1)
        return "bf16 products (\(bytes >> 20) MiB of packed weights)"
    }
}

/// The options `train mole` and `train lorahub` share: the experts and where they are.
struct ExpertOptions: ParsableArguments {
    @Option(help: "The experts, comma-separated: adapter names under --adapter-root, or adapter directories/files.")
    var experts: String
    @Option(name: .customLong("adapter-root"), help: "Directory whose subdirectories are adapters named by --experts.")
    var adapterRoot: String?

    var names: [String] {
        experts.split(separator: ",", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
    }

    func validate() throws {
        guard names.count >= 2, names.count <= 64 else { throw ValidationError("--experts must name between 2 and 64 adapters") }
        guard !names.contains(where: \.isEmpty) else { throw ValidationError("--experts: an empty name") }
        guard Set(names).count == names.count else { throw ValidationError("--experts: an adapter appears twice") }
    }

    /// The experts, validated by the adapter loader against this base before anything large is loaded: names
    /// under `adapterRoot` (the registry's name rules), or paths.
    func load(base c: ModelConfig) throws -> ([LoRAWeights], [MoLEWriter.Expert]) {
        let registry = try adapterRoot.map { try AdapterRegistry(root: $0, base: c) }
        var weights: [LoRAWeights] = []
        var written: [MoLEWriter.Expert] = []
        for name in names {
            let path: String
            if let registry {
                path = try registry.path(for: name)
            } else {
                guard FileManager.default.fileExists(atPath: name) else {
                    throw CLIError("--experts: \(name.prefix(256)): no such adapter (give a path, or a name with --adapter-root)")
                }
                path = name
            }
            // A composition (static or MoLE) is not an expert: said as such, not as the ranks its parts happen to have.
            if let manifest = AdapterLoader.compositionManifest(at: path) {
                throw CLIError("--experts: \(name.prefix(256)) is a composition (\(manifest)); experts must be plain LoRA adapters")
            }
            if let registry {
                weights.append(try registry.load(name))
                written.append(.init(name: name, path: path))
            } else {
                weights.append(try AdapterLoader.load(path: name, base: c))
                written.append(.init(name: URL(fileURLWithPath: name).lastPathComponent, path: name))
            }
            // Training holds each expert at one rank (LoRAParameters); PEFT's rank_pattern can give its modules several.
            let ranks = Set(weights[weights.count - 1].modules.joined().compactMap { $0?.rank })
            guard ranks.count <= 1 else {
                throw CLIError("--experts: \(name.prefix(256)) has modules of ranks \(ranks.sorted().map(String.init).joined(separator: ", ")) (rank_pattern); training needs one rank per expert")
            }
        }
        return (weights, written)
    }
}

struct TrainLoRA: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lora",
        abstract: "Train a LoRA adapter on a JSONL data set and write it as a PEFT adapter directory.",
        discussion: """
        Each line of --data is {"prompt": …, "completion": …} (loss on the completion) or {"text": …}. The base \
        weights stay frozen (dequantized to f32 once); A is kaiming-uniform and B zero as PEFT initialises them; \
        AdamW with a constant learning rate. Prints the loss per step and the training throughput on stderr.
        """
    )

    @OptionGroup var modelOptions: ModelOptions
    @Option(help: "The training data: a JSONL file.")
    var data: String
    @Option(help: "Modules to adapt, comma-separated PEFT names (q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj).")
    var targets: String = "q_proj,v_proj"
    @Option(help: "LoRA rank r.")
    var rank: Int = 8
    @Option(help: "LoRA alpha (the scaling is alpha / r).")
    var alpha: Double = 16
    @Option(help: "Optimisation steps (one batch each).")
    var steps: Int = 100
    @Option(help: "AdamW learning rate (constant).")
    var lr: Float = 2e-4
    @Option(name: .customLong("weight-decay"), help: "AdamW's decoupled weight decay.")
    var weightDecay: Float = 0
    @Option(help: "Examples per batch.")
    var batch: Int = 8
    @Option(name: .customLong("max-length"), help: "Tokens per example at most (longer ones are cut).")
    var maxLength: Int = 256
    @Option(help: "Seed of the initialisation and of the data order.")
    var seed: UInt64 = 0
    @Option(help: "The output directory (adapter_config.json, adapter_model.safetensors).")
    var out: String
    @Option(name: .customLong("log-every"), help: "Print the loss every this many steps.")
    var logEvery: Int = 1
    @OptionGroup var precisionOptions: PrecisionOptions

    static func parseTargets(_ s: String) throws -> [LoRATarget] {
        var out: [LoRATarget] = []
        for name in s.split(separator: ",", omittingEmptySubsequences: false).map({ $0.trimmingCharacters(in: .whitespaces) }) {
            guard let t = LoRATarget.allCases.first(where: { $0.peftName == name }) else {
                throw ValidationError("--targets: unknown module '\(name.prefix(64))' (expected q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)")
            }
            guard !out.contains(t) else { throw ValidationError("--targets: \(name) appears twice") }
            out.append(t)
        }
        return out
    }

    func validate() throws {
        _ = try Self.parseTargets(targets)
        guard (1...1024).contains(rank) else { throw ValidationError("--rank must be between 1 and 1024") }
        guard alpha.isFinite, alpha > 0, alpha / Double(rank) <= 1024 else { throw ValidationError("--alpha must be positive with alpha / rank at most 1024") }
        guard (1...10_000_000).contains(steps) else { throw ValidationError("--steps must be between 1 and 10000000") }
        guard lr.isFinite, lr > 0, lr < 1 else { throw ValidationError("--lr must be in (0, 1)") }
        guard weightDecay.isFinite, weightDecay >= 0, weightDecay < 1 / lr else { throw ValidationError("--weight-decay must be ≥ 0 and below 1 / lr") }
        guard (1...4096).contains(batch) else { throw ValidationError("--batch must be between 1 and 4096") }
        guard (2...65536).contains(maxLength) else { throw ValidationError("--max-length must be between 2 and 65536") }
        guard logEvery >= 1 else { throw ValidationError("--log-every must be at least 1") }
        guard !out.isEmpty else { throw ValidationError("--out must name a directory") }
    }

    func run() throws {
        let setup = try TrainingSetup(modelOptions, out: out, outputs: ["adapter_config.json", "adapter_model.safetensors"], maxLength: maxLength)
        try setup.guarding {
            let (path, tokenizer, c) = (setup.path, setup.tokenizer, setup.config)
            let data = try TrainingData(path: self.data, tokenizer: tokenizer, maxLength: maxLength)
            // The frozen f32 weights and the activations kept for the backward (they grow with batch × length²,
            // the attention probabilities) must fit: refuse a run that cannot before loading anything large.
            let targetList = try Self.parseTargets(targets)
            let longest = data.examples.map(\.tokens.count).max() ?? maxLength
            let need = FrozenBase.bytes(config: c) + precisionOptions.extraBytes(config: c)
                + LoRATrainingModel.workspaceBytes(config: c, rank: rank, targets: targetList.count, batch: batch, length: longest)
            let physical = Int(clamping: ProcessInfo.processInfo.physicalMemory)
            guard need < physical / 10 * 8 else {
                throw CLIError("training needs about \(need >> 20) MiB (f32 weights and activations for --batch \(batch) × \(longest) tokens); this machine has \(physical >> 20) MiB: lower --batch or --max-length")
            }
            let base = try FrozenBase(checkpoint: setup.checkpoint)
            let config = LoRATrainingConfiguration(
                targets: targetList, rank: rank, alpha: alpha, steps: steps, batchSize: batch, maxLength: maxLength,
                seed: seed, optimizer: AdamWConfiguration(learningRate: lr, weightDecay: weightDecay))
            let products = precisionOptions.apply(to: base, command: "train lora")
            let trainer = LoRATrainer(base: base, data: data, configuration: config)
            StandardError.write("train lora: \(data.examples.count) examples (\(data.dropped) dropped), \(trainer.lora.parameterCount) trainable parameters, \(Kernels.threadCount) threads, \(products)\n")
            var tokens = 0, seconds = 0.0
            var lastLoss = Double.nan
            try trainer.runChecked { r in
                tokens += r.tokens
                seconds += r.seconds
                lastLoss = r.loss
                guard r.loss.isFinite else { throw CLIError("step \(r.step): the loss is not finite (\(r.loss)); lower --lr") }
                if r.step % logEvery == 0 || r.step == steps {
                    StandardError.write(String(format: "step %d  loss %.4f  %.0f tok/s\n", r.step, r.loss, Double(r.tokens) / r.seconds))
                }
            }
            try PEFTAdapterWriter.write(trainer.lora, to: out, baseModelName: path)
            try checkWritten(out, base: setup.config, outputs: ["adapter_config.json", "adapter_model.safetensors"])
            StandardError.write(String(format: "final loss %.4f; %d tokens in %.1f s: %.1f tok/s; adapter written to %@\n",
                                               lastLoss, tokens, seconds, Double(tokens) / max(seconds, 1e-9), out))
        }
    }
}

struct TrainMoLE: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mole",
        abstract: "Train MoLE gates over frozen LoRA experts and write mole_config.json + gates.safetensors.",
        discussion: """
        The experts (PEFT or GGUF LoRA adapters: names under --adapter-root, or paths) and the base stay frozen; \
        per block a gate softmax(W·z / τ) over the experts, z each token's normalised block input, weights every \
        expert's low-rank path (MoLE's b-MoLE, with a per-token gate that serving computes causally). W and τ train with AdamW on the task \
        loss plus the balance loss α·(−log Π q_i), q the gate distribution averaged over blocks, with its \
        gradient. Data as for `train lora`. Prints the loss and the mean gate weights per expert on stderr.
        """
    )

    @OptionGroup var modelOptions: ModelOptions
    @OptionGroup var expertOptions: ExpertOptions
    @Option(help: "The training data: a JSONL file.")
    var data: String
    @Option(help: "Gate granularity: block (one gate per transformer block; the paper's b-MoLE), layer (one per attention and MLP sub-layer; l-MoLE), network (one for the whole model; n-MoLE) or matrix (one per adapted projection, from its own input; m-MoLE).")
    var granularity: String = "block"
    @Option(help: "Balance-loss coefficient α (0: no balance loss).")
    var balance: Float = 0.1
    @Option(help: "Initial gate temperature τ (learnable).")
    var temperature: Float = 1
    @Option(help: "Optimisation steps (one batch each).")
    var steps: Int = 100
    @Option(help: "AdamW learning rate (constant).")
    var lr: Float = 1e-2
    @Option(help: "Examples per batch.")
    var batch: Int = 8
    @Option(name: .customLong("max-length"), help: "Tokens per example at most (longer ones are cut).")
    var maxLength: Int = 256
    @Option(help: "Seed of the data order.")
    var seed: UInt64 = 0
    @Option(help: "The output directory (mole_config.json, gates.safetensors).")
    var out: String
    @Option(name: .customLong("log-every"), help: "Print the loss every this many steps.")
    var logEvery: Int = 1
    @OptionGroup var precisionOptions: PrecisionOptions

    func validate() throws {
        guard MoLEGranularity(rawValue: granularity) != nil else {
            throw ValidationError("--granularity \(granularity.prefix(32)): block, layer, network or matrix")
        }
        guard balance.isFinite, balance >= 0, balance <= 100 else { throw ValidationError("--balance must be between 0 and 100") }
        guard temperature.isFinite, temperature >= MoLEMixture.minimumTemperature, temperature <= 100 else {
            throw ValidationError("--temperature must be between \(MoLEMixture.minimumTemperature) and 100")
        }
        guard (1...10_000_000).contains(steps) else { throw ValidationError("--steps must be between 1 and 10000000") }
        guard lr.isFinite, lr > 0, lr < 1 else { throw ValidationError("--lr must be in (0, 1)") }
        guard (1...4096).contains(batch) else { throw ValidationError("--batch must be between 1 and 4096") }
        guard (2...65536).contains(maxLength) else { throw ValidationError("--max-length must be between 2 and 65536") }
        guard logEvery >= 1 else { throw ValidationError("--log-every must be at least 1") }
        guard !out.isEmpty else { throw ValidationError("--out must name a directory") }
    }

    /// The directory holding `path`, symbolic links resolved.
    static func directory(of path: String) -> String {
        URL(fileURLWithPath: path).deletingLastPathComponent().resolvingSymlinksInPath().standardizedFileURL.path
    }

    func run() throws {
        let setup = try TrainingSetup(modelOptions, out: out, outputs: ["mole_config.json", "gates.safetensors"], maxLength: maxLength)
        try setup.guarding {
            let (path, tokenizer, c) = (setup.path, setup.tokenizer, setup.config)
            let (weights, written) = try expertOptions.load(base: c)
            let data = try TrainingData(path: self.data, tokenizer: tokenizer, maxLength: maxLength)
            let longest = data.examples.map(\.tokens.count).max() ?? maxLength
            let maxRank = weights.map(\.maxPaddedRank).max() ?? 1
            let need = FrozenBase.bytes(config: c) + precisionOptions.extraBytes(config: c)
                + LoRATrainingModel.workspaceBytes(config: c, rank: maxRank, targets: 7, batch: batch, length: longest) * 2
            let physical = Int(clamping: ProcessInfo.processInfo.physicalMemory)
            guard need < physical / 10 * 8 else {
                throw CLIError("training needs about \(need >> 20) MiB for --batch \(batch) × \(longest) tokens; this machine has \(physical >> 20) MiB: lower --batch or --max-length")
            }
            // A MoLE composition loads its experts from beside it, by name (mole_config.json's `path` is informational):
            // written elsewhere, it loads only once moved there. Said before the training, not at the first load.
            let home = Self.directory(of: out)
            let away = Set(written.map { Self.directory(of: $0.path) }.filter { $0 != home })
            if let place = away.sorted().first {
                StandardError.write("dlora: note: a MoLE composition finds its experts beside it: \(away.count == 1 ? "move \(out) into \(place)" : "its experts are in \(away.count) directories; put them and \(out) in one") before serving it\n")
            }
            let base = try FrozenBase(checkpoint: setup.checkpoint)
            let products = precisionOptions.apply(to: base, command: "train mole")
            let expertParameters = weights.map { LoRAParameters(weights: $0, config: c) }
            let mole = MoLEMixture(config: c, experts: expertParameters, granularity: MoLEGranularity(rawValue: granularity)!,
                                   balanceWeight: balance, temperature: temperature)
            let none = LoRAParameters(config: c, rank: 1, alpha: 1, targets: [], seed: 0)
            let model = LoRATrainingModel(base: base, lora: none, mole: mole)
            let optimizer = AdamW(configuration: AdamWConfiguration(learningRate: lr), mole: mole)
            var sampler = BatchSampler(data: data, size: batch, seed: seed)
            StandardError.write("train mole: \(data.examples.count) examples (\(data.dropped) dropped), \(expertOptions.names.count) experts, \(mole.inUse.filter { $0 }.count) \(granularity) gates, \(Kernels.threadCount) threads, \(products)\n")
            var lastLoss = Double.nan
            var tokens = 0, seconds = 0.0
            for step in 1...steps {
                let b = sampler.nextBatch()
                let start = DispatchTime.now().uptimeNanoseconds
                mole.zeroGradients()
                let loss = model.lossAndGradients(b)
                optimizer.update()
                mole.clampTemperatures()
                seconds += Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
                tokens += b.realTokens
                lastLoss = loss
                guard loss.isFinite else { throw CLIError("step \(step): the loss is not finite (\(loss)); lower --lr") }
                if step % logEvery == 0 || step == steps {
                    StandardError.write(String(format: "step %d  loss %.4f  gates %@\n", step, loss, Self.meanGates(mole)))
                }
            }
            try MoLEWriter.write(mole, experts: written, to: out, baseModel: path)
            StandardError.write(String(format: "final loss %.4f; %d tokens in %.1f s: %.1f tok/s; gates written to %@\n",
                                               lastLoss, tokens, seconds, Double(tokens) / max(seconds, 1e-9), out))
        }
    }

    /// Each expert's gate weight averaged over the gate units and real tokens of the last batch.
    static func meanGates(_ mole: MoLEMixture) -> String {
        let n = mole.experts.count
        var sums = [Float](repeating: 0, count: n)
        var rows = 0
        for u in 0..<mole.units {
            let g = mole.gateValues(unit: u)
            for (i, v) in g.enumerated() { sums[i % n] += v }
            rows += g.count / n
        }
        return sums.map { String(format: "%.3f", $0 / Float(max(1, rows))) }.joined(separator: " ")
    }
}

struct TrainLoRAHub: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lorahub",
        abstract: "Compose LoRA experts for a new task from a few examples (LoRAHub) and write the composition as a PEFT adapter.",
        discussion: """
        Searches one weight per expert (separable CMA-ES in [-1.5, 1.5] from 0, the few-shot loss + --l1 × Σ|w|); \
        the composed adapter is A = Σ w_i·A_i, B = Σ w_i·s_i·B_i, so the experts must share their rank. Writes \
        adapter_config.json + adapter_model.safetensors (servable like any adapter) and lorahub.json (experts, \
        weights, loss). Data as for `train lora`; every example is used at each evaluation.
        """
    )

    @OptionGroup var modelOptions: ModelOptions
    @OptionGroup var expertOptions: ExpertOptions
    @Option(help: "The few-shot examples: a JSONL file (at most 256 examples).")
    var data: String
    @Option(help: "Objective evaluations (LoRAHub's default: 40).")
    var evaluations: Int = 40
    @Option(help: "Weight of the L1 term on the expert weights (LoRAHub's default: 0.05).")
    var l1: Double = 0.05
    @Option(name: .customLong("max-length"), help: "Tokens per example at most (longer ones are cut).")
    var maxLength: Int = 256
    @Option(help: "Seed of the search.")
    var seed: UInt64 = 0
    @Option(help: "The output directory (adapter_config.json, adapter_model.safetensors, lorahub.json).")
    var out: String

    func validate() throws {
        guard (1...100_000).contains(evaluations) else { throw ValidationError("--evaluations must be between 1 and 100000") }
        guard l1.isFinite, l1 >= 0, l1 <= 100 else { throw ValidationError("--l1 must be between 0 and 100") }
        guard (2...65536).contains(maxLength) else { throw ValidationError("--max-length must be between 2 and 65536") }
        guard !out.isEmpty else { throw ValidationError("--out must name a directory") }
    }

    func run() throws {
        let setup = try TrainingSetup(modelOptions, out: out, outputs: ["adapter_config.json", "adapter_model.safetensors", "lorahub.json"], maxLength: maxLength)
        try setup.guarding {
            let (path, tokenizer, c) = (setup.path, setup.tokenizer, setup.config)
            let (weights, written) = try expertOptions.load(base: c)
            let ranks = weights.map { w in w.modules.joined().compactMap { $0 }.first?.rank ?? 0 }
            guard Set(ranks).count == 1 else {
                throw CLIError("--experts: LoRAHub composes A and B element by element, so the experts must share one rank (got \(ranks.map(String.init).joined(separator: ", ")))")
            }
            let data = try TrainingData(path: self.data, tokenizer: tokenizer, maxLength: maxLength)
            guard data.examples.count <= 256 else { throw CLIError("\(self.data): \(data.examples.count) examples; LoRAHub takes a few (at most 256)") }
            let longest = data.examples.map(\.tokens.count).max() ?? maxLength
            let need = FrozenBase.bytes(config: c)
                + LoRATrainingModel.workspaceBytes(config: c, rank: ranks[0], targets: 7, batch: data.examples.count, length: longest)
            let physical = Int(clamping: ProcessInfo.processInfo.physicalMemory)
            guard need < physical / 10 * 8 else {
                throw CLIError("the search needs about \(need >> 20) MiB for \(data.examples.count) × \(longest) tokens; this machine has \(physical >> 20) MiB")
            }
            let base = try FrozenBase(checkpoint: setup.checkpoint)
            let hub = try LoRAHub(base: base, experts: weights.map { LoRAParameters(weights: $0, config: c) }, l1: l1)
            let batch = TrainingData.batch(data.examples)
            let baseLoss = hub.objective([Double](repeating: 0, count: weights.count), batch: batch).loss
            StandardError.write(String(format: "train lorahub: %d examples, %d experts; base model loss %.4f\n", data.examples.count, weights.count, baseLoss))
            let start = DispatchTime.now().uptimeNanoseconds
            let result = hub.search(batch: batch, evaluations: evaluations, seed: seed) { n, best, f in
                StandardError.write(String(format: "evaluations %d  best objective %.4f  weights %@\n", n, f,
                                                   best.map { String(format: "%.3f", $0) }.joined(separator: " ")))
            }
            let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
            guard result.loss.isFinite else { throw CLIError("the few-shot loss is not finite under every composition tried") }
            try PEFTAdapterWriter.write(hub.composed, to: out, baseModelName: path)
            try checkWritten(out, base: setup.config, outputs: ["adapter_config.json", "adapter_model.safetensors"])
            let summary: [String: Any] = [
                "method": "lorahub", "search": "separable CMA-ES, bounds [-1.5, 1.5], start 0", "evaluations": evaluations, "l1": l1,
                "experts": zip(written, result.weights).map { ["name": $0.0.name, "path": $0.0.path, "weight": $0.1] },
                "few_shot_examples": data.examples.count, "loss": result.loss, "base_loss": baseLoss, "objective": result.objective,
            ]
            try JSONSerialization.data(withJSONObject: summary, options: [.prettyPrinted, .sortedKeys])
                .write(to: URL(fileURLWithPath: out + "/lorahub.json"))
            StandardError.write(String(format: "loss %.4f (base %.4f) after %d evaluations in %.1f s; adapter written to %@\n",
                                               result.loss, baseLoss, evaluations, seconds, out))
        }
    }
}
