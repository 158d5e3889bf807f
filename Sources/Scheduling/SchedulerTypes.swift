/// The values the scheduler takes and gives: its configuration, one iteration's output (runs and actions),
/// what the engine reports back, counters, and what it needs to know about an adapter.

public struct SchedulerConfig: Equatable, Sendable {
    /// KV-cache blocks in the one budget (shared with resident adapters).
    public var numBlocks: Int
    /// Tokens per block.
    public var blockSize = 16
    /// Bytes of one block (K and V, every layer): the unit adapters are charged in and swaps are counted in.
    public var bytesPerBlock: Int
    /// Host memory for swapped-out KV; beyond it, preempted requests recompute.
    public var hostSwapLimitBytes = 1 << 30
    /// The model's context (positions).
    public var contextLimit: Int
    /// The batching policy and its budgets (tokens, sequences, LoRA slots per iteration).
    public var policy = BatchPolicyConfig()
    /// Where the switch-cost estimates start, until the engine times a merge and an unmerge.
    public var switchPrior = SwitchPrior.cpu

    public init(numBlocks: Int, blockSize: Int = 16, bytesPerBlock: Int, contextLimit: Int, policy: BatchPolicyConfig = BatchPolicyConfig()) {
        self.numBlocks = numBlocks
        self.blockSize = blockSize
        self.bytesPerBlock = bytesPerBlock
        self.contextLimit = contextLimit
        self.policy = policy
    }

    /// Blocks' worth of the budget an adapter of `bytes` takes while resident (0 for the base model).
    public func adapterBlocks(bytes: Int) -> Int {
        bytes <= 0 ? 0 : max(1, (bytes + bytesPerBlock - 1) / bytesPerBlock)
    }

    /// Why a request of `promptTokens` cannot be admitted beside its adapter, or nil when it can.
    public func admissionProblem(promptTokens: Int, adapterBytes: Int) -> String? {
        guard promptTokens >= 1 else { return "the prompt is empty" }
        guard promptTokens < contextLimit else {
            return "the prompt has \(promptTokens) tokens; the context holds \(contextLimit)"
        }
        let blocks = adapterBlocks(bytes: adapterBytes)
        guard promptTokens < lengthLimit(adapterBytes: adapterBytes) else {
            return "the adapter takes \(blocks) of the \(numBlocks) KV blocks; the \(promptTokens)-token prompt does not fit beside it"
        }
        return nil
    }

    /// The longest a request may grow beside an adapter of `adapterBytes`: the context, and what the budget
    /// leaves once the adapter is resident.
    public func lengthLimit(adapterBytes: Int) -> Int {
        min(contextLimit, max(0, numBlocks - adapterBlocks(bytes: adapterBytes)) * blockSize)
    }
}

/// What the engine must do before (or instead of) the iteration's forward pass, in order.
public enum SchedulerAction: Equatable, Sendable {
    /// The adapter became resident (its blocks came out of the budget).
    case loadAdapter(Int)
    /// The adapter is resident no more.
    case evictAdapter(Int)
    /// The scheduler forgot the adapter (no requests, not resident): its weights may be dropped.
    case dropAdapter(Int)
    /// Copy these blocks' K/V (positions 0 ..< computed of the request) to host memory; the blocks are reused
    /// after this action.
    case swapOut(RequestID, blocks: [Int32])
    /// Copy the request's host K/V into these blocks and drop the host copy.
    case swapIn(RequestID, blocks: [Int32])
    /// Drop the request's host K/V without copying it back (it finished or was cancelled while swapped).
    case dropSwap(RequestID)
    /// Fold the adapter into the base weights.
    case merge(Int)
    /// Restore the base weights.
    case unmerge
    /// The request left the scheduler (finished or cancelled); everything it held is free.
    case free(RequestID, FinishReason)
}

/// One request's part of an iteration.
public struct ScheduledRun: Equatable, Sendable {
    public let request: RequestID
    public let adapter: Int
    /// The first position computed (tokens before it are in the KV cache).
    public let start: Int
    public let tokens: Int
    /// Covers positions 0 ..< start + tokens.
    public let blockTable: [Int32]
    /// The run completes the request's pending tokens: the engine samples its next token.
    public let samples: Bool
    /// The LoRA slot of its adapter in an unmerged iteration; -1 for the base model or a merged iteration.
    public let loraSlot: Int32
}

/// One iteration, as values.
public struct SchedulerOutput: Equatable, Sendable {
    public let step: Int
    public let mode: ExecutionMode
    /// In execution order: one LoRA segment per adapter (runs of a slot side by side).
    public let runs: [ScheduledRun]
    /// To carry out before the forward pass, in order.
    public let actions: [SchedulerAction]
    /// Adapter key per LoRA slot of an unmerged iteration.
    public let loraSlots: [Int]
    /// Requests the policy proposed that memory could not hold this iteration (they wait, and their adapters'
    /// credits grow: only executed runs count as served).
    public var deferred: [RequestID] = []
    public var tokens: Int { runs.reduce(0) { $0 + $1.tokens } }
}

/// What the engine sampled for a run that sampled.
public struct SampledToken: Equatable, Sendable {
    public let request: RequestID
    /// The token ends the sequence (end-of-sequence, or a stop condition the engine saw).
    public let endsSequence: Bool
    /// Sampling failed (non-finite logits): the request ends with `.error` and no token was appended.
    public let failed: Bool

    public init(request: RequestID, endsSequence: Bool = false, failed: Bool = false) {
        self.request = request
        self.endsSequence = endsSequence
        self.failed = failed
    }
}

/// What the engine measured while executing an iteration.
public struct ExecutionReport: Equatable, Sendable {
    public var forwardSeconds: Double
    /// Seconds of the merge this iteration asked for; nil when there was none, or when it paid a one-time
    /// cost (first allocation of the merge workspace) that says nothing about the next switch.
    public var mergeSeconds: Double?
    public var unmergeSeconds: Double?

    public init(forwardSeconds: Double, mergeSeconds: Double? = nil, unmergeSeconds: Double? = nil) {
        self.forwardSeconds = forwardSeconds
        self.mergeSeconds = mergeSeconds
        self.unmergeSeconds = unmergeSeconds
    }
}

/// A request's progress after an iteration: it sampled a token (or failed), and maybe finished.
public struct RequestOutput: Equatable, Sendable {
    public let request: RequestID
    public let finish: FinishReason?
}

/// Cumulative counters.
public struct SchedulerStats: Equatable, Sendable {
    public var steps = 0
    public var mergedSteps = 0
    public var unmergedSteps = 0
    public var modeSwitches = 0
    public var preemptions = 0
    public var swapOuts = 0
    public var swapIns = 0
    public var recomputes = 0
    public var adapterLoads = 0
    public var adapterEvictions = 0
    public var promptTokens = 0
    public var generatedTokens = 0
    public init() {}
}

/// What the scheduler needs to know about an adapter to budget and cost it.
public struct AdapterProfile: Equatable, Sendable {
    public let key: Int
    /// Bytes of its weights (charged against the budget while resident).
    public let bytes: Int
    /// Its LoRA path's multiply-adds per token (padded rank × (in + out), summed over modules).
    public let loraParameters: Int
    /// Elements of the base matrices it targets: what a merge rewrites.
    public let mergeElements: Int
    /// Multiply-adds of a merge's update (Σ over its modules of out × in × padded rank; 0 where the cost model
    /// prices merges by elements alone).
    public let mergeMultiplyAdds: Int
    /// False for an adapter that cannot be folded into the base weights (a MoLE composition, whose mix of
    /// experts changes per token): its requests always run unmerged.
    public let mergeable: Bool

    public init(key: Int, bytes: Int, loraParameters: Int, mergeElements: Int, mergeMultiplyAdds: Int = 0, mergeable: Bool = true) {
        precondition(key != Request.base)
        self.key = key
        self.bytes = bytes
        self.loraParameters = loraParameters
        self.mergeElements = mergeElements
        self.mergeMultiplyAdds = mergeMultiplyAdds
        self.mergeable = mergeable
    }
}

public struct SchedulerError: Error, CustomStringConvertible, Equatable, Sendable {
    public let description: String
    public init(_ message: String) { description = message }
}
