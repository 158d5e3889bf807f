import Testing
import TestSupport
@testable import Kernels

/// Dequantization and ggml's reference quantizers (quant.c) against the Swift twins in
/// ReferenceOps. Tolerance: none. Dequantizing is d·q (+ m), one rounding per operation in the same order
/// in both, and quantizing makes the same rounding decisions, so values and bytes must agree exactly (the
/// model goldens and batch-invariance tests rely on that exactness).
@Suite struct QuantParityTests {
    typealias Rng = OpsParityTests.Rng

    static let types: [DType] = [.q4_0, .q4_1, .q8_0, .f16, .bf16, .f32]

    /// Random rows with a spread of magnitudes, a constant block, an all-zero block and one outlier per row.
    static func values(_ n: Int, rng: inout Rng) -> [Float] {
        var x = rng.floats(n).map { $0 * Float(sign: .plus, exponent: rng.int(-6..<6), significand: 1) }
        if n >= 96 {
            for j in 32..<64 { x[j] = 0.375 }
            for j in 64..<96 { x[j] = 0 }
        }
        if n > 0 { x[rng.int(0..<n)] = 40 }
        return x
    }

    /// On every instruction-set path this machine has (Q8_0 has AVX-512 and AVX2 forms).
    @Test(arguments: types) func quantizeMatchesReference(type: DType) {
        var rng = Rng(seed: 300 + UInt64(type.rawValue))
        for n in [32, 96, 576, 1536] {
            let x = Self.values(n, rng: &rng)
            for level in 0...Kernels.simdLevel {
                var got = [UInt8](repeating: 0, count: type.byteCount(elements: n)!)
                Kernels.withSIMDLimit(level) { got.withUnsafeMutableBytes { Kernels.quantize(x, count: n, to: type, into: $0.baseAddress!) } }
                #expect(got == ReferenceOps.quantize(x, to: type), "\(type) n=\(n) path \(level)")
            }
        }
    }

    /// The threaded row quantizer (merged matrices stored as Q8_0) writes the reference's bytes for every row, on every path,
    /// on a matrix big enough to be split over the threads, including Q8_0 blocks whose scale is exactly 1
    /// with values on and next to the halfway points (round half away from zero).
    @Test(arguments: types) func quantizeRowsMatchesReference(type: DType) {
        var rng = Rng(seed: 500 + UInt64(type.rawValue))
        let rows = 160, cols = 576
        var x = Self.values(rows * cols, rng: &rng)
        let ties: [Float] = [127, 2.5, -2.5, 0.5, -0.5, 0.49999997, -0.49999997, 126.5, -126.5, 1.5, -1.5, 3.4999998, 0, -0.0]
        for (j, v) in ties.enumerated() { x[cols + j] = v }  // row 1's first block: amax 127, so d = 1
        let want = (0..<rows).flatMap { ReferenceOps.quantize(Array(x[($0 * cols)..<(($0 + 1) * cols)]), to: type) }
        for level in 0...Kernels.simdLevel {
            var got = [UInt8](repeating: 0, count: rows * type.byteCount(elements: cols)!)
            Kernels.withSIMDLimit(level) {
                x.withUnsafeBufferPointer { src in
                    got.withUnsafeMutableBytes { Kernels.quantizeRows(src.baseAddress!, rows: rows, cols: cols, to: type, into: $0.baseAddress!) }
                }
            }
            #expect(got == want, "\(type) path \(level)")
        }
    }

    @Test(arguments: types) func dequantizeMatchesReference(type: DType) {
        var rng = Rng(seed: 400 + UInt64(type.rawValue))
        for n in [32, 96, 576, 1536] {
            // Bytes from the quantizer, plus random bytes (any scale, any nibble) for the block formats.
            var encodings = [ReferenceOps.quantize(Self.values(n, rng: &rng), to: type)]
            if type.isQuantized {
                var bytes = (0..<type.byteCount(elements: n)!).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
                // Keep the f16 scales finite and moderate (exponent bits 01xxx): random scales may be NaN.
                for b in stride(from: 0, to: bytes.count, by: type.blockBytes) {
                    bytes[b + 1] = 0x30 | (bytes[b + 1] & 0x83)
                    if type == .q4_1 { bytes[b + 3] = 0x30 | (bytes[b + 3] & 0x83) }
                }
                encodings.append(bytes)
            }
            for bytes in encodings {
                var got = [Float](repeating: .nan, count: n)
                bytes.withUnsafeBytes { Kernels.dequantize(type, $0.baseAddress!, count: n, into: &got) }
                let ref = bytes.withUnsafeBytes { ReferenceOps.dequantize(type, $0.baseAddress!, count: n) }
                #expect(got.map(\.bitPattern) == ref.map(\.bitPattern), "\(type) n=\(n)")
            }
        }
    }

    /// The whole-matrix dequantizer (split by rows over the kernel threads above 64k elements; the matmul
    /// panel's SIMD conversions) equals the row twin, row by row, and so does dequantizeRow, on every
    /// instruction-set path this machine has.
    @Test(arguments: types) func dequantizeMatrixMatchesReference(type: DType) {
        for level in 0...Kernels.simdLevel {
            Kernels.withSIMDLimit(level) { Self.checkDequantizeMatrix(type: type) }
        }
    }

    static func checkDequantizeMatrix(type: DType) {
        var rng = Rng(seed: 500 + UInt64(type.rawValue))
        for (rows, cols) in [(3, 64), (200, 576)] {
            let x = Self.values(rows * cols, rng: &rng)
            let rowBytes = type.byteCount(elements: cols)!
            let storage = Buffer(byteCount: rows * rowBytes)
            for r in 0..<rows {
                let bytes = ReferenceOps.quantize(Array(x[(r * cols)..<((r + 1) * cols)]), to: type)
                bytes.withUnsafeBytes { (storage.base + r * rowBytes).copyMemory(from: $0.baseAddress!, byteCount: rowBytes) }
            }
            let w = WeightMatrix(dtype: type, rows: rows, cols: cols, storage: storage)
            var dense = [Float](repeating: .nan, count: rows * cols)
            Kernels.dequantize(w, into: &dense)
            var row = [Float](repeating: .nan, count: cols)
            for r in 0..<rows {
                let ref = ReferenceOps.dequantize(type, w.data + r * rowBytes, count: cols)
                #expect(dense[(r * cols)..<((r + 1) * cols)].map(\.bitPattern) == ref.map(\.bitPattern), "\(type) \(rows)x\(cols) row \(r)")
                Kernels.dequantizeRow(w, row: r, into: &row)
                #expect(row.map(\.bitPattern) == ref.map(\.bitPattern), "\(type) dequantizeRow \(r)")
            }
        }
    }
}
