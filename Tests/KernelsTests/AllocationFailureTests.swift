import CKernels
import Testing
@testable import Kernels

/// A scratch or tensor allocation that fails stops the process with a message naming the buffer and its
/// size, instead of the kernel skipping its work and leaving stale outputs. Each case asks for more than
/// any 64-bit address space holds, in a child process (exit test), before any memory is touched.
@Suite struct AllocationFailureTests {
    static func stderr(_ result: ExitTest.Result?) -> String {
        result.map { String(decoding: $0.standardErrorContent, as: UTF8.self) } ?? ""
    }

    @Test func bufferAbortsWithAMessage() async {
        let result = await #expect(processExitsWith: .failure, observing: [\.standardErrorContent]) {
            _ = Buffer(byteCount: 1 << 56)
        }
        #expect(Self.stderr(result).contains("cannot allocate 72057594037927936 bytes"))
    }

    @Test func matmulPanelAbortsWithAMessage() async {
        let result = await #expect(processExitsWith: .failure, observing: [\.standardErrorContent]) {
            // One f16 row of 2^44 columns for nine tokens (up to eight skip the panel): its dequantized
            // panel (4 rows of f32) cannot be allocated.
            let weights = [UInt8](repeating: 0, count: 64), x = [Float](repeating: 0, count: 16)
            var y = [Float](repeating: 0, count: 9)
            dl_matmul_dq(Int32(DType.f16.rawValue), weights, 1, 1 << 44, x, 1 << 44, 9, &y, 1)
        }
        #expect(Self.stderr(result).contains("dlora kernels: cannot allocate 281474976710656 bytes for the dequantized weight panel"))
    }

    @Test func loraScratchAbortsWithAMessage() async {
        let result = await #expect(processExitsWith: .failure, observing: [\.standardErrorContent]) {
            // One segment of 2^40 tokens: its shrink/expand intermediates cannot be allocated.
            let a = WeightMatrix.f32(rows: 16, cols: 16, values: [Float](repeating: 0, count: 256))
            let batch = Kernels.LoRABatch()
            batch.reset(inFeatures: 16, outFeatures: 16)
            batch.append(a: a, b: a, tokens: 0..<(1 << 40), scale: 1)
            var x = [Float](repeating: 0, count: 16), y = x
            batch.apply(&x, ldx: 16, into: &y, ldy: 16)
        }
        #expect(Self.stderr(result).contains("dlora kernels: cannot allocate") && Self.stderr(result).contains("LoRA shrink/expand scratch"))
    }
}
