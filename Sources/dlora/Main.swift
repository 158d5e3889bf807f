import Adapters
import ArgumentParser
import Engine
import Foundation
import Kernels
import Models
import Tokenizers

@main
struct Dlora: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dlora",
        abstract: "Serve one base LLM with many LoRA adapters.",
        subcommands: [Serve.self, Generate.self, Bench.self]
    )

    /// Parses and runs; any failure is one line on stderr and a non-zero exit status.
    static func main() async {
        do {
            var command = try parseAsRoot()
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            let code = exitCode(for: error)
            if code == .success {
                // --help and --version
                print(fullMessage(for: error))
                Foundation.exit(0)
            }
            let message = Self.message(for: error)
            let line = message.split(separator: "\n", omittingEmptySubsequences: true).first.map(String.init) ?? "\(error)"
            FileHandle.standardError.write(Data("dlora: \(line)\n".utf8))
            Foundation.exit(code == .success ? 1 : code.rawValue)
        }
    }
}

/// A failure the CLI reports as one line.
struct CLIError: Error, CustomStringConvertible {
    let description: String
    init(_ message: String) { description = message }
}

/// The default model: SmolLM2-135M-Instruct Q4_1, fetched by scripts/fetch-model.sh into the user cache.
enum DefaultModel {
    static let fileName = "SmolLM2-135M-Instruct.Q4_1.gguf"

    static var path: String {
        let env = ProcessInfo.processInfo.environment
        let cache = env["XDG_CACHE_HOME"].flatMap { $0.isEmpty ? nil : $0 }
            ?? (NSHomeDirectory() as NSString).appendingPathComponent(".cache")
        return ((cache as NSString).appendingPathComponent("dlora") as NSString).appendingPathComponent(fileName)
    }

    /// Resolves `--model`: the given path, or the default model when it is present.
    static func resolve(_ given: String?) throws -> String {
        if let given { return given }
        let p = path
        guard FileManager.default.fileExists(atPath: p) else {
            throw CLIError("no --model given and the default model is not at \(p) (run scripts/fetch-model.sh)")
        }
        return p
    }
}

/// A loaded model with its tokenizer.
struct LoadedModel {
    let model: LlamaModel
    let tokenizer: Tokenizer

    init(path: String) throws {
        guard FileManager.default.fileExists(atPath: path) else { throw CLIError("\(path): no such file or directory") }
        let checkpoint = try openCheckpoint(path: path)
        model = try LlamaModel(checkpoint: checkpoint)
        if let metadata = checkpoint.metadata {
            tokenizer = try Tokenizer(metadata: metadata)
        } else {
            tokenizer = try Tokenizer(directory: URL(fileURLWithPath: path))
        }
    }
}

struct Generate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Generate a completion and stream it to stdout.",
        discussion: "Ends with one line of prompt and generation throughput on stderr."
    )

    @Option(help: "A GGUF file or a Hugging Face model directory (default: the SmolLM2-135M-Instruct Q4_1 in the user cache).")
    var model: String?
    @Option(help: "Raw prompt text (tokenized with the model's BOS convention).")
    var prompt: String?
    @Option(help: "A user message, formatted with the model's chat template.")
    var chat: String?
    @Option(name: .customLong("max-tokens"), help: "Tokens to generate at most (default: until end of sequence or 256).")
    var maxTokens: Int = 256
    @Option(help: "Sampling temperature; 0 is greedy.")
    var temperature: Double = 1.0
    @Option(name: .customLong("top-p"), help: "Nucleus sampling mass, in (0, 1].")
    var topP: Double = 1.0
    @Option(name: .customLong("top-k"), help: "Sample among the k most likely tokens; 0 = all.")
    var topK: Int = 0
    @Option(help: "Random seed (default: random).")
    var seed: UInt64?
    @Option(help: "Stop before this string (repeatable).")
    var stop: [String] = []
    @Option(help: "Kernel threads (default: all cores).")
    var threads: Int?
    @Option(help: "A LoRA adapter: a PEFT directory or GGUF LoRA file, or a name under --adapter-root.")
    var adapter: String?
    @Option(name: .customLong("adapter-scale"), help: "Multiplier on the adapter's scaling.")
    var adapterScale: Float = 1
    @Option(name: .customLong("adapter-root"), help: "Directory that adapter names are found in (default: $DLORA_ADAPTER_ROOT, else the current directory).")
    var adapterRoot: String?
    @Option(name: .customLong("lora-mode"), help: "unmerged (LoRA path beside the base weights) or merged (folded into the weights).")
    var loraMode: String = "unmerged"
    @Flag(name: .customLong("no-mmap"), help: "Copy the model into memory at load instead of mapping it.")
    var noMmap = false

    func validate() throws {
        if (prompt == nil) == (chat == nil) { throw ValidationError("give exactly one of --prompt and --chat") }
        guard ["merged", "unmerged"].contains(loraMode) else { throw ValidationError("--lora-mode must be merged or unmerged") }
        guard adapterScale.isFinite, abs(adapterScale) <= 100 else { throw ValidationError("--adapter-scale must be a finite number within ±100") }
        if adapter == nil && (adapterScale != 1 || adapterRoot != nil) { throw ValidationError("--adapter-scale and --adapter-root need --adapter") }
        if let threads, threads < 1 || threads > 1024 { throw ValidationError("--threads must be between 1 and 1024") }
        let params = samplingParams
        do { try params.validate() } catch let e as SamplingError {
            throw ValidationError(e.description.replacingOccurrences(of: "max_tokens", with: "--max-tokens")
                .replacingOccurrences(of: "top_p", with: "--top-p").replacingOccurrences(of: "top_k", with: "--top-k")
                .replacingOccurrences(of: "temperature", with: "--temperature"))
        }
    }

    var samplingParams: SamplingParams {
        SamplingParams(temperature: temperature, topP: topP, topK: topK, seed: seed, maxTokens: maxTokens, stop: stop)
    }

    func run() throws {
        if let threads { Kernels.setThreads(threads) }
        if noMmap { MappedFile.defaultLoading = .copy }
        let loaded = try LoadedModel(path: DefaultModel.resolve(model))
        let tokenizer = loaded.tokenizer
        let ids: [Int]
        if let chat {
            let text = try tokenizer.chatTemplate.render(messages: [ChatMessage(role: "user", content: chat)], addGenerationPrompt: true)
            ids = tokenizer.encode(text, addSpecial: false)
        } else {
            ids = tokenizer.encode(prompt ?? "", addSpecial: true)
        }
        let config = loaded.model.config
        var lora: LoRAWeights?
        if let adapter {
            let path: String
            if FileManager.default.fileExists(atPath: adapter) {
                path = adapter
            } else {
                let root = adapterRoot ?? ProcessInfo.processInfo.environment["DLORA_ADAPTER_ROOT"] ?? FileManager.default.currentDirectoryPath
                path = try AdapterRegistry(root: root, base: config).path(for: adapter)
            }
            let weights = try AdapterLoader.load(path: path, base: config)
            if loraMode == "merged" {
                loaded.model.merge(weights, scale: adapterScale)
            } else {
                lora = weights
            }
        }
        // KV blocks for the whole request, plus the adapter's share of the same budget (unmerged).
        let need = min(ids.count + maxTokens, config.maxPositionEmbeddings)
        let blockBytes = PagedKVStorage.bytesPerBlock(numLayers: config.numLayers, blockSize: 16, numKVHeads: config.numKVHeads, headDim: config.headDim)
        let adapterBlocks = lora.map { ($0.byteCount + blockBytes - 1) / blockBytes } ?? 0
        let engine = EngineCore(model: loaded.model, tokenizer: tokenizer, kvBlocks: EngineConfiguration.kvBlocks(tokens: need) + adapterBlocks)
        try engine.submit(prompt: ids, params: samplingParams, adapter: lora, adapterScale: adapterScale)
        let out = FileHandle.standardOutput
        let results = engine.runToCompletion { event in
            if !event.text.isEmpty { out.write(Data(event.text.utf8)) }
        }
        out.write(Data("\n".utf8))
        if let failed = results.last, failed.finish == .error {
            throw CLIError("generation failed after \(results.count - 1) tokens: \(failed.message ?? "the engine could not continue")")
        }
        let s = engine.stats
        let promptRate = s.promptSeconds > 0 ? Double(s.promptTokens) / s.promptSeconds : 0
        let genRate = s.decodeSeconds > 0 ? Double(s.decodeTokens) / s.decodeSeconds : 0
        FileHandle.standardError.write(Data(String(
            format: "prompt: %d tokens, %.1f tok/s; generation: %d tokens, %.1f tok/s\n",
            s.promptTokens, promptRate, s.generatedTokens, genRate).utf8))
    }
}
