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
/// kernel upcasts exactly; half the bytes to read per step).
public struct LoRAModule: @unchecked Sendable {
    public let rank: Int
    public let paddedRank: Int
    public let inFeatures: Int
    public let outFeatures: Int
    /// paddedRank × inFeatures
    public let a: WeightMatrix
    /// outFeatures × paddedRank
    public let b: WeightMatrix

    /// - Parameters: a: rank × in values (row-major), b: out × rank values (row-major); `dtype` (F32, F16
    ///   or BF16) is how they are stored (values must be exactly representable for F16/BF16 to be exact).
    public init(rank: Int, inFeatures: Int, outFeatures: Int, a: UnsafePointer<Float>, b: UnsafePointer<Float>, dtype: DType = .f32) {
        precondition(rank > 0 && inFeatures > 0 && outFeatures > 0 && inFeatures % 16 == 0)
        precondition(dtype == .f32 || dtype == .f16 || dtype == .bf16)
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
        self.b = Self.store(bF, rows: outFeatures, cols: paddedRank, dtype: dtype)
    }

    private static func store(_ f: Buffer, rows: Int, cols: Int, dtype: DType) -> WeightMatrix {
        let n = rows * cols
        switch dtype {
        case .f16, .bf16:
            let h = Buffer(byteCount: n * 2)
            let dst = h.base.assumingMemoryBound(to: UInt16.self)
            if dtype == .f16 { Kernels.f32ToF16(f.floats, into: dst, count: n) } else { Kernels.f32ToBF16(f.floats, into: dst, count: n) }
            return WeightMatrix(dtype: dtype, rows: rows, cols: cols, storage: h)
        default:
            return WeightMatrix(dtype: .f32, rows: rows, cols: cols, storage: f)
        }
    }

    public var dtype: DType { a.dtype }
    public var byteCount: Int { a.byteCount + b.byteCount }

    /// W += scale · B·A on a dense out × in f32 matrix (merging); A and B are widened to f32 in `scratch`.
    public func addDelta(scale: Float, into w: UnsafeMutablePointer<Float>, scratch: ScratchArena) {
        let na = paddedRank * inFeatures, nb = outFeatures * paddedRank
        let af = scratch.bytes((na + nb) * MemoryLayout<Float>.stride).assumingMemoryBound(to: Float.self)
        let bf = af + na
        Kernels.dequantize(a.dtype, a.data, count: na, into: af)
        Kernels.dequantize(b.dtype, b.data, count: nb, into: bf)
        Kernels.addLowRankProduct(w, rows: outFeatures, cols: inFeatures, b: bf, a: af, rank: paddedRank, scale: scale)
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

/// A LoRA adapter in compute-ready form: per layer and target, an optional module, and the adapter's
/// scaling (alpha / r, or alpha / √r for rsLoRA).
public final class LoRAWeights: @unchecked Sendable {
    public let id: AdapterID
    public let name: String
    public let scale: Float
    /// modules[layer][target.rawValue]
    public let modules: [[LoRAModule?]]
    public let maxPaddedRank: Int
    public let byteCount: Int

    public init(name: String, scale: Float, modules: [[LoRAModule?]], id: AdapterID = .next()) {
        self.id = id
        self.name = name
        self.scale = scale
        self.modules = modules
        let all = modules.joined().compactMap { $0 }
        maxPaddedRank = all.map(\.paddedRank).max() ?? 0
        byteCount = all.reduce(0) { $0 + $1.byteCount }
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
