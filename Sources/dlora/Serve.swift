import Adapters
import ArgumentParser
import Engine
import Foundation
import Hummingbird
import Kernels
import Logging
import Models
import Scheduling
import Server
import ServiceLifecycle

/// `dlora serve`: the OpenAI-compatible server over one replica engine.
struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Serve the base model and its LoRA adapters over an OpenAI-compatible HTTP API.")

    @OptionGroup var modelOptions: ModelOptions
    @OptionGroup var engineOptions: EngineOptions
    @OptionGroup var policyOption: PolicyOption
    @OptionGroup var adapterPrecision: AdapterPrecisionOption
    @Option(help: "Adapter root: every PEFT directory or GGUF LoRA under it is served by its name; load_lora_adapter paths are confined to it.")
    var adapters: String?
    @Option(help: "Address to bind (default: loopback only).")
    var host: String = "127.0.0.1"
    @Option(help: "Port (0: any free port, printed at start).")
    var port: Int = 8000
    @OptionGroup var keys: KeyOptions
    @Option(help: "Name the base model is served under (default: the model file's name).")
    var servedModelName: String?
    @Option(help: "Largest request body, bytes.")
    var maxBodyBytes: Int = 1 << 20
    @Option(help: "Sequences admitted at once, queued or running (a request takes one per prompt and choice: prompts × n); more get 429.")
    var maxQueue: Int = 256
    @Option(help: "MiB of Responses API answers kept in memory for previous_response_id and GET /v1/responses/{id} (least recently used forgotten first; 0: store none).")
    var responsesStoreMb: Int = 64
    @Option(help: "Prompt tokens at most (default: the context less one).")
    var maxPromptTokens: Int?
    @Option(help: "max_tokens at most (default: the context).")
    var maxTokensLimit: Int?
    @Option(help: "Seconds running requests get to finish on SIGTERM/SIGINT before they are cancelled.")
    var shutdownDeadline: Double = 30
    @Option(help: "Seconds a client has to send a complete request head, from connecting or from its first byte.")
    var headerTimeout: Double = 10
    @Option(help: "Seconds a client has to send a request body, from its head (then 408).")
    var bodyTimeout: Double = 60
    @Option(help: "Seconds an idle keep-alive connection stays open.")
    var idleTimeout: Double = 30
    @Option(help: "Open connections at most; beyond, the oldest idle one is closed, or the new one if none is idle.")
    var maxConnections: Int = 512
    @Option(help: "Append one JSON line per iteration to this file: its shape and its action, forward and whole seconds (bench/step_log.py compares it with the simulator's and fits a cost profile to it).")
    var stepLog: String?
    @Flag(help: .hidden)
    var exitWithParent = false

    func validate() throws {
        guard (0...65535).contains(port) else { throw ValidationError("--port must be between 0 and 65535") }
        guard maxBodyBytes >= 1024, maxQueue >= 1, shutdownDeadline >= 0, shutdownDeadline.isFinite else {
            throw ValidationError("--max-body-bytes (≥ 1024) and --max-queue must be positive, --shutdown-deadline a finite number ≥ 0")
        }
        if let maxPromptTokens, maxPromptTokens < 1 { throw ValidationError("--max-prompt-tokens must be positive") }
        if let maxTokensLimit, maxTokensLimit < 1 { throw ValidationError("--max-tokens-limit must be positive") }
        for (name, value) in [("--header-timeout", headerTimeout), ("--body-timeout", bodyTimeout), ("--idle-timeout", idleTimeout)] {
            guard value > 0, value <= 86_400 else { throw ValidationError("\(name) must be between 0 and 86400 seconds") }
        }
        guard maxConnections >= 1 else { throw ValidationError("--max-connections must be positive") }
        guard (0...65_536).contains(responsesStoreMb) else { throw ValidationError("--responses-store-mb must be between 0 and 65536") }
    }

    /// Appends step lines to `path` (created if missing; opened for appending, so the replicas of one `dlora cluster`
    /// may share a file: each line is one write). `replica` is this process's id; `start` is Unix time in seconds,
    /// so that the iterations of replicas in different processes line up.
    static func stepWriter(path: String) throws -> (StepSummary, Double, Double, Double) -> Void {
        let fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw CLIError("--step-log: cannot write \(path): \(String(cString: strerror(errno)))") }
        let handle = FileHandle(fileDescriptor: fd, closeOnDealloc: true)
        let pid = Int(getpid())
        final class Once { var said = false }  // the engine's step loop is the one caller
        let warned = Once()
        return { step, action, forward, whole in
            let now = Date().timeIntervalSince1970
            let line = step.jsonLine(replica: pid, start: now - whole, actionSeconds: action, forwardSeconds: forward, stepSeconds: whole)
            // A full disk loses log lines, not the server; the first loss is said once on stderr.
            do {
                try handle.write(contentsOf: Data((line + "\n").utf8))
            } catch {
                if !warned.said {
                    warned.said = true
                    StandardError.write("dlora: --step-log \(path): \(OutputPath.reason(error)); step lines are being lost\n")
                }
            }
        }
    }

    func run() async throws {
        let (path, loaded) = try modelOptions.load()
        let config = loaded.model.config
        // The model as it will serve (merge precision, products) before the configuration, which may time merges on it;
        // adapters are held as --adapter-precision says (auto: int8 beside int8 products).
        try engineOptions.prepare(loaded.model)
        let held = try adapterPrecision.resolved(for: loaded.model)
        let registry = try adapters.map { try AdapterRegistry(root: $0, base: config, precision: held) }
        let engineConfig = engineOptions.configuration(for: loaded.model, policy: policyOption.kind,
                                                       switchPrior: engineOptions.switchPrior(for: loaded.model, policy: policyOption.kind))
        let blocks = engineConfig.kvBlocks
        let core = EngineCore(model: loaded.model, tokenizer: loaded.tokenizer, configuration: engineConfig)
        if let stepLog { core.stepObserver = try Self.stepWriter(path: stepLog) }
        let engine = EngineLoop(engine: core)
        defer { engine.shutdown() }

        var options = ServerOptions(modelName: servedModelName ?? Self.modelName(path))
        options.apiKey = keys.resolvedAPIKey
        options.adminKey = keys.resolvedAdminKey
        options.maxBodyBytes = maxBodyBytes
        options.maxQueue = maxQueue
        options.responsesStoreBytes = responsesStoreMb << 20
        options.maxPromptTokens = maxPromptTokens
        options.maxTokensLimit = maxTokensLimit
        options.shutdownDeadline = .milliseconds(Int64(shutdownDeadline * 1000))
        options.http.headerTimeout = .milliseconds(Int64(headerTimeout * 1000))
        options.http.bodyTimeout = .milliseconds(Int64(bodyTimeout * 1000))
        options.http.idleTimeout = .milliseconds(Int64(idleTimeout * 1000))
        options.http.maxConnections = maxConnections
        let server = OpenAIServer(engine: engine, tokenizer: loaded.tokenizer, adapters: registry, options: options)

        var logger = Logger(label: "dlora")
        logger.logLevel = .info
        let switchNote = engineConfig.switchPrior.map {
            String(format: ", merges measured at %.2f ns per base element + %.3f ns per multiply-add (the first + %.1f ns per element)",
                   $0.mergeSecondsPerElement * 1e9, $0.mergeSecondsPerMultiplyAdd * 1e9, $0.allocationSecondsPerElement * 1e9)
        } ?? ""
        let productsNote = engineOptions.products.note(for: loaded.model, adapters: held) + ", merges in \(loaded.model.mergePrecision.rawValue)"
        let served = options.modelName, adapterCount = registry?.available().count ?? 0, host = host
        // Chat prompts rendered without the model's own template are worth a line at startup: answers may differ from
        // what the model was trained on (and from transformers and vLLM, which refuse chat then).
        let chatTemplate = loaded.tokenizer.chatTemplate
        if chatTemplate.kind == .defaultChatML {
            StandardError.write("dlora: note: the model has no chat template (GGUF tokenizer.chat_template, chat_template.jinja or tokenizer_config.json); chat requests are rendered as plain ChatML\n")
        } else if let error = chatTemplate.parseError {
            let fallback = chatTemplate.kind == .unrecognizedChatML ? "plain ChatML" : "dlora's own \(chatTemplate.kind.rawValue) format"
            StandardError.write("dlora: note: the model's chat template could not be parsed as Jinja (\(error)); chat requests are rendered as \(fallback) instead\n")
        }
        if let window = loaded.model.config.slidingWindowCap {
            StandardError.write("dlora: note: the model's attention slides over a window of \(window) positions; contexts are served up to that length (max_model_len \(window)), where full attention equals it\n")
        }
        let app = server.makeApplication(
            configuration: .init(address: .hostname(host, port: port), serverName: "dlora"),
            logger: logger,
            onServerRunning: { channel in
                let bound = channel.localAddress?.port ?? 0
                StandardError.write(
                    "dlora: serving \(served) (+\(adapterCount) adapters) on http://\(host):\(bound) — \(blocks) KV blocks (\(engineConfig.kvCacheDType))\(productsNote)\(switchNote)\n")
            }
        )
        // A replica started by `dlora cluster` drains and stops when its supervisor is gone (even one killed with
        // SIGKILL), instead of living on as an orphan that holds its port.
        let parentWatch = exitWithParent ? Task.detached {
            let parent = getppid()
            while !Task.isCancelled {
                try? await Task.sleep(for: .milliseconds(500))
                if getppid() != parent {
                    kill(getpid(), SIGTERM)
                    return
                }
            }
        } : nil
        defer { parentWatch?.cancel() }
        let group = ServiceGroup(configuration: .init(
            services: [.init(service: app), .init(service: DrainService(server: server))],
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: logger
        ))
        let second = SecondSignal { server.endDrainNow() }
        defer { withExtendedLifetime(second) {} }
        try await group.run()
    }

    /// The served name of a model path: its file (or directory) name without the extension.
    static func modelName(_ path: String) -> String {
        let last = URL(fileURLWithPath: path).lastPathComponent
        return last.hasSuffix(".gguf") ? String(last.dropLast(5)) : last
    }
}
