import Kernels
import Models

// Shapes as in LoRATrainingModel.swift.

extension LoRATrainingModel {
    /// From the logits' gradient (left by `head`) to the gradient of the last block's output, in `ws.dx`.
    func headBackward(_ batch: TrainingBatch) {
        let c = config, h = c.hiddenSize, n = batch.batch * batch.length, m = ws.labeledRows.count
        TrainingOps.linearBackward(ws.logits.floats, ldy: c.vocabSize, weight: base.output.floats, out: c.vocabSize, in: h,
                                   tokens: m, ws.dxnFinal.floats, ldx: h, bf16: base.bf16Output)
        ws.dx.floats.update(repeating: 0, count: n * h)
        for (r, t) in ws.labeledRows.enumerated() {
            TrainingOps.rmsNormBackward(ws.dxnFinal.floats + r * h, x: ws.xFinal.floats + t * h, weight: base.outputNorm.floats,
                                        rstd: ws.rstdFinal.floats + r, dx: ws.dx.floats + t * h, rows: 1, width: h)
        }
    }

    /// Block l's backward: `ws.dx` holds dL/d(out) on entry and dL/d(x) on return; LoRA gradients are added.
    ///
    ///     dh  = dout + rmsNorm₂ᵀ(mlpᵀ(dout))
    ///     dx  = dh + rmsNorm₁ᵀ(attentionᵀ(dh))
    func blockBackward(_ l: Int, batch: Int, length: Int) {
        let c = config, w = base.layers[l], s = ws.blocks[l], n = batch * length, b = base.bf16Layers?[l]
        let h = c.hiddenSize, f = c.intermediateSize
        let qDim = c.numHeads * c.headDim, kvDim = c.numKVHeads * c.headDim, qkvDim = qDim + 2 * kvDim
        let dx = ws.dx.floats

        // MLP: out = h + down(silu(gate(xn2)) · up(xn2)).
        TrainingOps.linearBackward(dx, ldy: h, weight: w.down.floats, out: h, in: f, tokens: n, ws.dAct.floats, ldx: f, bf16: b?.down)
        loraBackward(l, .down, dy: dx, ldy: h, x: s.act.floats, ldx: f, dx: ws.dAct.floats, tokens: n)
        TrainingOps.swigluBackward(ws.dAct.floats, gateUp: s.gateUp.floats, dGateUp: ws.dGateUp.floats, tokens: n, width: f)
        TrainingOps.linearBackward(ws.dGateUp.floats, ldy: 2 * f, weight: w.gateUp.floats, out: 2 * f, in: h, tokens: n,
                                   ws.dxn.floats, ldx: h, bf16: b?.gateUp)
        loraBackward(l, .gate, dy: ws.dGateUp.floats, ldy: 2 * f, x: s.xn2.floats, ldx: h, dx: ws.dxn.floats, tokens: n)
        loraBackward(l, .up, dy: ws.dGateUp.floats + f, ldy: 2 * f, x: s.xn2.floats, ldx: h, dx: ws.dxn.floats, tokens: n)
        mole?.gateBackward(layer: l, mlp: true, xn: s.xn2.floats, dxn: ws.dxn.floats)
        TrainingOps.rmsNormBackward(ws.dxn.floats, x: s.h.floats, weight: w.ffnNorm.floats, rstd: s.rstd2.floats, dx: dx, rows: n, width: h)

        // Attention: h = x + o(attention(rope(q(xn1)), rope(k(xn1)), v(xn1))).
        TrainingOps.linearBackward(dx, ldy: h, weight: w.o.floats, out: h, in: qDim, tokens: n, ws.dAttn.floats, ldx: qDim, bf16: b?.o)
        loraBackward(l, .o, dy: dx, ldy: h, x: s.attn.floats, ldx: qDim, dx: ws.dAttn.floats, tokens: n)
        let dqkv = ws.dqkv.floats
        TrainingOps.attentionBackward(dOut: ws.dAttn.floats, ldo: qDim, q: s.qkv.floats, k: s.qkv.floats + qDim,
                                      v: s.qkv.floats + qDim + kvDim, ld: qkvDim, probs: s.probs.floats,
                                      shape: attentionShape(batch: batch, length: length),
                                      dq: dqkv, dk: dqkv + qDim, dv: dqkv + qDim + kvDim, scratch: ws.dScores.floats,
                                      slots: ws.dScoresSlots)
        let pairing = base.ropePairing
        TrainingOps.ropeBackward(dqkv, ldx: qkvDim, tokens: n, heads: c.numHeads, headDim: c.headDim,
                                 cos: ws.ropeCos.floats, negSin: ws.ropeNegSin.floats, pairing: pairing)
        TrainingOps.ropeBackward(dqkv + qDim, ldx: qkvDim, tokens: n, heads: c.numKVHeads, headDim: c.headDim,
                                 cos: ws.ropeCos.floats, negSin: ws.ropeNegSin.floats, pairing: pairing)
        TrainingOps.linearBackward(dqkv, ldy: qkvDim, weight: w.qkv.floats, out: qkvDim, in: h, tokens: n, ws.dxn.floats, ldx: h, bf16: b?.qkv)
        for (t, offset) in [(LoRATarget.q, 0), (.k, qDim), (.v, qDim + kvDim)] {
            loraBackward(l, t, dy: dqkv + offset, ldy: qkvDim, x: s.xn1.floats, ldx: h, dx: ws.dxn.floats, tokens: n)
        }
        mole?.gateBackward(layer: l, xn: s.xn1.floats, dxn: ws.dxn.floats)
        // (For block 0 this is the gradient of the frozen embedding rows: unused by training, O(N·H), and
        // what the block's gradient check reads.)
        TrainingOps.rmsNormBackward(ws.dxn.floats, x: s.x.floats, weight: w.attnNorm.floats, rstd: s.rstd1.floats, dx: dx, rows: n, width: h)
    }

    private func loraBackward(_ l: Int, _ t: LoRATarget, dy: UnsafePointer<Float>, ldy: Int, x: UnsafePointer<Float>, ldx: Int,
                              dx: UnsafeMutablePointer<Float>, tokens: Int) {
        mole?.mixtureBackward(layer: l, target: t, dy: dy, ldy: ldy, x: x, ldx: ldx, dx: dx)
        guard let m = lora.module(layer: l, target: t), let u = ws.blocks[l].loraU[t.rawValue] else { return }
        TrainingOps.loraBackward(dy, ldy: ldy, x: x, ldx: ldx, a: m.a.floats, b: m.b.floats, u: u.floats, rank: m.rank,
                                 out: m.outFeatures, in: m.inFeatures, scale: lora.scale, tokens: tokens,
                                 gradA: m.gradA.floats, gradB: m.gradB.floats, du: ws.du.floats, dx: dx)
    }
}
