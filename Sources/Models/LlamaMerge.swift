import Kernels

// The merged path (dLoRA's merged mode): one adapter folded into the base weights, so its requests run with
// no LoRA work; unmerging swaps the loaded weights back in.

extension LlamaModel {
    /// Folds an adapter into the weights: every matrix it targets becomes a dense f32 W + s·B·A (W dequantized
    /// exactly from its stored form), so requests of that adapter run with no LoRA work. Only one adapter
    /// can be merged at a time. The dense matrices live in a workspace kept across merges (`mergeWorkspaceBytes`),
    /// so a switch costs a dequantization and a rank-k update per matrix, not fresh allocations.
    public func merge(_ adapter: LoRAWeights, scale: Float = 1) {
        precondition(merged == nil, "unmerge the current adapter first")
        let s = adapter.scale * scale
        for li in layers.indices {
            for t in LoRATarget.allCases {
                guard let m = adapter.module(layer: li, target: t) else { continue }
                let w = pristineLayers[li].matrix(t)
                precondition(w.rows == m.outFeatures && w.cols == m.inFeatures, "adapter does not fit the model")
                let dense = mergeTarget(layer: li, t)
                let out = UnsafeMutablePointer(mutating: dense.data.assumingMemoryBound(to: Float.self))
                Kernels.dequantize(w, into: out)
                m.addDelta(scale: s, into: out, scratch: mergeScratch)
                layers[li].replace(t, with: dense)
            }
        }
        merged = (adapter.name, scale)
    }

    /// Bytes held by the merge workspace (allocated by the first merge that needs each part, then reused).
    public var mergeWorkspaceBytes: Int { mergeSpace.joined().reduce(0) { $0 + $1.value.byteCount } }

    /// Frees the merge workspace (only while nothing is merged).
    public func releaseMergeWorkspace() {
        precondition(merged == nil, "unmerge the current adapter first")
        mergeSpace = []
    }

    /// The workspace view a merge of `t` in layer `li` writes: a dense f32 matrix of the base matrix's shape.
    func mergeTarget(layer li: Int, _ t: LoRATarget) -> WeightMatrix {
        let p = pristineLayers[li]
        let group: [LoRATarget] = switch t {
        case .q, .k, .v: [.q, .k, .v]
        case .gate, .up: [.gate, .up]
        default: [t]
        }
        let cols = p.matrix(t).cols
        if mergeSpace.isEmpty { mergeSpace = Array(repeating: [:], count: layers.count) }
        let buffer: Buffer
        if let b = mergeSpace[li][group[0].rawValue] {
            buffer = b
        } else {
            precondition(group.allSatisfy { p.matrix($0).cols == cols })
            buffer = Buffer(floats: group.reduce(0) { $0 + p.matrix($1).rows } * cols)
            mergeSpace[li][group[0].rawValue] = buffer
        }
        let offset = group.prefix { $0 != t }.reduce(0) { $0 + p.matrix($1).rows * cols * MemoryLayout<Float>.stride }
        return WeightMatrix(dtype: .f32, rows: p.matrix(t).rows, cols: cols, storage: buffer, offset: offset)
    }

    /// Restores the weights as loaded (the original buffers: bit-exact).
    public func unmerge() {
        layers = pristineLayers
        merged = nil
    }
}
