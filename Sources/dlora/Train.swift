import ArgumentParser
import Foundation
import Kernels
import Models
import Tokenizers
import Training

struct Train: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Train adapters on the CPU (docs/design/training.md).",
        subcommands: [TrainLoRA.self]
    )
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
        if let threads = modelOptions.threads { Kernels.setThreads(threads) }
        if modelOptions.noMmap { MappedFile.defaultLoading = .copy }
        let path = try modelOptions.resolvedPath()
        // Refuse to overwrite an existing adapter before spending the time to train one.
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: out, isDirectory: &isDirectory) {
            guard isDirectory.boolValue else { throw CLIError("--out \(out) exists and is not a directory") }
            for f in ["adapter_config.json", "adapter_model.safetensors"] where FileManager.default.fileExists(atPath: out + "/" + f) {
                throw CLIError("--out \(out) already holds \(f); choose a new directory")
            }
        }
        guard FileManager.default.fileExists(atPath: path) else { throw CLIError("\(path): no such file or directory") }
        let checkpoint = try openCheckpoint(path: path)
        let tokenizer = try checkpoint.metadata.map { try Tokenizer(metadata: $0) } ?? Tokenizer(directory: URL(fileURLWithPath: path))
        let c = checkpoint.config
        guard maxLength <= c.maxPositionEmbeddings else {
            throw CLIError("--max-length \(maxLength) exceeds the model's context length \(c.maxPositionEmbeddings)")
        }
        let data = try TrainingData(path: self.data, tokenizer: tokenizer, maxLength: maxLength)
        // The frozen f32 weights and the activations kept for the backward (they grow with batch × length²,
        // the attention probabilities) must fit: refuse a run that cannot before loading anything large.
        let targetList = try Self.parseTargets(targets)
        let longest = data.examples.map(\.tokens.count).max() ?? maxLength
        let need = FrozenBase.bytes(config: c)
            + LoRATrainingModel.workspaceBytes(config: c, rank: rank, targets: targetList.count, batch: batch, length: longest)
        let physical = Int(clamping: ProcessInfo.processInfo.physicalMemory)
        guard need < physical / 10 * 8 else {
            throw CLIError("training needs about \(need >> 20) MiB (f32 weights and activations for --batch \(batch) × \(longest) tokens); this machine has \(physical >> 20) MiB: lower --batch or --max-length")
        }
        let base = try FrozenBase(checkpoint: checkpoint)
        let config = LoRATrainingConfiguration(
            targets: targetList, rank: rank, alpha: alpha, steps: steps, batchSize: batch, maxLength: maxLength,
            seed: seed, optimizer: AdamWConfiguration(learningRate: lr, weightDecay: weightDecay))
        let trainer = LoRATrainer(base: base, data: data, configuration: config)
        let err = FileHandle.standardError
        err.write(Data("train lora: \(data.examples.count) examples (\(data.dropped) dropped), \(trainer.lora.parameterCount) trainable parameters, \(Kernels.threadCount) threads\n".utf8))
        var tokens = 0, seconds = 0.0
        var lastLoss = Double.nan
        try trainer.runChecked { r in
            tokens += r.tokens
            seconds += r.seconds
            lastLoss = r.loss
            guard r.loss.isFinite else { throw CLIError("step \(r.step): the loss is not finite (\(r.loss)); lower --lr") }
            if r.step % logEvery == 0 || r.step == steps {
                err.write(Data(String(format: "step %d  loss %.4f  %.0f tok/s\n", r.step, r.loss, Double(r.tokens) / r.seconds).utf8))
            }
        }
        try PEFTAdapterWriter.write(trainer.lora, to: out, baseModelName: path)
        err.write(Data(String(format: "final loss %.4f; %d tokens in %.1f s: %.1f tok/s; adapter written to %@\n",
                              lastLoss, tokens, seconds, Double(tokens) / max(seconds, 1e-9), out).utf8))
    }
}
