import Foundation
import Kernels

// The unmerged LoRA path (S-LoRA / Punica): the base matmuls run once for the whole batch, then every run
// of tokens that shares an adapter adds scale · B · (A · x) to the projection's output.

/// A run of consecutive batch tokens that use one adapter slot at one scale multiplier.
struct LoRASegment {
    var start: Int
    var count: Int
    var slot: Int
    var scale: Float
    /// For a plain (ungated) adapter: its module operands (`LoRAWeights.operandTable`, valid for the pass: the
    /// slot holds the adapter), its layer count and its scale times `scale`, so `applyLoRA` reads one table
    /// entry per segment and matrix. Nil for a gated MoLE segment, which takes the general path.
    var operands: UnsafePointer<Kernels.LoRAOperands?>? = nil
    var layers = 0
    var combinedScale: Float = 0
}

extension LlamaModel {
    /// Finds the runs of tokens that use an adapter and sizes the intermediates; nil when no token does.
    func prepareLoRA(_ batch: ForwardBatch, _ lora: LoRASlots, _ ws: ForwardWorkspace) -> LoRASlots? {
        ws.segments.removeAll(keepingCapacity: true)
        ws.gated = false
        let n = batch.count
        var i = 0
        while i < n {
            let slot = Int(batch.adapterSlots[i]), scale = batch.adapterScales[i]
            var j = i + 1
            while j < n && Int(batch.adapterSlots[j]) == slot && batch.adapterScales[j] == scale { j += 1 }
            if slot >= 0 {
                precondition(slot < lora.capacity, "adapter slot out of range")
                guard let w = lora[slot] else { preconditionFailure("adapter slot \(slot) is empty") }
                var seg = LoRASegment(start: i, count: j - i, slot: slot, scale: scale)
                if w.gating != nil {
                    ws.gated = true
                } else {
                    seg.operands = w.operandTable
                    seg.layers = w.modules.count
                    seg.combinedScale = w.scale * scale
                }
                ws.segments.append(seg)
            }
            i = j
        }
        // Gate statistics are kept only for passes with a gated segment (the engine reads them only for slots
        // holding a MoLE composition), so plain LoRA steps do no work for them.
        if ws.gated { ws.resetGateStatistics(slots: lora.capacity) }
        return ws.segments.isEmpty ? nil : lora
    }

    /// Batches of at least this many tokens name the adapter weights of the LoRA calls that follow a base product
    /// to that product (`Kernels.PrefetchPlan`): from there the product is compute-bound, and the adapter bytes
    /// (a memory-bound stream when the batch's adapters are distinct) load in the shadow of its arithmetic.
    /// Below it the product itself streams its weights, and the prefetch would only compete with them.
    /// `DLORA_LORA_PREFETCH=off` in the environment turns the prefetch off (for side-by-side measurements).
    static let loraPrefetchMinTokens = ProcessInfo.processInfo.environment["DLORA_LORA_PREFETCH"] == "off" ? Int.max : 8

    /// The prefetch plan for the base product whose output the LoRA of targets `first` through `last` (in
    /// `LoRATarget` order: q, k, v, o, gate, up, down) adds to at `layer`: every segment's A and B for them, in
    /// the order `applyLoRA` reads them. Nil without LoRA or below `loraPrefetchMinTokens` tokens.
    func loraPrefetch(_ first: LoRATarget, through last: LoRATarget, layer: Int, _ p: ForwardPass) -> Kernels.PrefetchPlan? {
        guard let lora = p.lora, p.tokens >= Self.loraPrefetchMinTokens else { return nil }
        let plan = p.workspace.prefetch
        plan.removeAll()
        for raw in first.rawValue...last.rawValue {
            let target = LoRATarget(rawValue: raw)!, entry = layer * LoRATarget.allCases.count + raw
            for seg in p.workspace.segments {
                if let table = seg.operands {
                    if layer < seg.layers, let m = table[entry] { plan.append(m) }
                } else if let m = lora[seg.slot]?.module(layer: layer, target: target) {
                    plan.append(m.operands)
                }
            }
        }
        return plan.isEmpty ? nil : plan
    }

    /// y[t] += scale · B · (A · x[t]) for every token of every segment whose adapter targets this matrix.
    /// Both products run on the batch-invariant kernel, so a token's result does not depend on its batch.
    func applyLoRA(_ target: LoRATarget, layer: Int, _ x: UnsafePointer<Float>, ldx: Int,
                   _ y: UnsafeMutablePointer<Float>, ldy: Int, _ ws: ForwardWorkspace, _ lora: LoRASlots) {
        let (outFeatures, inFeatures) = target.shape(config)
        let batch = ws.loraBatch
        batch.reset(inFeatures: inFeatures, outFeatures: outFeatures)
        let entry = layer * LoRATarget.allCases.count + target.rawValue
        for seg in ws.segments {
            let tokens = seg.start..<(seg.start + seg.count)
            if let table = seg.operands {
                if layer < seg.layers, let m = table[entry] { batch.append(m, tokens: tokens, scale: seg.combinedScale) }
                continue
            }
            guard let w = lora[seg.slot], let m = w.module(layer: layer, target: target) else { continue }
            if let g = w.gating, let columns = g.columns(layer: layer, target: target) {
                let rows = (g.granularity.usesMLPGates(target) ? ws.mlpGates : ws.gates).floats + seg.start * MoLEGating.maxExperts
                if g.granularity == .matrix {
                    // This projection's own gate, from its input; these rows are this segment's alone and are read
                    // only by this call's `apply`.
                    segmentGates(g, unit: g.granularity.unit(layer: layer, target: target), seg, x + seg.start * ldx, ldx: ldx,
                                 into: rows, ws)
                }
                batch.append(m.operands, tokens: tokens, scale: w.scale * seg.scale,
                             gates: rows, ldg: MoLEGating.maxExperts, columns: columns)
            } else {
                batch.append(m.operands, tokens: tokens, scale: w.scale * seg.scale)
            }
        }
        batch.apply(x, ldx: ldx, into: y, ldy: ldy)
    }

    /// MoLE: the gates that sit at block `layer`'s attention input (`mlp` false: the first RMSNorm's output) or
    /// MLP input (`mlp` true: the second's), for the tokens of every gated segment (matrix-level gates are computed
    /// in `applyLoRA`, from each projection's input), from `xn`, into the
    /// workspace's gate rows for that site (stride `MoLEGating.maxExperts`):
    ///
    ///     g[t, i] = exp(ε_i/τ − max_j ε_j/τ) / Σ_k exp(ε_k/τ − max_j ε_j/τ),   ε = W·xn[t], over the experts in the mask
    ///
    /// as the training model computes them. ε runs on the batch-invariant kernel, so a token's gates do not
    /// depend on its batch. Also adds each token's gate entropy (nats) and gate weights to its slot's statistics.
    func computeGates(layer: Int, mlp: Bool, _ xn: UnsafePointer<Float>, _ ws: ForwardWorkspace, _ lora: LoRASlots) {
        let h = config.hiddenSize, ld = MoLEGating.maxExperts
        for seg in ws.segments {
            guard let g = lora[seg.slot]?.gating, let unit = g.granularity.unit(layer: layer, mlp: mlp) else { continue }
            segmentGates(g, unit: unit, seg, xn + seg.start * h, ldx: h, into: (mlp ? ws.mlpGates : ws.gates).floats + seg.start * ld, ws)
        }
    }

    /// One segment's gates of unit u from its tokens' gate inputs x (row stride ldx), into rows (stride
    /// `MoLEGating.maxExperts`), with the statistics added to the segment's slot.
    func segmentGates(_ g: MoLEGating, unit: Int, _ seg: LoRASegment, _ x: UnsafePointer<Float>, ldx: Int,
                      into rows: UnsafeMutablePointer<Float>, _ ws: ForwardWorkspace) {
        let n = g.expertCount, tau = g.temperatures[unit], mask = g.mask, ld = MoLEGating.maxExperts
        Kernels.matmulBatchInvariant(g.weights[unit], x, ldx: ldx, ntok: seg.count, rows, ldy: ld)
        var entropy = 0.0
        for t in 0..<seg.count {
            let e = rows + t * ld
            var mx = -Float.infinity
            for i in 0..<n where mask >> UInt64(i) & 1 == 1 { mx = max(mx, e[i] / tau) }
            var sum: Float = 0
            for i in 0..<n {
                let v: Float = mask >> UInt64(i) & 1 == 1 ? Foundation.exp(e[i] / tau - mx) : 0
                e[i] = v
                sum += v
            }
            for i in 0..<n {
                e[i] /= sum
                if e[i] > 0 { entropy -= Double(e[i]) * Foundation.log(Double(e[i])) }
                ws.addGateWeight(slot: seg.slot, expert: i, e[i])
            }
        }
        ws.addGateStatistics(slot: seg.slot, entropy: entropy, tokens: seg.count)
    }
}
