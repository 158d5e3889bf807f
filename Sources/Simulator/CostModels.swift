import Scheduling

/// What a simulated replica's time is made of. Everything the simulated engine does takes the seconds a
/// `ReplicaCostModel` says: the forward pass of one iteration, merging and unmerging an adapter, making an
/// adapter resident, swapping K/V to and from host memory, and moving K/V to another replica. The models and
/// the sources of their numbers are in docs/design/simulator.md; a measured profile can replace any of them by
/// conforming to this protocol (nothing else in the simulator changes).
public protocol ReplicaCostModel: Sendable {
    /// A short name for tables (`cpu`, `a800-7b`, …).
    var name: String { get }
    /// The replica's memory and batch limits.
    var shape: ReplicaShape { get }
    /// The step-cost profile the replica's batching policy starts from (it refreshes it online from the
    /// seconds the simulated engine reports, as the real one does).
    var schedulerPrior: StepCostModel { get }
    /// The scheduler's description of an adapter of `rank` (bytes, LoRA multiply-adds per token, merge size).
    func adapterProfile(key: Int, rank: Int) -> AdapterProfile
    /// The scheduler's switch-cost prior on this hardware until it has timed a merge; by default `SwitchPrior.cpu`.
    var switchPrior: SwitchPrior { get }
    /// Seconds of one iteration's forward pass.
    func stepSeconds(_ step: StepShape) -> Double
    func mergeSeconds(_ adapter: AdapterProfile) -> Double
    func unmergeSeconds(_ adapter: AdapterProfile) -> Double
    /// Making an adapter of `bytes` resident (host → device).
    func adapterLoadSeconds(bytes: Int) -> Double
    /// Copying `bytes` of K/V between device and host memory (either way).
    func swapSeconds(bytes: Int) -> Double
    /// Copying `bytes` of K/V to another replica.
    func transferSeconds(bytes: Int) -> Double
    /// The adapter load time a replica of this kind reports in its status (`ReplicaLoad.defaultAdapterLoadSeconds`,
    /// what dispatch adds for a replica where the adapter is not resident). By default the modelled load time; a
    /// model of a real server reports what that server reports, whatever the load takes.
    func reportedAdapterLoadSeconds(bytes: Int) -> Double
}

extension ReplicaCostModel {
    public var switchPrior: SwitchPrior { .cpu }
    public func reportedAdapterLoadSeconds(bytes: Int) -> Double { adapterLoadSeconds(bytes: bytes) }
}

/// A replica's memory and batch limits (what `SchedulerConfig` and the engine configuration hold).
public struct ReplicaShape: Sendable, Equatable {
    public var numBlocks: Int
    public var blockSize: Int
    public var bytesPerBlock: Int
    public var contextLimit: Int
    public var hostSwapBytes: Int
    /// Distinct adapters per unmerged iteration (LoRA slots, GIE's max_lora).
    public var adapterSlots: Int
    public var maxBatchSequences: Int
    public var maxBatchTokens: Int

    public init(numBlocks: Int, blockSize: Int = 16, bytesPerBlock: Int, contextLimit: Int, hostSwapBytes: Int,
                adapterSlots: Int, maxBatchSequences: Int, maxBatchTokens: Int) {
        self.numBlocks = numBlocks
        self.blockSize = blockSize
        self.bytesPerBlock = bytesPerBlock
        self.contextLimit = contextLimit
        self.hostSwapBytes = hostSwapBytes
        self.adapterSlots = adapterSlots
        self.maxBatchSequences = maxBatchSequences
        self.maxBatchTokens = maxBatchTokens
    }

    /// The scheduler configuration of a replica of this shape running `policy`.
    public func schedulerConfig(policy kind: BatchingPolicyKind, costs: StepCostModel) -> SchedulerConfig {
        var p = BatchPolicyConfig(kind: kind)
        p.maxBatchTokens = maxBatchTokens
        p.maxBatchSequences = maxBatchSequences
        p.maxAdapters = max(1, adapterSlots)
        p.costs = costs
        var c = SchedulerConfig(numBlocks: numBlocks, blockSize: blockSize, bytesPerBlock: bytesPerBlock,
                                contextLimit: min(contextLimit, numBlocks * blockSize), policy: p)
        c.hostSwapLimitBytes = hostSwapBytes
        return c
    }
}

/// One iteration as the cost model sees it.
public struct StepShape: Sendable, Equatable {
    public var mode: ExecutionMode
    public var sequences: Int
    /// Tokens computed (decodes count one each).
    public var tokens: Int
    /// Tokens of prompt chunks (runs of more than one token).
    public var prefillTokens: Int
    /// Σ over runs of the positions attended (start + tokens): the K/V read by attention.
    public var contextTokens: Int
    /// The same sum over decode runs only (one token each): what a decode step's attention reads.
    public var decodeContextTokens: Int
    /// LoRA slots of an unmerged iteration.
    public var distinctAdapters: Int
    /// Σ tokens × adapter size relative to the model's reference adapter (unmerged iterations).
    public var loraTokens: Double

    public init(mode: ExecutionMode, sequences: Int, tokens: Int, prefillTokens: Int, contextTokens: Int, decodeContextTokens: Int = 0,
                distinctAdapters: Int, loraTokens: Double) {
        self.mode = mode
        self.sequences = sequences
        self.tokens = tokens
        self.prefillTokens = prefillTokens
        self.contextTokens = contextTokens
        self.decodeContextTokens = decodeContextTokens
        self.distinctAdapters = distinctAdapters
        self.loraTokens = loraTokens
    }

    public var decodeTokens: Int { tokens - prefillTokens }
}

// MARK: - A fixed step time (closed-form checks)

/// Every iteration takes `stepSeconds`; merges, loads, swaps and transfers take no time. For tests whose
/// answer is derived by hand (docs/design/simulator.md, "A closed-form case").
public struct FixedStepCostModel: ReplicaCostModel {
    public var name = "fixed"
    public var shape: ReplicaShape
    public var seconds: Double

    public init(stepSeconds: Double, shape: ReplicaShape) {
        seconds = stepSeconds
        self.shape = shape
    }

    public var schedulerPrior: StepCostModel {
        StepCostModel(fixedSeconds: seconds, perTokenSeconds: 0, perLoRATokenSeconds: 0, perAdapterSeconds: 0, switchSeconds: 0)
    }
    public func adapterProfile(key: Int, rank: Int) -> AdapterProfile {
        CPUCostModel.smolLM2Adapter(key: key, rank: rank)
    }
    public func stepSeconds(_ step: StepShape) -> Double { seconds }
    public func mergeSeconds(_ adapter: AdapterProfile) -> Double { 0 }
    public func unmergeSeconds(_ adapter: AdapterProfile) -> Double { 0 }
    public func adapterLoadSeconds(bytes: Int) -> Double { 0 }
    public func swapSeconds(bytes: Int) -> Double { 0 }
    public func transferSeconds(bytes: Int) -> Double { 0 }
}

// MARK: - This CPU (SmolLM2-135M Q4_1, 2 cores)

/// The reference machine's replica, fitted from the engine's own measurements (docs/design/simulator.md quotes
/// the rows): bench/results/core.md (decode step vs batch, prefill tok/s, streamed memory bandwidth) and
/// bench/results/lora.md (q/v adapters: unmerged overhead vs batch and distinct adapters, merged overhead,
/// merge/unmerge times, adapter sizes).
public struct CPUCostModel: ReplicaCostModel {
    public var name = "cpu"
    public var shape: ReplicaShape
    /// Decode: fixed + per sequence (core.md: 8.79 ms at batch 1, 76.79 ms at batch 32 → 6.6 ms + 2.19 ms/seq).
    public var fixedSeconds = 0.0066
    public var perDecodeSeconds = 0.00219
    /// Prefill: core.md 706.1 tok/s at batch 32 (686.4 at batch 1) → 1.42 ms per prompt token.
    public var perPrefillTokenSeconds = 0.00142
    /// Attention's growth with context: seconds per position a decode run attends (its K/V read, 46 KB per
    /// position). 0 by default: core.md's rows ran at 129–192 positions, so their per-sequence cost includes that
    /// context; a measured profile (bench/simulator-validate.sh: the least-squares growth of bench core's decode
    /// step over one run's positions) sets it and takes its share out of `perDecodeSeconds`.
    public var perContextTokenSeconds = 0.0
    /// Unmerged LoRA path (lora.md q/v rank 16, batch 32: +0.99 ms with 1 adapter, +5.94 ms with 32):
    /// 0.026 ms per reference-adapter token + 0.16 ms per distinct adapter.
    public var perLoRATokenSeconds = 0.000026
    public var perAdapterSeconds = 0.00016
    /// Merged: dense f32 copies of the targeted matrices replace Q4_1 ones (lora.md q/v rank 16 merged
    /// overhead +1.51 / +1.60 / +1.06 ms at batch 1 / 8 / 32 → 1.4 ms). Signed: a merged iteration's price less an
    /// unmerged one's base price (fixed, per token, per position). A fit on served iterations, whose fixed term also
    /// takes in what the LoRA path costs per iteration beyond the per-token and per-adapter terms, can find it
    /// negative: a merged iteration skips that path (`dlora simulate --cost-profile` keeps fixed + it ≥ 0).
    public var mergedExtraSeconds = 0.0014
    /// An iteration that computes one token (one sequence's decode, nothing else): signed, on top of the fixed and
    /// per-sequence terms. 0 by default; served step logs on the AVX2 machine show one-sequence decodes ~3 ms
    /// below the line through two and more (the one-token matmul path), which a fit then gives here.
    public var singleTokenSeconds = 0.0
    /// Merge: lora.md q/v rank 16, 10.64 ms for 13.3 M target elements → 0.8 ns per element; unmerge 0.006 ms.
    public var mergeSecondsPerElement = 0.8e-9
    public var unmergeSecondsFixed = 0.000006
    /// Host memory streamed (core.md: 32.3 GB/s, 2 threads): adapter loads and swaps are copies in RAM.
    public var memoryBytesPerSecond = 32.3e9
    /// Per adapter load, on top of the copy: the first load reads and validates the PEFT files, a later one
    /// converts the host copy into the slot (0 by default; bench/simulator-validate.sh measures it).
    public var adapterLoadFixedSeconds = 0.0
    /// Not a replica cost: from a request's arrival at the server to its arrival in the engine's queue (HTTP,
    /// tokenization, the relay), carried by a measured profile for `dlora simulate` to apply as
    /// `SimulationConfig.requestOverheadSeconds` (0 by default).
    public var requestOverheadSeconds = 0.0
    /// Not a replica cost either: reading an adapter's files into host memory on the first request for it (fixed,
    /// and optionally a byte rate), carried by a measured profile for `dlora simulate` to apply as
    /// `SimulationConfig.adapterFiles` (nil by default: no file loads modelled).
    public var adapterFileLoadSeconds: Double?
    public var adapterFileBytesPerSecond: Double?
    /// The two as a profile sets them (`adapter_file_load_seconds` present in the profile turns file loads on).
    var adapterFileLoadSecondsSet: Double {
        get { adapterFileLoadSeconds ?? 0 }
        set { adapterFileLoadSeconds = newValue }
    }
    var adapterFileBytesPerSecondSet: Double {
        get { adapterFileBytesPerSecond ?? .infinity }
        set { adapterFileBytesPerSecond = newValue }
    }
    /// Replica-to-replica K/V over loopback HTTP (f32 frames): not measured yet; an assumption.
    public var transferBytesPerSecond = 1e9

    /// The coefficients a measured profile may replace (`dlora simulate --cost-profile`), by snake_case name.
    public static var profileKeys: [String: WritableKeyPath<CPUCostModel, Double>] {
        ["fixed_seconds": \.fixedSeconds, "per_decode_seconds": \.perDecodeSeconds, "per_prefill_token_seconds": \.perPrefillTokenSeconds,
         "per_context_token_seconds": \.perContextTokenSeconds,
         "per_lora_token_seconds": \.perLoRATokenSeconds, "per_adapter_seconds": \.perAdapterSeconds, "merged_extra_seconds": \.mergedExtraSeconds,
         "single_token_seconds": \.singleTokenSeconds,
         "merge_seconds_per_element": \.mergeSecondsPerElement, "unmerge_seconds_fixed": \.unmergeSecondsFixed,
         "memory_bytes_per_second": \.memoryBytesPerSecond, "transfer_bytes_per_second": \.transferBytesPerSecond,
         "adapter_load_seconds": \.adapterLoadFixedSeconds, "request_overhead_seconds": \.requestOverheadSeconds,
         "adapter_file_load_seconds": \.adapterFileLoadSecondsSet, "adapter_file_bytes_per_second": \.adapterFileBytesPerSecondSet]
    }

    /// The profile keys that may be negative (as long as `fixedSeconds` covers their sum: no iteration priced below
    /// zero); the others are costs or bandwidths, ≥ 0.
    public static let signedProfileKeys: Set<String> = ["merged_extra_seconds", "single_token_seconds"]

    /// SmolLM2's K/V per token: 30 layers × 3 KV heads × 64 × (K, V) × 4 bytes (f32) = 46,080 bytes.
    public static let kvBytesPerToken = 30 * 3 * 64 * 2 * 4

    /// `kvCacheMegabytes` of KV cache (the engine's default: 1024), vLLM-like limits of `dlora serve`. `kvElementBytes`:
    /// 4 for an f32 cache (the fitted coefficients' and the validation runs'), 2 for f16 (`dlora serve`'s default on
    /// this model since 2026-12-05: twice the blocks in the same megabytes).
    public init(kvCacheMegabytes: Int = 1024, adapterSlots: Int = 32, maxBatchSequences: Int = 256, maxBatchTokens: Int = 512,
                kvElementBytes: Int = 4) {
        precondition(kvElementBytes == 4 || kvElementBytes == 2, "CPUCostModel: K/V elements of 4 (f32) or 2 (f16) bytes")
        let bytesPerBlock = 16 * Self.kvBytesPerToken / 4 * kvElementBytes
        shape = ReplicaShape(numBlocks: max(4, (kvCacheMegabytes << 20) / bytesPerBlock), bytesPerBlock: bytesPerBlock,
                             contextLimit: 8192, hostSwapBytes: 1 << 30, adapterSlots: adapterSlots,
                             maxBatchSequences: maxBatchSequences, maxBatchTokens: maxBatchTokens)
    }

    /// The scheduler's own profile (`StepCostModel.smolLM2Reference`), as `dlora serve` starts it.
    public var schedulerPrior: StepCostModel { .smolLM2Reference }

    /// A q/v adapter on SmolLM2 (30 layers; q: 576 → 576, v: 576 → 192), rank padded to 16, bf16.
    public static func smolLM2Adapter(key: Int, rank: Int) -> AdapterProfile {
        let r = (max(1, rank) + 15) / 16 * 16
        let perToken = 30 * r * ((576 + 576) + (576 + 192))
        return AdapterProfile(key: key, bytes: perToken * 2, loraParameters: perToken, mergeElements: 30 * (576 * 576 + 576 * 192))
    }

    public func adapterProfile(key: Int, rank: Int) -> AdapterProfile { Self.smolLM2Adapter(key: key, rank: rank) }

    public func stepSeconds(_ s: StepShape) -> Double {
        var t = fixedSeconds + perDecodeSeconds * Double(s.decodeTokens) + perPrefillTokenSeconds * Double(s.prefillTokens)
            + perContextTokenSeconds * Double(s.decodeContextTokens)
        if s.tokens == 1 { t += singleTokenSeconds }
        switch s.mode {
        case .merged: t += mergedExtraSeconds
        case .unmerged: t += perLoRATokenSeconds * s.loraTokens + perAdapterSeconds * Double(s.distinctAdapters)
        }
        return t
    }
    /// What a dLoRA replica measures on itself at start (`dlora serve` runs `LlamaModel.measureSwitchCost`): this
    /// model's own merge per element and unmerge. No rank or allocation term: the model prices neither.
    public var switchPrior: SwitchPrior {
        SwitchPrior(mergeSecondsPerElement: mergeSecondsPerElement, unmergeSeconds: unmergeSecondsFixed)
    }
    public func mergeSeconds(_ a: AdapterProfile) -> Double { Double(a.mergeElements) * mergeSecondsPerElement }
    public func unmergeSeconds(_ a: AdapterProfile) -> Double { unmergeSecondsFixed }
    public func adapterLoadSeconds(bytes: Int) -> Double { adapterLoadFixedSeconds + Double(bytes) / memoryBytesPerSecond }
    /// `dlora serve` reports a fixed 1 ms for an adapter in its host cache (`AdapterResidency`), which its router
    /// weighs; the load itself is modelled above. (Before 2026-12-05 the simulated status reported the modelled
    /// ~0.06 ms, so the simulated dispatch weighed a load 16× lighter than the real router did.)
    public func reportedAdapterLoadSeconds(bytes: Int) -> Double { AdapterResidency.reportedLoadSeconds }
    public func swapSeconds(bytes: Int) -> Double { Double(bytes) / memoryBytesPerSecond }
    public func transferSeconds(bytes: Int) -> Double { Double(bytes) / transferBytesPerSecond }
}
