import CKernels
import Testing
import TestSupport
@testable import Kernels

/// The bf16 products (gemm_bf16.c): packing and the portable loop against a double-precision product of
/// the operands rounded by `ReferenceOps.floatToBF16` (which derives bf16 from the format, not from the C
/// kernels' bit trick), and the AVX-512 BF16 kernel against the portable loop where the CPU has it.
/// Tolerance: each product of two bf16 values is exact in f32, so what differs is the f32 rounding of the
/// sums: a bound of 2⁻²⁰ · K · Σ|a·b| per element (f32's unit roundoff is 2⁻²⁴; K partial sums).
@Suite struct GemmBF16Tests {
    struct Shape: CustomStringConvertible, Sendable {
        let m, n, k: Int
        let transposed, accumulate: Bool
        var description: String { "\(m)×\(n)×\(k)\(transposed ? " Wᵀ" : "")\(accumulate ? " +=" : "")" }
    }

    // Tails everywhere: M past the 8-row tiles and the 128-row blocks, N past the 32-column panels, odd K,
    // K past the 128-pair chunks, and SmolLM2's shapes (576, 1536).
    static let shapes: [Shape] = [
        Shape(m: 1, n: 1, k: 1, transposed: true, accumulate: false),
        Shape(m: 3, n: 33, k: 5, transposed: false, accumulate: false),
        Shape(m: 13, n: 70, k: 37, transposed: true, accumulate: true),
        Shape(m: 130, n: 64, k: 257, transposed: true, accumulate: false),
        Shape(m: 137, n: 31, k: 601, transposed: false, accumulate: true),
        Shape(m: 40, n: 96, k: 576, transposed: true, accumulate: false),
        Shape(m: 17, n: 576, k: 1536, transposed: false, accumulate: false),
        Shape(m: 5, n: 40, k: 0, transposed: true, accumulate: true),
    ]

    static func bf16(_ x: Float) -> Double { Double(ReferenceOps.bf16ToFloat(ReferenceOps.floatToBF16(x))) }

    /// (C, bound): the double product of the rounded operands plus C's start, and each element's tolerance.
    static func reference(_ s: Shape, a: [Float], w: [Float], c0: [Float]) -> ([Double], [Double]) {
        var out = [Double](repeating: 0, count: s.m * s.n), bound = out
        for i in 0..<s.m {
            for j in 0..<s.n {
                var sum = 0.0, mag = 0.0
                for k in 0..<s.k {
                    let b = s.transposed ? w[j * s.k + k] : w[k * s.n + j]
                    let p = bf16(a[i * s.k + k]) * bf16(b)
                    sum += p
                    mag += abs(p)
                }
                out[i * s.n + j] = sum + (s.accumulate ? Double(c0[i * s.n + j]) : 0)
                bound[i * s.n + j] = 0x1p-20 * Double(max(s.k, 1)) * mag + 0x1p-22 * abs(out[i * s.n + j])
            }
        }
        return (out, bound)
    }

    static func operands(_ s: Shape, seed: UInt64) -> (a: [Float], w: [Float], c0: [Float]) {
        var rng = SplitMix64(seed: seed)
        return (rng.floats(s.m * s.k).map { $0 * 3 }, rng.floats(s.n * s.k), rng.floats(s.m * s.n))
    }

    static func run(_ s: Shape, a: [Float], w: [Float], c0: [Float], reference: Bool) -> [Float] {
        let packed = w.withUnsafeBufferPointer {
            Kernels.PackedBF16($0.baseAddress!, ld: s.transposed ? s.k : s.n, transposed: s.transposed, k: s.k, n: s.n)
        }
        var c = c0
        a.withUnsafeBufferPointer { ap in
            c.withUnsafeMutableBufferPointer { cp in
                if reference {
                    Kernels.gemmBF16Reference(m: s.m, ap.baseAddress!, lda: s.k, packed, cp.baseAddress!, ldc: s.n, accumulate: s.accumulate)
                } else {
                    Kernels.gemmBF16(m: s.m, ap.baseAddress!, lda: s.k, packed, cp.baseAddress!, ldc: s.n, accumulate: s.accumulate)
                }
            }
        }
        return c
    }

    /// The portable loop or the fast entry point against the rounded double product, first failure only.
    static func expectRoundedProduct(_ s: Shape, reference: Bool) {
        let (a, w, c0) = operands(s, seed: UInt64(s.m * 1000 + s.k))
        let (want, bound) = Self.reference(s, a: a, w: w, c0: c0)
        let got = run(s, a: a, w: w, c0: c0, reference: reference)
        for i in want.indices where abs(Double(got[i]) - want[i]) > bound[i] {
            Issue.record("\(s) \(reference ? "portable loop" : "kernel (bf16 dot: \(Kernels.hasBF16Dot))") element \(i): \(got[i]) vs \(want[i])")
            return
        }
    }

    @Test(arguments: shapes) func portableLoopMatchesTheRoundedProduct(_ s: Shape) { Self.expectRoundedProduct(s, reference: true) }

    @Test(arguments: shapes) func kernelMatchesTheRoundedProduct(_ s: Shape) { Self.expectRoundedProduct(s, reference: false) }

    /// The packing rounds to nearest even and pads with zeros: a weight halfway between two bf16 values goes
    /// to the even one, and the columns past N and the row past an odd K contribute nothing.
    @Test func roundsToNearestEvenAndPads() {
        // 1 + 2⁻⁸ is halfway between 1 and 1 + 2⁻⁷: ties to even → 1; 1 + 3·2⁻⁸ → 1 + 2⁻⁶ (even mantissa).
        let w: [Float] = [1 + 0x1p-8, 1 + 3 * 0x1p-8, -2.5]  // K = 3, N = 1 (transposed: one row of W)
        let a: [Float] = [1, 1, 0]
        let got = Self.run(Shape(m: 1, n: 1, k: 3, transposed: true, accumulate: false), a: a, w: w, c0: [7], reference: false)
        #expect(got == [2 + 0x1p-6])
        let ref = Self.run(Shape(m: 1, n: 1, k: 3, transposed: true, accumulate: false), a: a, w: w, c0: [7], reference: true)
        #expect(ref == [2 + 0x1p-6])
    }

    /// Where the CPU has no AVX-512 BF16 the fast entry point must fall back to the portable loop (same bits).
    @Test func fallsBackWithoutTheInstruction() {
        let s = Shape(m: 9, n: 40, k: 21, transposed: true, accumulate: false)
        let (a, w, c0) = Self.operands(s, seed: 5)
        let fast = Self.run(s, a: a, w: w, c0: c0, reference: false)
        let portable = Self.run(s, a: a, w: w, c0: c0, reference: true)
        if !Kernels.hasBF16Dot { #expect(fast == portable) } else { #expect(maxAbsDiff(fast, portable) < 1e-4) }
    }

    /// The rate `--matmul-precision auto` decides by: 0 without AVX-512 BF16; with it, a measured ratio of
    /// VDPBF16PS's multiply-adds per second to an FMA's that no 512-bit core can leave (Intel's server cores ≈ 0.5,
    /// Zen 4 ≈ 2; a VDPBF16PS does 32 multiply-adds, so it cannot beat 16 FMAs' worth by more than the issue rates
    /// allow), the same on every call (measured once); bf16 pays from a ratio of 1.
    @Test func bf16RateRatioDecidesAuto() {
        let r = Kernels.bf16DotRateRatio
        if Kernels.hasBF16Dot {
            #expect(r > 0.1 && r < 8, "ratio \(r)")
            #expect(Kernels.bf16DotRateRatio == r)
            #expect(Kernels.bf16ProductsPay == (r >= 1))
        } else {
            #expect(r == 0 && !Kernels.bf16ProductsPay)
        }
        #expect(!Kernels.bf16ProductsPay(rateRatio: 0.5) && !Kernels.bf16ProductsPay(rateRatio: 0.99))
        #expect(Kernels.bf16ProductsPay(rateRatio: 1) && Kernels.bf16ProductsPay(rateRatio: 2))
    }

    /// Inference's entry point (`matmulBF16`: y = x·Wᵀ, split over W's panels): against the rounded double product
    /// (its first rows), and every row bit-identical whatever rows run beside it — 1, 7, 37 or 300 of them, from
    /// anywhere in the batch — which is the batch invariance the engine's bf16 products rely on.
    @Test(arguments: [(576, 576), (960, 576), (70, 1536), (33, 37)])
    func inferenceProductIsBatchInvariant(n: Int, k: Int) {
        let rows = 300
        let (a, w, _) = Self.operands(Shape(m: rows, n: n, k: k, transposed: true, accumulate: false), seed: UInt64(n * 7 + k))
        let packed = w.withUnsafeBufferPointer { Kernels.PackedBF16($0.baseAddress!, ld: k, transposed: true, k: k, n: n) }
        func product(_ m: Int, from first: Int) -> [Float] {
            var y = [Float](repeating: .nan, count: m * n)
            a.withUnsafeBufferPointer { ap in
                y.withUnsafeMutableBufferPointer { Kernels.matmulBF16(packed, ap.baseAddress! + first * k, ldx: k, ntok: m, $0.baseAddress!, ldy: n) }
            }
            return y
        }
        let all = product(rows, from: 0)
        let head = Shape(m: 9, n: n, k: k, transposed: true, accumulate: false)
        let (want, bound) = Self.reference(head, a: Array(a.prefix(9 * k)), w: w, c0: [Float](repeating: 0, count: 9 * n))
        if let i = want.indices.first(where: { abs(Double(all[$0]) - want[$0]) > bound[$0] }) {
            Issue.record("\(n)×\(k) element \(i): \(all[i]) vs \(want[i])")
        }
        for (m, first) in [(1, 0), (1, 299), (7, 100), (37, 250), (8, 8), (130, 3)] {
            #expect(product(m, from: first) == Array(all[(first * n)..<((first + m) * n)]), "\(n)×\(k): \(m) rows from \(first)")
        }
    }
}
