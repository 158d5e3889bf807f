import CKernels
import Testing
import TestSupport
@testable import Kernels

/// dl_matmul_dq (dequantize-on-the-fly weights, f32 activations) against a float64 reference over the
/// same dequantized weights, and its batch invariance. Tolerance: |y − exact| ≤ 2e-6 · Σ_k |w_k·x_k|: each
/// output sums ≤ 96 products per lane in f32 (unit roundoff 6e-8) plus a 4-level lane tree, and the
/// bound is relative to the sum of magnitudes because cancellation can make the result itself tiny.
@Suite struct MatmulDQTests {
    typealias Rng = OpsParityTests.Rng

    static func randomMatrix(_ type: DType, rows: Int, cols: Int, rng: inout Rng) -> [UInt8] {
        let values = rng.floats(rows * cols)
        var bytes = [UInt8](repeating: 0, count: rows * type.byteCount(elements: cols)!)
        bytes.withUnsafeMutableBytes { dst in
            for r in 0..<rows {
                values.withUnsafeBufferPointer { src in
                    Kernels.quantize(src.baseAddress! + r * cols, count: cols, to: type,
                                     into: dst.baseAddress! + r * type.byteCount(elements: cols)!)
                }
            }
        }
        return bytes
    }

    /// The weights as the reference twin dequantizes them (QuantParityTests checks the C dequantizer against it).
    static func dequantized(_ type: DType, _ bytes: [UInt8], rows: Int, cols: Int) -> [Float] {
        bytes.withUnsafeBytes { ReferenceOps.dequantize(type, $0.baseAddress!, count: rows * cols) }
    }

    @Test(arguments: [DType.q4_0, .q4_1, .q8_0, .f16, .bf16, .f32])
    func matchesFloat64ReferenceAndIsBatchInvariant(type: DType) {
        var rng = Rng(seed: UInt64(type.rawValue) + 77)
        for (rows, cols, ntok) in [(1, 32, 1), (7, 64, 3), (36, 576, 5), (130, 1536, 9), (64, 96, 37)] {
            let w = Self.randomMatrix(type, rows: rows, cols: cols, rng: &rng)
            let wf = Self.dequantized(type, w, rows: rows, cols: cols)
            let ldx = cols + 16, ldy = rows + 3
            let x = rng.floats(ntok * ldx)
            var y = [Float](repeating: .nan, count: ntok * ldy)
            dl_matmul_dq(Int32(type.rawValue), w, Int64(rows), Int64(cols), x, Int64(ldx), Int64(ntok), &y, Int64(ldy))
            for t in 0..<ntok {
                for r in 0..<rows {
                    var exact = 0.0, magnitude = 0.0
                    for k in 0..<cols {
                        exact += Double(wf[r * cols + k]) * Double(x[t * ldx + k])
                        magnitude += abs(Double(wf[r * cols + k]) * Double(x[t * ldx + k]))
                    }
                    let err = abs(Double(y[t * ldy + r]) - exact)
                    #expect(err <= 2e-6 * magnitude + 1e-30, "\(type) \(rows)x\(cols) t=\(t) r=\(r): \(y[t * ldy + r]) vs \(exact)")
                }
            }
            // Each token alone gives bit-identical rows.
            for t in 0..<ntok {
                var single = [Float](repeating: 0, count: rows)
                x.withUnsafeBufferPointer { xp in
                    dl_matmul_dq(Int32(type.rawValue), w, Int64(rows), Int64(cols), xp.baseAddress! + t * ldx, Int64(ldx), 1, &single, Int64(rows))
                }
                #expect(Array(y[(t * ldy)..<(t * ldy + rows)]) == single, "\(type) \(rows)x\(cols) token \(t): batched != single")
            }
        }
    }

    /// Both paths of the kernel (dequantized panel for many tokens, dequantize-in-registers for up to 8)
    /// against the plain lane-order twin, bit for bit: a token's outputs cannot depend on its batch. Shapes
    /// include the default model's (576, 1536 columns), rows that are not a multiple of 4, products large
    /// enough to be split over the pool, and an F16 width that is not a multiple of 32 (panel path only).
    /// Run on every instruction-set path this machine has (AVX-512, AVX2, portable C): all give these bits.
    @Test(arguments: [DType.q4_0, .q4_1, .q8_0, .f16, .bf16, .f32])
    func bothPathsMatchTheLaneOrderTwinExactly(type: DType) {
        for level in 0...Kernels.simdLevel {
            Kernels.withSIMDLimit(level) { Self.checkBothPaths(type: type, path: level) }
        }
    }

    static func checkBothPaths(type: DType, path: Int) {
        var rng = Rng(seed: UInt64(type.rawValue) + 1234)
        // 2-8 tokens take the fused multi-token kernels (NR rows x NT tokens, NR 4 or 2, then single rows), 9
        // and more the panel, whose last 1, 3 or 2 tokens (9, 11, 14) take the 4x1, 4x3 and 4x2 tiles; rows 5,
        // 13, 33, 97 leave single-row tails after every NR.
        var shapes = [(rows: 3, cols: 32, ntok: 2), (rows: 97, cols: 576, ntok: 3), (rows: 5, cols: 64, ntok: 4),
                      (rows: 200, cols: 1536, ntok: 5), (rows: 33, cols: 576, ntok: 6), (rows: 13, cols: 96, ntok: 7),
                      (rows: 130, cols: 576, ntok: 8), (rows: 41, cols: 576, ntok: 9), (rows: 21, cols: 576, ntok: 11),
                      (rows: 8, cols: 64, ntok: 14)]
        if type == .f16 || type == .bf16 || type == .f32 { shapes.append((rows: 45, cols: 48, ntok: 2)) }
        for (rows, cols, ntok) in shapes {
            let w = Self.randomMatrix(type, rows: rows, cols: cols, rng: &rng)
            let wf = Self.dequantized(type, w, rows: rows, cols: cols)
            let x = rng.floats(ntok * cols)
            let want = ReferenceOps.matmulLanes(wf, rows: rows, cols: cols, x, tokens: ntok)
            var batched = [Float](repeating: .nan, count: ntok * rows)
            dl_matmul_dq(Int32(type.rawValue), w, Int64(rows), Int64(cols), x, Int64(cols), Int64(ntok), &batched, Int64(rows))
            #expect(batched == want, "\(type) \(rows)x\(cols) SIMD path \(path): panel path differs from the lane-order twin")
            for t in 0..<ntok {
                var single = [Float](repeating: .nan, count: rows)
                x.withUnsafeBufferPointer { xp in
                    dl_matmul_dq(Int32(type.rawValue), w, Int64(rows), Int64(cols), xp.baseAddress! + t * cols, Int64(cols), 1, &single, Int64(rows))
                }
                #expect(single == Array(want[(t * rows)..<((t + 1) * rows)]), "\(type) \(rows)x\(cols) SIMD path \(path) token \(t): single-token path differs")
            }
        }
    }

    @Test func threadCountDoesNotChangeResults() {
        var rng = Rng(seed: 99)
        let rows = 256, cols = 512, ntok = 6
        let w = Self.randomMatrix(.q4_1, rows: rows, cols: cols, rng: &rng)
        let x = rng.floats(ntok * cols)
        var a = [Float](repeating: 0, count: ntok * rows), b = a
        let before = dl_num_threads()
        dl_set_num_threads(1)
        dl_matmul_dq(Int32(DType.q4_1.rawValue), w, Int64(rows), Int64(cols), x, Int64(cols), Int64(ntok), &a, Int64(rows))
        dl_set_num_threads(2)
        dl_matmul_dq(Int32(DType.q4_1.rawValue), w, Int64(rows), Int64(cols), x, Int64(cols), Int64(ntok), &b, Int64(rows))
        dl_set_num_threads(before)
        #expect(a == b)
    }
}
