import Kernels
import Synchronization

/// The linear layers a LoRA adapter may target.
public enum LoRATarget: Int, CaseIterable, Sendable, CustomStringConvertible {
    case q, k, v, o, gate, up, down

    /// PEFT's module name (`target_modules`).
    public var peftName: String {
        switch self {
        case .q: "q_proj"
        case .k: "k_proj"
        case .v: "v_proj"
        case .o: "o_proj"
        case .gate: "gate_proj"
        case .up: "up_proj"
        case .down: "down_proj"
        }
    }

    /// llama.cpp's tensor name stem (`blk.N.<stem>.weight`).
    public var ggufName: String {
        switch self {
        case .q: "attn_q"
        case .k: "attn_k"
        case .v: "attn_v"
        case .o: "attn_output"
        case .gate: "ffn_gate"
        case .up: "ffn_up"
        case .down: "ffn_down"
        }
    }

    public var description: String { peftName }

    /// gate, up and down: the MLP's matrices.
    public var isMLP: Bool { self == .gate || self == .up || self == .down }

    public func tensor(layer: Int) -> LlamaTensor {
        switch self {
        case .q: .q(layer)
        case .k: .k(layer)
        case .v: .v(layer)
        case .o: .o(layer)
        case .gate: .gate(layer)
        case .up: .up(layer)
        case .down: .down(layer)
        }
    }

    /// (output rows, input columns) of the base matrix this target adapts.
    public func shape(_ c: ModelConfig) -> (rows: Int, cols: Int) {
        let q = c.numHeads * c.headDim, kv = c.numKVHeads * c.headDim
        switch self {
        case .q: return (q, c.hiddenSize)
        case .k, .v: return (kv, c.hiddenSize)
        case .o: return (c.hiddenSize, q)
        case .gate, .up: return (c.intermediateSize, c.hiddenSize)
        case .down: return (c.hiddenSize, c.intermediateSize)
        }
    }
}

/// One adapted matrix, compute-ready: ΔW = scale · B · A with A (rank × in) and B (out × rank), the rank
/// padded to a multiple of 16 (zero rows of A, zero columns of B) so both products run on the
/// batch-invariant matmul kernel. Stored in f32, or in F16/BF16 when the adapter file holds them so (the
/// kernel upcasts exactly; half the bytes to read per step), or quantized to Q8_0 (`AdapterPrecision.int8`: a
/// quarter of f32's bytes and about half of BF16's; the shrink then runs with int8 activations), or to Q4_0
/// (`AdapterPrecision.int4`: about 0.55× Q8_0's bytes, the same kernels).
public struct LoRAModule: @unchecked Sendable {
    public let rank: Int
    public let paddedRank: Int
    public let inFeatures: Int
    public let outFeatures: Int
    /// paddedRank × inFeatures
    public let a: WeightMatrix
    /// outFeatures × paddedRank, laid out for the expand kernel
    public let b: Kernels.LoRAExpandMatrix
    /// A and B as the kernel reads them (checked once, here).
    public let operands: Kernels.LoRAOperands

    /// - Parameters: a: rank × in values (row-major), b: out × rank values (row-major); `dtype` (F32, F16
    ///   or BF16) is how they are stored (values must be exactly representable for F16/BF16 to be exact); Q8_0
    ///   quantizes them (A per 32 inputs of a rank row, B per 16 rank indices of an output; `inFeatures` a multiple
    ///   of 32 and `Kernels.hasInt8Dot`: `AdapterPrecision.dtype` checks both).
    public init(rank: Int, inFeatures: Int, outFeatures: Int, a: UnsafePointer<Float>, b: UnsafePointer<Float>, dtype: DType = .f32) {
        precondition(rank > 0 && inFeatures > 0 && outFeatures > 0 && inFeatures % 16 == 0)
        precondition(dtype == .f32 || dtype == .f16 || dtype == .bf16
                     || ((dtype == .q8_0 || dtype == .q4_0) && inFeatures % 32 == 0 && Kernels.hasInt8Dot))
        self.rank = rank
        paddedRank = (rank + 15) / 16 * 16
        self.inFeatures = inFeatures
        self.outFeatures = outFeatures
        let aF = Buffer(floats: paddedRank * inFeatures)
        aF.floats.update(from: a, count: rank * inFeatures)
        let bF = Buffer(floats: outFeatures * paddedRank)
        for o in 0..<outFeatures {
            (bF.floats + o * paddedRank).update(from: b + o * rank, count: rank)
        }
        self.a = Self.store(aF, rows: paddedRank, cols: inFeatures, dtype: dtype)
        self.b = dtype == .q8_0 || dtype == .q4_0
            ? Kernels.LoRAExpandMatrix(WeightMatrix(dtype: .f32, rows: outFeatures, cols: paddedRank, storage: bF), quantizedTo: dtype)
            : Kernels.LoRAExpandMatrix(Self.store(bF, rows: outFeatures, cols: paddedRank, dtype: dtype))
        operands = Kernels.LoRAOperands(a: self.a, b: self.b)
    }

    private static func store(_ f: Buffer, rows: Int, cols: Int, dtype: DType) -> WeightMatrix {
        let n = rows * cols
        switch dtype {
        case .f16, .bf16:
            let h = Buffer(byteCount: n * 2)
            let dst = h.base.assumingMemoryBound(to: UInt16.self)
            if dtype == .f16 { Kernels.f32ToF16(f.floats, into: dst, count: n) } else { Kernels.f32ToBF16(f.floats, into: dst, count: n) }
            return WeightMatrix(dtype: dtype, rows: rows, cols: cols, storage: h)
        case .q8_0, .q4_0:
            // The checkpoint layout (merges, compositions and the twins read it) and the kernel's int8 copy.
            let q = Buffer(byteCount: rows * dtype.byteCount(elements: cols)!)
            Kernels.quantizeRows(f.floats, rows: rows, cols: cols, to: dtype, into: q.base)
            let w = WeightMatrix(dtype: dtype, rows: rows, cols: cols, storage: q)
            return w.withInt8(Kernels.PackedInt8(w))
        default:
            return WeightMatrix(dtype: .f32, rows: rows, cols: cols, storage: f)
        }
    }

    public var dtype: DType { a.dtype }
    /// What the module holds (a Q8_0 or Q4_0 A twice: its checkpoint layout and the kernel's copy).
    public var byteCount: Int { a.byteCount + (a.int8?.byteCount ?? 0) + b.byteCount }
    /// What a step reads of it per token segment (the kernel's copies).
    public var kernelBytes: Int { Int(operands.aBytes + operands.bBytes) }

    /// A (rank × in) and B (out × rank) widened to f32, without the rank padding: the factors as trained.
    public var unpaddedFactors: (a: [Float], b: [Float]) {
        let pa = Buffer(floats: paddedRank * inFeatures), pb = Buffer(floats: outFeatures * paddedRank)
        Kernels.dequantize(a, into: pa.floats)
        b.unpack(into: pb.floats)
        return (Array(UnsafeBufferPointer(start: pa.floats, count: rank * inFeatures)),
                (0..<outFeatures).flatMap { o in UnsafeBufferPointer(start: pb.floats + o * paddedRank, count: rank) })
    }

    /// A (paddedRank × in) and B (out × paddedRank) widened to f32 in `scratch`.
    func widenedFactors(_ scratch: ScratchArena) -> (a: UnsafeMutablePointer<Float>, b: UnsafeMutablePointer<Float>) {
        let na = paddedRank * inFeatures, nb = outFeatures * paddedRank
        let af = scratch.bytes((na + nb) * MemoryLayout<Float>.stride).assumingMemoryBound(to: Float.self)
        let bf = af + na
        Kernels.dequantize(a.dtype, a.data, count: na, into: af)
        b.unpack(into: bf)
        return (af, bf)
    }

    /// W + scale · B·A (merging) into `destination`, rows `rowBytes` apart, stored as `dtype` (f32 or a type
    /// `Kernels.quantizeRows` writes): `Kernels.mergeRows`, each row dequantized, updated and stored while it sits in
    /// cache. A and B are widened to f32 in `scratch`.
    public func merge(_ w: WeightMatrix, scale: Float, as dtype: DType, into destination: UnsafeMutableRawPointer, rowBytes: Int,
                      scratch: ScratchArena) {
        precondition(w.rows == outFeatures && w.cols == inFeatures, "merge: a \(w.rows)×\(w.cols) matrix for a \(outFeatures)×\(inFeatures) module")
        let (af, bf) = widenedFactors(scratch)
        Kernels.mergeRows(w, b: bf, a: af, rank: paddedRank, scale: scale, as: dtype, into: destination, rowBytes: rowBytes)
    }
}

/// One adapter's identity for the lifetime of its registration: the registry assigns it when a name is
/// registered (or first found under the root) and keeps it across host-cache reloads; loading new files
/// under a name (an in-place reload) gives a new one. Engines key their per-adapter state by it.
public struct AdapterID: Hashable, Comparable, Sendable, CustomStringConvertible {
    public let rawValue: Int
    public init(rawValue: Int) { self.rawValue = rawValue }

    private static let counter = Mutex(0)
    /// A process-wide fresh id (for adapters loaded without a registry, e.g. `dlora generate --adapter`).
    public static func next() -> AdapterID {
        AdapterID(rawValue: counter.withLock { n in n += 1; return n })
    }

    public static func < (a: AdapterID, b: AdapterID) -> Bool { a.rawValue < b.rawValue }
    public var description: String { "adapter#\(rawValue)" }
}

/// Where MoLE's gates sit (the paper's b-, l-, n- and m-MoLE): one gate per block (from the block's attention
/// input), one per sub-layer (attention, from the block's first RMSNorm output; MLP, from its second), one for the
/// whole network (from block 0's attention input, weighing every block), or one per adapted projection (from that
/// projection's own input: q, k and v from the first RMSNorm's output, o from the attention's output, gate and up
/// from the second RMSNorm's output, down from the SwiGLU activation). A gate "unit" is one W and τ.
public enum MoLEGranularity: String, Sendable, CaseIterable {
    case block, layer, network, matrix

    /// Gate units of a model with `layers` blocks (matrix: seven per block, one per projection, of which only
    /// those of projections some expert adapts are in use).
    public func units(layers: Int) -> Int {
        switch self {
        case .block: layers
        case .layer: 2 * layers
        case .network: 1
        case .matrix: LoRATarget.allCases.count * layers
        }
    }

    /// The unit whose gate weighs the experts in target t of block l.
    public func unit(layer l: Int, target t: LoRATarget) -> Int {
        switch self {
        case .block: l
        case .layer: 2 * l + (t.isMLP ? 1 : 0)
        case .network: 0
        case .matrix: LoRATarget.allCases.count * l + t.rawValue
        }
    }

    /// Matrix granularity: the block and projection whose own input feeds unit u (nil for the other granularities).
    public func projection(unit u: Int) -> (layer: Int, target: LoRATarget)? {
        guard self == .matrix else { return nil }
        let n = LoRATarget.allCases.count
        return (u / n, LoRATarget(rawValue: u % n)!)
    }

    /// The width of unit u's gate input: the projection's input features at matrix granularity, else the hidden size.
    public func inputWidth(unit u: Int, config c: ModelConfig) -> Int {
        projection(unit: u).map { $0.target.shape(c).cols } ?? c.hiddenSize
    }

    /// Which units are in use when `adapts(l, t)` says whether some expert adapts target t of block l: every unit,
    /// except at matrix granularity, where a projection no expert adapts has no gate.
    public func unitsInUse(layers: Int, adapts: (Int, LoRATarget) -> Bool) -> [Bool] {
        (0..<units(layers: layers)).map { u in projection(unit: u).map { adapts($0.layer, $0.target) } ?? true }
    }

    /// The unit computed from block l's attention input (nil: none there).
    public func attentionUnit(layer l: Int) -> Int? {
        switch self {
        case .block: l
        case .layer: 2 * l
        case .network: l == 0 ? 0 : nil
        case .matrix: nil
        }
    }

    /// The unit computed from block l's MLP input (nil: none there).
    public func mlpUnit(layer l: Int) -> Int? { self == .layer ? 2 * l + 1 : nil }

    /// The unit computed at block l's attention input (`mlp` false) or MLP input (`mlp` true); nil: none there
    /// (matrix granularity computes each gate from its projection's input, inside the projection).
    public func unit(layer l: Int, mlp: Bool) -> Int? { mlp ? mlpUnit(layer: l) : attentionUnit(layer: l) }

    /// Whether target t reads the gates computed at the MLP input (else those of the attention input).
    public func usesMLPGates(_ t: LoRATarget) -> Bool { self == .layer && t.isMLP }

    /// The `gates.safetensors` names of unit u's W and τ.
    public func tensorNames(unit u: Int) -> (weight: String, temperature: String) {
        let stem = switch self {
        case .block: "layers.\(u).gate"
        case .layer: "layers.\(u / 2).\(u % 2 == 0 ? "attn_gate" : "mlp_gate")"
        case .network: "gate"
        case .matrix: "layers.\(projection(unit: u)!.layer).\(projection(unit: u)!.target.peftName).gate"
        }
        return (stem + ".weight", stem + ".temperature")
    }
}

/// MoLE's learned gates over the experts stacked in one `LoRAWeights` (docs/design/mole-serving.md): token t
/// weighs expert i by g[t, i] = softmax_i(xn[t]·W_u[i] / τ_u), xn the normalised input where gate unit u sits
/// (`MoLEGranularity`), over the experts in `mask` (the others weigh 0 and the rest renormalise). The experts'
/// modules are stacked as PEFT's `cat` stacks them (A rows sᵢ·Aᵢ, B columns Bᵢ); rank column j of module
/// (l, target) belongs to expert `columns(l, target)[j]` (-1: padding), and the LoRA kernel scales it by that
/// expert's gate.
public final class MoLEGating: @unchecked Sendable {
    /// Experts per composition at most (the mask is 64 bits; the gate rows' stride).
    public static let maxExperts = 64
    public let experts: [String]
    public let granularity: MoLEGranularity
    /// Per gate unit W (N × the unit's input width, f32; 0 rows for a matrix unit no expert adapts) and τ.
    public let weights: [WeightMatrix]
    public let temperatures: [Float]
    /// Bit i set: expert i is in use.
    public let mask: UInt64
    /// [layer][target.rawValue]: paddedRank Int32 entries, nil when no expert adapts the matrix.
    private let columnBuffers: [[Buffer?]]

    /// - Parameters: weights: per gate unit N × (`granularity.inputWidth`) values, none for a matrix unit whose
    ///   projection no expert adapts; columns: [layer][target.rawValue] the expert of each padded rank column
    ///   (nil: the module is absent).
    public init(experts: [String], granularity: MoLEGranularity = .block, weights: [[Float]], temperatures: [Float], config c: ModelConfig,
                columns: [[[Int32]?]]) {
        let n = experts.count
        precondition((1...Self.maxExperts).contains(n) && weights.count == temperatures.count
                     && weights.count == granularity.units(layers: columns.count))
        self.granularity = granularity
        let inUse = granularity.unitsInUse(layers: columns.count) { l, t in columns[l][t.rawValue] != nil }
        precondition(weights.indices.allSatisfy { u in weights[u].count == (inUse[u] ? n * granularity.inputWidth(unit: u, config: c) : 0) })
        precondition(temperatures.allSatisfy { $0 > 0 && $0.isFinite })
        self.experts = experts
        self.weights = weights.enumerated().map { u, w in
            let width = granularity.inputWidth(unit: u, config: c), rows = w.isEmpty ? 0 : n
            let b = Buffer(floats: rows * width)
            w.withUnsafeBufferPointer { if rows > 0 { b.floats.update(from: $0.baseAddress!, count: rows * width) } }
            return WeightMatrix(dtype: .f32, rows: rows, cols: width, storage: b)
        }
        self.temperatures = temperatures
        mask = n == 64 ? .max : (UInt64(1) << UInt64(n)) - 1
        columnBuffers = columns.map { row in
            row.map { c in
                c.map { c in
                    precondition(c.allSatisfy { $0 >= -1 && $0 < Int32(n) })
                    let b = Buffer(byteCount: c.count * 4)
                    c.withUnsafeBufferPointer { b.base.copyMemory(from: $0.baseAddress!, byteCount: c.count * 4) }
                    return b
                }
            }
        }
    }

    private init(_ other: MoLEGating, mask: UInt64) {
        experts = other.experts
        granularity = other.granularity
        weights = other.weights
        temperatures = other.temperatures
        columnBuffers = other.columnBuffers
        self.mask = mask
    }

    /// The same gates over the experts in `mask` only (a non-empty subset of the experts; shares the weights).
    public func masked(_ mask: UInt64) -> MoLEGating {
        precondition(mask != 0 && mask & ~self.mask == 0)
        return MoLEGating(self, mask: mask)
    }

    public var expertCount: Int { experts.count }
    public var layerCount: Int { columnBuffers.count }

    func columns(layer: Int, target: LoRATarget) -> UnsafePointer<Int32>? {
        columnBuffers[layer][target.rawValue].map { UnsafePointer($0.base.assumingMemoryBound(to: Int32.self)) }
    }

    public var byteCount: Int {
        weights.reduce(0) { $0 + $1.byteCount } + columnBuffers.joined().reduce(0) { $0 + ($1?.byteCount ?? 0) }
    }
}

/// A LoRA adapter in compute-ready form: per layer and target, an optional module, and the adapter's
/// scaling (alpha / r, or alpha / √r for rsLoRA); with `gating`, a MoLE composition whose stacked experts
/// are weighted per token by learned gates (never merged: the mix changes from token to token).
public final class LoRAWeights: @unchecked Sendable {
    public let id: AdapterID
    public let name: String
    public let scale: Float
    /// modules[layer][target.rawValue]
    public let modules: [[LoRAModule?]]
    public let maxPaddedRank: Int
    public let byteCount: Int
    public let gating: MoLEGating?
    /// Every module's operands, flat: entry layer · LoRATarget.allCases.count + target.rawValue (nil where the
    /// adapter has no module). A forward pass reads it through `operandTable` while its slot holds the adapter.
    private let operands: UnsafeMutableBufferPointer<Kernels.LoRAOperands?>

    public init(name: String, scale: Float, modules: [[LoRAModule?]], id: AdapterID = .next(), gating: MoLEGating? = nil) {
        precondition(gating.map { $0.layerCount == modules.count } ?? true)
        self.id = id
        self.name = name
        self.scale = scale
        self.modules = modules
        self.gating = gating
        let all = modules.joined().compactMap { $0 }
        let targets = LoRATarget.allCases.count
        operands = .allocate(capacity: max(1, modules.count * targets))
        operands.initialize(repeating: nil)
        for (layer, row) in modules.enumerated() {
            for (t, m) in row.prefix(targets).enumerated() { operands[layer * targets + t] = m?.operands }
        }
        maxPaddedRank = all.map(\.paddedRank).max() ?? 0
        byteCount = all.reduce(0) { $0 + $1.byteCount } + (gating?.byteCount ?? 0)
    }

    deinit { operands.deallocate() }

    /// What a step reads of it when every module runs (the kernels' copies: a Q8_0 module's packed A, not its
    /// checkpoint layout too).
    public var kernelBytes: Int { modules.joined().reduce(0) { $0 + ($1?.kernelBytes ?? 0) } }

    /// The flat table of module operands (see `operands`); valid while this adapter lives.
    public var operandTable: UnsafePointer<Kernels.LoRAOperands?> { UnsafePointer(operands.baseAddress!) }

    /// Whether a merge can fold it into the base weights (not a gated MoLE composition).
    public var mergeable: Bool { gating == nil }

    private let views = Mutex<[UInt64: LoRAWeights]>([:])

    /// A MoLE composition restricted to the experts in `mask` (bit i: expert i; MoLE's hierarchical control —
    /// the others' gates are 0 and the rest renormalise). The view shares these weights and is made once per
    /// mask, under one identity of its own, so the engine batches requests with the same mask together.
    public func restricted(toExperts mask: UInt64) -> LoRAWeights {
        guard let gating, mask != gating.mask else { return self }
        return views.withLock { cache in
            if let v = cache[mask] { return v }
            let v = LoRAWeights(name: name, scale: scale, modules: modules, gating: gating.masked(mask))
            cache[mask] = v
            return v
        }
    }

    public func module(layer: Int, target: LoRATarget) -> LoRAModule? {
        layer < modules.count ? modules[layer][target.rawValue] : nil
    }

    public var targets: Set<LoRATarget> {
        var s = Set<LoRATarget>()
        for layer in modules { for t in LoRATarget.allCases where layer[t.rawValue] != nil { s.insert(t) } }
        return s
    }
}

/// The adapters resident for unmerged execution: a token's adapter slot indexes `slots`.
public final class LoRASlots: @unchecked Sendable {
    public private(set) var slots: [LoRAWeights?]

    public init(capacity: Int) { slots = Array(repeating: nil, count: capacity) }

    public var capacity: Int { slots.count }

    public subscript(slot: Int) -> LoRAWeights? {
        get { slots[slot] }
        set { slots[slot] = newValue }
    }

    /// The first free slot, if any.
    public var freeSlot: Int? { slots.firstIndex { $0 == nil } }
}

/// How a server holds the adapters it loads. `stored`: as the file holds them (F16 and BF16 stay so, anything else
/// f32), the exact arithmetic. `int8`: Q8_0 (int8 codes and an f16 scale per 32 values: 34 bytes per 32 weights
/// against BF16's 64), the shrink with int8 activations as the base's int8 products compute theirs; the choice
/// under int8 products (`LlamaModel.int8Products`), where a batch of distinct adapters is bound by their bytes
/// (docs/design/lora-kernels.md, "int8 adapters"). `int4`: Q4_0 (4-bit codes, an f16 scale per 32 values of A and per
/// 16 of B: about 0.55× an int8 adapter's bytes), the same kernels; opt-in, since it moves the adapter's effect by
/// more than int8 does (docs/design/lora-kernels.md, "int4 adapters"). Both need AVX-512 VNNI or AVX-VNNI; a matrix
/// whose input width is not a multiple of 32 keeps its stored form.
public enum AdapterPrecision: String, Sendable, CaseIterable {
    case stored, int8, int4

    /// What the models' products call for: int8 adapters beside int8 products on AVX-512 VNNI or AVX-VNNI (the int8
    /// adapters' kernels), else the stored form (int8 products on plain AVX2 keep stored adapters).
    public static func matching(_ model: LlamaModel) -> AdapterPrecision { model.int8Products && Kernels.hasInt8Dot ? .int8 : .stored }

    /// The dtype a module of `inFeatures` inputs, stored as `stored`, is held in.
    public func dtype(stored: DType, inFeatures: Int) -> DType {
        guard self != .stored, Kernels.hasInt8Dot, inFeatures % 32 == 0 else { return stored }
        return self == .int8 ? .q8_0 : .q4_0
    }
}

extension LoRAModule {
    /// This module held as `precision` says (itself where that changes nothing): made from its own values, so a
    /// conversion from F16, BF16 or f32 starts from exactly what the adapter file held.
    public func held(as precision: AdapterPrecision) -> LoRAModule {
        let target = precision.dtype(stored: dtype, inFeatures: inFeatures)
        guard target != dtype else { return self }
        let f = unpaddedFactors
        return f.a.withUnsafeBufferPointer { a in
            f.b.withUnsafeBufferPointer { b in
                LoRAModule(rank: rank, inFeatures: inFeatures, outFeatures: outFeatures, a: a.baseAddress!, b: b.baseAddress!, dtype: target)
            }
        }
    }
}

extension LoRAWeights {
    /// These weights held as `precision` says: the same identity, name, scale and gates (itself for `stored`).
    public func held(as precision: AdapterPrecision) -> LoRAWeights {
        guard precision != .stored else { return self }
        let converted = modules.map { row in row.map { $0?.held(as: precision) } }
        return LoRAWeights(name: name, scale: scale, modules: converted, id: id, gating: gating)
    }
}
