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
        subcommands: [Serve.self, RouterCommand.self, ClusterCommand.self, Generate.self, Bench.self, Simulate.self, Train.self, Eval.self]
    )

    /// Parses and runs; any failure is one line on stderr and a non-zero exit status.
    static func main() async {
        // Before anything else: OpenBLAS on a CPU newer than the library runs its generic SSE3 kernels (Kernels.blasCoreToAdopt).
        Kernels.adoptBLASCoreForThisCPU()
        do {
            var command = try parseAsRoot()
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
            // What `print` buffered: a write that failed (a full disk) makes the run a failure, not a silent loss. (All
            // streams: Swift 6 will not name C's `stdout`; stderr is unbuffered, so this is standard output's flush.)
            if fflush(nil) != 0 {
                throw CLIError("cannot write to standard output: \(OutputPath.reason(errno))")
            }
        } catch {
            let code = exitCode(for: error)
            if code == .success {
                // --help and --version
                print(fullMessage(for: error))
                Foundation.exit(0)
            }
            let message = Self.listenFailure(error) ?? Self.message(for: error)
            let line = message.split(separator: "\n", omittingEmptySubsequences: true).first.map(String.init) ?? "\(error)"
            StandardError.write("dlora: \(line)\n")
            Foundation.exit(code == .success ? 1 : code.rawValue)
        }
    }
}

extension Dlora {
    /// A server that cannot take its port, said as that (NIO's own text was "bind(descriptor:ptr:bytes:): Address
    /// already in use) (errno: 98)").
    static func listenFailure(_ error: any Error) -> String? {
        let text = "\(error)"
        guard text.contains("bind("), text.contains("Address already in use") else { return nil }
        return "cannot listen on the --port asked for: the address is already in use (another server on it?)"
    }
}

/// Standard error as the CLI writes it: a closed or unwritable stream is ignored (`FileHandle.write` trapped on one:
/// `dlora generate … 2>&-` died of SIGILL on its first note or error).
enum StandardError {
    static func write(_ text: String) {
        var bytes = Array(text.utf8)[...]
        while !bytes.isEmpty {
            let n = bytes.withUnsafeBytes { Foundation.write(2, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { return }
            bytes = bytes.dropFirst(n)
        }
    }
}

/// A failure the CLI reports as one line.
struct CLIError: Error, CustomStringConvertible {
    let description: String
    init(_ message: String) { description = message }
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

extension Generate {
    /// --json, --json-schema or --choice as a grammar spec, compiled here so a schema it cannot honour is refused
    /// before the model runs.
    func outputConstraint() throws -> GrammarSpec? {
        let spec: GrammarSpec
        if json {
            spec = .jsonObject()
        } else if let jsonSchema {
            let url = URL(fileURLWithPath: jsonSchema)
            switch FileKind(path: url.path) {
            case .directory: throw CLIError("--json-schema: '\(jsonSchema)' is a directory, not a schema file")
            case .other: throw CLIError("--json-schema: '\(jsonSchema)' is not a regular file (a FIFO, socket or device)")
            case .regular, .missing: break
            }
            let size = (try? FileManager.default.attributesOfItem(atPath: url.path)[.size] as? Int) ?? nil
            guard let size else { throw CLIError("--json-schema: cannot read '\(jsonSchema)'") }
            guard size <= 1 << 20 else { throw CLIError("--json-schema: '\(jsonSchema)' is larger than 1 MiB") }
            let schema: ExactJSON
            do {
                schema = try Data(contentsOf: url).withUnsafeBytes { try ExactJSON.parse($0, name: jsonSchema) }
            } catch TokenizerError.invalidJSON(let what) {
                throw CLIError("--json-schema: not JSON: \(what)")
            }
            spec = .jsonSchema(schema)
        } else if !choice.isEmpty {
            spec = .choice(choice)
        } else {
            return nil
        }
        do {
            _ = try spec.compile()
        } catch {
            throw CLIError("\(json ? "--json" : jsonSchema != nil ? "--json-schema" : "--choice"): \(error)")
        }
        return spec
    }
}

struct Generate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Generate a completion and stream it to stdout.",
        discussion: "Ends with one line of prompt and generation throughput on stderr."
    )

    @OptionGroup var modelOptions: ModelOptions
    @Option(help: "Raw prompt text (tokenized with the model's BOS convention).")
    var prompt: String?
    @Option(help: "A user message, formatted with the model's chat template.")
    var chat: String?
    @OptionGroup var sampling: SamplingOptions
    @Option(help: "A LoRA adapter: a PEFT directory or GGUF LoRA file, or a name under --adapter-root.")
    var adapter: String?
    @Option(name: .customLong("adapter-scale"), help: "Multiplier on the adapter's scaling.")
    var adapterScale: Float = 1
    @Option(name: .customLong("adapter-root"), help: "Directory that adapter names are found in (default: $DLORA_ADAPTER_ROOT, else the current directory).")
    var adapterRoot: String?
    @Option(name: .customLong("lora-mode"), help: "unmerged (LoRA path beside the base weights) or merged (folded into the weights).")
    var loraMode: String = "unmerged"
    @Option(name: .customLong("merge-precision"),
            help: "With --lora-mode merged: how W + s·B·A is stored: f32, q8_0 or f16; auto: q8_0 beside int8 products, f16 where the products are f32 on a quantized base, else f32 (as serve).")
    var mergePrecision: MergePrecisionChoice = .auto
    @Flag(name: .customLong("json"), help: "Constrain the output to one JSON object (JSON mode).")
    var json = false
    @Option(name: .customLong("json-schema"), help: "Constrain the output to JSON valid against the JSON Schema in this file (structured outputs).")
    var jsonSchema: String?
    @Option(name: .customLong("choice"), help: "Constrain the output to exactly one of these strings (repeatable).")
    var choice: [String] = []
    @OptionGroup var kvCache: KVCacheOption
    @OptionGroup var products: MatmulPrecisionOption
    @OptionGroup var adapterPrecision: AdapterPrecisionOption

    func validate() throws {
        if (prompt == nil) == (chat == nil) { throw ValidationError("give exactly one of --prompt and --chat") }
        if [json, jsonSchema != nil, !choice.isEmpty].filter({ $0 }).count > 1 {
            throw ValidationError("give at most one of --json, --json-schema and --choice")
        }
        guard ["merged", "unmerged"].contains(loraMode) else { throw ValidationError("--lora-mode must be merged or unmerged") }
        if mergePrecision != .auto && loraMode != "merged" { throw ValidationError("--merge-precision needs --lora-mode merged") }
        guard adapterScale.isFinite, abs(adapterScale) <= 100 else { throw ValidationError("--adapter-scale must be a finite number within ±100") }
        if adapter == nil && (adapterScale != 1 || adapterRoot != nil || loraMode != "unmerged") {
            throw ValidationError("--adapter-scale, --adapter-root and --lora-mode need --adapter")
        }
    }

    func run() throws {
        let (_, loaded) = try modelOptions.load()
        try products.apply(to: loaded.model)
        loaded.model.mergePrecision = mergePrecision.resolved(for: loaded.model)
        let tokenizer = loaded.tokenizer
        let ids: [Int]
        if let chat {
            // As serve says at start: a template that does not parse is not what renders the prompt.
            if let error = tokenizer.chatTemplate.parseError {
                let fallback = tokenizer.chatTemplate.kind == .unrecognizedChatML ? "plain ChatML" : "dlora's own \(tokenizer.chatTemplate.kind.rawValue) format"
                StandardError.write("dlora: note: the model's chat template could not be parsed as Jinja (\(error)); the prompt is rendered as \(fallback) instead\n")
            }
            let text = try tokenizer.chatTemplate.render(messages: [ChatMessage(role: "user", content: chat)], addGenerationPrompt: true)
            ids = tokenizer.encode(text, addSpecial: false)
        } else {
            ids = tokenizer.encode(prompt ?? "", addSpecial: true)
        }
        let config = loaded.model.config
        var lora: LoRAWeights?
        if let adapter {
            let path: String
            let configuredRoot = adapterRoot ?? ProcessInfo.processInfo.environment["DLORA_ADAPTER_ROOT"]
            if FileManager.default.fileExists(atPath: adapter) {
                path = adapter
            } else if adapter.contains("/") && configuredRoot == nil {
                // A path (no adapter root to name one in, and a name is one path component): say what is missing
                // rather than that the name is invalid.
                throw CLIError("--adapter \(adapter): no such file or directory")
            } else {
                let root = configuredRoot ?? FileManager.default.currentDirectoryPath
                path = try AdapterRegistry(root: root, base: config).path(for: adapter)
            }
            let weights = try AdapterLoader.load(path: path, base: config).held(as: adapterPrecision.resolved(for: loaded.model))
            if loraMode == "merged" {
                guard weights.mergeable else { throw CLIError("adapter '\(weights.name)' is a MoLE composition: its experts' mix changes per token, so it runs unmerged only") }
                loaded.model.merge(weights, scale: adapterScale)
                StandardError.write("merged '\(weights.name)' into the weights in \(loaded.model.mergePrecision.rawValue)\n")
            } else {
                lora = weights
                let dtypes = Set(weights.modules.joined().compactMap { $0?.dtype })
                let held = dtypes.contains(.q8_0) ? "in int8 (Q8_0)" : dtypes.contains(.q4_0) ? "in int4 (Q4_0)" : "as stored"
                StandardError.write("adapter '\(weights.name)' held \(held)\n")
            }
        }
        // KV blocks for the whole request, plus the adapter's share of the same budget (unmerged).
        var params = sampling.params
        params.grammar = try outputConstraint()
        let need = min(ids.count + sampling.maxTokens, config.maxPositionEmbeddings)
        let blockSize = EngineOptions.defaults.blockSize
        let dtype = kvCache.resolved(for: loaded.model)
        let blockBytes = EngineConfiguration.bytesPerBlock(config, blockSize: blockSize, dtype: dtype)
        let adapterBlocks = lora.map { ($0.byteCount + blockBytes - 1) / blockBytes } ?? 0
        let engine = EngineCore(model: loaded.model, tokenizer: tokenizer,
                                kvBlocks: EngineConfiguration.kvBlocks(tokens: need, blockSize: blockSize) + adapterBlocks, kvCacheDType: dtype)
        try engine.submit(prompt: ids, params: params, adapter: lora, adapterScale: adapterScale)
        var writeError: (any Error)?
        let results = engine.runToCompletion { event in
            guard !event.text.isEmpty, writeError == nil else { return }
            do { try StandardOutput.write(Data(event.text.utf8)) } catch { writeError = error }
        }
        if let writeError { throw writeError }
        try StandardOutput.write(Data("\n".utf8))
        if let failed = results.last, failed.finish == .error {
            throw CLIError("generation failed after \(results.count - 1) tokens: \(failed.message ?? "the engine could not continue")")
        }
        let s = engine.stats
        if params.grammar != nil, results.last?.finish == .length {
            StandardError.write("the output is incomplete: --max-tokens ran out before it was complete\n")
        }
        let promptRate = s.promptSeconds > 0 ? Double(s.promptTokens) / s.promptSeconds : 0
        let genRate = s.decodeSeconds > 0 ? Double(s.decodeTokens) / s.decodeSeconds : 0
        StandardError.write(String(
            format: "prompt: %d tokens, %.1f tok/s; generation: %d tokens, %.1f tok/s\n",
            s.promptTokens, promptRate, s.generatedTokens, genRate))
    }
}
