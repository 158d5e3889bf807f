import CKernels
import COpenBLAS
#if canImport(Glibc)
import Glibc
#endif

extension Kernels {
    /// The kernels OpenBLAS runs its products on in this process (its `openblas_get_corename`: "SkylakeX", "Haswell",
    /// "Prescott", ...).
    public static var blasCoreName: String { String(cString: openblas_get_corename()) }

    /// The OpenBLAS core that matches this CPU's vector instructions (`dl_blas_core_for_cpu`: "Cooperlake" for AVX-512
    /// with BF16, "SkylakeX" for AVX-512, "Haswell" for AVX2 with FMA), or nil.
    public static var blasCoreForCPU: String? { dl_blas_core_for_cpu().map { String(cString: $0) } }

    /// Whether OpenBLAS fell back to its generic SSE3 kernels ("Prescott") on a CPU with AVX2 or AVX-512: it picks its
    /// core by CPU model at load, and a library older than the CPU does not know the model (Debian 12's 0.3.21 takes
    /// Emerald Rapids for a Prescott: sgemm at a fifth of the SkylakeX kernels' speed, 64 against 300 GFLOP/s here).
    /// Nil when OpenBLAS chose a core itself or the user named one (OPENBLAS_CORETYPE).
    public static var blasCoreToAdopt: String? {
        guard getenv("OPENBLAS_CORETYPE") == nil, blasCoreName == "Prescott" else { return nil }
        return blasCoreForCPU
    }

    /// Where `blasCoreToAdopt` names a core, runs this program again from its start with OPENBLAS_CORETYPE naming it
    /// (the library reads it only at load; the same process id, arguments and open files). Call first thing in `main`.
    /// Returns only where there is nothing to adopt or the exec failed (the generic kernels then stay).
    public static func adoptBLASCoreForThisCPU() {
        guard let core = blasCoreToAdopt else { return }
        setenv("OPENBLAS_CORETYPE", core, 1)
        execv("/proc/self/exe", CommandLine.unsafeArgv)
        unsetenv("OPENBLAS_CORETYPE")
    }
}
