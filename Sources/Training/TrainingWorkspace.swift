import Kernels
import Models

// Shapes: B sequences of T positions, N = B·T rows; H = hiddenSize, nH/nKV heads of D, F = intermediateSize,
// Q = nH·D, KV = nKV·D, QKV = Q + 2·KV, r = the LoRA rank, V = vocabSize, M = rows with a label.

/// What the forward pass keeps for the backward, per block, and the backward's scratch: allocated for the
/// largest batch seen, reused after that (a training step allocates nothing once warm).
final class TrainingWorkspace {
    let config: ModelConfig
    let rank: Int
    private(set) var rowCapacity = 0
    private(set) var probsCapacity = 0
    private(set) var labeledCapacity = 0

    /// One block's saved activations.
    final class Block {
        var x = Buffer(floats: 0)          // (N, H) the block's input (residual stream)
        var rstd1 = Buffer(floats: 0)      // (N)
        var xn1 = Buffer(floats: 0)        // (N, H) attention's normalised input
        var qkv = Buffer(floats: 0)        // (N, QKV) q, k after RoPE; v
        var probs = Buffer(floats: 0)      // (B, nH, T, T) attention probabilities
        var attn = Buffer(floats: 0)       // (N, Q) attention output before Wo
        var h = Buffer(floats: 0)          // (N, H) residual after attention
        var rstd2 = Buffer(floats: 0)      // (N)
        var xn2 = Buffer(floats: 0)        // (N, H) the MLP's normalised input
        var gateUp = Buffer(floats: 0)     // (N, 2F) before the activation
        var act = Buffer(floats: 0)        // (N, F) silu(g)·u
        var loraU: [Buffer?] = []          // per target: (N, r) = x·Aᵀ
    }

    var blocks: [Block]
    var xFinal = Buffer(floats: 0)         // (N, H) the last block's output
    var ropeCos = Buffer(floats: 0)        // (N, D/2) tables per row (the kernel takes one row per token)
    var ropeSin = Buffer(floats: 0)
    var ropeNegSin = Buffer(floats: 0)
    var positions: [Int32] = []

    // Head: rows with a label, gathered.
    var labeledRows: [Int] = []
    var labels: [Int32] = []
    var xnFinal = Buffer(floats: 0)        // (M, H)
    var rstdFinal = Buffer(floats: 0)      // (M)
    var logits = Buffer(floats: 0)         // (M, V), then its gradient
    var dxnFinal = Buffer(floats: 0)       // (M, H)

    // Backward scratch.
    var dx = Buffer(floats: 0)             // (N, H) gradient of the residual stream
    var dxn = Buffer(floats: 0)            // (N, H)
    var dqkv = Buffer(floats: 0)           // (N, QKV)
    var dAttn = Buffer(floats: 0)          // (N, Q)
    var dAct = Buffer(floats: 0)           // (N, F)
    var dGateUp = Buffer(floats: 0)        // (N, 2F)
    var du = Buffer(floats: 0)             // (N, r)
    var dScores = Buffer(floats: 0)        // (S, T, T): a T·T slice per thread attention's backward may run on
    private(set) var dScoresSlots = 1     // the groups attention runs at once (`attentionSlots` at the last reserve)
    var tmp = Buffer(floats: 0)            // (N, H) a sub-block's output

    init(config: ModelConfig, rank: Int) {
        self.config = config
        self.rank = rank
        blocks = (0..<config.numLayers).map { _ in Block() }
    }

    /// Makes room for `batch` sequences of `length` positions.
    func reserve(batch: Int, length: Int, targets: [LoRATarget]) {
        let c = config, n = batch * length
        let qDim = c.numHeads * c.headDim, kvDim = c.numKVHeads * c.headDim, qkvDim = qDim + 2 * kvDim
        let h = c.hiddenSize, f = c.intermediateSize, half = c.headDim / 2
        let probs = batch * c.numHeads * length * length
        if n > rowCapacity || probs > probsCapacity {
            let rows = max(n, rowCapacity), p = max(probs, probsCapacity)
            for blk in blocks {
                blk.x = Buffer(floats: rows * h)
                blk.rstd1 = Buffer(floats: rows)
                blk.xn1 = Buffer(floats: rows * h)
                blk.qkv = Buffer(floats: rows * qkvDim)
                blk.probs = Buffer(floats: p)
                blk.attn = Buffer(floats: rows * qDim)
                blk.h = Buffer(floats: rows * h)
                blk.rstd2 = Buffer(floats: rows)
                blk.xn2 = Buffer(floats: rows * h)
                blk.gateUp = Buffer(floats: rows * 2 * f)
                blk.act = Buffer(floats: rows * f)
                blk.loraU = LoRATarget.allCases.map { targets.contains($0) ? Buffer(floats: rows * rank) : nil }
            }
            xFinal = Buffer(floats: rows * h)
            ropeCos = Buffer(floats: rows * half)
            ropeSin = Buffer(floats: rows * half)
            ropeNegSin = Buffer(floats: rows * half)
            dx = Buffer(floats: rows * h)
            dxn = Buffer(floats: rows * h)
            dqkv = Buffer(floats: rows * qkvDim)
            dAttn = Buffer(floats: rows * qDim)
            dAct = Buffer(floats: rows * f)
            dGateUp = Buffer(floats: rows * 2 * f)
            du = Buffer(floats: rows * rank)
            tmp = Buffer(floats: rows * h)
            rowCapacity = rows
            probsCapacity = p
        }
        let slots = Self.attentionSlots
        if slots * length * length > dScores.byteCount / 4 { dScores = Buffer(floats: slots * length * length) }
        dScoresSlots = slots
    }

    /// Bytes `reserve(batch:length:)` and `reserveLabeled` allocate for `batch` sequences of `length`
    /// positions, every one labelled (the most the head can need): what a training run will hold in memory.
    static func bytes(config c: ModelConfig, rank: Int, targets: Int, batch: Int, length: Int) -> Int {
        let n = batch * length, h = c.hiddenSize, f = c.intermediateSize
        let qDim = c.numHeads * c.headDim, kvDim = c.numKVHeads * c.headDim, qkvDim = qDim + 2 * kvDim
        let perBlock = n * (4 * h + 2 + qkvDim + qDim + 3 * f + targets * rank) + batch * c.numHeads * length * length
        let shared = n * (h + 3 * (c.headDim / 2) + 3 * h + qkvDim + qDim + 3 * f + rank) + attentionSlots * length * length
        let head = n * (2 * h + 1 + c.vocabSize)
        return 4 * (c.numLayers * perBlock + shared + head)
    }

    /// Attention runs up to one (sequence, KV head) group per kernel thread (`TrainingOps.attentionSlots`);
    /// its backward needs a T·T scratch slice for each.
    static var attentionSlots: Int { TrainingOps.attentionSlots }

    /// Room for the head's `m` labelled rows.
    func reserveLabeled(_ m: Int) {
        guard m > labeledCapacity else { return }
        let c = config
        xnFinal = Buffer(floats: m * c.hiddenSize)
        rstdFinal = Buffer(floats: m)
        logits = Buffer(floats: m * c.vocabSize)
        dxnFinal = Buffer(floats: m * c.hiddenSize)
        labeledCapacity = m
    }
}
