import Kernels

/// Scratch memory of one forward pass, sized for up to `capacity` tokens and grown on demand, so the
/// step loop does not allocate once warm.
public final class ForwardWorkspace: @unchecked Sendable {
    private let config: ModelConfig
    public private(set) var capacity = 0
    private(set) var x = Buffer(floats: 0)        // [T][hidden] residual stream
    private(set) var xn = Buffer(floats: 0)       // [T][hidden] normalised
    private(set) var qkv = Buffer(floats: 0)      // [T][q + 2 kv]
    private(set) var attn = Buffer(floats: 0)     // [T][q]
    private(set) var gateUp = Buffer(floats: 0)   // [T][2 ffn]
    private(set) var act = Buffer(floats: 0)      // [T][ffn]
    private(set) var cos = Buffer(floats: 0)      // [T][headDim / 2]
    private(set) var sin = Buffer(floats: 0)
    private(set) var positions = Buffer(byteCount: 0)
    private(set) var slots = Buffer(byteCount: 0)
    private(set) var tableOffsets = Buffer(byteCount: 0)
    private(set) var blockTables = Buffer(byteCount: 0)
    private(set) var blockTableCapacity = 0
    /// LoRA: runs of tokens sharing an adapter slot and scale, and the shrink/expand intermediates.
    var segments: [LoRASegment] = []
    let loraBatch = Kernels.LoRABatch()
    /// The adapter weights the next LoRA call reads, named to the base product before it (`loraPrefetch`).
    let prefetch = Kernels.PrefetchPlan()
    /// MoLE: whether any segment of this pass is gated; the gates in use, computed at the attention input, a row
    /// of `MoLEGating.maxExperts` per token.
    var gated = false
    private(set) var gates = Buffer(floats: 0)
    /// The gates computed at the MLP's input (layer granularity), likewise.
    private(set) var mlpGates = Buffer(floats: 0)
    /// Per adapter slot, over the last forward pass that had a gated segment (only slots holding a MoLE
    /// composition then are current): the sum over gated tokens and gates of the gate's entropy (nats), and the
    /// number of (token, gate) pairs summed.
    public private(set) var gateEntropy: [Double] = []
    public private(set) var gateCount: [Int] = []
    /// Per adapter slot, `MoLEGating.maxExperts` sums: each expert's gate weight summed over the same gates.
    public private(set) var gateSums: [Double] = []

    func resetGateStatistics(slots: Int) {
        gateEntropy.removeAll(keepingCapacity: true)
        gateCount.removeAll(keepingCapacity: true)
        gateSums.removeAll(keepingCapacity: true)
        gateEntropy.append(contentsOf: repeatElement(0, count: slots))
        gateCount.append(contentsOf: repeatElement(0, count: slots))
        gateSums.append(contentsOf: repeatElement(0, count: slots * MoLEGating.maxExperts))
    }

    func addGateStatistics(slot: Int, entropy: Double, tokens: Int) {
        gateEntropy[slot] += entropy
        gateCount[slot] += tokens
    }

    func addGateWeight(slot: Int, expert: Int, _ g: Float) {
        gateSums[slot * MoLEGating.maxExperts + expert] += Double(g)
    }

    public init(config: ModelConfig, capacity: Int = 64) {
        self.config = config
        reserve(tokens: capacity)
    }

    /// Makes room for `tokens` tokens (a no-op when there already is).
    public func reserve(tokens: Int) {
        guard tokens > capacity else { return }
        let c = config
        let qDim = c.numHeads * c.headDim, kvDim = c.numKVHeads * c.headDim
        x = Buffer(floats: tokens * c.hiddenSize)
        xn = Buffer(floats: tokens * c.hiddenSize)
        qkv = Buffer(floats: tokens * (qDim + 2 * kvDim))
        attn = Buffer(floats: tokens * qDim)
        gateUp = Buffer(floats: tokens * 2 * c.intermediateSize)
        act = Buffer(floats: tokens * c.intermediateSize)
        cos = Buffer(floats: tokens * c.headDim / 2)
        sin = Buffer(floats: tokens * c.headDim / 2)
        positions = Buffer(byteCount: tokens * 4)
        slots = Buffer(byteCount: tokens * 8)
        tableOffsets = Buffer(byteCount: tokens * 8)
        gates = Buffer(floats: tokens * MoLEGating.maxExperts)
        mlpGates = Buffer(floats: tokens * MoLEGating.maxExperts)
        capacity = tokens
    }

    func reserve(blockTableEntries n: Int) {
        guard n > blockTableCapacity else { return }
        blockTableCapacity = max(n, blockTableCapacity * 2)
        blockTables = Buffer(byteCount: blockTableCapacity * 4)
    }
}
