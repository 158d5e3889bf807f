import CKernels

extension Kernels {
    /// The instruction-set path the C kernels take on the calling thread: 2 AVX-512, 1 AVX2 with FMA and
    /// F16C, 0 portable C. The machine's best unless `DLORA_SIMD_LIMIT` or `withSIMDLimit` caps it.
    public static var simdLevel: Int { Int(dl_simd_level()) }

    /// `simdLevel` in words, for benchmark headers and logs.
    public static var simdPathName: String {
        switch simdLevel {
        case 2: "AVX-512"
        case 1: avxVNNIActive ? "AVX2 with AVX-VNNI" : "AVX2"
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

    /// Whether the CPU has AVX-VNNI (the 256-bit VEX form of VPDPBUSD: Alder Lake, Sapphire Rapids, Sierra Forest and
    /// later), which the AVX2 path's int8 kernels use where it is there (`DLORA_AVX_VNNI=0` turns that off).
    public static var cpuHasAVXVNNI: Bool { withSIMDLimit(1) { dl_avxvnni_active() != 0 } }

    /// Whether this thread's AVX2 int8 kernels use AVX-VNNI now (on the AVX-512 path they never do: it has its own).
    public static var avxVNNIActive: Bool { dl_avxvnni_active() != 0 }

    /// Runs `body` with the AVX2 path's int8 kernels on this thread, and the pool work they hand out, kept off
    /// AVX-VNNI (their VPMADDUBSW form, the same bits), then restores it. Tests run both forms on a CPU that has it.
    public static func withoutAVXVNNI<T>(_ body: () throws -> T) rethrows -> T {
        dl_set_thread_avxvnni(0)
        defer { dl_set_thread_avxvnni(1) }
        return try body()
    }
}
