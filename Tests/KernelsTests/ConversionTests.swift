import CKernels
import Testing
@testable import Kernels

@Suite struct ConversionTests {
    @Test func f16KnownValues() {
        // IEEE half bit patterns and their exact values.
        let cases: [(UInt16, Float)] = [
            (0x0000, 0), (0x3C00, 1), (0xC000, -2), (0x7BFF, 65504), (0x0001, 5.960464477539063e-08),
            (0x3555, 0.333251953125), (0x0400, 6.103515625e-05), (0x7C00, .infinity),
        ]
        for (bits, value) in cases {
            var src = bits
            var out: Float = 0
            dl_f16_to_f32(&src, &out, 1)
            #expect(out == value, "f16 0x\(String(bits, radix: 16))")
            var back: UInt16 = 0
            dl_f32_to_f16(&out, &back, 1)
            #expect(back == bits, "round trip 0x\(String(bits, radix: 16))")
        }
    }

    @Test func f16RoundsToNearestEven() {
        // 1 + 2^-11 is halfway between 1 and the next half (1 + 2^-10): ties to even -> 1.
        var x: Float = 1 + 1.0 / 2048
        var h: UInt16 = 0
        dl_f32_to_f16(&x, &h, 1)
        #expect(h == 0x3C00)
        x = 1 + 3.0 / 2048 // halfway between 1+2^-10 (odd) and 1+2^-9: rounds up to even
        dl_f32_to_f16(&x, &h, 1)
        #expect(h == 0x3C02)
    }

    @Test func bf16RoundTrip() {
        var src: [Float] = [1, -2.5, 3.140625, 1e-20, 65504]
        var bits = [UInt16](repeating: 0, count: src.count)
        dl_f32_to_bf16(&src, &bits, Int64(src.count))
        var back = [Float](repeating: 0, count: src.count)
        dl_bf16_to_f32(&bits, &back, Int64(src.count))
        for (a, b) in zip(src, back) { #expect(abs(a - b) <= abs(a) / 128) }
        #expect(back[0] == 1 && back[1] == -2.5 && back[2] == 3.140625)
    }

    @Test func blockSizes() {
        #expect(DType.q4_1.byteCount(elements: 64) == 40)
        #expect(DType.q8_0.byteCount(elements: 32) == 34)
        #expect(DType.q4_0.byteCount(elements: 33) == nil)
        #expect(DType.bf16.byteCount(elements: 3) == 6)
        for t in DType.allCases { #expect(Int(dl_row_bytes(Int32(t.rawValue), 64)) == t.byteCount(elements: 64)) }
    }
}
