import COpenBLAS

extension Kernels {
    /// General matrix product on OpenBLAS (row-major f32), for training's forward and backward passes:
    ///
    ///     C (m × n) = alpha · op(A) · op(B) + beta · C,   op(X) = Xᵀ when its flag is set
    ///
    /// A is m × k (k × m when transposed) with row stride lda; B is k × n (n × k when transposed) with row
    /// stride ldb; C has row stride ldc. With beta = 0, C need not be initialised.
    public static func gemm(transA: Bool = false, transB: Bool = false, m: Int, n: Int, k: Int, alpha: Float = 1,
                            _ a: UnsafePointer<Float>, lda: Int, _ b: UnsafePointer<Float>, ldb: Int,
                            beta: Float = 0, _ c: UnsafeMutablePointer<Float>, ldc: Int) {
        guard m > 0, n > 0 else { return }
        precondition(lda >= (transA ? m : k) && ldb >= (transB ? k : n) && ldc >= n,
                     "gemm: strides \(lda)/\(ldb)/\(ldc) below the \(m)×\(n)×\(k) product")
        guard k > 0 else {
            // An empty sum: C = beta · C.
            for i in 0..<m { for j in 0..<n { c[i * ldc + j] = beta == 0 ? 0 : beta * c[i * ldc + j] } }
            return
        }
        configureBLASThreads()
        cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
                    blasint(m), blasint(n), blasint(k), alpha, a, blasint(lda), b, blasint(ldb), beta, c, blasint(ldc))
    }
}
