import Kernels

// Shapes: T tokens in the flat batch, H = hiddenSize, nH = numHeads, nKV = numKVHeads, D = headDim.

extension LlamaModel {
    /// Causal self-attention of block `li` (Vaswani et al. 2017 §3.2.2), with rotary positions (Su et al.
    /// 2021) on Q and K and grouped-query heads (Ainslie et al. 2023: head h reads KV head h / (nH / nKV)):
    ///
    ///     q, k, v = xn·Wqᵀ, xn·Wkᵀ, xn·Wvᵀ  (+ LoRA, + bias)     (T, nH·D), (T, nKV·D), (T, nKV·D)
    ///     q, k    = rope(q), rope(k)
    ///     cache[slot(t)] = k[t], v[t]                             paged: [blocks][blockSize][nKV][D]
    ///     a[t]    = softmax(q[t]·Kᵀ / √D) · V  over positions 0 ... pos(t) of t's sequence   (T, nH·D)
    ///     out     = a·Woᵀ  (+ LoRA)                               (T, H)
    ///
    /// Reads the normalised input `p.xn` and writes `out` over it.
    func attention(_ li: Int, _ p: ForwardPass) {
        let c = config, layer = layers[li], n = p.tokens
        let h = c.hiddenSize, qDim = c.numHeads * c.headDim, kvDim = c.numKVHeads * c.headDim
        let qkvDim = qDim + 2 * kvDim
        let xn = p.xn        // (T, H)
        let qkv = p.qkv      // (T, nH·D | nKV·D | nKV·D): q, k and v side by side
        let attn = p.attn    // (T, nH·D)
        let scratch = p.scratch

        // Projections: one fused matmul when Q, K and V share a dtype.
        // Each product prefetches the adapter weights of the LoRA that follows it (`loraPrefetch`).
        if let fused = layer.qkv {
            Kernels.matmul(fused, xn, ldx: h, ntok: n, qkv, ldy: qkvDim, scratch: scratch,
                           prefetch: loraPrefetch(.q, through: .v, layer: li, p))
        } else {
            Kernels.matmul(layer.q, xn, ldx: h, ntok: n, qkv, ldy: qkvDim, scratch: scratch, prefetch: loraPrefetch(.q, through: .q, layer: li, p))
            Kernels.matmul(layer.k, xn, ldx: h, ntok: n, qkv + qDim, ldy: qkvDim, scratch: scratch,
                           prefetch: loraPrefetch(.k, through: .k, layer: li, p))
            Kernels.matmul(layer.v, xn, ldx: h, ntok: n, qkv + qDim + kvDim, ldy: qkvDim, scratch: scratch,
                           prefetch: loraPrefetch(.v, through: .v, layer: li, p))
        }
        if let lora = p.lora {
            applyLoRA(.q, layer: li, xn, ldx: h, qkv, ldy: qkvDim, p.workspace, lora)
            applyLoRA(.k, layer: li, xn, ldx: h, qkv + qDim, ldy: qkvDim, p.workspace, lora)
            applyLoRA(.v, layer: li, xn, ldx: h, qkv + qDim + kvDim, ldy: qkvDim, p.workspace, lora)
        }
        if let bias = layer.qkvBias {
            for t in 0..<n { Kernels.add(bias.floats, into: qkv + t * qkvDim, count: qkvDim) }
        }

        // Rotary positions on q (nH heads) and k (nKV heads), pairs as the checkpoint lays them out.
        let pairing: RopePairing = c.ropeStyle == .halves ? .halves : .adjacent
        Kernels.applyRope(qkv, ldx: qkvDim, tokens: n, heads: c.numHeads, headDim: c.headDim,
                          cos: p.cos, sin: p.sin, pairing: pairing)
        Kernels.applyRope(qkv + qDim, ldx: qkvDim, tokens: n, heads: c.numKVHeads, headDim: c.headDim,
                          cos: p.cos, sin: p.sin, pairing: pairing)

        // This step's k, v into the paged cache, then attention over each token's sequence.
        Kernels.writeKV(p.kv, layer: li, slots: p.layout.slots, keys: qkv + qDim, ldk: qkvDim, values: qkv + qDim + kvDim, ldv: qkvDim)
        Kernels.pagedAttention(query: qkv, ldq: qkvDim, heads: c.numHeads, layout: p.layout, kv: p.kv, layer: li,
                               scale: 1 / Float(c.headDim).squareRoot(), into: attn, ldo: qDim)

        // Output projection back to the residual width.
        Kernels.matmul(layer.o, attn, ldx: qDim, ntok: n, xn, ldy: h, scratch: scratch, prefetch: loraPrefetch(.o, through: .o, layer: li, p))
        if let lora = p.lora { applyLoRA(.o, layer: li, attn, ldx: qDim, xn, ldy: h, p.workspace, lora) }
        if let bias = layer.oBias {
            for t in 0..<n { Kernels.add(bias.floats, into: xn + t * h, count: h) }
        }
    }
}
