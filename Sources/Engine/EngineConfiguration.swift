import Kernels
import Models
import Scheduling

/// Everything that sizes and steers one replica's engine, with its defaults in one place. `dlora serve`,
/// `generate` and `bench` fill it from their shared options; tests set the fields they care about.
public struct EngineConfiguration: Sendable, Equatable {
    /// KV-cache blocks: the one budget that KV and resident adapters share. `serve` derives it from
    /// `--kv-cache-mb` (default 1024 MiB ≈ 1,456 blocks of 16 tokens on SmolLM2 with an f32 cache, 2,912 with f16).
    public var kvBlocks: Int
    /// Tokens per KV block.
    public var blockSize = 16
    /// Tokens per iteration: every decode counts one, prompt chunks fill the rest.
    public var maxBatchTokens = 512
    /// Sequences per iteration (the paper's batch size B).
    public var maxBatchSequences = 256
    /// Distinct adapters one unmerged iteration may hold (LoRA slots).
    public var adapterSlots = 32
    /// What the KV cache stores: f32, or f16 (half the bytes per block, so twice the blocks in the same
    /// memory; `serve` picks it with `--kv-cache-dtype`).
    public var kvCacheDType: KVCacheDType = .f32
    /// Host memory for swapped-out KV; beyond it, preempted requests recompute.
    public var hostSwapBytes = 1 << 30
    /// The batching policy and its tuning (credits, amortization horizon, cost profile).
    public var policy = BatchPolicyConfig(kind: .dlora)
    /// Where the scheduler's switch-cost estimates start until it times the replica's own merges: nil keeps
    /// `SwitchPrior.cpu`, one CPU's figures for a Q4_1 base. `serve` and `bench replica` measure it on the loaded
    /// model for the dLoRA policy (`SwitchPrior(measured:)`).
    public var switchPrior: SwitchPrior?

    public init(kvBlocks: Int) { self.kvBlocks = kvBlocks }

    /// The KV budget `serve` and `bench replica` size `kvBlocks` from when `--kv-cache-mb` is not given.
    public static let defaultKVCacheMegabytes = 1024

    /// KV blocks that `megabytes` of KV cache hold for a model (at least 4).
    public static func kvBlocks(megabytes: Int, bytesPerBlock: Int) -> Int { max(4, (megabytes << 20) / bytesPerBlock) }

    /// Bytes one KV block of `blockSize` positions takes for `model` (all layers, K and V) with a cache of `dtype`:
    /// the unit `kvBlocks(megabytes:bytesPerBlock:)` divides by and an adapter's share of the budget is counted in.
    public static func bytesPerBlock(_ model: ModelConfig, blockSize: Int, dtype: KVCacheDType) -> Int {
        PagedKVStorage.bytesPerBlock(numLayers: model.numLayers, blockSize: blockSize, numKVHeads: model.numKVHeads,
                                     headDim: model.headDim, dtype: dtype)
    }

    /// KV blocks that hold `tokens` positions.
    public static func kvBlocks(tokens: Int, blockSize: Int = 16) -> Int { (tokens + blockSize - 1) / blockSize }

    /// The scheduler's view of this configuration for a model with `bytesPerBlock` and `contextLimit`.
    func scheduler(bytesPerBlock: Int, contextLimit: Int) -> SchedulerConfig {
        var p = policy
        p.maxBatchTokens = maxBatchTokens
        p.maxBatchSequences = maxBatchSequences
        p.maxAdapters = max(1, adapterSlots)
        var c = SchedulerConfig(numBlocks: kvBlocks, blockSize: blockSize, bytesPerBlock: bytesPerBlock,
                                contextLimit: min(contextLimit, kvBlocks * blockSize), policy: p)
        c.hostSwapLimitBytes = hostSwapBytes
        if let switchPrior, switchPrior.isValid { c.switchPrior = switchPrior }
        return c
    }
}

extension SwitchPrior {
    /// The figures `LlamaModel.measureSwitchCost` timed on a model.
    public init(measured c: SwitchCost) {
        self.init(mergeSecondsPerElement: c.secondsPerElement, mergeSecondsPerMultiplyAdd: c.secondsPerMultiplyAdd,
                  allocationSecondsPerElement: c.allocationSecondsPerElement, unmergeSeconds: c.unmergeSeconds)
    }
}
