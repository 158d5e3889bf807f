import Dispatch
import Kernels

// The merged path (dLoRA's merged mode): one adapter folded into the base weights, so its requests run with
// no LoRA work; unmerging swaps the loaded weights back in.

extension LoRATarget {
    /// The targets a layer runs as one stacked product (`Layer.qkv`, `Layer.gateUp`), rows in this order; the merge
    /// workspace holds each group in one buffer, so a merged group stacks without a copy.
    static let fusedGroups: [[LoRATarget]] = [[.q, .k, .v], [.gate, .up]]
}

/// How a merged matrix W + s·B·A is stored.
public enum MergePrecision: String, Sendable, CaseIterable {
    /// Dense f32: exact up to f32 rounding, and 6.4× the bytes of a Q4_1 base matrix, so on a quantized base a
    /// merged step reads far more than an unmerged one (the default).
    case f32
    /// Re-quantized to Q8_0 (8.5 bits per weight, 1.7× Q4_1's bytes) after the f32 update, read by the same
    /// quantized kernels as the base. The pristine matrices stay loaded, so unmerging is still exact; a merged
    /// step's outputs differ from the unmerged path's by Q8_0's rounding of W + s·B·A
    /// (docs/design/merge-precision.md measures it against the PEFT goldens).
    case q8_0
    /// Dense IEEE half (2 bytes per weight, 3.2× Q4_1's): W + s·B·A rounded once to f16 (11 significant bits, so an
    /// adapter's update survives where Q8_0's 255 levels per block lose much of a small one). For f32 products, whose
    /// kernels widen f16 rows with one conversion per 16 weights: a merged step there costs about the base's from
    /// batch 8 up, where a dense f32 merge costs half again as much (docs/design/merge-precision.md). A matrix whose
    /// merged values leave f16's range (|x| > 65504) stays f32.
    case f16
}

extension LlamaModel {
    /// Folds an adapter into the weights: every matrix it targets becomes W + s·B·A (W dequantized exactly
    /// from its stored form, the update in f32), stored as `mergePrecision` says, so requests of that adapter
    /// run with no LoRA work. Only one adapter can be merged at a time. The merged matrices live in a workspace
    /// kept across merges (`mergeWorkspaceBytes`), so a switch costs one pass per matrix (`Kernels.mergeRows`: each
    /// row dequantized, updated by its rank-k sum and stored, f32 or Q8_0, while it sits in cache; f16 through an f32
    /// staging copy, whose range it checks), not fresh allocations.
    public func merge(_ adapter: LoRAWeights, scale: Float = 1) {
        precondition(merged == nil, "unmerge the current adapter first")
        let s = adapter.scale * scale
        for li in layers.indices {
            var replaced = false
            for t in LoRATarget.allCases {
                guard let m = adapter.module(layer: li, target: t) else { continue }
                let w = pristineLayers[li].matrix(t)
                precondition(w.rows == m.outFeatures && w.cols == m.inFeatures, "adapter does not fit the model")
                let target: WeightMatrix
                if mergePrecision == .f16 {
                    target = mergeHalf(layer: li, t, w, m, scale: s)
                } else {
                    // f32 or Q8_0 (a width off Q8_0's blocks stays f32): each row dequantized, updated and stored
                    // while it sits in cache (one pass).
                    let dtype: DType = mergePrecision == .q8_0 && w.cols % DType.q8_0.blockSize == 0 ? .q8_0 : .f32
                    target = mergeTarget(layer: li, t, dtype: dtype)
                    m.merge(w, scale: s, as: dtype, into: UnsafeMutableRawPointer(mutating: target.data), rowBytes: target.rowBytes,
                            scratch: mergeScratch)
                }
                layers[li].replace(t, with: target)
                replaced = true
            }
            guard replaced else { continue }
            completeFusedGroups(layer: li, adapter)
            layers[li].restack()
            if bf16Products { attachMergePacks(layer: li) }
            if int8Products { attachInt8Packs(layer: li) }
        }
        merged = (adapter.name, scale)
    }

    /// An f16 merge of target t: W + s·B·A computed in f32 into the staging matrix (`Kernels.mergeRows`), whose range
    /// decides the stored type: f16 (rounded once), or f32 where a value is past f16's range.
    func mergeHalf(layer li: Int, _ t: LoRATarget, _ w: WeightMatrix, _ m: LoRAModule, scale s: Float) -> WeightMatrix {
        let count = w.rows * w.cols
        let staging = mergeStaging.bytes(count * MemoryLayout<Float>.stride)
        m.merge(w, scale: s, as: .f32, into: staging, rowBytes: w.cols * MemoryLayout<Float>.stride, scratch: mergeScratch)
        let out = staging.assumingMemoryBound(to: Float.self)
        let fits = Self.fitsF16(out, count: count)
        let target = mergeTarget(layer: li, t, dtype: fits ? .f16 : .f32)
        if fits {
            Kernels.quantizeRows(out, rows: w.rows, cols: w.cols, to: .f16, into: UnsafeMutableRawPointer(mutating: target.data))
        } else {
            UnsafeMutableRawPointer(mutating: target.data).copyMemory(from: out, byteCount: count * MemoryLayout<Float>.stride)
        }
        return target
    }

    /// Whether every value is within f16's finite range (|v| ≤ 65504; NaN is not): the largest magnitude's bit
    /// pattern, an integer maximum over the values' bits with the sign cleared.
    static func fitsF16(_ x: UnsafePointer<Float>, count: Int) -> Bool {
        let bits = UnsafeRawPointer(x).assumingMemoryBound(to: UInt32.self)
        var largest: UInt32 = 0
        for i in 0..<count { largest = max(largest, bits[i] & 0x7FFF_FFFF) }
        return largest <= 0x477F_E000  // 65504
    }

    /// A fused projection (q|k|v, gate|up) of which the adapter merges some members stays one product only if
    /// its members lie side by side in one buffer; stacking them otherwise copies all of them into a new buffer on
    /// every merge (on the F32 SmolLM2 base, 340 MB allocated, faulted in and copied per merge of all seven
    /// targets, 1.6–1.8 s of a 3.3 s first merge). So a member the adapter leaves alone is copied into its place
    /// in the group's workspace buffer, where that is exact: its stored dtype is the merged members' (an F32 base
    /// merged in f32). Otherwise (a quantized base) the members keep their own dtypes and run as separate products.
    func completeFusedGroups(layer li: Int, _ adapter: LoRAWeights) {
        let p = pristineLayers[li]
        for group in LoRATarget.fusedGroups {
            let merged = group.filter { adapter.module(layer: li, target: $0) != nil }
            guard let first = merged.first, merged.count < group.count else { continue }
            let dtype = layers[li].matrix(first).dtype
            for t in group where adapter.module(layer: li, target: t) == nil && p.matrix(t).dtype == dtype {
                let w = p.matrix(t), target = mergeTarget(layer: li, t, dtype: dtype)
                UnsafeMutableRawPointer(mutating: target.data).copyMemory(from: w.data, byteCount: w.byteCount)
                layers[li].replace(t, with: target)
            }
        }
    }

    /// With bf16 products on, gives every matrix a merged layer's products read a packed copy, as
    /// `setBF16Products` gave the loaded ones: a Q8_0-merged matrix its codes (used exactly), an f32-merged one
    /// its values rounded to bf16, and a loaded matrix that a merge took out of its fused projection (whose pack
    /// covered it) its own. The copies are kept per layer, matrix and type, and refilled by later merges; a
    /// loaded matrix's never changes.
    func attachMergePacks(layer li: Int) {
        if mergePacks.isEmpty { mergePacks = Array(repeating: [:], count: layers.count) }
        layers[li].mapProducts { slot, m in
            if m.bf16 != nil { return m }
            let same = loadedMatrix(viewedBy: m, layer: li)
            if let packed = same?.bf16 { return m.withBF16(packed) }  // a loaded matrix (or fused view) with its pack
            let key = Self.mergePackKey(slot, m, viewsLoadedBytes: same != nil)
            if let cached = mergePacks[li][key] {
                if same == nil { cached.refill(from: m, scratch: mergeStaging) }
                return m.withBF16(cached)
            }
            let packed = m.packedBF16()
            mergePacks[li][key] = packed
            return m.withBF16(packed)
        }
    }

    /// With int8 products on, gives every matrix a merged layer's products read an int8 copy where it has codes, as
    /// `setInt8Products` gave the loaded ones: a view of a loaded matrix's bytes takes that matrix's copy, or (a
    /// member a merge took out of its fused projection, whose copy covered it) one of its own, made once and kept (a
    /// loaded matrix's bytes never change); a Q8_0-merged matrix a copy refilled by every merge. f32- and f16-merged
    /// matrices run in f32.
    func attachInt8Packs(layer li: Int) {
        if int8MergePacks.isEmpty { int8MergePacks = Array(repeating: [:], count: layers.count) }
        layers[li].mapProducts { slot, m in
            guard m.int8 == nil, coded(m) else { return m }
            let same = loadedMatrix(viewedBy: m, layer: li)
            if let packed = same?.int8 { return m.withInt8(packed) }
            let key = Self.mergePackKey(slot, m, viewsLoadedBytes: same != nil)
            if let cached = int8MergePacks[li][key] {
                if same == nil { cached.refill(from: m) }
                return m.withInt8(cached)
            }
            let packed = Kernels.PackedInt8(m)
            int8MergePacks[li][key] = packed
            return m.withInt8(packed)
        }
    }

    /// The loaded matrix of layer `li` (a fused view included) whose bytes `m` is, if any: a matrix a merge left alone.
    func loadedMatrix(viewedBy m: WeightMatrix, layer li: Int) -> WeightMatrix? {
        let p = pristineLayers[li]
        let loaded = [p.q, p.k, p.v, p.o, p.gate, p.up, p.down] + [p.qkv, p.gateUp].compactMap { $0 }
        return loaded.first { $0.storage === m.storage && $0.offset == m.offset && $0.rows == m.rows && $0.dtype == m.dtype }
    }

    /// The key a merged layer's packed copy is kept under: its slot, its stored type, and whether it views loaded bytes
    /// (made once) or a merge's (refilled by each merge).
    static func mergePackKey(_ slot: Layer.ProductSlot, _ m: WeightMatrix, viewsLoadedBytes: Bool) -> Int {
        slot.rawValue | Int(m.dtype.rawValue) << 8 | (viewsLoadedBytes ? 1 << 20 : 0)
    }

    /// Bytes held by the merge workspace (allocated by the first merge that needs each part, then reused).
    public var mergeWorkspaceBytes: Int { mergeSpace.joined().reduce(0) { $0 + $1.value.byteCount } }

    /// Frees the merge workspace (only while nothing is merged).
    public func releaseMergeWorkspace() {
        precondition(merged == nil, "unmerge the current adapter first")
        mergeSpace = []
        mergeStaging = ScratchArena()
        mergePacks = []
        int8MergePacks = []
    }

    /// The workspace view a merge of `t` in layer `li` writes: a `dtype` matrix of the base matrix's shape.
    /// Each dtype has its own buffers (a model merged in f32 once and in Q8_0 later keeps both until
    /// `releaseMergeWorkspace`).
    func mergeTarget(layer li: Int, _ t: LoRATarget, dtype: DType = .f32) -> WeightMatrix {
        let p = pristineLayers[li]
        let group = LoRATarget.fusedGroups.first { $0.contains(t) } ?? [t]
        let cols = p.matrix(t).cols
        let rowBytes = dtype.byteCount(elements: cols)!
        if mergeSpace.isEmpty { mergeSpace = Array(repeating: [:], count: layers.count) }
        let key = group[0].rawValue | Int(dtype.rawValue) << 8
        let buffer: Buffer
        if let b = mergeSpace[li][key] {
            buffer = b
        } else {
            precondition(group.allSatisfy { p.matrix($0).cols == cols })
            buffer = Buffer(byteCount: group.reduce(0) { $0 + p.matrix($1).rows } * rowBytes)
            mergeSpace[li][key] = buffer
        }
        let offset = group.prefix { $0 != t }.reduce(0) { $0 + p.matrix($1).rows * rowBytes }
        return WeightMatrix(dtype: dtype, rows: p.matrix(t).rows, cols: cols, storage: buffer, offset: offset)
    }

    /// Restores the weights as loaded (the original buffers: bit-exact).
    public func unmerge() {
        layers = pristineLayers
        merged = nil
    }
}

/// What switching to merged mode and back costs on one model (`LlamaModel.measureSwitchCost`): a merge takes
/// `secondsPerElement` per base element it rewrites (dequantizing, storing, packing: the same for any adapter)
/// plus `secondsPerMultiplyAdd` per multiply-add of its update (elements × padded rank), and an unmerge
/// `unmergeSeconds`. The first merge of a matrix also allocates and faults in its part of the merge workspace:
/// `allocationSecondsPerElement` more per element, once.
public struct SwitchCost: Sendable, Equatable {
    public var secondsPerElement: Double
    public var secondsPerMultiplyAdd: Double
    public var unmergeSeconds: Double
    public var allocationSecondsPerElement: Double
}

extension LlamaModel {
    /// What a switch costs on this model as loaded (its matrices' formats, `mergePrecision`, the products'
    /// precision, this machine's memory). Synthetic adapters of ranks 16 and 64 on every target of the first
    /// layers (at least `sampleElements` base elements, so a merge streams from memory as a whole-model merge
    /// does, or every layer) are merged and unmerged `rounds` times each, alternating, after one merge that
    /// allocates the workspace; the two ranks' median merges separate the per-element cost from the
    /// per-multiply-add one, and the first merge's excess over the median of its rank prices the allocation.
    /// The workspace is released again unless an earlier merge had allocated it. Nil when no matrix takes an
    /// adapter, `rounds` < 1, or an adapter is merged. The engine's scheduler starts its switch-cost estimate
    /// from this instead of one CPU's figure for a Q4_1 base (docs/design/scheduler.md).
    public func measureSwitchCost(sampleElements: Int = 16 << 20, rounds: Int = 3) -> SwitchCost? {
        guard merged == nil, rounds >= 1 else { return nil }
        guard let low = switchProbe(rank: 16, sampleElements: sampleElements),
              let high = switchProbe(rank: 64, sampleElements: sampleElements) else { return nil }
        let hadWorkspace = mergeWorkspaceBytes > 0 || !mergePacks.isEmpty
        defer { if !hadWorkspace { releaseMergeWorkspace() } }
        func now() -> UInt64 { DispatchTime.now().uptimeNanoseconds }
        let first = now()
        merge(high.weights)  // allocates and faults the workspace in (the larger probe's covers the smaller's)
        let firstSeconds = Double(now() &- first) / 1e9
        unmerge()
        // The two ranks alternate, so a drift of the machine's speed meets both alike.
        var merges: [[Double]] = [[], []], unmerges: [Double] = []
        for _ in 0..<rounds {
            for (k, probe) in [low.weights, high.weights].enumerated() {
                let t0 = now()
                merge(probe)
                let t1 = now()
                unmerge()
                let t2 = now()
                merges[k].append(Double(t1 &- t0) / 1e9)
                unmerges.append(Double(t2 &- t1) / 1e9)
            }
        }
        let median = { (v: [Double]) in v.sorted()[v.count / 2] }
        let elements = Double(low.elements)
        // t(r) = elements · (perElement + r · perMultiplyAdd), fitted through the two ranks (neither below 0).
        let perMultiplyAdd = max(0, (median(merges[1]) - median(merges[0])) / (elements * 48))
        let perElement = max(0, median(merges[0]) / elements - 16 * perMultiplyAdd)
        // What the first merge took beyond a merge into the workspace it left (nothing when it was there already).
        let allocation = hadWorkspace ? 0 : max(0, firstSeconds - median(merges[1])) / elements
        return SwitchCost(secondsPerElement: perElement, secondsPerMultiplyAdd: perMultiplyAdd, unmergeSeconds: median(unmerges),
                          allocationSecondsPerElement: allocation)
    }

    /// A synthetic adapter of `rank` (a multiple of 16) on every target of the first layers holding at least
    /// `sampleElements` base elements, and the elements it targets.
    private func switchProbe(rank: Int, sampleElements: Int) -> (weights: LoRAWeights, elements: Int)? {
        var modules: [[LoRAModule?]] = []
        var elements = 0
        var values: [Float] = []
        for layer in pristineLayers where elements < sampleElements {
            var row = [LoRAModule?](repeating: nil, count: LoRATarget.allCases.count)
            for t in LoRATarget.allCases {
                let w = layer.matrix(t)
                guard w.cols % 16 == 0 else { continue }
                // Small non-zero factors, held in bf16 as adapters are (their values do not change the work).
                let n = rank * (w.cols + w.rows)
                if values.count < n { values = (0..<n).map { Float(($0 % 7) - 3) / 1024 } }
                row[t.rawValue] = values.withUnsafeBufferPointer { f in
                    LoRAModule(rank: rank, inFeatures: w.cols, outFeatures: w.rows, a: f.baseAddress!,
                               b: f.baseAddress! + rank * w.cols, dtype: .bf16)
                }
                elements += w.rows * w.cols
            }
            modules.append(row)
        }
        guard elements > 0 else { return nil }
        return (LoRAWeights(name: "switch-cost probe", scale: 1, modules: modules), elements)
    }
}
