import Kernels

// Shapes: T tokens in the flat batch, H = hiddenSize, F = intermediateSize.

extension LlamaModel {
    /// The SwiGLU feed-forward network of block `li` (Shazeer 2020, as Llama uses it):
    ///
    ///     g, u = xn·Wgᵀ, xn·Wuᵀ  (+ LoRA)       (T, F), (T, F)
    ///     a    = silu(g) ⊙ u                   (T, F)
    ///     out  = a·Wdᵀ  (+ LoRA)               (T, H)
    ///
    /// Reads the normalised input `p.xn` and writes `out` over it.
    func mlp(_ li: Int, _ p: ForwardPass) {
        let c = config, layer = layers[li], n = p.tokens
        let h = c.hiddenSize, ffn = c.intermediateSize
        let xn = p.xn            // (T, H)
        let gateUp = p.gateUp    // (T, F | F): g and u side by side
        let act = p.act          // (T, F)
        let scratch = p.scratch

        // Gate and up projections: one fused matmul when they share a dtype.
        // Each product prefetches the adapter weights of the LoRA that follows it (`loraPrefetch`).
        if let fused = layer.gateUp {
            Kernels.matmul(fused, xn, ldx: h, ntok: n, gateUp, ldy: 2 * ffn, scratch: scratch,
                           prefetch: loraPrefetch(.gate, through: .up, layer: li, p))
        } else {
            Kernels.matmul(layer.gate, xn, ldx: h, ntok: n, gateUp, ldy: 2 * ffn, scratch: scratch,
                           prefetch: loraPrefetch(.gate, through: .gate, layer: li, p))
            Kernels.matmul(layer.up, xn, ldx: h, ntok: n, gateUp + ffn, ldy: 2 * ffn, scratch: scratch,
                           prefetch: loraPrefetch(.up, through: .up, layer: li, p))
        }
        if let lora = p.lora {
            applyLoRA(.gate, layer: li, xn, ldx: h, gateUp, ldy: 2 * ffn, p.workspace, lora)
            applyLoRA(.up, layer: li, xn, ldx: h, gateUp + ffn, ldy: 2 * ffn, p.workspace, lora)
        }
        Kernels.siluMul(gate: gateUp, up: gateUp + ffn, gateUpStride: 2 * ffn, into: act, width: ffn, tokens: n)

        // Down projection back to the residual width.
        Kernels.matmul(layer.down, act, ldx: ffn, ntok: n, xn, ldy: h, scratch: scratch,
                       prefetch: loraPrefetch(.down, through: .down, layer: li, p))
        if let lora = p.lora { applyLoRA(.down, layer: li, act, ldx: ffn, xn, ldy: h, p.workspace, lora) }
    }
}
