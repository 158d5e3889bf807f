import CKernels

/// Typed faces of the conversion and (de)quantization kernels in quant.c. Reference twins: `ReferenceOps`.
extension Kernels {
    /// dst[0..<count] = the `count` elements of `dtype` at `src`, as f32 (exact: d·q (+ m) for quantized blocks).
    public static func dequantize(_ dtype: DType, _ src: UnsafeRawPointer, count: Int, into dst: UnsafeMutablePointer<Float>) {
        precondition(count >= 0 && count % dtype.blockSize == 0, "dequantize: \(count) elements are not whole \(dtype) blocks")
        dl_dequantize_row(Int32(dtype.rawValue), src, dst, Int64(count))
    }

    /// dst[0..<w.cols] = row `row` of `w`, as f32.
    public static func dequantizeRow(_ w: WeightMatrix, row: Int, into dst: UnsafeMutablePointer<Float>) {
        precondition(row >= 0 && row < w.rows, "dequantizeRow: row \(row) of \(w.rows)")
        dl_dequantize_row(Int32(w.dtype.rawValue), w.data + row * w.rowBytes, dst, Int64(w.cols))
    }

    /// dst = `count` f32 values quantized to `dtype` with ggml's reference rounding (tests, fixtures).
    public static func quantize(_ src: UnsafePointer<Float>, count: Int, to dtype: DType, into dst: UnsafeMutableRawPointer) {
        precondition(count >= 0 && count % dtype.blockSize == 0, "quantize: \(count) elements are not whole \(dtype) blocks")
        dl_quantize_row(Int32(dtype.rawValue), src, dst, Int64(count))
    }

    /// `rows` × `cols` f32 values (row-major) quantized to `dtype` row by row, over the kernel threads; the
    /// same bytes as `quantize` on each row.
    public static func quantizeRows(_ src: UnsafePointer<Float>, rows: Int, cols: Int, to dtype: DType, into dst: UnsafeMutableRawPointer) {
        precondition(rows >= 0 && cols >= 0 && cols % dtype.blockSize == 0, "quantizeRows: \(cols) columns are not whole \(dtype) blocks")
        dl_quantize_rows(Int32(dtype.rawValue), src, Int64(rows), Int64(cols), dst, Int64(dtype.byteCount(elements: cols)!))
    }

    /// IEEE half bit patterns → f32 (exact).
    public static func f16ToF32(_ src: UnsafePointer<UInt16>, into dst: UnsafeMutablePointer<Float>, count: Int) {
        precondition(count >= 0)
        dl_f16_to_f32(src, dst, Int64(count))
    }

    /// f32 → IEEE half bit patterns, rounding to nearest even (overflow → ±inf, NaN stays NaN).
    public static func f32ToF16(_ src: UnsafePointer<Float>, into dst: UnsafeMutablePointer<UInt16>, count: Int) {
        precondition(count >= 0)
        dl_f32_to_f16(src, dst, Int64(count))
    }

    /// bfloat16 bit patterns → f32 (exact).
    public static func bf16ToF32(_ src: UnsafePointer<UInt16>, into dst: UnsafeMutablePointer<Float>, count: Int) {
        precondition(count >= 0)
        dl_bf16_to_f32(src, dst, Int64(count))
    }

    /// f32 → bfloat16 bit patterns, rounding to nearest even (NaN stays a quiet NaN).
    public static func f32ToBF16(_ src: UnsafePointer<Float>, into dst: UnsafeMutablePointer<UInt16>, count: Int) {
        precondition(count >= 0)
        dl_f32_to_bf16(src, dst, Int64(count))
    }
}
