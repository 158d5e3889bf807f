import CKernels

extension Kernels {
    /// Whether this CPU runs bf16 products on AVX-512 BF16 (`dl_gemm_bf16`); elsewhere they fall back to a
    /// portable loop far slower than f32 OpenBLAS, so callers keep f32 products there.
    public static var hasBF16Dot: Bool { dl_has_bf16_dot() != 0 }

    /// A frozen matrix B (k × n) rounded to bf16 and packed once for `gemmBF16`: 32-column panels of
    /// k-pairs, the operand layout of VDPBF16PS. `transposed`: the source is n × k (a weight W, out × in,
    /// read as Wᵀ for y = x·Wᵀ); else it is k × n. `ld` is the source's row stride.
    public final class PackedBF16: @unchecked Sendable {
        public let k: Int
        public let n: Int
        let storage: Buffer

        public init(_ source: UnsafePointer<Float>, ld: Int, transposed: Bool, k: Int, n: Int) {
            precondition(k >= 0 && n >= 0 && ld >= (transposed ? k : n), "PackedBF16: stride \(ld) below the \(k)×\(n) matrix")
            self.k = k
            self.n = n
            storage = Buffer(byteCount: Int(dl_pack_bf16_elements(Int64(k), Int64(n))) * 2)
            dl_pack_bf16(source, Int64(ld), transposed ? 1 : 0, Int64(k), Int64(n), storage.base.assumingMemoryBound(to: UInt16.self))
        }

        /// Bytes the packed copy holds.
        public var byteCount: Int { storage.byteCount }
        var elements: UnsafePointer<UInt16> { UnsafePointer(storage.base.assumingMemoryBound(to: UInt16.self)) }
    }

    /// C (m × b.n) = bf16(A)·B, or C += it when `accumulate`: each product exact in f32, the sums in f32
    /// (torch's bf16 autocast for a linear layer). A is m × b.k with row stride lda; splits its rows over the
    /// kernel thread pool.
    public static func gemmBF16(m: Int, _ a: UnsafePointer<Float>, lda: Int, _ b: PackedBF16, _ c: UnsafeMutablePointer<Float>,
                                ldc: Int, accumulate: Bool = false) {
        precondition(m >= 0 && lda >= b.k && ldc >= b.n, "gemmBF16: strides \(lda)/\(ldc) below the \(m)×\(b.n)×\(b.k) product")
        dl_gemm_bf16(Int64(m), Int64(b.n), Int64(b.k), a, Int64(lda), b.elements, c, Int64(ldc), accumulate ? 1 : 0)
    }

    /// Y[t, r] = Σ_k bf16(W[r, k]) · bf16(X[t, k]) on W's packed copy: the products exact, the sums in f32, split
    /// over the panels of W's rows; a token's result never depends on how many tokens run with it.
    public static func matmulBF16(_ w: PackedBF16, _ x: UnsafePointer<Float>, ldx: Int, ntok: Int, _ y: UnsafeMutablePointer<Float>,
                                  ldy: Int) {
        precondition(ntok >= 0 && ldx >= w.k && ldy >= w.n, "matmulBF16: strides \(ldx)/\(ldy) below the \(w.n)×\(w.k) matrix")
        dl_matmul_bf16(Int64(ntok), Int64(w.n), Int64(w.k), x, Int64(ldx), w.elements, y, Int64(ldy))
    }

    /// The portable loop over the same packed operands (the parity tests' twin of `gemmBF16`).
    public static func gemmBF16Reference(m: Int, _ a: UnsafePointer<Float>, lda: Int, _ b: PackedBF16,
                                         _ c: UnsafeMutablePointer<Float>, ldc: Int, accumulate: Bool = false) {
        precondition(m >= 0 && lda >= b.k && ldc >= b.n, "gemmBF16Reference: strides \(lda)/\(ldc) below the \(m)×\(b.n)×\(b.k) product")
        dl_gemm_bf16_ref(Int64(m), Int64(b.n), Int64(b.k), a, Int64(lda), b.elements, c, Int64(ldc), accumulate ? 1 : 0)
    }
}

extension WeightMatrix {
    /// This matrix (any dtype, dequantized exactly) rounded to bf16 and packed for `Kernels.matmulBF16`:
    /// 2 bytes per weight.
    public func packedBF16() -> Kernels.PackedBF16 {
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
