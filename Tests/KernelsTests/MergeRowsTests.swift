import Testing
import TestSupport
@testable import Kernels

/// `Kernels.mergeRows` (quant.c's dl_merge_rows, the LoRA merge in one pass per matrix) against a twin written here from
/// its definition, bit for bit: W's row dequantized (`ReferenceOps.dequantize`), per column acc = b₀·a₀ then
/// acc = fma(bⱼ, aⱼ, acc) in increasing j, then w + scale · acc (the product and the sum rounded apart); stored as f32,
/// or quantized as `ReferenceOps.quantize` does. On every instruction-set path this machine has (the same bits on each),
/// with shapes off the vector widths (scalar tails) and big enough to be split over the kernel threads.
@Suite struct MergeRowsTests {
    typealias Rng = SplitMix64

    static func twin(_ w: WeightMatrix, b: [Float], a: [Float], rank: Int, scale: Float) -> [[Float]] {
        (0..<w.rows).map { r in
            let row = ReferenceOps.dequantize(w.dtype, w.data + r * w.rowBytes, count: w.cols)
            return (0..<w.cols).map { c in
                guard rank > 0 else { return row[c] }
                var acc = b[r * rank] * a[c]
                for j in 1..<max(rank, 1) { acc = acc.addingProduct(b[r * rank + j], a[j * w.cols + c]) }
                return row[c] + scale * acc
            }
        }
    }

    @Test(arguments: [DType.q4_1, .q4_0, .q8_0, .f16, .f32])
    func equalsTheTwinOnEveryPath(wtype: DType) {
        var rng = Rng(seed: 4400 + UInt64(wtype.rawValue))
        for (rows, cols, rank) in [(37, 576, 16), (5, 96, 5), (3, 100, 1), (70, 1536, 24), (4, 64, 0)] {
            if wtype.isQuantized && cols % 32 != 0 { continue }
            let values = rng.floats(rows * cols).map { $0 * 0.5 }
            let bytes = (0..<rows).flatMap { r in ReferenceOps.quantize(Array(values[(r * cols)..<((r + 1) * cols)]), to: wtype) }
            let storage = Buffer(byteCount: bytes.count)
            bytes.withUnsafeBytes { storage.base.copyMemory(from: $0.baseAddress!, byteCount: bytes.count) }
            let w = WeightMatrix(dtype: wtype, rows: rows, cols: cols, storage: storage)
            let b = rng.floats(rows * max(rank, 1)), a = rng.floats(max(rank, 1) * cols).map { $0 * 0.1 }
            let scale: Float = 1.75
            let want = Self.twin(w, b: b, a: a, rank: rank, scale: scale)
            for level in 0...Kernels.simdLevel {
                var f32 = [Float](repeating: .nan, count: rows * cols)
                Kernels.withSIMDLimit(level) {
                    f32.withUnsafeMutableBytes {
                        Kernels.mergeRows(w, b: b, a: a, rank: rank, scale: scale, as: .f32, into: $0.baseAddress!, rowBytes: cols * 4)
                    }
                }
                let differing = (0..<rows).reduce(0) { n, r in
                    n + zip(f32[(r * cols)..<((r + 1) * cols)], want[r]).filter { $0.bitPattern != $1.bitPattern }.count
                }
                #expect(differing == 0, "\(wtype) \(rows)×\(cols) rank \(rank), path \(level): \(differing) values differ from the twin")
                guard cols % 32 == 0 else { continue }
                let rowBytes = DType.q8_0.byteCount(elements: cols)!
                var q = [UInt8](repeating: 0xAA, count: rows * rowBytes)
                Kernels.withSIMDLimit(level) {
                    q.withUnsafeMutableBytes {
                        Kernels.mergeRows(w, b: b, a: a, rank: rank, scale: scale, as: .q8_0, into: $0.baseAddress!, rowBytes: rowBytes)
                    }
                }
                #expect(q == want.flatMap { ReferenceOps.quantize($0, to: .q8_0) }, "\(wtype) \(rows)×\(cols) rank \(rank), path \(level): Q8_0 bytes")
            }
        }
    }
}
