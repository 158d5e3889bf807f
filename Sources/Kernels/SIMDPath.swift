import CKernels

extension Kernels {
    /// The instruction-set path the C kernels take on the calling thread: 2 AVX-512, 1 AVX2 with FMA and
    /// F16C, 0 portable C. The machine's best unless `DLORA_SIMD_LIMIT` or `withSIMDLimit` caps it.
    public static var simdLevel: Int { Int(dl_simd_level()) }

    /// `simdLevel` in words, for benchmark headers and logs.
    public static var simdPathName: String {
        switch simdLevel {
        case 2: "AVX-512"
        case 1: "AVX2"
        default: "portable C"
        }
    }

    /// Runs `body` with the kernels called from this thread, and the pool work they hand out, capped at
    /// `level` (0–2), then restores the cap. Tests use it to run every path the machine has; other threads'
    /// kernels are not affected.
    public static func withSIMDLimit<T>(_ level: Int, _ body: () throws -> T) rethrows -> T {
        dl_set_thread_simd_limit(Int32(level))
        defer { dl_set_thread_simd_limit(2) }
        return try body()
    }
}
