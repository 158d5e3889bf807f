import CKernels
import COpenBLAS

/// Entry points of the numeric kernels used by the model code.
public enum Kernels {
    /// Y[t, r] = Σ_k W[r, k] · X[t, k] for t < ntok, r < W.rows (rows of X and Y strided by ldx / ldy).
    /// Quantized and half-precision weights go to the dequantize-on-the-fly kernel with f32 activations
    /// (bit-identical whatever the batch). Dense f32 weights go to OpenBLAS sgemm for prefill-sized batches
    /// and to the same register-tiled kernel for decode-sized ones (≤ `smallBatch` tokens), where it is
    /// faster than sgemm's packing (bench/results/lora.md, merged rows).
    /// `prefetch`: byte spans the bf16 and int8 products pull toward the cache while they compute (`PrefetchPlan`);
    /// the f32 paths ignore it.
    public static func matmul(_ w: WeightMatrix, _ x: UnsafePointer<Float>, ldx: Int, ntok: Int,
                              _ y: UnsafeMutablePointer<Float>, ldy: Int, scratch: ScratchArena, prefetch: PrefetchPlan? = nil) {
        guard ntok > 0, w.rows > 0 else { return }
        precondition(ldx >= w.cols && ldy >= w.rows, "matmul: strides \(ldx)/\(ldy) below the \(w.rows)×\(w.cols) matrix")
        if let packed = w.bf16 {
            matmulBF16(packed, x, ldx: ldx, ntok: ntok, y, ldy: ldy, prefetch: prefetch)
            return
        }
        if let packed = w.int8 {
            matmulInt8(packed, x, ldx: ldx, ntok: ntok, y, ldy: ldy, prefetch: prefetch)
            return
        }
        configureBLASThreads()
        if w.dtype == .f32 && (ntok > smallBatch || w.cols % 16 != 0) {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, blasint(ntok), blasint(w.rows), blasint(w.cols),
                        1, x, blasint(ldx), w.data.assumingMemoryBound(to: Float.self), blasint(w.cols),
                        0, y, blasint(ldy))
        } else {
            dl_matmul_dq(Int32(w.dtype.rawValue), w.data, Int64(w.rows), Int64(w.cols), x, Int64(ldx), Int64(ntok), y, Int64(ldy))
        }
    }

    /// Y[t, r] = Σ_k W[r, k] · X[t, k] always on the dequantize-on-the-fly kernel, whatever the dtype and the
    /// token count: a row's result never depends on how many rows run with it (W.cols a multiple of 16).
    public static func matmulBatchInvariant(_ w: WeightMatrix, _ x: UnsafePointer<Float>, ldx: Int, ntok: Int,
                                            _ y: UnsafeMutablePointer<Float>, ldy: Int) {
        guard ntok > 0, w.rows > 0 else { return }
        precondition(ldx >= w.cols && ldy >= w.rows && w.cols % 16 == 0,
                     "matmul: strides \(ldx)/\(ldy), the \(w.rows)×\(w.cols) matrix (columns a multiple of 16)")
        dl_matmul_dq(Int32(w.dtype.rawValue), w.data, Int64(w.rows), Int64(w.cols), x, Int64(ldx), Int64(ntok), y, Int64(ldy))
    }

    /// W + scale · B·A row by row (dl_merge_rows) into `destination` (rows `rowBytes` apart): W dequantized as
    /// `dequantize` does, per column the sum over the rank by FMA in increasing j, then W + scale · sum rounded apart,
    /// stored as `dtype` (f32 or one `quantizeRows` writes) while the row sits in cache; rows split over the kernel
    /// threads. B (W.rows × rank) and A (rank × W.cols) dense row-major f32.
    public static func mergeRows(_ w: WeightMatrix, b: UnsafePointer<Float>, a: UnsafePointer<Float>, rank: Int, scale: Float,
                                 as dtype: DType, into destination: UnsafeMutableRawPointer, rowBytes: Int) {
        precondition(rowBytes >= dtype.byteCount(elements: w.cols) ?? .max, "mergeRows: \(rowBytes) bytes per row of \(w.cols) \(dtype) values")
        dl_merge_rows(Int32(w.dtype.rawValue), w.data, Int64(w.rowBytes), Int64(w.rows), Int64(w.cols), b, a, Int64(rank), scale,
                      Int32(dtype.rawValue), destination, Int64(rowBytes))
    }

    /// A matrix dequantized into dense row-major floats (rows × cols), split by rows over the kernel threads.
    public static func dequantize(_ w: WeightMatrix, into dst: UnsafeMutablePointer<Float>) {
        dl_dequantize_rows(Int32(w.dtype.rawValue), w.data, Int64(w.rowBytes), dst, Int64(w.rows), Int64(w.cols))
    }

    /// Up to this many tokens, f32 matrices use the register-tiled kernel instead of sgemm.
    public static let smallBatch = 32

    nonisolated(unsafe) private static var blasThreads: Int32 = 0
    nonisolated(unsafe) private static var blasThreadCap: Int32 = .max

    /// OpenBLAS runs with as many threads as our pool (at most the cap), so the two never oversubscribe
    /// the cores.
    static func configureBLASThreads() {
        let n = min(dl_num_threads(), blasThreadCap)
        if blasThreads != n {
            openblas_set_num_threads(n)
            blasThreads = n
        }
    }

    /// Caps OpenBLAS's threads below our pool's (nil: as many as the pool). For callers whose sgemms are
    /// small and run between the pool's work — training with bf16 products, where only attention's
    /// per-head products and the LoRA path are left on OpenBLAS: an idle OpenBLAS worker spins on
    /// `sched_yield` for a while after each call and takes a core's time from the pool beside it.
    public static func capBLASThreads(_ n: Int?) {
        blasThreadCap = n.map { Int32(clamping: max(1, $0)) } ?? .max
        configureBLASThreads()
    }

    /// The threads OpenBLAS runs a product on now.
    public static var blasThreadCount: Int { Int(min(dl_num_threads(), blasThreadCap)) }

    /// Sets the thread count of the kernels (our pool and OpenBLAS).
    public static func setThreads(_ n: Int) {
        dl_set_num_threads(Int32(max(1, n)))
        configureBLASThreads()
    }
}

/// A reusable, growable, 64-byte-aligned scratch buffer: it reallocates only when asked for more than
/// it has, so the step loop does not allocate once warm. Growing goes through `Buffer`, which stops the
/// process with a message when memory runs out: a caller never gets a pointer to less than it asked for.
public final class ScratchArena: @unchecked Sendable {
    private var buffer: Buffer?

    public init() {}

    public func bytes(_ n: Int) -> UnsafeMutableRawPointer {
        precondition(n >= 0, "ScratchArena: negative size \(n)")
        if let buffer, buffer.byteCount >= n { return buffer.base }
        let grown = Buffer(byteCount: max(n, (buffer?.byteCount ?? 0) * 3 / 2))
        buffer = grown
        return grown.base
    }
}
