import CKernels
import Testing
import TestSupport
@testable import Kernels

/// f16/bf16 conversions (quant.c) against their twins in ReferenceOps, which derive the values from the
/// format definitions. Tolerance: none — a conversion is exact or correctly rounded, so every bit must agree.
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
            Kernels.f16ToF32(&src, into: &out, count: 1)
            #expect(out == value, "f16 0x\(String(bits, radix: 16))")
            var back: UInt16 = 0
            Kernels.f32ToF16(&out, into: &back, count: 1)
            #expect(back == bits, "round trip 0x\(String(bits, radix: 16))")
            #expect(ReferenceOps.f16ToFloat(bits) == value && ReferenceOps.floatToF16(value) == bits, "reference 0x\(String(bits, radix: 16))")
        }
    }

    @Test func f16RoundsToNearestEven() {
        // 1 + 2^-11 is halfway between 1 and the next half (1 + 2^-10): ties to even -> 1.
        var x: Float = 1 + 1.0 / 2048
        var h: UInt16 = 0
        Kernels.f32ToF16(&x, into: &h, count: 1)
        #expect(h == 0x3C00)
        x = 1 + 3.0 / 2048 // halfway between 1+2^-10 (odd) and 1+2^-9: rounds up to even
        Kernels.f32ToF16(&x, into: &h, count: 1)
        #expect(h == 0x3C02)
    }

    /// Every one of the 65,536 half bit patterns decodes to the reference value, and every non-NaN value
    /// encodes back to its own pattern.
    @Test func f16AllPatternsMatchReference() {
        let bits = (0...UInt16.max).map { $0 }
        var values = [Float](repeating: 0, count: bits.count)
        Kernels.f16ToF32(bits, into: &values, count: bits.count)
        var back = [UInt16](repeating: 0, count: bits.count)
        Kernels.f32ToF16(values, into: &back, count: bits.count)
        var mismatches = 0
        for (i, h) in bits.enumerated() {
            let ref = ReferenceOps.f16ToFloat(h)
            if ref.isNaN {
                if !values[i].isNaN || back[i] & 0x7c00 != 0x7c00 || back[i] & 0x3ff == 0 { mismatches += 1 }
            } else if values[i].bitPattern != ref.bitPattern || back[i] != h {
                mismatches += 1
            }
        }
        #expect(mismatches == 0)
    }

    /// f32 → f16 and f32 → bf16 on random floats over the whole exponent range (normals, values that
    /// become half subnormals, overflow), on the rounding ties and on NaNs, against the reference rounding, on every
    /// instruction-set path (f16 has an F16C form).
    @Test func f32ToHalfMatchesReference() {
        var rng = OpsParityTests.Rng(seed: 11)
        var xs: [Float] = [0, -0, 65504, 65519.99, 65520, -65520, 1e-8, 2.9802322e-8, 5.9604645e-8, 8.940697e-8,
                           .infinity, -.infinity, .greatestFiniteMagnitude, .leastNonzeroMagnitude, 3.3895314e38]
        for _ in 0..<20000 {
            let bits = UInt32(truncatingIfNeeded: rng.next())
            let f = Float(bitPattern: bits)
            if !f.isNaN { xs.append(f) }
            // Values near the half range, where the interesting cases are.
            xs.append(rng.float() * Float(sign: .plus, exponent: rng.int(-26..<17), significand: 1))
        }
        // NaNs with payloads among them (the vector path hands a group holding one to the scalar rounding).
        for (k, payload) in [UInt32(0x7fc0_0000), 0x7f80_0001, 0xffc0_1234, 0x7fff_ffff].enumerated() { xs.insert(Float(bitPattern: payload), at: 37 * k + 3) }
        for level in 0...Kernels.simdLevel {
            var h = [UInt16](repeating: 0, count: xs.count), b = h
            Kernels.withSIMDLimit(level) {
                Kernels.f32ToF16(xs, into: &h, count: xs.count)
                Kernels.f32ToBF16(xs, into: &b, count: xs.count)
            }
            var f16Mismatch = 0, bf16Mismatch = 0
            for (i, x) in xs.enumerated() {
                if h[i] != ReferenceOps.floatToF16(x) { f16Mismatch += 1 }
                if b[i] != ReferenceOps.floatToBF16(x) { bf16Mismatch += 1 }
            }
            #expect(f16Mismatch == 0, "path \(level)")
            #expect(bf16Mismatch == 0, "path \(level)")
        }
        // bf16 decode is the top half of an f32.
        var b = [UInt16](repeating: 0, count: xs.count)
        Kernels.f32ToBF16(xs, into: &b, count: xs.count)
        var back = [Float](repeating: 0, count: b.count)
        Kernels.bf16ToF32(b, into: &back, count: b.count)
        #expect(zip(b, back).allSatisfy { ReferenceOps.bf16ToFloat($0).bitPattern == $1.bitPattern })
        // NaN stays NaN in both.
        var nan = Float.nan, hn: UInt16 = 0, bn: UInt16 = 0
        Kernels.f32ToF16(&nan, into: &hn, count: 1)
        Kernels.f32ToBF16(&nan, into: &bn, count: 1)
        #expect(ReferenceOps.f16ToFloat(hn).isNaN && ReferenceOps.bf16ToFloat(bn).isNaN)
    }

    @Test func bf16RoundTrip() {
        var src: [Float] = [1, -2.5, 3.140625, 1e-20, 65504]
        var bits = [UInt16](repeating: 0, count: src.count)
        Kernels.f32ToBF16(&src, into: &bits, count: src.count)
        var back = [Float](repeating: 0, count: src.count)
        Kernels.bf16ToF32(&bits, into: &back, count: src.count)
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
