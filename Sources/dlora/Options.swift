import ArgumentParser
import Engine
import Foundation
import Kernels
import Models
import Scheduling

// The option groups every command shares: one declaration of each flag (name, help, default, validation)
// and one place that turns the flags into the value the engine takes. Engine defaults are
// `EngineConfiguration`'s, so changing a default there changes `serve`, `bench replica` and their help.

/// `--model`, `--no-mmap`, `--threads`: which checkpoint, how it is loaded, how many kernel threads.
struct ModelOptions: ParsableArguments {
    @Option(help: "A GGUF file or a Hugging Face model directory (default: the SmolLM2-135M-Instruct Q4_1 in the user cache).")
    var model: String?
    @Flag(name: .customLong("no-mmap"), help: "Copy the model into memory at load instead of mapping it (with a mapping, truncating or rewriting the model file in place while it is in use kills the process with SIGBUS).")
    var noMmap = false
    @Option(help: "Kernel threads (default: all cores).")
    var threads: Int?

    func validate() throws {
        if let threads, threads < 1 || threads > 1024 { throw ValidationError("--threads must be between 1 and 1024") }
    }

    /// The checkpoint path: `--model`, else the default model (an error naming scripts/fetch-model.sh when absent).
    func resolvedPath() throws -> String {
        if let model { return model }
        do {
            return try DefaultModel.require()
        } catch let missing as DefaultModel.Missing {
            throw CLIError("no --model given and \(missing)")
        }
    }

    /// Sets the kernel threads and the loading mode, then loads the model and its tokenizer.
    func load() throws -> (path: String, loaded: LoadedModel) {
        if let threads { Kernels.setThreads(threads) }
        if noMmap { MappedFile.defaultLoading = .copy }
        let path = try resolvedPath()
        return (path, try LoadedModel(path: path))
    }
}

/// The engine's sizing and the batching policy's tuning, for the commands that run a replica engine
/// (`serve`, `bench replica`). The batching policy itself is `PolicyOption` (`bench replica` takes a list).
struct EngineOptions: ParsableArguments {
    static let defaults = EngineConfiguration(kvBlocks: 1)

    @Option(name: .customLong("kv-cache-mb"), help: "KV cache and resident adapters: one budget, MiB.")
    var kvCacheMb: Int = EngineConfiguration.defaultKVCacheMegabytes
    @Option(name: .customLong("block-size"), help: "Tokens per KV block.")
    var blockSize: Int = Self.defaults.blockSize
    @Option(name: .customLong("max-batch-tokens"), help: "Tokens per iteration at most (prompt chunks and decode tokens).")
    var maxBatchTokens: Int = Self.defaults.maxBatchTokens
    @Option(name: [.customLong("max-batch-sequences"), .customLong("max-sequences")], help: "Sequences per iteration at most (the paper's batch size B).")
    var maxBatchSequences: Int = Self.defaults.maxBatchSequences
    @Option(name: .customLong("adapter-slots"), help: "Distinct adapters per unmerged iteration at most (LoRA slots).")
    var adapterSlots: Int = Self.defaults.adapterSlots
    @Option(name: .customLong("host-swap-mb"), help: "Host memory for swapped-out KV, MiB; beyond it, preempted requests recompute.")
    var hostSwapMb: Int = Self.defaults.hostSwapBytes >> 20
    @Option(name: .customLong("credit-bound"), help: "dLoRA's credit bound: iterations an adapter may be passed over (a request of it that FCFS would run left waiting: merged mode, memory) before its requests go first.")
    var creditBound: Int = Self.defaults.policy.creditBound
    @Option(help: "dLoRA's amortization horizon: iterations over which a switch to merged mode must pay for itself.")
    var horizon: Int = Self.defaults.policy.amortizationHorizon
    @Option(name: .customLong("merge-precision"),
            help: "How merged mode stores W + s·B·A: f32 (exact; 6.4× the bytes of a Q4_1 base), q8_0 (re-quantized, 1.7×) or f16 (rounded to half precision, 3.2×); unmerge stays exact. auto: q8_0 beside int8 products (the merged codes run through the same int8 kernel), f16 where the products are f32 on a quantized base, else f32 (bf16 products read merged matrices from bf16 packs).")
    var mergePrecision: MergePrecisionChoice = .auto
    @Flag(name: .customLong("measure-switch-cost"), inversion: .prefixedNo,
          help: "Time a few merges of synthetic adapters on the loaded model at start (dLoRA only; 0.2-2 s on SmolLM2 with 2 cores), so the scheduler prices its first switch at this model's cost, workspace allocation included, rather than one CPU's figure for a Q4_1 base.")
    var measureSwitchCost = true

    @OptionGroup var kvCache: KVCacheOption
    @OptionGroup var products: MatmulPrecisionOption

    func validate() throws {
        guard kvCacheMb >= 1, maxBatchTokens >= 1, maxBatchSequences >= 1, adapterSlots >= 1 else {
            throw ValidationError("--kv-cache-mb, --max-batch-tokens, --max-batch-sequences and --adapter-slots must be positive")
        }
        guard (1...256).contains(blockSize) else { throw ValidationError("--block-size must be between 1 and 256") }
        guard hostSwapMb >= 0 else { throw ValidationError("--host-swap-mb must be >= 0") }
        guard creditBound >= 1, horizon >= 1 else { throw ValidationError("--credit-bound and --horizon must be positive") }
        // Shifted into bytes below: keep the products far from overflow.
        guard kvCacheMb <= 1 << 30, hostSwapMb <= 1 << 30 else { throw ValidationError("--kv-cache-mb and --host-swap-mb must be at most 2^30") }
        // The KV budget is allocated (and zeroed) at start: one the machine cannot hold would stop the process with an
        // allocation failure, or have it killed for memory, instead of this message.
        let memoryMb = Int(ProcessInfo.processInfo.physicalMemory >> 20)
        guard kvCacheMb < memoryMb else {
            throw ValidationError("--kv-cache-mb \(kvCacheMb) is not less than this machine's memory (\(memoryMb) MiB)")
        }
        // Both are held at once (the swap space is host memory too): each below the memory, their sum not, ran out.
        guard kvCacheMb + hostSwapMb < memoryMb else {
            throw ValidationError("--kv-cache-mb \(kvCacheMb) + --host-swap-mb \(hostSwapMb) is not less than this machine's memory (\(memoryMb) MiB)")
        }
    }

    /// Sets what the options say of the model itself (how merged mode stores its matrices, the products' precision).
    func prepare(_ model: LlamaModel) throws {
        try products.apply(to: model)
        model.mergePrecision = mergePrecision.resolved(for: model)
    }

    /// The switch-cost prior timed on `model` as it will serve (after `prepare`): nil unless the policy is dLoRA (the
    /// only one that weighs a switch's cost) and `--measure-switch-cost` is on. It merges synthetic adapters for
    /// 0.2–2 s on SmolLM2.
    func switchPrior(for model: LlamaModel, policy: BatchingPolicyKind) -> SwitchPrior? {
        guard policy == .dlora, measureSwitchCost, let cost = model.measureSwitchCost() else { return nil }
        return SwitchPrior(measured: cost)
    }

    /// The engine configuration these options describe for `model`, running `policy`, its scheduler starting from
    /// `switchPrior` (nil: `SwitchPrior.cpu`).
    func configuration(for model: LlamaModel, policy: BatchingPolicyKind, switchPrior: SwitchPrior? = nil) -> EngineConfiguration {
        let dtype = kvCache.resolved(for: model)
        let blockBytes = EngineConfiguration.bytesPerBlock(model.config, blockSize: blockSize, dtype: dtype)
        var c = EngineConfiguration(kvBlocks: EngineConfiguration.kvBlocks(megabytes: kvCacheMb, bytesPerBlock: blockBytes))
        c.kvCacheDType = dtype
        c.blockSize = blockSize
        c.maxBatchTokens = maxBatchTokens
        c.maxBatchSequences = maxBatchSequences
        c.adapterSlots = adapterSlots
        c.hostSwapBytes = hostSwapMb << 20
        c.policy = Self.defaults.policy
        c.policy.kind = policy
        c.policy.creditBound = creditBound
        c.policy.amortizationHorizon = horizon
        c.switchPrior = switchPrior
        return c
    }
}

/// `--kv-cache-dtype auto|f32|f16`, one declaration for every command that runs the engine (`serve`, `bench
/// replica`, `bench core`, `generate`).
struct KVCacheOption: ParsableArguments {
    /// What the flag names; `auto` resolves against the loaded model.
    enum Choice: String, CaseIterable, ExpressibleByArgument {
        case auto, f32, f16
    }

    @Option(name: .customLong("kv-cache-dtype"),
            help: "What the KV cache stores: f32, or f16 (half the bytes per position: twice the positions in --kv-cache-mb, half the bytes attention reads; K/V rounded to f16). auto: f16 where the weights are held quantized or in half precision (a quantized or F16/BF16 GGUF: llama.cpp's cache type), f32 where they are held in f32 (an f32 checkpoint, and Hugging Face safetensors of any precision, which are widened to f32 at load).")
    var kvCacheDType: Choice = .auto

    /// The cache type for `model`: `auto` keeps K/V at the precision of the weights (f32 only for an f32 checkpoint).
    func resolved(for model: LlamaModel) -> KVCacheDType {
        switch kvCacheDType {
        case .f32: .f32
        case .f16: .f16
        case .auto: model.storesF32Weights ? .f32 : .f16
        }
    }
}

/// `--merge-precision auto|f32|q8_0|f16` (ArgumentParser lists the cases and refuses others).
enum MergePrecisionChoice: String, CaseIterable, ExpressibleByArgument {
    case auto, f32, q8_0, f16

    /// What the flag means for `model` as its products run (set them first).
    func resolved(for model: LlamaModel) -> MergePrecision {
        MergePrecision(rawValue: rawValue) ?? model.preferredMergePrecision
    }
}

/// `--policy`: the batching policy of a replica.
struct PolicyOption: ParsableArguments {
    @Option(help: "Batching policy: \(PolicyOption.names).")
    var policy: String = EngineOptions.defaults.policy.kind.rawValue

    /// The policies' names as the flags spell them.
    static var names: String { BatchingPolicyKind.allCases.map(\.rawValue).joined(separator: ", ") }

    /// Parses one policy name; the error names `flag` and lists the choices.
    static func parse(_ name: String, flag: String) throws -> BatchingPolicyKind {
        guard let kind = BatchingPolicyKind(rawValue: name) else { throw ValidationError("unknown \(flag) '\(name)' (\(names))") }
        return kind
    }

    func validate() throws { _ = try Self.parse(policy, flag: "--policy") }

    var kind: BatchingPolicyKind { BatchingPolicyKind(rawValue: policy) ?? EngineOptions.defaults.policy.kind }
}

/// Sampling for `generate`, under OpenAI's names; defaults are `SamplingParams`' own.
struct SamplingOptions: ParsableArguments {
    static let defaults = SamplingParams()

    @Option(name: .customLong("max-tokens"), help: "Tokens to generate at most (default: until end of sequence or 256).")
    var maxTokens: Int = 256
    @Option(help: "Sampling temperature; 0 is greedy.")
    var temperature: Double = Self.defaults.temperature
    @Option(name: .customLong("top-p"), help: "Nucleus sampling mass, in (0, 1].")
    var topP: Double = Self.defaults.topP
    @Option(name: .customLong("top-k"), help: "Sample among the k most likely tokens; 0 = all.")
    var topK: Int = Self.defaults.topK
    @Option(help: "Random seed (default: random).")
    var seed: UInt64?
    @Option(help: "Stop before this string (repeatable).")
    var stop: [String] = []
    @Option(name: .customLong("presence-penalty"), help: "Subtracted once from the logit of every token generated so far, in [-2, 2].")
    var presencePenalty: Double = 0
    @Option(name: .customLong("frequency-penalty"), help: "Subtracted from a token's logit per time it was generated so far, in [-2, 2].")
    var frequencyPenalty: Double = 0

    var params: SamplingParams {
        SamplingParams(temperature: temperature, topP: topP, topK: topK, seed: seed, maxTokens: maxTokens, stop: stop,
                       presencePenalty: presencePenalty, frequencyPenalty: frequencyPenalty)
    }

    /// `SamplingParams.validate`, with the parameters named as the flags spell them.
    func validate() throws {
        // Sums with the prompt's length must not overflow (a trap at --max-tokens 9223372036854775807).
        guard (1...Int(Int32.max)).contains(maxTokens) else { throw ValidationError("--max-tokens must be in 1...\(Int32.max)") }
        do { try params.validate() } catch let e as SamplingError {
            throw ValidationError(e.description.replacingOccurrences(of: "max_tokens", with: "--max-tokens")
                .replacingOccurrences(of: "top_p", with: "--top-p").replacingOccurrences(of: "top_k", with: "--top-k")
                .replacingOccurrences(of: "temperature", with: "--temperature")
                .replacingOccurrences(of: "presence_penalty", with: "--presence-penalty")
                .replacingOccurrences(of: "frequency_penalty", with: "--frequency-penalty"))
        }
    }
}

/// `--api-key` and `--admin-key`, for `serve`, `router` and `cluster`: a flag wins over its environment variable
/// (DLORA_API_KEY, DLORA_ADMIN_KEY); an empty variable counts as none.
struct KeyOptions: ParsableArguments {
    @Option(name: .customLong("api-key"), help: "Bearer key required on /v1/* (default: env DLORA_API_KEY, else none).")
    var apiKey: String?
    @Option(name: .customLong("admin-key"), help: "Bearer key for adapter loading and the control API — /internal/* on a replica, /admin/* on the router, which also uses it to reach its replicas (default: env DLORA_ADMIN_KEY; none disables them).")
    var adminKey: String?

    var resolvedAPIKey: String? { apiKey ?? Self.environment("DLORA_API_KEY") }
    var resolvedAdminKey: String? { adminKey ?? Self.environment("DLORA_ADMIN_KEY") }

    /// An empty key would be required and never matched (every request refused 401).
    func validate() throws {
        if apiKey?.isEmpty == true { throw ValidationError("--api-key is empty (leave it out for no key)") }
        if adminKey?.isEmpty == true { throw ValidationError("--admin-key is empty (leave it out to disable the admin endpoints)") }
    }

    static func environment(_ name: String) -> String? {
        ProcessInfo.processInfo.environment[name].flatMap { $0.isEmpty ? nil : $0 }
    }
}

/// `--matmul-precision auto|f32|bf16|int8`, for every command that runs the engine: the base model's products in f32
/// (the transformers goldens within 1e-3), in bf16 (`LlamaModel.setBF16Products`: twice an FMA's multiply-adds per
/// instruction on AVX-512 BF16, on a quantized checkpoint's own codes; docs/design/core-engine.md) or with int8
/// activations (`LlamaModel.setInt8Products`: a quantized checkpoint's codes times activations quantized per block
/// of 32, llama.cpp's arithmetic, exact integer sums on AVX-512 VNNI or AVX-VNNI). `auto`, the default, picks int8
/// where every matrix is Q4_0, Q4_1 or Q8_0 and the CPU has integer dot products: AVX-512 VNNI (Intel's Sapphire and
/// Emerald Rapids: batch-1 decode 1.7–2.0× f32's, batch 32 1.16–1.20×; Zen 4: from batch 4 up 1.1–1.7× bf16's, prefill
/// 1.2–1.5×, batches 1–2 level) or AVX-VNNI (Alder Lake and later, Sierra Forest; docs/design/core-engine.md); else bf16
/// where it uses every weight exactly and the CPU's VDPBF16PS does at least an FMA's multiply-adds per second (Zen 4:
/// twice; a BF16 checkpoint); else f32.
struct MatmulPrecisionOption: ParsableArguments {
    enum Choice: String, CaseIterable, ExpressibleByArgument {
        case auto, f32, bf16, int8
    }

    @Option(name: .customLong("matmul-precision"),
            help: "The base model's products: f32; bf16 (activations rounded to bf16 per product, sums in f32, on AVX-512 BF16's dot products; Q4_0, Q4_1 and Q8_0 weights keep their codes, used exactly at about the checkpoint's bytes per weight; other weights are rounded to a 2-byte bf16 copy; needs AVX-512 BF16); or int8 (Q4_0, Q4_1 and Q8_0 weights' codes times activations quantized to int8 per block of 32, as llama.cpp computes them, exact integer sums on AVX-512 VNNI or AVX-VNNI; other weights stay f32; a server then holds its LoRA adapters in Q8_0 too, their shrink with int8 activations; needs AVX-512 VNNI, AVX-VNNI, or AVX2, which runs the products' twin, same bits, and keeps adapters as stored). auto: int8 where every weight is Q4_0, Q4_1 or Q8_0 and the CPU has AVX-512 VNNI or AVX-VNNI; else bf16 where every weight is BF16 or one of those codes (used exactly) and the CPU has AVX-512 BF16 whose dot product does at least an f32 FMA's multiply-adds per second (measured at start, ~10 ms); else f32 (on AVX2 without VNNI, int8 is yours to ask for).")
    var matmulPrecision: Choice = .auto

    /// What the flag means for `model` on this CPU. The same rule at every batch: since the fused f32 kernels' rework
    /// of 2026-12-06, f32 products also decode a single sequence faster where VDPBF16PS runs at half the FMA's rate
    /// (batch 1 on the Emerald Rapids VM: bf16/f32 0.73–0.89; docs/design/core-engine.md).
    func resolved(for model: LlamaModel) -> Choice {
        switch matmulPrecision {
        case .f32, .bf16, .int8: matmulPrecision
        case .auto:
            if Kernels.hasInt8Dot && model.weightsHaveInt8Codes { .int8 }
            else if Kernels.bf16ProductsPay && model.weightsExactInBF16Products { .bf16 }
            else { .f32 }
        }
    }

    /// What a server's start line says of the products: bf16 or int8 (and whether its adapters are held in int8,
    /// `adapters`), or why `auto` left them in f32 on a CPU with AVX-512 BF16.
    func note(for model: LlamaModel, adapters: AdapterPrecision = .stored) -> String {
        let int8Adapters = adapters != .stored && !model.int8Products ? ", \(adapters.rawValue) adapters" : ""
        if model.bf16Products { return ", bf16 products" + int8Adapters }
        if model.int8Products {
            switch adapters {
            case .int8: return ", int8 activations and adapters (--matmul-precision f32 for f32 ones)"
            case .int4: return ", int8 activations (--matmul-precision f32 for f32 ones), int4 adapters"
            case .stored: return ", int8 activations (--matmul-precision f32 for f32 ones), adapters as stored"
            }
        }
        if !int8Adapters.isEmpty { return int8Adapters }
        guard matmulPrecision == .auto, Kernels.hasBF16Dot, model.weightsExactInBF16Products else { return "" }
        return String(format: ", f32 products (auto: VDPBF16PS does %.2f× an FMA's multiply-adds per second on this CPU)", Kernels.bf16DotRateRatio)
    }

    /// Sets the model's products as the flag says; an explicit bf16 or int8 on a CPU without the instructions is an
    /// error (their portable loops are far slower than the f32 kernels).
    func apply(to model: LlamaModel) throws {
        switch resolved(for: model) {
        case .bf16:
            guard Kernels.hasBF16Dot else { throw CLIError("--matmul-precision bf16 needs a CPU with AVX-512 BF16, which this one lacks (kernels: \(Kernels.simdPathName))") }
            model.setBF16Products(true)
        case .int8:
            guard Kernels.hasInt8Products else { throw CLIError("--matmul-precision int8 needs a CPU with AVX-512 VNNI or AVX2, which this one lacks (kernels: \(Kernels.simdPathName))") }
            guard model.someWeightsHaveInt8Codes else {
                throw CLIError("--matmul-precision int8 needs Q4_0, Q4_1 or Q8_0 matrices, and this checkpoint has none (its products stay f32: use --matmul-precision f32)")
            }
            model.setInt8Products(true)
        case .auto, .f32: return
        }
    }

    /// The products' name in benchmark headers.
    static func name(of model: LlamaModel) -> String { model.bf16Products ? "bf16" : model.int8Products ? "int8" : "f32" }
}

/// `--adapter-precision auto|stored|int8|int4`, for the commands that load adapters to serve them (serve, generate): how
/// they are held (`AdapterPrecision`). `auto`, the default, follows the products: int8 (Q8_0, the shrink with int8
/// activations, about half a bf16 adapter's bytes per step; docs/design/lora-kernels.md "int8 adapters") beside int8
/// products, else as the file stores them. `stored` keeps the file's values and the exact arithmetic under any products;
/// `int8` asks for int8 adapters under any products (AVX-512 VNNI or AVX-VNNI only); `int4` for Q4_0 ones (the same kernels,
/// about 0.55× int8's bytes per step, and more of the adapter's effect lost: docs/design/lora-kernels.md "int4 adapters").
struct AdapterPrecisionOption: ParsableArguments {
    enum Choice: String, CaseIterable, ExpressibleByArgument {
        case auto, stored, int8, int4
    }

    @Option(name: .customLong("adapter-precision"),
            help: "How LoRA adapters are held: stored (as the file holds them: F16 and BF16 stay so, else f32; the exact arithmetic), or int8 (Q8_0 codes, the shrink with int8 activations and the expand on integer dot products: about half a bf16 adapter's bytes per step; needs AVX-512 VNNI or AVX-VNNI), or int4 (Q4_0 codes, the same kernels: about 0.55× int8's bytes, at a larger accuracy cost). auto: int8 beside int8 products (--matmul-precision), else stored.")
    var adapterPrecision: Choice = .auto

    /// The precision for `model` (whose products are set): an explicit int8 on a CPU without VNNI is an error.
    func resolved(for model: LlamaModel) throws -> AdapterPrecision {
        switch adapterPrecision {
        case .auto: return .matching(model)
        case .stored: return .stored
        case .int8, .int4:
            guard Kernels.hasInt8Dot else {
                throw CLIError("--adapter-precision \(adapterPrecision.rawValue) needs a CPU with AVX-512 VNNI or AVX-VNNI, which this one lacks (kernels: \(Kernels.simdPathName))")
            }
            return adapterPrecision == .int8 ? .int8 : .int4
        }
    }
}

/// A comma-separated list of integers in `range` ("1,8, 32"; empty entries skipped); nil when it has none or any entry is
/// not such an integer (an entry that is not a number is an error, never dropped).
func intList(_ s: String, in range: ClosedRange<Int>) -> [Int]? {
    var out: [Int] = []
    for part in s.split(separator: ",") {
        guard let v = Int(part.trimmingCharacters(in: .whitespaces)), range.contains(v) else { return nil }
        out.append(v)
    }
    return out.isEmpty ? nil : out
}
