import Kernels

// The unmerged LoRA path (S-LoRA / Punica): the base matmuls run once for the whole batch, then every run
// of tokens that shares an adapter adds scale · B · (A · x) to the projection's output.

/// A run of consecutive batch tokens that use one adapter slot at one scale multiplier.
struct LoRASegment {
    var start: Int
    var count: Int
    var slot: Int
    var scale: Float
}

extension LlamaModel {
    /// Finds the runs of tokens that use an adapter and sizes the intermediates; nil when no token does.
    func prepareLoRA(_ batch: ForwardBatch, _ lora: LoRASlots, _ ws: ForwardWorkspace) -> LoRASlots? {
        ws.segments.removeAll(keepingCapacity: true)
        let n = batch.count
        var i = 0
        while i < n {
            let slot = Int(batch.adapterSlots[i]), scale = batch.adapterScales[i]
            var j = i + 1
            while j < n && Int(batch.adapterSlots[j]) == slot && batch.adapterScales[j] == scale { j += 1 }
            if slot >= 0 {
                precondition(slot < lora.capacity, "adapter slot out of range")
                precondition(lora[slot] != nil, "adapter slot \(slot) is empty")
                ws.segments.append(LoRASegment(start: i, count: j - i, slot: slot, scale: scale))
            }
            i = j
        }
        return ws.segments.isEmpty ? nil : lora
    }

    /// y[t] += scale · B · (A · x[t]) for every token of every segment whose adapter targets this matrix.
    /// Both products run on the batch-invariant kernel, so a token's result does not depend on its batch.
    func applyLoRA(_ target: LoRATarget, layer: Int, _ x: UnsafePointer<Float>, ldx: Int,
                   _ y: UnsafeMutablePointer<Float>, ldy: Int, _ ws: ForwardWorkspace, _ lora: LoRASlots) {
        let (outFeatures, inFeatures) = target.shape(config)
        let batch = ws.loraBatch
        batch.reset(inFeatures: inFeatures, outFeatures: outFeatures)
        for seg in ws.segments {
            guard let w = lora[seg.slot], let m = w.module(layer: layer, target: target) else { continue }
            batch.append(a: m.a, b: m.b, tokens: seg.start..<(seg.start + seg.count), scale: w.scale * seg.scale)
        }
        batch.apply(x, ldx: ldx, into: y, ldy: ldy)
    }
}
