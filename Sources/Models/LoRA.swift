import CKernels
import Kernels

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

/// One adapted matrix, compute-ready: ΔW = scale · B · A with A (rank × in) and B (out × rank), stored f32
/// with the rank padded to a multiple of 16 (zero rows of A, zero columns of B), so both products run on
/// the batch-invariant matmul kernel.
public struct LoRAModule: @unchecked Sendable {
    public let rank: Int
    public let paddedRank: Int
    public let inFeatures: Int
    public let outFeatures: Int
    /// paddedRank × inFeatures
    public let a: WeightMatrix
    /// outFeatures × paddedRank
    public let b: WeightMatrix

    /// - Parameters: a: rank × in values (row-major), b: out × rank values (row-major).
    public init(rank: Int, inFeatures: Int, outFeatures: Int, a: UnsafePointer<Float>, b: UnsafePointer<Float>) {
        precondition(rank > 0 && inFeatures > 0 && outFeatures > 0 && inFeatures % 16 == 0)
        self.rank = rank
        paddedRank = (rank + 15) / 16 * 16
        self.inFeatures = inFeatures
        self.outFeatures = outFeatures
        let aBuf = Buffer(floats: paddedRank * inFeatures)
        aBuf.floats.update(from: a, count: rank * inFeatures)
        let bBuf = Buffer(floats: outFeatures * paddedRank)
        for o in 0..<outFeatures {
            (bBuf.floats + o * paddedRank).update(from: b + o * rank, count: rank)
        }
        self.a = WeightMatrix(dtype: .f32, rows: paddedRank, cols: inFeatures, storage: aBuf)
        self.b = WeightMatrix(dtype: .f32, rows: outFeatures, cols: paddedRank, storage: bBuf)
    }

    public var byteCount: Int { a.byteCount + b.byteCount }

    /// B·A as a dense out × in matrix (for merging), into `out` (row-major).
    public func denseDelta(into out: UnsafeMutablePointer<Float>) {
        // (B·A)[o, i] = Σ_j B[o, j] A[j, i]: the matmul kernel computes Y[t, r] = Σ_k W[r, k] X[t, k], so take
        // W = Aᵀ (in × paddedRank) and X = B (tokens = out rows).
        let at = Buffer(floats: inFeatures * paddedRank)
        let af = a.data.assumingMemoryBound(to: Float.self)
        for j in 0..<paddedRank {
            for i in 0..<inFeatures { at.floats[i * paddedRank + j] = af[j * inFeatures + i] }
        }
        let w = WeightMatrix(dtype: .f32, rows: inFeatures, cols: paddedRank, storage: at)
        dl_matmul_dq(Int32(DType.f32.rawValue), w.data, Int64(inFeatures), Int64(paddedRank),
                     b.data.assumingMemoryBound(to: Float.self), Int64(paddedRank), Int64(outFeatures), out, Int64(inFeatures))
    }
}

/// A LoRA adapter in compute-ready form: per layer and target, an optional module, and the adapter's
/// scaling (alpha / r, or alpha / √r for rsLoRA).
public final class LoRAWeights: @unchecked Sendable {
    public let name: String
    public let scale: Float
    /// modules[layer][target.rawValue]
    public let modules: [[LoRAModule?]]
    public let maxPaddedRank: Int
    public let byteCount: Int

    public init(name: String, scale: Float, modules: [[LoRAModule?]]) {
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
