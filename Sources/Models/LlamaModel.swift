import Foundation
import Kernels

/// Scratch memory of one forward pass, sized for up to `capacity` tokens and grown on demand, so the
/// step loop does not allocate once warm.
public final class ForwardWorkspace: @unchecked Sendable {
    private let config: ModelConfig
    public private(set) var capacity = 0
    private(set) var x = Buffer(floats: 0)        // [T][hidden] residual stream
    private(set) var xn = Buffer(floats: 0)       // [T][hidden] normalised
    private(set) var qkv = Buffer(floats: 0)      // [T][q + 2 kv]
    private(set) var attn = Buffer(floats: 0)     // [T][q]
    private(set) var gateUp = Buffer(floats: 0)   // [T][2 ffn]
    private(set) var act = Buffer(floats: 0)      // [T][ffn]
    private(set) var cos = Buffer(floats: 0)      // [T][headDim / 2]
    private(set) var sin = Buffer(floats: 0)
    private(set) var positions = Buffer(byteCount: 0)
    private(set) var slots = Buffer(byteCount: 0)
    private(set) var tableOffsets = Buffer(byteCount: 0)
    private(set) var blockTables = Buffer(byteCount: 0)
    private(set) var blockTableCapacity = 0
    /// LoRA: runs of tokens sharing an adapter slot and scale, and the shrink/expand intermediates.
    var segments: [LoRASegment] = []
    let loraBatch = Kernels.LoRABatch()

    public init(config: ModelConfig, capacity: Int = 64) {
        self.config = config
        reserve(tokens: capacity)
    }

    /// Makes room for `tokens` tokens (a no-op when there already is).
    public func reserve(tokens: Int) {
        guard tokens > capacity else { return }
        let c = config
        let qDim = c.numHeads * c.headDim, kvDim = c.numKVHeads * c.headDim
        x = Buffer(floats: tokens * c.hiddenSize)
        xn = Buffer(floats: tokens * c.hiddenSize)
        qkv = Buffer(floats: tokens * (qDim + 2 * kvDim))
        attn = Buffer(floats: tokens * qDim)
        gateUp = Buffer(floats: tokens * 2 * c.intermediateSize)
        act = Buffer(floats: tokens * c.intermediateSize)
        cos = Buffer(floats: tokens * c.headDim / 2)
        sin = Buffer(floats: tokens * c.headDim / 2)
        positions = Buffer(byteCount: tokens * 4)
        slots = Buffer(byteCount: tokens * 8)
        tableOffsets = Buffer(byteCount: tokens * 8)
        capacity = tokens
    }

    func reserve(blockTableEntries n: Int) {
        guard n > blockTableCapacity else { return }
        blockTableCapacity = max(n, blockTableCapacity * 2)
        blockTables = Buffer(byteCount: blockTableCapacity * 4)
    }
}

/// A run of consecutive batch tokens that use one adapter slot at one scale multiplier.
struct LoRASegment {
    var start: Int
    var count: Int
    var slot: Int
    var scale: Float
}

/// A Llama-family decoder (Llama 2/3, SmolLM, TinyLlama, Mistral, Qwen2) over weights as a checkpoint
/// stores them: quantized and half-precision matrices stay in their format and are dequantized on the fly;
/// f32 matrices go to BLAS. Q/K rows keep the checkpoint's layout and RoPE rotates accordingly
/// (`ModelConfig.ropeStyle`).
public final class LlamaModel: @unchecked Sendable {
    public let config: ModelConfig
    public let checkpointPath: String

    struct Layer {
        let attnNorm: Buffer
        let ffnNorm: Buffer
        /// Q, K and V stacked row-wise when they share a dtype, else nil (and q/k/v run separately).
        var qkv: WeightMatrix?
        var q: WeightMatrix, k: WeightMatrix, v: WeightMatrix
        let qkvBias: Buffer?
        var o: WeightMatrix
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

        mutating func replace(_ t: LoRATarget, with m: WeightMatrix) {
            switch t {
            case .q: q = m
            case .k: k = m
            case .v: v = m
            case .o: o = m
            case .gate: gate = m
            case .up: up = m
            case .down: down = m
            }
            qkv = LlamaModel.stack([q, k, v])
            gateUp = LlamaModel.stack([gate, up])
        }
    }

    private(set) var layers: [Layer]
    /// The layers as loaded: unmerging restores these (the very same buffers, so bit-exactly).
    private let pristineLayers: [Layer]
    /// The adapter folded into the weights, if any, with its scale multiplier.
    public private(set) var merged: (name: String, scale: Float)?
    let embedding: WeightMatrix
    let output: WeightMatrix
    let outputNorm: Buffer
    /// RoPE inverse frequencies (headDim / 2), scaling applied.
    public let inverseFrequencies: [Float]
    /// Keeps the memory-mapped checkpoint alive while its tensors are borrowed.
    private let checkpoint: any ModelCheckpoint

    public init(checkpoint: any ModelCheckpoint) throws {
        let c = checkpoint.config
        self.config = c
        self.checkpoint = checkpoint
        checkpointPath = checkpoint.path

        func required(_ t: LlamaTensor) throws -> WeightMatrix {
            guard let m = try checkpoint.matrix(t) else {
                throw CheckpointError(file: checkpoint.path, tensor: t.description, problem: "required tensor is missing")
            }
            return m
        }
        func vector(_ t: LlamaTensor, count: Int) throws -> Buffer {
            guard let v = try checkpoint.vector(t) else {
                throw CheckpointError(file: checkpoint.path, tensor: t.description, problem: "required tensor is missing")
            }
            guard v.count == count else {
                throw CheckpointError(file: checkpoint.path, tensor: t.description, problem: "has \(v.count) values, expected \(count)")
            }
            return Self.buffer(v)
        }

        var layers: [Layer] = []
        layers.reserveCapacity(c.numLayers)
        let qDim = c.numHeads * c.headDim, kvDim = c.numKVHeads * c.headDim
        for i in 0..<c.numLayers {
            let q = try required(.q(i)), k = try required(.k(i)), v = try required(.v(i))
            let gate = try required(.gate(i)), up = try required(.up(i))
            var bias: Buffer?
            if c.attentionBias {
                let parts = try [(LlamaTensor.qBias(i), qDim), (.kBias(i), kvDim), (.vBias(i), kvDim)].map { t, n -> [Float] in
                    guard let b = try checkpoint.vector(t) else {
                        throw CheckpointError(file: checkpoint.path, tensor: t.description, problem: "required tensor is missing")
                    }
                    guard b.count == n else {
                        throw CheckpointError(file: checkpoint.path, tensor: t.description, problem: "has \(b.count) values, expected \(n)")
                    }
                    return b
                }
                bias = Self.buffer(parts.flatMap { $0 })
            }
            layers.append(Layer(
                attnNorm: try vector(.attnNorm(i), count: c.hiddenSize),
                ffnNorm: try vector(.ffnNorm(i), count: c.hiddenSize),
                qkv: Self.stack([q, k, v]), q: q, k: k, v: v, qkvBias: bias,
                o: try required(.o(i)),
                gateUp: Self.stack([gate, up]), gate: gate, up: up,
                down: try required(.down(i))))
        }
        self.layers = layers
        pristineLayers = layers
        embedding = try required(.tokenEmbedding)
        output = try checkpoint.matrix(.output) ?? embedding
        outputNorm = try vector(.outputNorm, count: c.hiddenSize)
        inverseFrequencies = Self.inverseFrequencies(config: c, ggufFactors: try checkpoint.ropeFrequencyFactors())
        for m in [embedding, output] where m.rows != c.vocabSize || m.cols != c.hiddenSize {
            throw CheckpointError(file: checkpoint.path, tensor: nil,
                                  problem: "embedding/output matrix is \(m.rows)x\(m.cols), expected \(c.vocabSize)x\(c.hiddenSize)")
        }
    }

    private static func buffer(_ values: [Float]) -> Buffer {
        let b = Buffer(floats: values.count)
        values.withUnsafeBufferPointer { b.floats.update(from: $0.baseAddress!, count: values.count) }
        return b
    }

    /// Stacks matrices of one dtype and width row-wise: zero-copy when they already lie back to back in
    /// one buffer (as GGUF files store them), else copied once into an owned buffer.
    static func stack(_ parts: [WeightMatrix]) -> WeightMatrix? {
        guard let first = parts.first,
              parts.allSatisfy({ $0.dtype == first.dtype && $0.cols == first.cols }) else { return nil }
        let rows = parts.reduce(0) { $0 + $1.rows }
        var contiguous = true
        for (a, b) in zip(parts, parts.dropFirst()) where !(a.storage === b.storage && a.offset + a.byteCount == b.offset) {
            contiguous = false
        }
        if contiguous {
            return WeightMatrix(dtype: first.dtype, rows: rows, cols: first.cols, storage: first.storage, offset: first.offset)
        }
        let buffer = Buffer(byteCount: parts.reduce(0) { $0 + $1.byteCount })
        var at = 0
        for p in parts {
            (buffer.base + at).copyMemory(from: p.data, byteCount: p.byteCount)
            at += p.byteCount
        }
        return WeightMatrix(dtype: first.dtype, rows: rows, cols: first.cols, storage: buffer)
    }

    /// RoPE inverse frequencies θ_i = base^(-2i/d), with linear or Llama 3 scaling, or llama.cpp's
    /// per-frequency divisors (`rope_freqs.weight`) when the GGUF carries them.
    static func inverseFrequencies(config c: ModelConfig, ggufFactors: [Float]?) -> [Float] {
        let half = c.headDim / 2
        var inv = (0..<half).map { i in Float(1.0 / pow(c.ropeTheta, Double(2 * i) / Double(c.headDim))) }
        if let ggufFactors, ggufFactors.count == half {
            for i in 0..<half { inv[i] /= ggufFactors[i] }
            return inv
        }
        switch c.ropeScaling {
        case .none:
            break
        case .linear(let factor):
            for i in 0..<half { inv[i] /= Float(factor) }
        case .llama3(let factor, let low, let high, let original):
            let lowWavelen = Double(original) / low
            let highWavelen = Double(original) / high
            for i in 0..<half {
                let f = Double(inv[i])
                let wavelen = 2 * Double.pi / f
                if wavelen > lowWavelen {
                    inv[i] = Float(f / factor)
                } else if wavelen >= highWavelen {
                    let smooth = (Double(original) / wavelen - low) / (high - low)
                    inv[i] = Float((1 - smooth) * f / factor + smooth * f)
                }
            }
        }
        return inv
    }

    /// Bytes of weights one decode step reads (every matrix once): the numerator of the memory-bandwidth
    /// bound for batch-1 decode.
    public var weightBytesPerToken: Int {
        var n = output.byteCount + config.hiddenSize * 4 * (2 * config.numLayers + 1)
        for l in layers { n += l.q.byteCount + l.k.byteCount + l.v.byteCount + l.o.byteCount + l.gate.byteCount + l.up.byteCount + l.down.byteCount }
        return n
    }

    /// Runs the batch's tokens through the model: writes their K/V into `kv` (at the batch's slots) and the
    /// logits of `batch.logitRows` into `logits` ([logitRows.count][vocabSize]).
    public func forward(_ batch: ForwardBatch, kv: PagedKVStorage, workspace ws: ForwardWorkspace,
                        scratch: ScratchArena, logits: UnsafeMutablePointer<Float>, lora: LoRASlots? = nil) {
        let n = batch.count
        guard n > 0 else { return }
        let c = config
        precondition(kv.numLayers == c.numLayers && kv.numKVHeads == c.numKVHeads && kv.headDim == c.headDim, "KV cache does not fit the model")
        ws.reserve(tokens: n)
        ws.reserve(blockTableEntries: batch.blockTables.count)
        let h = c.hiddenSize, qDim = c.numHeads * c.headDim, kvDim = c.numKVHeads * c.headDim
        let qkvDim = qDim + 2 * kvDim, ffn = c.intermediateSize
        let x = ws.x.floats, xn = ws.xn.floats, qkv = ws.qkv.floats, attn = ws.attn.floats
        let gateUp = ws.gateUp.floats, act = ws.act.floats
        let positions = ws.positions.base.assumingMemoryBound(to: Int32.self)
        let slots = ws.slots.base.assumingMemoryBound(to: Int64.self)
        let tableOffsets = ws.tableOffsets.base.assumingMemoryBound(to: Int64.self)
        let tables = ws.blockTables.base.assumingMemoryBound(to: Int32.self)
        batch.positions.withUnsafeBufferPointer { positions.update(from: $0.baseAddress!, count: n) }
        batch.slots.withUnsafeBufferPointer { slots.update(from: $0.baseAddress!, count: n) }
        batch.tableOffsets.withUnsafeBufferPointer { tableOffsets.update(from: $0.baseAddress!, count: n) }
        batch.blockTables.withUnsafeBufferPointer { tables.update(from: $0.baseAddress!, count: $0.count) }

        // Embedding rows.
        for t in 0..<n {
            let id = Int(batch.tokens[t])
            precondition(id >= 0 && id < c.vocabSize, "token id out of range")
            Kernels.dequantizeRow(embedding, row: id, into: x + t * h)
        }
        inverseFrequencies.withUnsafeBufferPointer {
            Kernels.ropeTables(positions: UnsafeBufferPointer(start: positions, count: n), inverseFrequencies: $0,
                               cos: ws.cos.floats, sin: ws.sin.floats)
        }
        let pairing: RopePairing = c.ropeStyle == .halves ? .halves : .adjacent
        let layout = PagedBatchLayout(positions: UnsafeBufferPointer(start: positions, count: n),
                                      slots: UnsafeBufferPointer(start: slots, count: n),
                                      tableOffsets: UnsafeBufferPointer(start: tableOffsets, count: n),
                                      blockTables: UnsafeBufferPointer(start: tables, count: batch.blockTables.count))
        let lora = lora.flatMap { prepareLoRA(batch, $0, ws) }
        let scale = 1 / Float(c.headDim).squareRoot()

        for (li, layer) in layers.enumerated() {
            // Attention block.
            Kernels.rmsNorm(x, weight: layer.attnNorm.floats, into: xn, width: h, tokens: n, eps: c.rmsNormEps)
            if let fused = layer.qkv {
                Kernels.matmul(fused, xn, ldx: h, ntok: n, qkv, ldy: qkvDim, scratch: scratch)
            } else {
                Kernels.matmul(layer.q, xn, ldx: h, ntok: n, qkv, ldy: qkvDim, scratch: scratch)
                Kernels.matmul(layer.k, xn, ldx: h, ntok: n, qkv + qDim, ldy: qkvDim, scratch: scratch)
                Kernels.matmul(layer.v, xn, ldx: h, ntok: n, qkv + qDim + kvDim, ldy: qkvDim, scratch: scratch)
            }
            if let lora {
                applyLoRA(.q, layer: li, xn, ldx: h, qkv, ldy: qkvDim, ws, lora)
                applyLoRA(.k, layer: li, xn, ldx: h, qkv + qDim, ldy: qkvDim, ws, lora)
                applyLoRA(.v, layer: li, xn, ldx: h, qkv + qDim + kvDim, ldy: qkvDim, ws, lora)
            }
            if let bias = layer.qkvBias {
                for t in 0..<n { Kernels.add(bias.floats, into: qkv + t * qkvDim, count: qkvDim) }
            }
            Kernels.applyRope(qkv, ldx: qkvDim, tokens: n, heads: c.numHeads, headDim: c.headDim,
                              cos: ws.cos.floats, sin: ws.sin.floats, pairing: pairing)
            Kernels.applyRope(qkv + qDim, ldx: qkvDim, tokens: n, heads: c.numKVHeads, headDim: c.headDim,
                              cos: ws.cos.floats, sin: ws.sin.floats, pairing: pairing)
            Kernels.writeKV(kv, layer: li, slots: layout.slots, keys: qkv + qDim, ldk: qkvDim, values: qkv + qDim + kvDim, ldv: qkvDim)
            Kernels.pagedAttention(query: qkv, ldq: qkvDim, heads: c.numHeads, layout: layout, kv: kv, layer: li,
                                   scale: scale, into: attn, ldo: qDim)
            Kernels.matmul(layer.o, attn, ldx: qDim, ntok: n, xn, ldy: h, scratch: scratch)
            if let lora { applyLoRA(.o, layer: li, attn, ldx: qDim, xn, ldy: h, ws, lora) }
            Kernels.add(xn, into: x, count: n * h)

            // Feed-forward block.
            Kernels.rmsNorm(x, weight: layer.ffnNorm.floats, into: xn, width: h, tokens: n, eps: c.rmsNormEps)
            if let fused = layer.gateUp {
                Kernels.matmul(fused, xn, ldx: h, ntok: n, gateUp, ldy: 2 * ffn, scratch: scratch)
            } else {
                Kernels.matmul(layer.gate, xn, ldx: h, ntok: n, gateUp, ldy: 2 * ffn, scratch: scratch)
                Kernels.matmul(layer.up, xn, ldx: h, ntok: n, gateUp + ffn, ldy: 2 * ffn, scratch: scratch)
            }
            if let lora {
                applyLoRA(.gate, layer: li, xn, ldx: h, gateUp, ldy: 2 * ffn, ws, lora)
                applyLoRA(.up, layer: li, xn, ldx: h, gateUp + ffn, ldy: 2 * ffn, ws, lora)
            }
            Kernels.siluMul(gate: gateUp, up: gateUp + ffn, gateUpStride: 2 * ffn, into: act, width: ffn, tokens: n)
            Kernels.matmul(layer.down, act, ldx: ffn, ntok: n, xn, ldy: h, scratch: scratch)
            if let lora { applyLoRA(.down, layer: li, act, ldx: ffn, xn, ldy: h, ws, lora) }
            Kernels.add(xn, into: x, count: n * h)
        }

        // Final norm and logits, only for the rows asked for.
        let rows = batch.logitRows.count
        guard rows > 0 else { return }
        for (r, t) in batch.logitRows.enumerated() {
            Kernels.rmsNorm(x + t * h, weight: outputNorm.floats, into: xn + r * h, width: h, tokens: 1, eps: c.rmsNormEps)
        }
        Kernels.matmul(output, xn, ldx: h, ntok: rows, logits, ldy: c.vocabSize, scratch: scratch)
    }

    // MARK: LoRA

    /// Finds the runs of tokens that use an adapter and sizes the intermediates; nil when no token does.
    private func prepareLoRA(_ batch: ForwardBatch, _ lora: LoRASlots, _ ws: ForwardWorkspace) -> LoRASlots? {
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
    private func applyLoRA(_ target: LoRATarget, layer: Int, _ x: UnsafePointer<Float>, ldx: Int,
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

    /// Per layer, the merge workspace's buffers by group: q|k|v, o, gate|up, down — rows in that order, so
    /// merged projections that were stacked stay one matmul without a copy.
    private var mergeSpace: [[Int: Buffer]] = []
    private let mergeScratch = ScratchArena()

    /// Bytes held by the merge workspace (allocated by the first merge that needs each part, then reused).
    public var mergeWorkspaceBytes: Int { mergeSpace.joined().reduce(0) { $0 + $1.value.byteCount } }

    /// Frees the merge workspace (only while nothing is merged).
    public func releaseMergeWorkspace() {
        precondition(merged == nil, "unmerge the current adapter first")
        mergeSpace = []
    }

    /// The workspace view a merge of `t` in layer `li` writes: a dense f32 matrix of the base matrix's shape.
    private func mergeTarget(layer li: Int, _ t: LoRATarget) -> WeightMatrix {
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
