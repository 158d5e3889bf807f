import CKernels
import Testing
import TestSupport
@testable import Kernels

/// Products with int8 activations (`Kernels.matmulInt8`, matmul_q8.c; `--matmul-precision int8`):
/// - the AVX-512 VNNI kernel on the packed copy equals its portable twin (computed from the checkpoint's own bytes,
///   so the packing is checked too) bit for bit, and each token's rows do not depend on the batch;
/// - both equal a float64 reference written here from the specification — each block of 32 activations quantized to
///   round(x / d), d = max|x| / 127, times the weights as `ReferenceOps.dequantize` gives them — within f32 rounding
///   of the block scales (2e-6 of the sum of magnitudes, as MatmulDQTests);
/// - and the f32 products within the quantization's own bound, Σ_blocks (d / 2) · Σ|w| (each activation moves by at
///   most half a step).
@Suite(.enabled(if: Kernels.hasInt8Dot)) struct MatmulInt8Tests {
    typealias Rng = SplitMix64

    /// Shapes whose block counts take every group layout: 1 (padded to 2), 2, 3 (4), 4, 6 (4 + 2), 18 (16 + 2),
    /// 19 (16 + 4), 48 (3 × 16), 65 (64 + 2).
    static let shapes: [(rows: Int, cols: Int, ntok: Int)] = [
        (3, 32, 1), (9, 64, 2), (17, 96, 3), (8, 128, 8), (5, 192, 9), (36, 576, 5), (21, 608, 17), (40, 1536, 4), (11, 2080, 1),
    ]

    static func matrix(_ type: DType, rows: Int, cols: Int, rng: inout Rng) -> WeightMatrix {
        let bytes = MatmulDQTests.randomMatrix(type, rows: rows, cols: cols, rng: &rng)
        let buf = Buffer(byteCount: bytes.count)
        bytes.withUnsafeBytes { buf.base.copyMemory(from: $0.baseAddress!, byteCount: bytes.count) }
        return WeightMatrix(dtype: type, rows: rows, cols: cols, storage: buf)
    }

    /// Activations with spread: a few large values per block, some blocks all zero.
    static func activations(_ n: Int, rng: inout Rng) -> [Float] {
        var x = rng.floats(n)
        for i in stride(from: 0, to: n, by: 13) { x[i] *= 9 }
        if n >= 64 { for i in 32..<64 { x[i] = 0 } }
        return x
    }

    static func run(_ p: Kernels.PackedInt8, _ x: [Float], ldx: Int, ntok: Int, ldy: Int) -> [Float] {
        var y = [Float](repeating: .nan, count: ntok * ldy)
        Kernels.matmulInt8(p, x, ldx: ldx, ntok: ntok, &y, ldy: ldy)
        return y
    }

    static func twin(_ w: WeightMatrix, _ x: [Float], ldx: Int, ntok: Int, ldy: Int) -> [Float] {
        var y = [Float](repeating: .nan, count: ntok * ldy)
        Kernels.matmulInt8Reference(w, x, ldx: ldx, ntok: ntok, &y, ldy: ldy)
        return y
    }

    @Test(arguments: [DType.q4_0, .q4_1, .q8_0])
    func kernelEqualsTwinAndIsBatchInvariant(type: DType) throws {
        var rng = Rng(seed: UInt64(type.rawValue) &+ 4242)
        for (rows, cols, ntok) in Self.shapes {
            let w = Self.matrix(type, rows: rows, cols: cols, rng: &rng)
            let p = try #require(Kernels.PackedInt8(w))
            let ldx = cols + 32, ldy = rows + 2
            let x = Self.activations(ntok * ldx, rng: &rng)
            let y = Self.run(p, x, ldx: ldx, ntok: ntok, ldy: ldy), ref = Self.twin(w, x, ldx: ldx, ntok: ntok, ldy: ldy)
            for t in 0..<ntok {
                let rowsOf = { (v: [Float]) in Array(v[(t * ldy)..<(t * ldy + rows)]) }
                #expect(rowsOf(y) == rowsOf(ref), "\(type) \(rows)x\(cols) token \(t): kernel != twin by \(maxAbsDiff(rowsOf(y), rowsOf(ref)))")
                let alone = Self.run(p, Array(x[(t * ldx)..<((t + 1) * ldx)]), ldx: ldx, ntok: 1, ldy: rows)
                #expect(rowsOf(y) == alone, "\(type) \(rows)x\(cols) token \(t): batched != alone")
            }
        }
    }

    /// The AVX2 twin (VPMADDUBSW/VPMADDWD in place of VPDPBUSD, the 64-byte vectors as 32-byte halves; what CPUs without
    /// AVX-512 VNNI run) gives the AVX-512 kernel's bits, run here under the AVX2 limit: every shape and token count,
    /// each token alone and batched, and Q8_0 codes of −128 (which the sign trick must still take exactly: a GGUF may
    /// hold them though ggml's quantizer does not write them).
    @Test(.enabled(if: Kernels.simdLevel >= 2), arguments: [DType.q4_0, .q4_1, .q8_0])
    func avx2TwinGivesTheSameBits(type: DType) throws {
        var rng = Rng(seed: UInt64(type.rawValue) &+ 777)
        for (rows, cols, ntok) in Self.shapes {
            let w = Self.matrix(type, rows: rows, cols: cols, rng: &rng)
            if type == .q8_0 {
                // Some codes −128 (byte 0x80) in every row.
                let b = UnsafeMutableRawPointer(mutating: w.data).assumingMemoryBound(to: UInt8.self)
                for r in 0..<rows { for blk in 0..<(cols / 32) where (r + blk) % 3 == 0 { b[r * w.rowBytes + blk * 34 + 2 + (r + blk) % 32] = 0x80 } }
            }
            let p = try #require(Kernels.PackedInt8(w))
            let ldx = cols + 32, ldy = rows + 2
            let x = Self.activations(ntok * ldx, rng: &rng)
            let ref = Self.twin(w, x, ldx: ldx, ntok: ntok, ldy: ldy)
            // Both AVX2 forms where the CPU has AVX-VNNI (VPDPBUSD's 256-bit form, and VPMADDUBSW + VPMADDWD); the second alone
            // elsewhere.
            for vnni in Kernels.cpuHasAVXVNNI ? [true, false] : [false] {
                let form = vnni ? "AVX-VNNI" : "AVX2"
                let (y, alone, level) = Kernels.withSIMDLimit(1) {
                    let run = {
                        (Self.run(p, x, ldx: ldx, ntok: ntok, ldy: ldy),
                         (0..<ntok).map { t in Self.run(p, Array(x[(t * ldx)..<((t + 1) * ldx)]), ldx: ldx, ntok: 1, ldy: rows) },
                         (Kernels.hasInt8Dot, Kernels.hasInt8Products, Kernels.avxVNNIActive))
                    }
                    return vnni ? run() : Kernels.withoutAVXVNNI(run)
                }
                #expect(level == (vnni, true, vnni), "the AVX2 limit must select the twin's \(form) form")
                for t in 0..<ntok {
                    let rowsOf = { (v: [Float]) in Array(v[(t * ldy)..<(t * ldy + rows)]) }
                    #expect(rowsOf(y).map(\.bitPattern) == rowsOf(ref).map(\.bitPattern), "\(type) \(rows)x\(cols) token \(t): \(form) != twin")
                    #expect(rowsOf(y).map(\.bitPattern) == alone[t].map(\.bitPattern), "\(type) \(rows)x\(cols) token \(t): \(form) batched != alone")
                }
            }
        }
    }

    @Test(arguments: [DType.q4_0, .q4_1, .q8_0])
    func matchesTheSpecificationAndTheQuantizationBound(type: DType) throws {
        var rng = Rng(seed: UInt64(type.rawValue) &+ 99)
        for (rows, cols, ntok) in Self.shapes {
            let w = Self.matrix(type, rows: rows, cols: cols, rng: &rng)
            let wf = w.data.withMemoryRebound(to: UInt8.self, capacity: w.byteCount) {
                ReferenceOps.dequantize(type, UnsafeRawPointer($0), count: rows * cols)
            }
            let p = try #require(Kernels.PackedInt8(w))
            let x = Self.activations(ntok * cols, rng: &rng)
            let y = Self.run(p, x, ldx: cols, ntok: ntok, ldy: rows)
            var f32 = [Float](repeating: 0, count: ntok * rows)
            dl_matmul_dq(Int32(type.rawValue), w.data, Int64(rows), Int64(cols), x, Int64(cols), Int64(ntok), &f32, Int64(rows))
            for t in 0..<ntok {
                // The specification's quantization, block by block.
                var xq = [Double](repeating: 0, count: cols), step = [Double](repeating: 0, count: cols / 32)
                for b in 0..<(cols / 32) {
                    let block = x[(t * cols + b * 32)..<(t * cols + b * 32 + 32)]
                    let amax = block.map { abs($0) }.max()!
                    guard amax >= 1e-30 else { continue }
                    let d = amax / 127, id = 1 / d
                    step[b] = Double(d)
                    for (j, v) in block.enumerated() {
                        let q = (v * id).rounded(.toNearestOrEven)
                        #expect(abs(q) <= 127)
                        xq[b * 32 + j] = Double(q) * Double(d)
                    }
                }
                for r in 0..<rows {
                    var exact = 0.0, magnitude = 0.0, bound = 0.0
                    for k in 0..<cols {
                        let wk = Double(wf[r * cols + k])
                        exact += wk * xq[k]
                        magnitude += abs(wk * xq[k])
                        bound += step[k / 32] / 2 * abs(wk)
                    }
                    let got = Double(y[t * rows + r])
                    #expect(abs(got - exact) <= 2e-6 * magnitude + 1e-30, "\(type) \(rows)x\(cols) t=\(t) r=\(r): \(got) vs \(exact)")
                    let fromF32 = abs(got - Double(f32[t * rows + r]))
                    #expect(fromF32 <= bound * (1 + 1e-5) + 4e-6 * magnitude, "\(type) \(rows)x\(cols) t=\(t) r=\(r): \(fromF32) past \(bound)")
                }
            }
        }
    }

    /// A block holding an infinity or a NaN makes its token's rows NaN (as f32 products would), and only its token's:
    /// the kernel and the twin agree.
    @Test func nonFiniteActivationsPropagateToTheirTokenOnly() throws {
        var rng = Rng(seed: 7)
        let (rows, cols) = (20, 576)
        let w = Self.matrix(.q4_1, rows: rows, cols: cols, rng: &rng)
        let p = try #require(Kernels.PackedInt8(w))
        var x = Self.activations(3 * cols, rng: &rng)
        x[cols + 100] = .infinity
        x[2 * cols + 5] = .nan
        let y = Self.run(p, x, ldx: cols, ntok: 3, ldy: rows), ref = Self.twin(w, x, ldx: cols, ntok: 3, ldy: rows)
        #expect(y[0..<rows].allSatisfy(\.isFinite) && y[rows...].allSatisfy(\.isNaN) && ref[rows...].allSatisfy(\.isNaN))
        #expect(Array(y[0..<rows]) == Array(ref[0..<rows]))
    }

    /// The activations' quantization at its edges, kernel against twin bit for bit (the kernel quantizes sixteen blocks
    /// at a time with vector divisions; the twin block by block): ties after scaling round half to even (amax 127 gives
    /// d = 1, so ±0.5, 1.5, 2.5 are exact ties), blocks below the 1e-30 floor (subnormal and tiny normal values) are
    /// zero with d = 0 — a token of only such blocks comes out exactly 0 — a block at the floor is kept, −0 and the
    /// 18-block rows (16 + 2) cover a partial second set of sixteen.
    @Test func quantizationEdgesMatchTheTwin() throws {
        var rng = Rng(seed: 11)
        let (rows, cols) = (24, 576)
        for type in [DType.q4_1, .q8_0] {
            let w = Self.matrix(type, rows: rows, cols: cols, rng: &rng)
            let p = try #require(Kernels.PackedInt8(w))
            var x = Self.activations(4 * cols, rng: &rng)
            // Token 0: ties in every block.
            let ties: [Float] = [127, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5, 4.5, -126.5, 126.5, 0, -0.0, 5.5, -5.5, 6.5]
            for i in 0..<cols { x[i] = ties[i % 16] }
            // Token 1: every block below the floor (subnormal or tiny normal).
            for i in 0..<cols { x[cols + i] = (i % 2 == 0 ? 1 : -1) * (i % 64 < 32 ? 1e-35 : Float.leastNonzeroMagnitude * Float(i % 7 + 1)) }
            // Token 2: one block at the floor, one of −0, one tiny, the rest random.
            for i in 0..<32 { x[2 * cols + i] = i == 3 ? 1e-30 : 1e-31 }
            for i in 32..<64 { x[2 * cols + i] = -0.0 }
            for i in 544..<576 { x[2 * cols + i] = 1e-33 }
            let y = Self.run(p, x, ldx: cols, ntok: 4, ldy: rows), ref = Self.twin(w, x, ldx: cols, ntok: 4, ldy: rows)
            #expect(y.map(\.bitPattern) == ref.map(\.bitPattern), "\(type): kernel != twin at the quantization's edges")
            #expect(y[rows..<(2 * rows)].allSatisfy { $0 == 0 }, "\(type): a token below the floor must come out 0")
        }
    }

    /// Only 4- and 8-bit codes with whole blocks are packed.
    @Test func packsOnlyQuantizedCodes() {
        var rng = Rng(seed: 3)
        #expect(Kernels.PackedInt8(Self.matrix(.f16, rows: 2, cols: 64, rng: &rng)) == nil)
        #expect(Kernels.PackedInt8(Self.matrix(.f32, rows: 2, cols: 64, rng: &rng)) == nil)
        #expect(Kernels.PackedInt8(Self.matrix(.q4_1, rows: 2, cols: 64, rng: &rng))?.byteCount == 2 * 2 * 20)
        #expect(Kernels.PackedInt8(Self.matrix(.q8_0, rows: 3, cols: 96, rng: &rng))?.byteCount == 3 * 4 * 34)
    }
}
