import Foundation
import Kernels
import Models

// Shapes: B sequences of T positions, N = B·T rows (row b·T + i is position i of sequence b); H = hiddenSize,
// nH/nKV heads of D, F = intermediateSize, Q = nH·D, KV = nKV·D, QKV = Q + 2·KV, r = rank, V = vocabSize.

/// One training batch: B token sequences of T positions (shorter ones padded), and per position the token
/// it must predict (-1: no loss there — prompt and padding positions).
public struct TrainingBatch: Sendable, Equatable {
    public var batch: Int
    public var length: Int
    public var tokens: [Int32]     // (B·T)
    public var labels: [Int32]     // (B·T), -1 = ignored
    /// Per sequence, its tokens that are not padding (padding follows them).
    public var lengths: [Int]
    /// Tokens that are not padding.
    public var realTokens: Int { lengths.reduce(0, +) }
    public init(batch: Int, length: Int, tokens: [Int32], labels: [Int32], lengths: [Int]? = nil) {
        precondition(batch > 0 && length > 0 && tokens.count == batch * length && labels.count == tokens.count)
        self.batch = batch
        self.length = length
        self.tokens = tokens
        self.labels = labels
        self.lengths = lengths ?? Array(repeating: length, count: batch)
        precondition(self.lengths.count == batch && self.lengths.allSatisfy { $0 >= 1 && $0 <= length })
    }
    /// Positions whose prediction counts in the loss.
    public var labeledCount: Int { labels.reduce(0) { $0 + ($1 >= 0 ? 1 : 0) } }
}

/// A Llama-family decoder with frozen f32 base weights and one trainable LoRA adapter: the forward pass
/// keeps what the backward needs, the backward gives the gradients of the mean next-token cross-entropy
/// over the labelled positions with respect to every LoRA A and B (accumulated in `lora`'s gradients).
///
///     x      = embed(tokens)                                      (N, H)
///     x      = block_l(x), l = 0 ..< L                            (N, H)
///     loss   = mean over labelled rows of CE(rmsNorm(x)·Woutᵀ)    scalar
///
/// The block computes exactly what the engine's `LlamaModel.block` does (same RoPE pairing, LoRA added
/// to a projection before RoPE, Q/K/V biases when the model has them).
public final class LoRATrainingModel: @unchecked Sendable {
    public let base: FrozenBase
    public let lora: LoRAParameters
    /// MoLE: frozen LoRA experts mixed by trainable per-block gates (nil: none).
    public let mole: MoLEMixture?
    let ws: TrainingWorkspace

    public init(base: FrozenBase, lora: LoRAParameters, mole: MoLEMixture? = nil) {
        precondition(base.config == lora.config, "the adapter was made for another configuration")
        precondition(mole.map { $0.config == base.config } ?? true, "the MoLE experts were made for another configuration")
        self.base = base
        self.lora = lora
        self.mole = mole
        ws = TrainingWorkspace(config: base.config, rank: lora.rank)
    }

    public var config: ModelConfig { base.config }

    /// The activation memory a batch of `batch` sequences of `length` positions needs (bytes).
    public static func workspaceBytes(config: ModelConfig, rank: Int, targets: Int, batch: Int, length: Int) -> Int {
        TrainingWorkspace.bytes(config: config, rank: rank, targets: targets, batch: batch, length: length)
    }

    // MARK: Forward

    /// Embeds the batch and runs every block, keeping the activations.
    func forwardBlocks(_ batch: TrainingBatch) {
        let c = config, h = c.hiddenSize, n = batch.batch * batch.length
        ws.reserve(batch: batch.batch, length: batch.length, targets: lora.targets)
        mole?.reserve(batch: batch.batch, length: batch.length, lengths: batch.lengths)
        let x0 = ws.blocks.isEmpty ? ws.xFinal.floats : ws.blocks[0].x.floats
        for t in 0..<n {
            let id = Int(batch.tokens[t])
            precondition(id >= 0 && id < c.vocabSize, "token id \(id) outside the vocabulary")
            (x0 + t * h).update(from: base.embedding.floats + id * h, count: h)
        }
        ropeTables(batch: batch.batch, length: batch.length)
        for l in 0..<c.numLayers {
            let out = l + 1 < c.numLayers ? ws.blocks[l + 1].x.floats : ws.xFinal.floats
            blockForward(l, batch: batch.batch, length: batch.length, out: out)
        }
    }

    func ropeTables(batch: Int, length: Int) {
        let n = batch * length, half = config.headDim / 2
        ws.positions.removeAll(keepingCapacity: true)
        for t in 0..<n { ws.positions.append(Int32(t % length)) }
        ws.positions.withUnsafeBufferPointer { p in
            base.inverseFrequencies.withUnsafeBufferPointer {
                Kernels.ropeTables(positions: p, inverseFrequencies: $0, cos: ws.ropeCos.floats, sin: ws.ropeSin.floats)
            }
        }
        for i in 0..<(n * half) { ws.ropeNegSin.floats[i] = -ws.ropeSin.floats[i] }
    }

    /// One pre-norm block on `blocks[l].x`, into `out`:
    ///
    ///     h   = x + attention(rmsNorm₁(x))
    ///     out = h + mlp(rmsNorm₂(h))
    func blockForward(_ l: Int, batch: Int, length: Int, out: UnsafeMutablePointer<Float>) {
        let c = config, w = base.layers[l], s = ws.blocks[l], n = batch * length, b = base.bf16Layers?[l]
        let h = c.hiddenSize, f = c.intermediateSize
        let qDim = c.numHeads * c.headDim, kvDim = c.numKVHeads * c.headDim, qkvDim = qDim + 2 * kvDim

        // Attention.
        TrainingOps.rmsNormForward(s.x.floats, weight: w.attnNorm.floats, eps: c.rmsNormEps, out: s.xn1.floats,
                                   rstd: s.rstd1.floats, rows: n, width: h)
        mole?.gateForward(layer: l, xn: s.xn1.floats)
        TrainingOps.linearForward(s.xn1.floats, ldx: h, weight: w.qkv.floats, out: qkvDim, in: h, tokens: n, s.qkv.floats, ldy: qkvDim, bf16: b?.qkv)
        for (t, offset) in [(LoRATarget.q, 0), (.k, qDim), (.v, qDim + kvDim)] {
            loraForward(l, t, x: s.xn1.floats, ldx: h, y: s.qkv.floats + offset, ldy: qkvDim, tokens: n)
        }
        if let bias = w.qkvBias {
            for t in 0..<n { Kernels.add(bias.floats, into: s.qkv.floats + t * qkvDim, count: qkvDim) }
        }
        let pairing = base.ropePairing
        Kernels.applyRope(s.qkv.floats, ldx: qkvDim, tokens: n, heads: c.numHeads, headDim: c.headDim,
                          cos: ws.ropeCos.floats, sin: ws.ropeSin.floats, pairing: pairing)
        Kernels.applyRope(s.qkv.floats + qDim, ldx: qkvDim, tokens: n, heads: c.numKVHeads, headDim: c.headDim,
                          cos: ws.ropeCos.floats, sin: ws.ropeSin.floats, pairing: pairing)
        TrainingOps.attentionForward(q: s.qkv.floats, k: s.qkv.floats + qDim, v: s.qkv.floats + qDim + kvDim, ld: qkvDim,
                                     shape: attentionShape(batch: batch, length: length), probs: s.probs.floats,
                                     out: s.attn.floats, ldo: qDim, slots: ws.dScoresSlots)
        TrainingOps.linearForward(s.attn.floats, ldx: qDim, weight: w.o.floats, out: h, in: qDim, tokens: n, ws.tmp.floats, ldy: h, bf16: b?.o)
        loraForward(l, .o, x: s.attn.floats, ldx: qDim, y: ws.tmp.floats, ldy: h, tokens: n)
        if let bias = w.oBias {
            for t in 0..<n { Kernels.add(bias.floats, into: ws.tmp.floats + t * h, count: h) }
        }
        for i in 0..<(n * h) { s.h.floats[i] = s.x.floats[i] + ws.tmp.floats[i] }

        // MLP.
        TrainingOps.rmsNormForward(s.h.floats, weight: w.ffnNorm.floats, eps: c.rmsNormEps, out: s.xn2.floats,
                                   rstd: s.rstd2.floats, rows: n, width: h)
        TrainingOps.linearForward(s.xn2.floats, ldx: h, weight: w.gateUp.floats, out: 2 * f, in: h, tokens: n, s.gateUp.floats, ldy: 2 * f, bf16: b?.gateUp)
        mole?.gateForward(layer: l, mlp: true, xn: s.xn2.floats)
        loraForward(l, .gate, x: s.xn2.floats, ldx: h, y: s.gateUp.floats, ldy: 2 * f, tokens: n)
        loraForward(l, .up, x: s.xn2.floats, ldx: h, y: s.gateUp.floats + f, ldy: 2 * f, tokens: n)
        TrainingOps.swigluForward(s.gateUp.floats, act: s.act.floats, tokens: n, width: f)
        TrainingOps.linearForward(s.act.floats, ldx: f, weight: w.down.floats, out: h, in: f, tokens: n, ws.tmp.floats, ldy: h, bf16: b?.down)
        loraForward(l, .down, x: s.act.floats, ldx: f, y: ws.tmp.floats, ldy: h, tokens: n)
        for i in 0..<(n * h) { out[i] = s.h.floats[i] + ws.tmp.floats[i] }
    }

    func attentionShape(batch: Int, length: Int) -> TrainingOps.AttentionShape {
        TrainingOps.AttentionShape(batch: batch, length: length, heads: config.numHeads, kvHeads: config.numKVHeads, headDim: config.headDim)
    }

    private func loraForward(_ l: Int, _ t: LoRATarget, x: UnsafePointer<Float>, ldx: Int, y: UnsafeMutablePointer<Float>, ldy: Int, tokens: Int) {
        mole?.mixtureForward(layer: l, target: t, x: x, ldx: ldx, y: y, ldy: ldy)
        guard let m = lora.module(layer: l, target: t), let u = ws.blocks[l].loraU[t.rawValue] else { return }
        TrainingOps.loraForward(x, ldx: ldx, a: m.a.floats, b: m.b.floats, rank: m.rank, out: m.outFeatures, in: m.inFeatures,
                                scale: lora.scale, tokens: tokens, u: u.floats, y, ldy: ldy)
    }

    /// Final norm and logits of the labelled rows (gathered), then the loss; leaves the loss's gradient
    /// with respect to those logits in `ws.logits`. Returns (loss, labelled rows).
    func head(_ batch: TrainingBatch) -> (loss: Double, count: Int) {
        let c = config, h = c.hiddenSize
        ws.labeledRows.removeAll(keepingCapacity: true)
        ws.labels.removeAll(keepingCapacity: true)
        for (t, label) in batch.labels.enumerated() where label >= 0 {
            precondition(Int(label) < c.vocabSize, "label \(label) outside the vocabulary")
            ws.labeledRows.append(t)
            ws.labels.append(label)
        }
        let m = ws.labeledRows.count
        guard m > 0 else { return (0, 0) }
        ws.reserveLabeled(m)
        for (r, t) in ws.labeledRows.enumerated() {
            TrainingOps.rmsNormForward(ws.xFinal.floats + t * h, weight: base.outputNorm.floats, eps: c.rmsNormEps,
                                       out: ws.xnFinal.floats + r * h, rstd: ws.rstdFinal.floats + r, rows: 1, width: h)
        }
        TrainingOps.linearForward(ws.xnFinal.floats, ldx: h, weight: base.output.floats, out: c.vocabSize, in: h, tokens: m,
                                  ws.logits.floats, ldy: c.vocabSize, bf16: base.bf16Output)
        let loss = ws.labels.withUnsafeBufferPointer {
            TrainingOps.crossEntropy(ws.logits.floats, labels: $0.baseAddress!, rows: m, vocab: c.vocabSize)
        }
        return (loss, m)
    }

    // MARK: Public entry points

    /// The mean cross-entropy of the batch's labelled positions (no gradients).
    public func loss(_ batch: TrainingBatch) -> Double {
        forwardBlocks(batch)
        return head(batch).loss + (mole?.balanceLoss() ?? 0)
    }

    /// Forward and backward: returns the loss and *adds* its gradient to every LoRA module's gradA/gradB
    /// (call `lora.zeroGradients()` first for a fresh step).
    @discardableResult
    public func lossAndGradients(_ batch: TrainingBatch) -> Double {
        forwardBlocks(batch)
        let (loss, m) = head(batch)
        guard m > 0 else { return 0 }
        // MoLE's balance loss depends on every block's gates: its gradient is known before the backward starts.
        let balance = mole?.balanceLoss(addingGradient: true) ?? 0
        headBackward(batch)
        for l in stride(from: config.numLayers - 1, through: 0, by: -1) {
            blockBackward(l, batch: batch.batch, length: batch.length)
        }
        return loss + balance
    }

    /// Logits of every position (B·T × V), for checks against the engine.
    public func logits(_ batch: TrainingBatch) -> [Float] {
        forwardBlocks(batch)
        let c = config, h = c.hiddenSize, n = batch.batch * batch.length
        let xn = Buffer(floats: n * h), rstd = Buffer(floats: n)
        TrainingOps.rmsNormForward(ws.xFinal.floats, weight: base.outputNorm.floats, eps: c.rmsNormEps, out: xn.floats,
                                   rstd: rstd.floats, rows: n, width: h)
        var out = [Float](repeating: 0, count: n * c.vocabSize)
        out.withUnsafeMutableBufferPointer {
            TrainingOps.linearForward(xn.floats, ldx: h, weight: base.output.floats, out: c.vocabSize, in: h, tokens: n,
                                      $0.baseAddress!, ldy: c.vocabSize, bf16: base.bf16Output)
        }
        return out
    }
}
