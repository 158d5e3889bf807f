import CKernels

extension Kernels {
    /// Whether this CPU runs bf16 products on AVX-512 BF16 (`dl_gemm_bf16`); elsewhere they fall back to a
    /// portable loop far slower than f32 OpenBLAS, so callers keep f32 products there.
    public static var hasBF16Dot: Bool { dl_has_bf16_dot() != 0 }

    /// Multiply-adds per second of VDPBF16PS over those of an f32 FMA on this core, measured once per process
    /// (about 10 ms, `dl_bf16_dot_rate_ratio`); 0 without AVX-512 BF16. AMD's Zen 4 gives about 2 (a VDPBF16PS does
    /// twice an FMA's multiply-adds at the same rate), Intel's Sapphire and Emerald Rapids about 0.5 (half the rate).
    public static var bf16DotRateRatio: Double { dl_bf16_dot_rate_ratio() }

    /// The rate ratio from which bf16 products outrun the f32 kernels: below it the f32 kernels' FMAs do more
    /// multiply-adds per second than VDPBF16PS, and measured faster at every batch from 2 and in prefill
    /// (docs/design/core-engine.md, "Which products `auto` picks").
    public static let bf16ProductsMinRateRatio = 1.0

    /// Whether bf16 products pay on a core whose VDPBF16PS does `rateRatio` times an FMA's multiply-adds per second.
    public static func bf16ProductsPay(rateRatio: Double) -> Bool { rateRatio >= bf16ProductsMinRateRatio }

    /// Whether bf16 products pay on this CPU: AVX-512 BF16, at least at the f32 FMA's rate of multiply-adds.
    public static var bf16ProductsPay: Bool { hasBF16Dot && bf16ProductsPay(rateRatio: bf16DotRateRatio) }

    /// A frozen matrix B (k × n) rounded to bf16 and packed once for `gemmBF16`: 32-column panels of
    /// k-pairs, the operand layout of VDPBF16PS. `transposed`: the source is n × k (a weight W, out × in,
    /// read as Wᵀ for y = x·Wᵀ); else it is k × n. `ld` is the source's row stride.
    ///
    /// A Q4_0, Q4_1 or Q8_0 weight keeps its integer codes instead (`init?(codesOf:)`): they are exact in bf16,
    /// so the product feeds them to VDPBF16PS as they are and applies each block's scale (and min) in f32, with
    /// the weights used exactly, reading 0.625 bytes per weight for Q4_0 and Q4_1 (the checkpoint's 0.5625 and
    /// 0.625: Q4_0 shares Q4_1's records) and 1.0625 for Q8_0 rather than 2.
    public final class PackedBF16: @unchecked Sendable {
        /// What the packed copy holds: bf16 values, or a quantized matrix's codes and block scales.
        public enum Codes: Sendable, Equatable { case bf16, q4_0, q4_1, q8_0 }
        public let codes: Codes
        public let k: Int
        public let n: Int
        let storage: Buffer

        public init(_ source: UnsafePointer<Float>, ld: Int, transposed: Bool, k: Int, n: Int) {
            precondition(k >= 0 && n >= 0 && ld >= (transposed ? k : n), "PackedBF16: stride \(ld) below the \(k)×\(n) matrix")
            self.codes = .bf16
            self.k = k
            self.n = n
            storage = Buffer(byteCount: Int(dl_pack_bf16_elements(Int64(k), Int64(n))) * 2)
            dl_pack_bf16(source, Int64(ld), transposed ? 1 : 0, Int64(k), Int64(n), storage.base.assumingMemoryBound(to: UInt16.self))
        }

        /// W's integer codes and block scales in 32-column panels (gemm_bf16q.c), for y = x·Wᵀ; nil unless W is
        /// Q4_0, Q4_1 or Q8_0 (whose rows are whole 32-weight blocks by construction).
        public init?(codesOf w: WeightMatrix) {
            let codes: Codes
            switch w.dtype {
            case .q4_0: codes = .q4_0
            case .q4_1: codes = .q4_1
            case .q8_0: codes = .q8_0
            default: return nil
            }
            let bytes = dl_q_bf16_bytes(Int32(w.dtype.rawValue), Int64(w.cols), Int64(w.rows))
            guard bytes >= 0 else { return nil }
            self.codes = codes
            self.k = w.cols
            self.n = w.rows
            storage = Buffer(byteCount: max(Int(bytes), 1))
            dl_pack_q_bf16(Int32(w.dtype.rawValue), w.data.assumingMemoryBound(to: UInt8.self), Int64(w.rowBytes),
                           Int64(w.cols), Int64(w.rows), storage.base.assumingMemoryBound(to: UInt8.self))
        }

        /// Packs `w` again into this copy's storage (a merge's packs are kept across merges): its codes when this
        /// copy holds codes, else its values dequantized into `scratch` and rounded to bf16. `w` has this copy's
        /// shape and, for codes, its type.
        public func refill(from w: WeightMatrix, scratch: ScratchArena) {
            precondition(w.rows == n && w.cols == k, "PackedBF16.refill: a \(w.rows)×\(w.cols) matrix into a \(n)×\(k) copy")
            let base = storage.base
            if codes == .bf16 {
                let dense: UnsafePointer<Float>
                if w.dtype == .f32 {
                    dense = w.data.assumingMemoryBound(to: Float.self)
                } else {
                    let f = scratch.bytes(w.rows * w.cols * MemoryLayout<Float>.stride).assumingMemoryBound(to: Float.self)
                    Kernels.dequantize(w, into: f)
                    dense = UnsafePointer(f)
                }
                dl_pack_bf16(dense, Int64(k), 1, Int64(k), Int64(n), base.assumingMemoryBound(to: UInt16.self))
            } else {
                precondition(w.dtype.rawValue == UInt32(dtypeCode), "PackedBF16.refill: \(w.dtype) codes into a copy of \(codes)")
                dl_pack_q_bf16(dtypeCode, w.data.assumingMemoryBound(to: UInt8.self), Int64(w.rowBytes), Int64(k), Int64(n),
                               base.assumingMemoryBound(to: UInt8.self))
            }
        }

        var dtypeCode: Int32 {
            switch codes {
            case .q4_0: Int32(DType.q4_0.rawValue)
            case .q4_1: Int32(DType.q4_1.rawValue)
            case .q8_0, .bf16: Int32(DType.q8_0.rawValue)
            }
        }
        var bytes: UnsafePointer<UInt8> { UnsafePointer(storage.base.assumingMemoryBound(to: UInt8.self)) }

        /// Bytes the packed copy holds.
        public var byteCount: Int { storage.byteCount }
        var elements: UnsafePointer<UInt16> { UnsafePointer(storage.base.assumingMemoryBound(to: UInt16.self)) }
    }

    /// C (m × b.n) = bf16(A)·B, or C += it when `accumulate`: each product exact in f32, the sums in f32
    /// (torch's bf16 autocast for a linear layer). A is m × b.k with row stride lda; splits its rows over the
    /// kernel thread pool.
    public static func gemmBF16(m: Int, _ a: UnsafePointer<Float>, lda: Int, _ b: PackedBF16, _ c: UnsafeMutablePointer<Float>,
                                ldc: Int, accumulate: Bool = false) {
        precondition(b.codes == .bf16, "gemmBF16: a packed copy of quantized codes is for matmulBF16")
        precondition(m >= 0 && lda >= b.k && ldc >= b.n, "gemmBF16: strides \(lda)/\(ldc) below the \(m)×\(b.n)×\(b.k) product")
        dl_gemm_bf16(Int64(m), Int64(b.n), Int64(b.k), a, Int64(lda), b.elements, c, Int64(ldc), accumulate ? 1 : 0)
    }

    /// Y[t, r] = Σ_k bf16(W[r, k]) · bf16(X[t, k]) on W's packed copy: the products exact, the sums in f32, split
    /// over the panels of W's rows; a token's result never depends on how many tokens run with it.
    /// `prefetch`: byte spans pulled toward the cache while the product computes (`PrefetchPlan`).
    public static func matmulBF16(_ w: PackedBF16, _ x: UnsafePointer<Float>, ldx: Int, ntok: Int, _ y: UnsafeMutablePointer<Float>,
                                  ldy: Int, prefetch: PrefetchPlan? = nil) {
        precondition(ntok >= 0 && ldx >= w.k && ldy >= w.n, "matmulBF16: strides \(ldx)/\(ldy) below the \(w.n)×\(w.k) matrix")
        PrefetchPlan.withSpans(prefetch) { spans, count in
            if w.codes == .bf16 {
                dl_matmul_bf16(Int64(ntok), Int64(w.n), Int64(w.k), x, Int64(ldx), w.elements, y, Int64(ldy), spans, count)
            } else {
                dl_matmul_q_bf16(w.dtypeCode, Int64(ntok), Int64(w.n), Int64(w.k), x, Int64(ldx), w.bytes, y, Int64(ldy), spans, count)
            }
        }
    }

    /// The portable loop of `matmulBF16` on a packed copy of quantized codes (the parity tests' twin): the same
    /// per-block formula, its sums in another order.
    public static func matmulBF16Reference(_ w: PackedBF16, _ x: UnsafePointer<Float>, ldx: Int, ntok: Int,
                                           _ y: UnsafeMutablePointer<Float>, ldy: Int) {
        precondition(w.codes != .bf16 && ntok >= 0 && ldx >= w.k && ldy >= w.n, "matmulBF16Reference: codes, strides \(ldx)/\(ldy)")
        dl_matmul_q_bf16_ref(w.dtypeCode, Int64(ntok), Int64(w.n), Int64(w.k), x, Int64(ldx), w.bytes, y, Int64(ldy))
    }

    /// The portable loop over the same packed operands (the parity tests' twin of `gemmBF16`).
    public static func gemmBF16Reference(m: Int, _ a: UnsafePointer<Float>, lda: Int, _ b: PackedBF16,
                                         _ c: UnsafeMutablePointer<Float>, ldc: Int, accumulate: Bool = false) {
        precondition(b.codes == .bf16 && m >= 0 && lda >= b.k && ldc >= b.n, "gemmBF16Reference: strides \(lda)/\(ldc) below the \(m)×\(b.n)×\(b.k) product")
        dl_gemm_bf16_ref(Int64(m), Int64(b.n), Int64(b.k), a, Int64(lda), b.elements, c, Int64(ldc), accumulate ? 1 : 0)
    }
}

extension WeightMatrix {
    /// This matrix packed for `Kernels.matmulBF16`: a Q4_0, Q4_1 or Q8_0 matrix's codes and block scales (its own
    /// bytes per weight, the weights exact), any other dequantized exactly and rounded to bf16 (2 bytes per
    /// weight; also Q4_1 / Q8_0 when `keepingCodes` is false).
    public func packedBF16(keepingCodes: Bool = true) -> Kernels.PackedBF16 {
        if keepingCodes, let codes = Kernels.PackedBF16(codesOf: self) { return codes }
        let dense = Buffer(floats: rows * cols)
        Kernels.dequantize(self, into: dense.floats)
        return Kernels.PackedBF16(dense.floats, ld: cols, transposed: true, k: cols, n: rows)
    }

    /// A copy that runs its products in bf16 (`packed`, this matrix's `packedBF16()`), or in f32 again (nil).
    public func withBF16(_ packed: Kernels.PackedBF16?) -> WeightMatrix {
        var w = self
        w.bf16 = packed
        return w
    }
}
