import CKernels
import Testing
import TestSupport
@testable import Kernels

/// bf16 products on quantized codes (gemm_bf16q.c): the AVX-512 BF16 kernel and its portable twin against a
/// float64 product of bf16-rounded activations (`ReferenceOps.floatToBF16`) and the checkpoint's weights as
/// the format defines them (d·q + m from the block bytes, parsed here, not by the C code), batch invariance
/// across the register and L1-buffer paths, and thread-count independence.
/// Tolerance: the products are exact and each block's scale and min are applied by one FMA each, so what
/// differs is f32 rounding of sums: 2⁻²⁰ · K · Σ_k |x_k|·μ_k per element, μ_k the magnitude the sums carry:
/// |d·q_k| for Q8_0; for Q4_1, whose codes go in as 1 + q/16 and whose min as m − 16d, |d|·(32 + q_k) + |m|;
/// for Q4_0 (w = d·(q − 8), its min −24d) |d|·(40 + q_k).
@Suite struct QuantBF16Tests {
    typealias Rng = OpsParityTests.Rng

    struct Shape: CustomStringConvertible, Sendable {
        let type: DType
        let m, n, k: Int
        var description: String { "\(type) \(m)×\(n)×\(k)" }
    }

    // N past and below the 32-column panels, K of one block and past the 8-block chunks, M within one 6-row
    // tile and past it, SmolLM2's shapes.
    static let shapes: [Shape] = [DType.q4_0, .q4_1, .q8_0].flatMap { t in [
        Shape(type: t, m: 1, n: 1, k: 32),
        Shape(type: t, m: 2, n: 70, k: 64),
        Shape(type: t, m: 3, n: 33, k: 320),
        Shape(type: t, m: 13, n: 96, k: 576),
        Shape(type: t, m: 8, n: 576, k: 1536),
        Shape(type: t, m: 29, n: 64, k: 320),
        Shape(type: t, m: 1, n: 200, k: 576),
    ] }

    static func half(_ lo: UInt8, _ hi: UInt8) -> Double { Double(Float(Float16(bitPattern: UInt16(lo) | UInt16(hi) << 8))) }

    /// The weights of row r as (d·q + m, μ) in float64, from the GGUF block layout.
    static func weights(_ type: DType, _ bytes: [UInt8], row r: Int, cols: Int) -> [(w: Double, mag: Double)] {
        let rowBytes = type.byteCount(elements: cols)!
        var out: [(Double, Double)] = []
        for b in 0..<(cols / 32) {
            let o = r * rowBytes + b * type.blockBytes
            let d = half(bytes[o], bytes[o + 1])
            if type == .q4_0 {
                for j in 0..<32 {
                    let q = Double(j < 16 ? bytes[o + 2 + j] & 0x0f : bytes[o + 2 + j - 16] >> 4)
                    out.append((d * (q - 8), abs(d) * (40 + q)))
                }
            } else if type == .q4_1 {
                let m = half(bytes[o + 2], bytes[o + 3])
                for j in 0..<32 {
                    let q = Double(j < 16 ? bytes[o + 4 + j] & 0x0f : bytes[o + 4 + j - 16] >> 4)
                    out.append((d * q + m, abs(d) * (32 + q) + abs(m)))
                }
            } else {
                for j in 0..<32 {
                    let q = Double(Int8(bitPattern: bytes[o + 2 + j]))
                    out.append((d * q, abs(d * q)))
                }
            }
        }
        return out
    }

    static func operands(_ s: Shape, seed: UInt64) -> (x: [Float], w: [UInt8]) {
        var rng = Rng(seed: seed)
        let w = MatmulDQTests.randomMatrix(s.type, rows: s.n, cols: s.k, rng: &rng)
        return (rng.floats(s.m * s.k).map { $0 * 3 }, w)
    }

    static func packed(_ s: Shape, _ w: [UInt8]) -> Kernels.PackedBF16 {
        let storage = Buffer(byteCount: w.count)
        w.withUnsafeBytes { storage.base.copyMemory(from: $0.baseAddress!, byteCount: w.count) }
        return Kernels.PackedBF16(codesOf: WeightMatrix(dtype: s.type, rows: s.n, cols: s.k, storage: storage))!
    }

    static func product(_ p: Kernels.PackedBF16, _ x: [Float], m: Int, from first: Int = 0, reference: Bool = false) -> [Float] {
        var y = [Float](repeating: .nan, count: m * p.n)
        x.withUnsafeBufferPointer { xp in
            y.withUnsafeMutableBufferPointer {
                if reference {
                    Kernels.matmulBF16Reference(p, xp.baseAddress! + first * p.k, ldx: p.k, ntok: m, $0.baseAddress!, ldy: p.n)
                } else {
                    Kernels.matmulBF16(p, xp.baseAddress! + first * p.k, ldx: p.k, ntok: m, $0.baseAddress!, ldy: p.n)
                }
            }
        }
        return y
    }

    static func check(_ s: Shape, _ got: [Float], x: [Float], w: [UInt8], _ what: String) {
        for r in 0..<s.n {
            let row = weights(s.type, w, row: r, cols: s.k)
            for t in 0..<s.m {
                var sum = 0.0, mag = 0.0
                for k in 0..<s.k {
                    let a = GemmBF16Tests.bf16(x[t * s.k + k])
                    sum += a * row[k].w
                    mag += abs(a) * row[k].mag
                }
                let bound = 0x1p-20 * Double(s.k) * mag + 1e-30
                let g = Double(got[t * s.n + r])
                if !(abs(g - sum) <= bound) {
                    Issue.record("\(what) \(s) [\(t), \(r)]: \(g) vs \(sum) (bound \(bound))")
                    return
                }
            }
        }
    }

    @Test(arguments: shapes)
    func kernelAndTwinMatchFloat64(_ s: Shape) {
        let (x, w) = Self.operands(s, seed: UInt64(s.m * 131 + s.n * 7 + s.k))
        let p = Self.packed(s, w)
        #expect(p.codes == [DType.q4_0: .q4_0, .q4_1: .q4_1, .q8_0: .q8_0][s.type] && p.k == s.k && p.n == s.n)
        Self.check(s, Self.product(p, x, m: s.m, reference: true), x: x, w: w, "twin")
        Self.check(s, Self.product(p, x, m: s.m), x: x, w: w, "kernel")
    }

    /// Every row count runs the same register tile over its rows (tiles of 1-6 rows of near-equal height): a row's
    /// bits never depend on its batch-mates or on the height of the tile it lands in.
    @Test(arguments: [DType.q4_0, .q4_1, .q8_0])
    func batchInvariantAcrossTileShapes(type: DType) {
        let s = Shape(type: type, m: 300, n: 100, k: 576)
        let (x, w) = Self.operands(s, seed: 17)
        let p = Self.packed(s, w)
        let all = Self.product(p, x, m: 300)
        for (m, first) in [(1, 0), (1, 299), (2, 40), (3, 7), (6, 6), (7, 100), (37, 250), (130, 3)] {
            #expect(Self.product(p, x, m: m, from: first) == Array(all[(first * s.n)..<((first + m) * s.n)]), "\(type): \(m) rows from \(first)")
        }
    }

    @Test func threadCountDoesNotChangeResults() {
        let s = Shape(type: .q4_1, m: 5, n: 256, k: 512)
        let (x, w) = Self.operands(s, seed: 5)
        let p = Self.packed(s, w)
        let before = dl_num_threads()
        dl_set_num_threads(1)
        let one = Self.product(p, x, m: 5), oneRow = Self.product(p, x, m: 1)
        dl_set_num_threads(2)
        let two = Self.product(p, x, m: 5), twoRow = Self.product(p, x, m: 1)
        dl_set_num_threads(before)
        #expect(one == two && oneRow == twoRow)
    }

    /// Only Q4_0, Q4_1 and Q8_0 keep their codes (0.625 and 1.0625 bytes per weight); other matrices pack bf16 values.
    @Test func codesOnlyForQ4AndQ8_0() {
        var rng = Rng(seed: 3)
        for type in [DType.q4_0, .f16, .bf16, .f32, .q4_1, .q8_0] {
            let bytes = MatmulDQTests.randomMatrix(type, rows: 64, cols: 64, rng: &rng)
            let storage = Buffer(byteCount: bytes.count)
            bytes.withUnsafeBytes { storage.base.copyMemory(from: $0.baseAddress!, byteCount: bytes.count) }
            let m = WeightMatrix(dtype: type, rows: 64, cols: 64, storage: storage)
            let codes = Kernels.PackedBF16(codesOf: m)
            switch type {
            case .q4_0, .q4_1: #expect(codes?.byteCount == 64 * 64 * 5 / 8)
            case .q8_0: #expect(codes?.byteCount == 64 * 64 * 17 / 16)
            default: #expect(codes == nil && m.packedBF16().codes == .bf16)
            }
            #expect(m.packedBF16(keepingCodes: false).codes == .bf16)
        }
    }
}
