/// Plain Swift twins of the conversion and (de)quantization kernels in quant.c (STYLE.md: every fast kernel
/// has a reference twin). Written from the format definitions — value = sign · 2^e · significand, rounding
/// by `Double.rounded(.toNearestOrEven)` on the target grid — rather than by bit tricks, so they check the C
/// code instead of repeating it. Used only by parity tests.
extension ReferenceOps {
    /// The value of an IEEE binary16 bit pattern.
    public static func f16ToFloat(_ h: UInt16) -> Float {
        let sign: Float = h & 0x8000 != 0 ? -1 : 1
        let e = Int((h >> 10) & 0x1f), m = Int(h & 0x3ff)
        switch e {
        case 0: return sign * Float(m) * 0x1p-24
        case 31: return m == 0 ? sign * .infinity : .nan
        default: return sign * Float(1024 + m) * Float(sign: .plus, exponent: e - 25, significand: 1)
        }
    }

    /// The binary16 nearest to `f` (ties to even); beyond the largest half (65504) → ±inf; NaN → quiet NaN.
    public static func floatToF16(_ f: Float) -> UInt16 {
        let sign: UInt16 = f.sign == .minus ? 0x8000 : 0
        if f.isNaN { return sign | 0x7e00 }
        let v = roundToGrid(Double(f.magnitude), minExponent: -14, mantissaBits: 10)
        if v >= 65536 { return sign | 0x7c00 }
        if v < 0x1p-14 { return sign | UInt16(v / 0x1p-24) }
        let e = Int(v.exponent)
        let mantissa = UInt16(v / Double(sign: .plus, exponent: e - 10, significand: 1)) - 1024
        return sign | UInt16(e + 15) << 10 | mantissa
    }

    /// The value of a bfloat16 bit pattern (the top half of an f32).
    public static func bf16ToFloat(_ h: UInt16) -> Float { Float(bitPattern: UInt32(h) << 16) }

    /// The bfloat16 nearest to `f` (ties to even); NaN keeps its top bits and becomes quiet.
    public static func floatToBF16(_ f: Float) -> UInt16 {
        if f.isNaN { return UInt16(f.bitPattern >> 16) | 0x40 }
        let sign: UInt16 = f.sign == .minus ? 0x8000 : 0
        let v = roundToGrid(Double(f.magnitude), minExponent: -126, mantissaBits: 7)
        if v >= 0x1p128 { return sign | 0x7f80 }
        return sign | UInt16(Float(v).bitPattern >> 16)
    }

    /// `a` (≥ 0) rounded to nearest even on the grid of a binary format with `mantissaBits` stored bits and
    /// smallest normal exponent `minExponent` (subnormals below it share that exponent's spacing).
    private static func roundToGrid(_ a: Double, minExponent: Int, mantissaBits: Int) -> Double {
        guard a.isFinite else { return a }
        let e = a < Double(sign: .plus, exponent: minExponent, significand: 1) ? minExponent : Int(a.exponent)
        let quantum = Double(sign: .plus, exponent: e - mantissaBits, significand: 1)
        return (a / quantum).rounded(.toNearestOrEven) * quantum
    }

    /// The `count` elements of `dtype` at `src` as floats, from the ggml block definitions:
    /// Q4_0 { f16 d; u8 qs[16] } x = (q − 8)·d; Q4_1 { f16 d, m; u8 qs[16] } x = q·d + m; Q8_0 { f16 d; i8 qs[32] }
    /// x = q·d; element j < 16 of a 4-bit block is the low nibble of qs[j], j ≥ 16 the high nibble of qs[j − 16].
    public static func dequantize(_ dtype: DType, _ src: UnsafeRawPointer, count n: Int) -> [Float] {
        let p = src.assumingMemoryBound(to: UInt8.self)
        func half(_ o: Int) -> Float { f16ToFloat(UInt16(p[o]) | UInt16(p[o + 1]) << 8) }
        func nibble(_ qs: Int, _ j: Int) -> Int { j < 16 ? Int(p[qs + j] & 0x0f) : Int(p[qs + j - 16] >> 4) }
        var out: [Float] = []
        out.reserveCapacity(n)
        switch dtype {
        case .f32:
            for i in 0..<n { out.append(src.loadUnaligned(fromByteOffset: 4 * i, as: Float.self)) }
        case .f16:
            for i in 0..<n { out.append(f16ToFloat(src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))) }
        case .bf16:
            for i in 0..<n { out.append(bf16ToFloat(src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))) }
        case .q4_0:
            for b in 0..<(n / 32) {
                let d = half(18 * b)
                for j in 0..<32 { out.append(Float(nibble(18 * b + 2, j) - 8) * d) }
            }
        case .q4_1:
            for b in 0..<(n / 32) {
                let d = half(20 * b), m = half(20 * b + 2)
                for j in 0..<32 { out.append(Float(nibble(20 * b + 4, j)) * d + m) }
            }
        case .q8_0:
            for b in 0..<(n / 32) {
                let d = half(34 * b)
                for j in 0..<32 { out.append(Float(Int8(bitPattern: p[34 * b + 2 + j])) * d) }
            }
        }
        return out
    }

    /// ggml's reference quantizers (`quantize_row_*_ref`): Q4_0 scales by the signed value of largest
    /// magnitude over −8, Q4_1 spans [min, max] in 15 steps, Q8_0 scales by max|x| / 127; F16/BF16 round to
    /// nearest even. Returns the encoded bytes.
    public static func quantize(_ x: [Float], to dtype: DType) -> [UInt8] {
        var out: [UInt8] = []
        func put16(_ v: UInt16) { out.append(UInt8(v & 0xff)); out.append(UInt8(v >> 8)) }
        switch dtype {
        case .f32:
            for v in x { let b = v.bitPattern; for s in stride(from: 0, to: 32, by: 8) { out.append(UInt8((b >> UInt32(s)) & 0xff)) } }
        case .f16:
            for v in x { put16(floatToF16(v)) }
        case .bf16:
            for v in x { put16(floatToBF16(v)) }
        case .q4_0:
            for b in stride(from: 0, to: x.count - 31, by: 32) {
                let block = x[b..<(b + 32)]
                var amax: Float = 0, max: Float = 0
                for v in block where v.magnitude > amax { amax = v.magnitude; max = v }
                let d = max / -8, id: Float = d != 0 ? 1 / d : 0
                put16(floatToF16(d))
                let q = block.map { Swift.min(15, Int($0 * id + 8.5)) }
                for j in 0..<16 { out.append(UInt8(q[j] | q[j + 16] << 4)) }
            }
        case .q4_1:
            for b in stride(from: 0, to: x.count - 31, by: 32) {
                let block = x[b..<(b + 32)]
                let mn = block.min()!, mx = block.max()!
                let d = (mx - mn) / 15, id: Float = d != 0 ? 1 / d : 0
                put16(floatToF16(d))
                put16(floatToF16(mn))
                let q = block.map { Swift.min(15, Int(($0 - mn) * id + 0.5)) }
                for j in 0..<16 { out.append(UInt8(q[j] | q[j + 16] << 4)) }
            }
        case .q8_0:
            for b in stride(from: 0, to: x.count - 31, by: 32) {
                let block = x[b..<(b + 32)]
                let amax = block.map(\.magnitude).max()!
                let d = amax / 127, id: Float = d != 0 ? 1 / d : 0
                put16(floatToF16(d))
                for v in block { out.append(UInt8(bitPattern: Int8((v * id).rounded()))) }
            }
        }
        return out
    }
}
