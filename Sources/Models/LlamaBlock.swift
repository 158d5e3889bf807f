import Kernels

// Shapes: T tokens in the flat batch, H = hiddenSize, nH = numHeads, nKV = numKVHeads, D = headDim,
// F = intermediateSize.

/// What every block of one forward pass reads and writes: the step's token count, the workspace's
/// buffers, where the tokens live in the paged KV cache, and the LoRA adapters in use (nil: base only).
struct ForwardPass {
    let tokens: Int                                // T
    let x: UnsafeMutablePointer<Float>             // (T, H) the residual stream
    let xn: UnsafeMutablePointer<Float>            // (T, H) normalised input of a sub-block, then its output
    let qkv: UnsafeMutablePointer<Float>           // (T, nH·D + 2·nKV·D)
    let attn: UnsafeMutablePointer<Float>          // (T, nH·D)
    let gateUp: UnsafeMutablePointer<Float>        // (T, 2·F)
    let act: UnsafeMutablePointer<Float>           // (T, F)
    let cos: UnsafeMutablePointer<Float>           // (T, D/2) rotary tables of the tokens' positions
    let sin: UnsafeMutablePointer<Float>           // (T, D/2)
    let layout: PagedBatchLayout                   // positions, KV slots, block tables
    let kv: PagedKVStorage
    let scratch: ScratchArena
    let workspace: ForwardWorkspace
    let lora: LoRASlots?
}

extension LlamaModel {
    /// The weights of one decoder block.
    struct Layer {
        let attnNorm: Buffer
        let ffnNorm: Buffer
        /// Q, K and V stacked row-wise when they share a dtype, else nil (and q/k/v run separately).
        var qkv: WeightMatrix?
        var q: WeightMatrix, k: WeightMatrix, v: WeightMatrix
        let qkvBias: Buffer?
        var o: WeightMatrix
        /// The output projection's bias (`ModelConfig.outputBias`).
        let oBias: Buffer?
        var gateUp: WeightMatrix?
        var gate: WeightMatrix, up: WeightMatrix
        var down: WeightMatrix

        func matrix(_ t: LoRATarget) -> WeightMatrix {
            switch t {
            case .q: q
            case .k: k
            case .v: v
            case .o: o
            case .gate: gate
            case .up: up
            case .down: down
            }
        }

        /// Puts `m` in place of target `t`; the fused projections are left as they were until `restack`, so a
        /// merge replaces a layer's targets and then stacks once (stacking matrices that are not side by side
        /// copies them into a new buffer).
        mutating func replace(_ t: LoRATarget, with m: WeightMatrix) {
            set(ProductSlot(t), m)
        }

        /// Rebuilds the fused q|k|v and gate|up from the separate matrices: views where they lie side by side in
        /// one buffer, copies where they do not, nil where their dtypes differ.
        mutating func restack() {
            qkv = LlamaModel.stack([q, k, v])
            gateUp = LlamaModel.stack([gate, up])
        }

        /// Where a matrix the forward pass multiplies by sits: one of the seven targets, or a fused projection.
        enum ProductSlot: Int {
            case q, k, v, o, gate, up, down, qkv, gateUp
            init(_ t: LoRATarget) { self.init(rawValue: t.rawValue)! }  // the seven targets, in LoRATarget's order
        }

        private mutating func set(_ slot: ProductSlot, _ m: WeightMatrix) {
            switch slot {
            case .q: q = m
            case .k: k = m
            case .v: v = m
            case .o: o = m
            case .gate: gate = m
            case .up: up = m
            case .down: down = m
            case .qkv: qkv = m
            case .gateUp: gateUp = m
            }
        }

        /// The matrices the forward pass multiplies by, in the order it runs them: q|k|v fused where stacked,
        /// else each; o; gate|up fused where stacked, else each; down.
        var products: [(slot: ProductSlot, matrix: WeightMatrix)] {
            (qkv.map { [(.qkv, $0)] } ?? [(.q, q), (.k, k), (.v, v)]) + [(.o, o)]
                + (gateUp.map { [(.gateUp, $0)] } ?? [(.gate, gate), (.up, up)]) + [(.down, down)]
        }

        /// Replaces every matrix of `products` by `f` of it (the fused views and the separate ones alike).
        mutating func mapProducts(_ f: (ProductSlot, WeightMatrix) -> WeightMatrix) {
            for (slot, m) in products { set(slot, f(slot, m)) }
        }
    }

    /// One pre-norm decoder block, as the paper writes it:
    ///
    ///     h   = x + attention(rmsNorm₁(x))
    ///     out = h + mlp(rmsNorm₂(h))
    ///
    /// on the residual stream `p.x` (T, H), in place.
    func block(_ li: Int, _ p: ForwardPass) {
        let c = config, layer = layers[li], n = p.tokens, h = c.hiddenSize
        Kernels.rmsNorm(p.x, weight: layer.attnNorm.floats, into: p.xn, width: h, tokens: n, eps: c.rmsNormEps)
        if let lora = p.lora, p.workspace.gated { computeGates(layer: li, mlp: false, p.xn, p.workspace, lora) }
        attention(li, p)
        Kernels.add(p.xn, into: p.x, count: n * h)
        Kernels.rmsNorm(p.x, weight: layer.ffnNorm.floats, into: p.xn, width: h, tokens: n, eps: c.rmsNormEps)
        if let lora = p.lora, p.workspace.gated { computeGates(layer: li, mlp: true, p.xn, p.workspace, lora) }
        mlp(li, p)
        Kernels.add(p.xn, into: p.x, count: n * h)
    }
}
