import CKernels

/// How RoPE pairs the dimensions of a head (the model's configuration chooses; both are rotations by the
/// same angles, up to llama.cpp's permutation of the Q/K rows).
public enum RopePairing: Sendable, Equatable {
    /// (x[2i], x[2i+1]): GGUF Llama checkpoints.
    case adjacent
    /// (x[i], x[i + d/2]) ("rotate half"): Hugging Face checkpoints, GGUF Qwen2.
    case halves
}

/// Typed faces of the elementwise, normalisation and rotary kernels in ops.c. Rows are `width` floats;
/// pointers must cover `tokens` rows at their stride. Reference twins: `ReferenceOps`.
extension Kernels {
    /// out[t, :] = x[t, :] / sqrt(mean(x[t, :]²) + eps) · weight[:] for t < tokens (rows packed, `width` floats).
    public static func rmsNorm(_ x: UnsafePointer<Float>, weight: UnsafePointer<Float>, into out: UnsafeMutablePointer<Float>,
                               width: Int, tokens: Int, eps: Float) {
        precondition(width > 0 && tokens >= 0, "rmsNorm: width \(width), tokens \(tokens)")
        precondition(eps.isFinite && eps >= 0, "rmsNorm: epsilon \(eps)")
        dl_rmsnorm(x, weight, out, Int64(width), Int64(tokens), eps)
    }

    /// out[t, i] = silu(gate[t, i]) · up[t, i] for i < width; gate and up rows have stride `gateUpStride`
    /// (≥ width), out rows are packed.
    public static func siluMul(gate: UnsafePointer<Float>, up: UnsafePointer<Float>, gateUpStride: Int,
                               into out: UnsafeMutablePointer<Float>, width: Int, tokens: Int) {
        precondition(width >= 0 && tokens >= 0 && gateUpStride >= width, "siluMul: width \(width), stride \(gateUpStride), tokens \(tokens)")
        dl_silu_mul(gate, up, Int64(gateUpStride), out, Int64(width), Int64(tokens))
    }

    /// y[i] += x[i] for i < count (the residual add).
    public static func add(_ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>, count: Int) {
        precondition(count >= 0, "add: count \(count)")
        dl_add_inplace(y, x, Int64(count))
    }

    /// y[t·ldy + i] += scale · x[t·ldx + i] for i < width, t < tokens (the LoRA expand's scaled accumulate).
    public static func addScaled(_ x: UnsafePointer<Float>, ldx: Int, scale: Float, into y: UnsafeMutablePointer<Float>, ldy: Int,
                                 width: Int, tokens: Int) {
        precondition(width >= 0 && tokens >= 0 && ldx >= width && ldy >= width, "addScaled: width \(width), ldx \(ldx), ldy \(ldy)")
        dl_add_scaled(y, Int64(ldy), x, Int64(ldx), scale, Int64(width), Int64(tokens))
    }

    /// Rotary tables: for token t and pair i < inverseFrequencies.count, angle = positions[t] · inverseFrequencies[i];
    /// cos/sin receive tokens × half floats.
    public static func ropeTables(positions: UnsafeBufferPointer<Int32>, inverseFrequencies: UnsafeBufferPointer<Float>,
                                  cos: UnsafeMutablePointer<Float>, sin: UnsafeMutablePointer<Float>) {
        guard let p = positions.baseAddress, !positions.isEmpty else { return }
        precondition(!inverseFrequencies.isEmpty, "ropeTables: no frequencies")
        dl_rope_table(p, Int64(positions.count), inverseFrequencies.baseAddress!, Int64(inverseFrequencies.count), cos, sin)
    }

    /// Rotates `heads` heads of `headDim` floats per token in place (token rows of stride `ldx`), with the
    /// tables from `ropeTables` (tokens × headDim/2).
    public static func applyRope(_ x: UnsafeMutablePointer<Float>, ldx: Int, tokens: Int, heads: Int, headDim: Int,
                                 cos: UnsafePointer<Float>, sin: UnsafePointer<Float>, pairing: RopePairing) {
        precondition(tokens >= 0 && heads > 0 && headDim > 0 && headDim % 2 == 0 && ldx >= heads * headDim,
                     "applyRope: tokens \(tokens), heads \(heads), headDim \(headDim), ldx \(ldx)")
        dl_rope_apply(x, Int64(ldx), Int64(tokens), Int64(heads), Int64(headDim), cos, sin, pairing == .halves ? 1 : 0)
    }

    /// Σ x[i] for i < count, read over all kernel threads: the benchmarks' memory-bandwidth probe.
    public static func streamSum(_ x: UnsafePointer<Float>, count: Int) -> Double {
        precondition(count >= 0, "streamSum: count \(count)")
        return dl_stream_sum(x, Int64(count))
    }

    /// Σ exp(x[i] − shift) for i < count, `shift` ≥ every x[i] (a log-softmax's normaliser: log-probabilities are
    /// x − shift − log of it); −∞ entries count 0. Vectorized (polynomial exp, relative error < 1e-6; double sums).
    public static func sumExp(_ x: UnsafePointer<Float>, count: Int, shift: Float) -> Double {
        precondition(count >= 0, "sumExp: count \(count)")
        return dl_sum_exp(x, Int64(count), shift)
    }

    /// `sumExp`'s reference twin: expf per entry, summed in double.
    public static func sumExpReference(_ x: UnsafePointer<Float>, count: Int, shift: Float) -> Double {
        dl_sum_exp_ref(x, Int64(count), shift)
    }

    /// Threads the kernels (our pool and OpenBLAS) run on.
    public static var threadCount: Int { Int(dl_num_threads()) }
}
