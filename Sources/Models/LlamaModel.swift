import Foundation
import Kernels

/// A Llama-family decoder (Llama 2/3, SmolLM, TinyLlama, Mistral, Qwen2) over weights as a checkpoint
/// stores them: quantized and half-precision matrices stay in their format and are dequantized on the fly;
/// f32 matrices go to BLAS. Q/K rows keep the checkpoint's layout and RoPE rotates accordingly
/// (`ModelConfig.ropeStyle`).
public final class LlamaModel: @unchecked Sendable {
    public let config: ModelConfig
    public let checkpointPath: String

    /// The decoder blocks' weights (LlamaBlock.swift); a merged adapter replaces some of their matrices.
    var layers: [Layer]
    /// The layers as loaded: unmerging restores these (the very same buffers, so bit-exactly).
    var pristineLayers: [Layer]
    /// The adapter folded into the weights, if any, with its scale multiplier (LlamaMerge.swift).
    public internal(set) var merged: (name: String, scale: Float)?
    /// Per layer, the merge workspace's buffers by group: q|k|v, o, gate|up, down — rows in that order, so
    /// merged projections that were stacked stay one matmul without a copy.
    var mergeSpace: [[Int: Buffer]] = []
    let mergeScratch = ScratchArena()
    /// The f32 sum of a merge whose matrices are stored quantized (one matrix at a time).
    var mergeStaging = ScratchArena()
    /// Per layer, with bf16 products on, the packed copies a merged layer's products read (`attachMergePacks`),
    /// kept across merges like `mergeSpace`.
    var mergePacks: [[Int: Kernels.PackedBF16]] = []
    /// Per layer, matrix and type, with int8 products on, the int8 copies a merged layer's products read
    /// (`attachInt8Packs`), kept across merges like `mergePacks`.
    var int8MergePacks: [[Int: Kernels.PackedInt8]] = []
    /// How the next merge stores its matrices (LlamaMerge.swift).
    public var mergePrecision: MergePrecision = .f32
    let embedding: WeightMatrix
    var output: WeightMatrix
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
                o: try required(.o(i)), oBias: c.outputBias ? try vector(.oBias(i), count: c.hiddenSize) : nil,
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
    public static func inverseFrequencies(config c: ModelConfig, ggufFactors: [Float]?) -> [Float] {
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

    /// Whether every matrix of the blocks is stored in f32 (a full-precision checkpoint), as opposed to
    /// quantized or half precision. `--kv-cache-dtype auto` keeps K/V at the weights' precision from it.
    public var storesF32Weights: Bool {
        pristineLayers.allSatisfy { l in LoRATarget.allCases.allSatisfy { l.matrix($0).dtype == .f32 } }
    }

    /// Whether bf16 products (`setBF16Products`) would use every weight exactly: each matrix of the blocks and the
    /// LM head is Q4_0, Q4_1 or Q8_0 (whose integer codes the products take as they are) or BF16.
    public var weightsExactInBF16Products: Bool {
        func exact(_ m: WeightMatrix) -> Bool { [.q4_0, .q4_1, .q8_0, .bf16].contains(m.dtype) }
        return exact(output) && pristineLayers.allSatisfy { l in LoRATarget.allCases.allSatisfy { exact(l.matrix($0)) } }
    }

    /// The merge precision that suits how this model runs its products (`--merge-precision auto`). With bf16
    /// products a merged matrix is read from a bf16 pack whatever it is stored as, so f32, the exact one. With f32
    /// products on a quantized base a dense f32 merge reads 6.4× a Q4_1 matrix's bytes (+57–75 % a step at batch 8 on
    /// all seven targets) and an f16 one 3.2× (+4 %), at a 30× smaller logit error than Q8_0's
    /// (docs/design/merge-precision.md), so f16. With int8 products Q8_0, whose codes the merged products read like
    /// the base's (an f16 merge would run its products in f32): its rounding (0.15–0.19 of a logit on the PEFT goldens)
    /// is below the int8 activations' own (0.88). An f32 or f16 base: f32.
    public var preferredMergePrecision: MergePrecision {
        guard !bf16Products else { return .f32 }
        if int8Products { return .q8_0 }
        return pristineLayers.allSatisfy { l in LoRATarget.allCases.allSatisfy { coded(l.matrix($0)) } } ? .f16 : .f32
    }

    /// Whether every product the forward pass now runs on the model's own matrices is in bf16 (merged ones
    /// included: `setBF16Products`, `merge`).
    public var everyProductInBF16: Bool {
        output.bf16 != nil && layers.allSatisfy { l in l.products.allSatisfy { $0.matrix.bf16 != nil } }
    }

    /// Whether the base model's products run in bf16 (`setBF16Products`).
    public var bf16Products: Bool { output.bf16 != nil }

    /// Runs every product of the base model — the blocks' projections and the LM head — in bf16, or in f32
    /// again: a Q4_0, Q4_1 or Q8_0 matrix keeps its integer codes and block scales, repacked into panels (its own bytes
    /// per weight beside the checkpoint's), which the products use exactly; any other is dequantized exactly,
    /// rounded to bf16 once and packed (2 bytes per weight). The activations are rounded per product, the
    /// products are exact and the sums f32 (`Kernels.matmulBF16`, AVX-512 BF16's VDPBF16PS: twice the
    /// multiply-adds per instruction of f32 FMAs).
    /// Every token count goes through the same kernel, so batch invariance holds. LoRA paths stay f32; a merge
    /// packs its matrices too (`merge`). Not while an adapter is merged.
    public func setBF16Products(_ on: Bool) {
        precondition(merged == nil && !int8Products, "bf16 products switched on a merged model or beside int8 products")
        guard on != bf16Products else { return }
        func pack(_ m: WeightMatrix) -> WeightMatrix { m.withBF16(on ? m.packedBF16() : nil) }
        for i in pristineLayers.indices { pristineLayers[i].mapProducts { pack($1) } }
        layers = pristineLayers
        output = pack(output)
        mergePacks = []
    }

    /// Whether the base model's products run with int8 activations (`setInt8Products`).
    public internal(set) var int8Products = false

    /// Whether int8 products (`setInt8Products`) would cover every product: each matrix of the blocks and the LM head
    /// is Q4_0, Q4_1 or Q8_0.
    public var weightsHaveInt8Codes: Bool {
        coded(output) && pristineLayers.allSatisfy { l in LoRATarget.allCases.allSatisfy { coded(l.matrix($0)) } }
    }

    /// Whether int8 products would cover any product at all (some matrix is Q4_0, Q4_1 or Q8_0).
    public var someWeightsHaveInt8Codes: Bool {
        coded(output) || pristineLayers.contains { l in LoRATarget.allCases.contains { coded(l.matrix($0)) } }
    }

    /// Whether `m` holds Q4_0, Q4_1 or Q8_0 codes.
    func coded(_ m: WeightMatrix) -> Bool { [.q4_0, .q4_1, .q8_0].contains(m.dtype) }

    /// Runs the base model's products on Q4_0, Q4_1 and Q8_0 matrices — the blocks' projections and the LM head —
    /// with each token's activations quantized to int8 per block of 32 (llama.cpp's Q8 activations) and multiplied
    /// with the codes exactly on AVX-512 VNNI or its AVX2 twin (`Kernels.matmulInt8`; the codes regrouped into a copy
    /// of the checkpoint's size); other matrices keep f32 products. Every token count goes through the same kernel, so
    /// batch invariance holds. Adapters keep the form they were loaded in (`AdapterPrecision.matching` holds them in
    /// int8 beside these products); a Q8_0-merged matrix gets a copy too, an f32- or f16-merged one runs in f32
    /// (`attachInt8Packs`). Not while an adapter is merged, nor together with bf16 products.
    public func setInt8Products(_ on: Bool) {
        precondition(merged == nil && !bf16Products, "int8 products switched on a merged model or beside bf16 products")
        precondition(!on || Kernels.hasInt8Products, "int8 products need AVX-512 VNNI or AVX2")
        guard on != int8Products else { return }
        func pack(_ m: WeightMatrix) -> WeightMatrix { m.withInt8(on ? Kernels.PackedInt8(m) : nil) }
        for i in pristineLayers.indices { pristineLayers[i].mapProducts { pack($1) } }
        layers = pristineLayers
        output = pack(output)
        int8MergePacks = []
        int8Products = on
    }

    /// Bytes of weights one decode step reads (every matrix once): the numerator of the memory-bandwidth
    /// bound for batch-1 decode.
    public var weightBytesPerToken: Int {
        // A matrix's bytes as the products read them: its packed bf16 or int8 copy where it has one.
        func bytes(_ m: WeightMatrix) -> Int { m.bf16?.byteCount ?? m.int8?.byteCount ?? m.byteCount }
        var n = bytes(output) + config.hiddenSize * 4 * (2 * config.numLayers + 1)
        for l in layers { n += l.products.reduce(0) { $0 + bytes($1.matrix) } }
        return n
    }

    /// Runs the batch's tokens through the model: writes their K/V into `kv` (at the batch's slots) and the
    /// logits of `batch.logitRows` into `logits` ([logitRows.count][vocabSize]).
    ///
    ///     x      = embed(tokens)                        (T, H)
    ///     x      = block_l(x)  for l = 0 ..< L          (T, H)   LlamaBlock.swift
    ///     logits = rmsNorm(x[logitRows])·Woutᵀ          (R, V)
    public func forward(_ batch: ForwardBatch, kv: PagedKVStorage, workspace ws: ForwardWorkspace,
                        scratch: ScratchArena, logits: UnsafeMutablePointer<Float>, lora: LoRASlots? = nil) {
        let n = batch.count
        guard n > 0 else { return }
        let c = config
        precondition(kv.numLayers == c.numLayers && kv.numKVHeads == c.numKVHeads && kv.headDim == c.headDim, "KV cache does not fit the model")
        ws.reserve(tokens: n)
        ws.reserve(blockTableEntries: batch.blockTables.count)
        let h = c.hiddenSize
        let x = ws.x.floats, xn = ws.xn.floats
        // The batch's per-token metadata, copied into the workspace so the kernels read stable memory.
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
        let pass = ForwardPass(
            tokens: n, x: x, xn: xn, qkv: ws.qkv.floats, attn: ws.attn.floats, gateUp: ws.gateUp.floats, act: ws.act.floats,
            cos: ws.cos.floats, sin: ws.sin.floats,
            layout: PagedBatchLayout(positions: UnsafeBufferPointer(start: positions, count: n),
                                     slots: UnsafeBufferPointer(start: slots, count: n),
                                     tableOffsets: UnsafeBufferPointer(start: tableOffsets, count: n),
                                     blockTables: UnsafeBufferPointer(start: tables, count: batch.blockTables.count)),
            kv: kv, scratch: scratch, workspace: ws, lora: lora.flatMap { prepareLoRA(batch, $0, ws) })

        for li in layers.indices { block(li, pass) }

        // Final norm and logits, only for the rows asked for.
        let rows = batch.logitRows.count
        guard rows > 0 else { return }
        for (r, t) in batch.logitRows.enumerated() {
            Kernels.rmsNorm(x + t * h, weight: outputNorm.floats, into: xn + r * h, width: h, tokens: 1, eps: c.rmsNormEps)
        }
        Kernels.matmul(output, xn, ldx: h, ntok: rows, logits, ldy: c.vocabSize, scratch: scratch)
    }
}
