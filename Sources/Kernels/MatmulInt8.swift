import CKernels

extension Kernels {
    /// Whether the CPU has integer dot products (VPDPBUSD): AVX-512 VNNI, or AVX-VNNI's 256-bit form on the AVX2 path
    /// (Alder Lake and later clients, Sierra Forest). What `--matmul-precision auto` picks int8 products on, and what
    /// int8 adapters need (their expand has those two forms, the same bits).
    public static var hasInt8Dot: Bool { dl_has_int8_adapters() != 0 }

    /// Whether products with int8 activations run at all (`matmulInt8`): on AVX-512 VNNI, AVX-VNNI, or plain AVX2 by
    /// the twin that emulates VPDPBUSD with VPMADDUBSW/VPMADDWD (the same bits; matmul_q8.c). Without either VNNI they
    /// are an explicit choice (`--matmul-precision int8`), not `auto`'s: that form has not been measured on an AVX2-only
    /// machine.
    public static var hasInt8Products: Bool { dl_has_int8() != 0 }

    /// A Q4_0, Q4_1 or Q8_0 matrix's codes and block scales regrouped for `matmulInt8` (matmul_q8.c: one 64-byte
    /// load holds a dword of each of 16 blocks): the checkpoint's bytes per block, a row's block count padded to
    /// even.
    public final class PackedInt8: @unchecked Sendable {
        public let dtype: DType
        public let k: Int
        public let n: Int
        let storage: Buffer

        public init?(_ w: WeightMatrix) {
            let bytes = dl_q8_bytes(Int32(w.dtype.rawValue), Int64(w.cols), Int64(w.rows))
            guard bytes >= 0 else { return nil }
            dtype = w.dtype
            k = w.cols
            n = w.rows
            storage = Buffer(byteCount: max(Int(bytes), 1))
            refill(from: w)
        }

        public var byteCount: Int { storage.byteCount }

        /// Packs `w` (a matrix of this copy's dtype and shape, a merge's new weights) into this copy again.
        public func refill(from w: WeightMatrix) {
            precondition(w.dtype == dtype && w.rows == n && w.cols == k, "PackedInt8.refill: a \(w.dtype) \(w.rows)×\(w.cols) matrix into a \(dtype) \(n)×\(k) copy")
            dl_pack_q8(Int32(w.dtype.rawValue), w.data.assumingMemoryBound(to: UInt8.self), Int64(w.rowBytes),
                       Int64(w.cols), Int64(w.rows), storage.base.assumingMemoryBound(to: UInt8.self))
        }
    }

    /// Y[t, r] = Σ_k W[r, k] · X[t, k] with each token's activations quantized to int8 per block of 32 (llama.cpp's
    /// Q8 activations) and multiplied with the weights' integer codes exactly; the block scales in f32 in a fixed
    /// order, so a row's result never depends on the batch. Needs `hasInt8Products`. `prefetch`: spans pulled toward the
    /// cache while the product runs, a share per task spread over its tiles (the LoRA call that follows).
    public static func matmulInt8(_ w: PackedInt8, _ x: UnsafePointer<Float>, ldx: Int, ntok: Int,
                                  _ y: UnsafeMutablePointer<Float>, ldy: Int, prefetch: PrefetchPlan? = nil) {
        precondition(hasInt8Products && ntok >= 0 && ldx >= w.k && ldy >= w.n, "matmulInt8: AVX-512 VNNI or AVX2, strides \(ldx)/\(ldy)")
        PrefetchPlan.withSpans(prefetch) { spans, n in
            dl_matmul_q8(Int32(w.dtype.rawValue), storage(w), Int64(w.n), Int64(w.k), x, Int64(ldx), Int64(ntok), y, Int64(ldy), spans, n)
        }
    }

    /// The portable twin of `matmulInt8` (bit for bit), from the matrix's own checkpoint bytes: the parity tests'
    /// reference, which checks the packing too.
    public static func matmulInt8Reference(_ w: WeightMatrix, _ x: UnsafePointer<Float>, ldx: Int, ntok: Int,
                                           _ y: UnsafeMutablePointer<Float>, ldy: Int) {
        precondition([.q4_0, .q4_1, .q8_0].contains(w.dtype) && ntok >= 0 && ldx >= w.cols && ldy >= w.rows,
                     "matmulInt8Reference: a Q4_0, Q4_1 or Q8_0 matrix, strides \(ldx)/\(ldy)")
        dl_matmul_q8_ref(Int32(w.dtype.rawValue), w.data.assumingMemoryBound(to: UInt8.self), Int64(w.rowBytes), Int64(w.rows),
                         Int64(w.cols), x, Int64(ldx), Int64(ntok), y, Int64(ldy))
    }

    private static func storage(_ w: PackedInt8) -> UnsafePointer<UInt8> {
        UnsafePointer(w.storage.base.assumingMemoryBound(to: UInt8.self))
    }
}

extension WeightMatrix {
    /// A copy whose products run with int8 activations on `packed` (`PackedInt8(self)`), or in f32 again (nil).
    public func withInt8(_ packed: Kernels.PackedInt8?) -> WeightMatrix {
        var w = self
        w.int8 = packed
        return w
    }
}
