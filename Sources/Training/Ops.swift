import Foundation
import Kernels

// Forward and backward passes of the ops of a Llama block, on f32 rows. Every forward keeps (or is given)
// what its backward needs; every backward *adds* its input gradient into the caller's buffer, so the
// residual stream's gradient accumulates without copies. Big products go to BLAS (`Kernels.gemm`), the
// rest are single loops over preallocated memory. Reference twins in f64: `ReferenceTraining`.

public enum TrainingOps {
    // MARK: RMSNorm

    /// out[t] = x[t] · r[t] · w with r[t] = 1 / √(mean(x[t]²) + eps); saves r in `rstd` (rows floats).
    public static func rmsNormForward(_ x: UnsafePointer<Float>, weight: UnsafePointer<Float>, eps: Float,
                                      out: UnsafeMutablePointer<Float>, rstd: UnsafeMutablePointer<Float>, rows: Int, width: Int) {
        for t in 0..<rows {
            let xr = x + t * width, yr = out + t * width
            var ss: Float = 0
            for i in 0..<width { ss += xr[i] * xr[i] }
            let r = 1 / (ss / Float(width) + eps).squareRoot()
            rstd[t] = r
            for i in 0..<width { yr[i] = xr[i] * r * weight[i] }
        }
    }

    /// dx[t] += r·w⊙dy − (r³/n)·x·Σᵢ dyᵢ wᵢ xᵢ  (the weight is frozen: no gradient for it).
    public static func rmsNormBackward(_ dOut: UnsafePointer<Float>, x: UnsafePointer<Float>, weight: UnsafePointer<Float>,
                                       rstd: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>, rows: Int, width: Int) {
        for t in 0..<rows {
            let xr = x + t * width, dy = dOut + t * width, dxr = dx + t * width
            let r = rstd[t]
            var dot: Float = 0
            for i in 0..<width { dot += dy[i] * weight[i] * xr[i] }
            let c = r * r * r * dot / Float(width)
            for i in 0..<width { dxr[i] += r * weight[i] * dy[i] - c * xr[i] }
        }
    }

    // MARK: RoPE

    /// The backward of a rotation by θ is the rotation by −θ: the engine's kernel with the sines negated.
    /// `negSin` holds −sin of the forward's table.
    public static func ropeBackward(_ dx: UnsafeMutablePointer<Float>, ldx: Int, tokens: Int, heads: Int, headDim: Int,
                                    cos: UnsafePointer<Float>, negSin: UnsafePointer<Float>, pairing: RopePairing) {
        Kernels.applyRope(dx, ldx: ldx, tokens: tokens, heads: heads, headDim: headDim, cos: cos, sin: negSin, pairing: pairing)
    }

    // MARK: SwiGLU

    /// act[t, i] = silu(g) · u with g = gateUp[t, i], u = gateUp[t, F + i] (rows of 2F).
    public static func swigluForward(_ gateUp: UnsafePointer<Float>, act: UnsafeMutablePointer<Float>, tokens: Int, width f: Int) {
        parallelChunks(tokens, minimumPerChunk: 8) { range in swigluForward(gateUp, act: act, rows: range, width: f) }
    }

    private static func swigluForward(_ gateUp: UnsafePointer<Float>, act: UnsafeMutablePointer<Float>, rows: Range<Int>, width f: Int) {
        for t in rows {
            let g = gateUp + t * 2 * f, u = g + f, a = act + t * f
            for i in 0..<f { a[i] = g[i] / (1 + Foundation.exp(-g[i])) * u[i] }
        }
    }

    /// dg = dAct · u · σ(g)(1 + g(1 − σ(g))), du = dAct · silu(g), written (not added) into dGateUp (rows of 2F).
    public static func swigluBackward(_ dAct: UnsafePointer<Float>, gateUp: UnsafePointer<Float>,
                                      dGateUp: UnsafeMutablePointer<Float>, tokens: Int, width f: Int) {
        parallelChunks(tokens, minimumPerChunk: 8) { range in swigluBackward(dAct, gateUp: gateUp, dGateUp: dGateUp, rows: range, width: f) }
    }

    private static func swigluBackward(_ dAct: UnsafePointer<Float>, gateUp: UnsafePointer<Float>,
                                       dGateUp: UnsafeMutablePointer<Float>, rows: Range<Int>, width f: Int) {
        for t in rows {
            let g = gateUp + t * 2 * f, u = g + f, da = dAct + t * f, dg = dGateUp + t * 2 * f, du = dg + f
            for i in 0..<f {
                let s = 1 / (1 + Foundation.exp(-g[i]))
                du[i] = da[i] * g[i] * s
                dg[i] = da[i] * u[i] * s * (1 + g[i] * (1 - s))
            }
        }
    }

    // MARK: Causal attention (GQA)

    /// Shapes of one attention call: `batch` sequences of `length` tokens each (row t = b·length + i is
    /// position i of sequence b); q, k, v are column blocks of rows with stride `ld`.
    public struct AttentionShape: Sendable {
        public var batch: Int, length: Int, heads: Int, kvHeads: Int, headDim: Int
        /// Query rows per block of the causal products (see `attentionForward`).
        public var rowBlock: Int
        public init(batch: Int, length: Int, heads: Int, kvHeads: Int, headDim: Int, rowBlock: Int? = nil) {
            self.batch = batch
            self.length = length
            self.heads = heads
            self.kvHeads = kvHeads
            self.headDim = headDim
            // Blocks of at least 64 rows keep each product large enough for BLAS to run near its best.
            self.rowBlock = max(1, rowBlock ?? max(64, (length + 3) / 4))
        }
        var scale: Float { 1 / Float(headDim).squareRoot() }
        var probsCount: Int { batch * heads * length * length }
    }

    /// Per sequence b and head h (KV head h / (nH / nKV)):
    ///
    ///     P = softmax_causal(scale · Q_h K_hᵀ)    (T, T), saved in `probs` (zeros above the diagonal)
    ///     O_h = P · V_h                           (T, D), into `out` (rows of stride ldo)
    ///
    /// in blocks of `shape.rowBlock` query rows: a block of rows [i0, i1) reads keys and values [0, i1)
    /// only, so the products skip most of the masked upper triangle (a quarter of the work with 2
    /// blocks, 3/8 with 4). The (sequence, KV head) groups run up to `slots` at a time (`attentionSlots`);
    /// each group's arithmetic, and the order in which its heads add into dK and dV, is the same however
    /// many run at once.
    public static func attentionForward(q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>, ld: Int,
                                        shape s: AttentionShape, probs: UnsafeMutablePointer<Float>,
                                        out: UnsafeMutablePointer<Float>, ldo: Int, slots: Int = 1) {
        let t = s.length, d = s.headDim, group = s.heads / s.kvHeads
        parallelSlots(s.batch * s.kvHeads, slots: slots) { _, range in
            for gi in range {
                let b = gi / s.kvHeads, kvh = gi % s.kvHeads
                for h in (kvh * group)..<((kvh + 1) * group) {
                    let p = probs + (b * s.heads + h) * t * t
                    let rows = b * t * ld
                    for i0 in stride(from: 0, to: t, by: s.rowBlock) {
                        let i1 = min(t, i0 + s.rowBlock), m = i1 - i0
                        Kernels.gemm(transB: true, m: m, n: i1, k: d, alpha: s.scale, q + rows + i0 * ld + h * d, lda: ld,
                                     k + rows + kvh * d, ldb: ld, p + i0 * t, ldc: t)
                        for i in i0..<i1 {
                            let row = p + i * t
                            var mx = -Float.infinity
                            for j in 0...i { mx = max(mx, row[j]) }
                            var sum: Float = 0
                            for j in 0...i {
                                let e = Foundation.exp(row[j] - mx)
                                row[j] = e
                                sum += e
                            }
                            let inv = 1 / sum
                            for j in 0...i { row[j] *= inv }
                            for j in (i + 1)..<t { row[j] = 0 }
                        }
                        Kernels.gemm(m: m, n: d, k: i1, p + i0 * t, lda: t, v + rows + kvh * d, ldb: ld,
                                     out + (b * t + i0) * ldo + h * d, ldc: ldo)
                    }
                }
            }
        }
    }

    /// How many (sequence, KV head) groups attention should run at once: one per kernel thread when OpenBLAS
    /// is capped at one thread (`Kernels.capBLASThreads`; its per-head products would otherwise leave the
    /// other cores idle), else one at a time with OpenBLAS threading each product.
    public static var attentionSlots: Int { Kernels.blasThreadCount == 1 ? Kernels.threadCount : 1 }

    /// The backward of `attentionForward` given dO: writes dQ and *sets* dK, dV (zeroed here, then summed
    /// over the query heads sharing each KV head), by the same row blocks:
    ///
    ///     dV_h += Pᵀ dO_h;  dP = dO_h V_hᵀ;  dS = P ⊙ (dP − rowsum(P ⊙ dP))
    ///     dQ_h  = scale · dS K_h;  dK_h += scale · dSᵀ Q_h
    ///
    /// `scratch` holds `slots` × T·T floats.
    public static func attentionBackward(dOut: UnsafePointer<Float>, ldo: Int, q: UnsafePointer<Float>, k: UnsafePointer<Float>,
                                         v: UnsafePointer<Float>, ld: Int, probs: UnsafePointer<Float>, shape s: AttentionShape,
                                         dq: UnsafeMutablePointer<Float>, dk: UnsafeMutablePointer<Float>, dv: UnsafeMutablePointer<Float>,
                                         scratch: UnsafeMutablePointer<Float>, slots: Int = 1) {
        let t = s.length, d = s.headDim, group = s.heads / s.kvHeads
        for r in 0..<(s.batch * t) {
            for c in 0..<(s.kvHeads * d) {
                dk[r * ld + c] = 0
                dv[r * ld + c] = 0
            }
        }
        parallelSlots(s.batch * s.kvHeads, slots: slots) { slot, range in
            let scratch = scratch + slot * t * t
            for gi in range {
                let b = gi / s.kvHeads, kvh = gi % s.kvHeads
                for h in (kvh * group)..<((kvh + 1) * group) {
                    let p = probs + (b * s.heads + h) * t * t
                    let rows = b * t * ld
                    let dO = dOut + b * t * ldo + h * d
                    for i0 in stride(from: 0, to: t, by: s.rowBlock) {
                        let i1 = min(t, i0 + s.rowBlock), m = i1 - i0
                        let pb = p + i0 * t, ds = scratch + i0 * t, dOb = dO + i0 * ldo
                        Kernels.gemm(transA: true, m: i1, n: d, k: m, pb, lda: t, dOb, ldb: ldo, beta: 1, dv + rows + kvh * d, ldc: ld)
                        Kernels.gemm(transB: true, m: m, n: i1, k: d, dOb, lda: ldo, v + rows + kvh * d, ldb: ld, ds, ldc: t)
                        for i in i0..<i1 {
                            let pr = p + i * t, dsr = scratch + i * t
                            var dot: Float = 0
                            for j in 0...i { dot += pr[j] * dsr[j] }
                            for j in 0...i { dsr[j] = pr[j] * (dsr[j] - dot) }
                            for j in (i + 1)..<i1 { dsr[j] = 0 }
                        }
                        Kernels.gemm(m: m, n: d, k: i1, alpha: s.scale, ds, lda: t, k + rows + kvh * d, ldb: ld,
                                     dq + rows + i0 * ld + h * d, ldc: ld)
                        Kernels.gemm(transA: true, m: i1, n: d, k: m, alpha: s.scale, ds, lda: t, q + rows + i0 * ld + h * d, ldb: ld,
                                     beta: 1, dk + rows + kvh * d, ldc: ld)
                    }
                }
            }
        }
    }

    // MARK: Softmax cross-entropy

    /// Mean over the `rows` rows of −log softmax(logits[r])[labels[r]]; on return `logits` holds the
    /// gradient of that mean, (softmax − onehot) / rows. Computed in double per row, so the loss of a
    /// large vocabulary does not lose digits to f32 sums. Labels must be in 0..<vocab.
    public static func crossEntropy(_ logits: UnsafeMutablePointer<Float>, labels: UnsafePointer<Int32>, rows: Int, vocab: Int) -> Double {
        guard rows > 0 else { return 0 }
        // Per-row losses summed in row order afterwards: the result does not depend on the thread count.
        let perRow = UnsafeMutableBufferPointer<Double>.allocate(capacity: rows)
        defer { perRow.deallocate() }
        let invRows = 1 / Float(rows)
        parallelChunks(rows, minimumPerChunk: 4) { range in
            for r in range {
                let z = logits + r * vocab
                let label = Int(labels[r])
                precondition(label >= 0 && label < vocab, "crossEntropy: label \(label) outside the vocabulary")
                var mx = -Float.infinity
                for i in 0..<vocab { mx = max(mx, z[i]) }
                var sum = 0.0
                for i in 0..<vocab {
                    let e = Foundation.exp(z[i] - mx)
                    z[i] = e
                    sum += Double(e)
                }
                perRow[r] = -(Foundation.log(Double(z[label]) / sum))
                let inv = Float(1 / sum) * invRows
                for i in 0..<vocab { z[i] *= inv }
                z[label] -= invRows
            }
        }
        return perRow.reduce(0, +) / Double(rows)
    }

    // MARK: Linear layers

    /// y (+)= x·Wᵀ for a frozen W (out × in): rows of x have stride ldx, of y ldy. With `bf16` (W's packed
    /// copies, `FrozenBase.useBF16Products`) the product runs in bf16 with f32 sums.
    public static func linearForward(_ x: UnsafePointer<Float>, ldx: Int, weight: UnsafePointer<Float>, out: Int, in: Int,
                                     tokens: Int, _ y: UnsafeMutablePointer<Float>, ldy: Int, accumulate: Bool = false,
                                     bf16: FrozenBase.BF16Pair? = nil) {
        if let p = bf16?.forward {
            precondition(p.k == `in` && p.n == out, "linearForward: bf16 copy is \(p.n)×\(p.k), the layer \(out)×\(`in`)")
            Kernels.gemmBF16(m: tokens, x, lda: ldx, p, y, ldc: ldy, accumulate: accumulate)
            return
        }
        Kernels.gemm(transB: true, m: tokens, n: out, k: `in`, x, lda: ldx, weight, ldb: `in`, beta: accumulate ? 1 : 0, y, ldc: ldy)
    }

    /// dx (+)= dy·W: the input gradient of a frozen linear layer (its weight gets none); `bf16` as above.
    public static func linearBackward(_ dy: UnsafePointer<Float>, ldy: Int, weight: UnsafePointer<Float>, out: Int, in: Int,
                                      tokens: Int, _ dx: UnsafeMutablePointer<Float>, ldx: Int, accumulate: Bool = false,
                                      bf16: FrozenBase.BF16Pair? = nil) {
        if let p = bf16?.backward {
            precondition(p.k == out && p.n == `in`, "linearBackward: bf16 copy is \(p.k)×\(p.n), the layer \(out)×\(`in`)")
            Kernels.gemmBF16(m: tokens, dy, lda: ldy, p, dx, ldc: ldx, accumulate: accumulate)
            return
        }
        Kernels.gemm(m: tokens, n: `in`, k: out, dy, lda: ldy, weight, ldb: `in`, beta: accumulate ? 1 : 0, dx, ldc: ldx)
    }

    /// The LoRA path of one adapted layer (Hu et al. 2021): y += scale · (x·Aᵀ)·Bᵀ with A (r × in), B (out × r);
    /// saves u = x·Aᵀ (tokens × r) for the backward.
    public static func loraForward(_ x: UnsafePointer<Float>, ldx: Int, a: UnsafePointer<Float>, b: UnsafePointer<Float>,
                                   rank: Int, out: Int, in: Int, scale: Float, tokens: Int,
                                   u: UnsafeMutablePointer<Float>, _ y: UnsafeMutablePointer<Float>, ldy: Int) {
        Kernels.gemm(transB: true, m: tokens, n: rank, k: `in`, x, lda: ldx, a, ldb: `in`, u, ldc: rank)
        Kernels.gemm(transB: true, m: tokens, n: out, k: rank, alpha: scale, u, lda: rank, b, ldb: rank, beta: 1, y, ldc: ldy)
    }

    /// The LoRA path's backward given dy: gradients *added* to dA, dB and dx; `du` is tokens × r scratch.
    ///
    ///     dB += scale · dyᵀ u;  du = scale · dy B;  dA += duᵀ x;  dx += du A
    public static func loraBackward(_ dy: UnsafePointer<Float>, ldy: Int, x: UnsafePointer<Float>, ldx: Int,
                                    a: UnsafePointer<Float>, b: UnsafePointer<Float>, u: UnsafePointer<Float>,
                                    rank: Int, out: Int, in: Int, scale: Float, tokens: Int,
                                    gradA: UnsafeMutablePointer<Float>, gradB: UnsafeMutablePointer<Float>,
                                    du: UnsafeMutablePointer<Float>, dx: UnsafeMutablePointer<Float>?) {
        Kernels.gemm(transA: true, m: out, n: rank, k: tokens, alpha: scale, dy, lda: ldy, u, ldb: rank, beta: 1, gradB, ldc: rank)
        Kernels.gemm(m: tokens, n: rank, k: out, alpha: scale, dy, lda: ldy, b, ldb: rank, du, ldc: rank)
        Kernels.gemm(transA: true, m: rank, n: `in`, k: tokens, du, lda: rank, x, ldb: ldx, beta: 1, gradA, ldc: `in`)
        if let dx { Kernels.gemm(m: tokens, n: `in`, k: rank, du, lda: rank, a, ldb: `in`, beta: 1, dx, ldc: ldx) }
    }
}
