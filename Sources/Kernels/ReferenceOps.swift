import Foundation

/// Plain, obviously-correct Swift twins of the C kernels (STYLE.md: every fast kernel has a reference twin):
/// ops.c, attention.c, matmul_dq.c and lora.c here, quant.c in ReferenceConversions.swift. Double
/// accumulation, no blocking, no threads, no paging. Used only by parity tests (Tests/KernelsTests).
public enum ReferenceOps {
    /// x / sqrt(mean(x^2) + eps) * w over one row.
    public static func rmsnorm(_ x: [Float], weight: [Float], eps: Float) -> [Float] {
        let meanSquare = x.reduce(0.0) { $0 + Double($1) * Double($1) } / Double(x.count)
        let inv = 1 / (meanSquare + Double(eps)).squareRoot()
        return zip(x, weight).map { Float(Double($0) * inv) * $1 }
    }

    public static func silu(_ x: Float) -> Float { x / (1 + Foundation.exp(-x)) }

    /// Rotates one token's heads in place. `neox` pairs (i, i + half) (HF rotate-half); otherwise
    /// adjacent pairs (2i, 2i+1) (llama.cpp's layout for converted Llama checkpoints).
    public static func rope(_ x: inout [Float], heads: Int, headDim: Int, position: Int, invFreq: [Float], neox: Bool) {
        let half = headDim / 2
        for h in 0..<heads {
            for i in 0..<half {
                let angle = Double(Float(position) * invFreq[i])
                let (c, s) = (Foundation.cos(angle), Foundation.sin(angle))
                let a = h * headDim + (neox ? i : 2 * i)
                let b = h * headDim + (neox ? i + half : 2 * i + 1)
                let (x0, x1) = (Double(x[a]), Double(x[b]))
                x[a] = Float(x0 * c - x1 * s)
                x[b] = Float(x1 * c + x0 * s)
            }
        }
    }

    /// Causal attention of one query (all heads) at `position` over keys/values[0...position]
    /// (each [nKV * headDim]). Returns [nHead * headDim].
    public static func attention(query: [Float], keys: [[Float]], values: [[Float]], position: Int,
                                 nHead: Int, nKV: Int, headDim: Int, scale: Float) -> [Float] {
        var out = [Float](repeating: 0, count: nHead * headDim)
        let group = nHead / nKV
        for h in 0..<nHead {
            let kvh = h / group
            var scores = [Double](repeating: 0, count: position + 1)
            for p in 0...position {
                var dot = 0.0
                for d in 0..<headDim { dot += Double(query[h * headDim + d]) * Double(keys[p][kvh * headDim + d]) }
                scores[p] = dot * Double(scale)
            }
            let mx = scores.max()!
            let exps = scores.map { Foundation.exp($0 - mx) }
            let sum = exps.reduce(0, +)
            for d in 0..<headDim {
                var acc = 0.0
                for p in 0...position { acc += exps[p] / sum * Double(values[p][kvh * headDim + d]) }
                out[h * headDim + d] = Float(acc)
            }
        }
        return out
    }

    /// y[i] + x[i] (the residual add; one f32 addition per element, as the kernel).
    public static func add(_ y: [Float], _ x: [Float]) -> [Float] { zip(y, x).map { $0 + $1 } }

    /// y[t][i] + scale · x[t][i] (one f32 product and one f32 sum per element, as the kernel).
    public static func addScaled(_ y: [Float], _ x: [Float], scale: Float) -> [Float] { zip(y, x).map { $0 + scale * $1 } }

    /// cos and sin of position · invFreq[i]: the angle as a float32 product (as the reference implementations
    /// compute it), its cosine and sine in double.
    public static func ropeTable(position: Int, invFreq: [Float]) -> (cos: [Float], sin: [Float]) {
        let angles = invFreq.map { Double(Float(position) * $0) }
        return (angles.map { Float(Foundation.cos($0)) }, angles.map { Float(Foundation.sin($0)) })
    }

    /// Σ x in double: the value the bandwidth probe's chunked sums approximate.
    public static func sum(_ x: [Float]) -> Double { x.reduce(0.0) { $0 + Double($1) } }

    /// Y[t][r] = Σ_k W[r][k] · X[t][k] in double (W rows × cols row-major, X tokens × cols).
    public static func matmul(_ w: [Float], rows: Int, cols: Int, _ x: [Float], tokens: Int) -> [Double] {
        precondition(w.count == rows * cols && x.count == tokens * cols)
        var y = [Double](repeating: 0, count: tokens * rows)
        for t in 0..<tokens {
            for r in 0..<rows {
                var acc = 0.0
                for k in 0..<cols { acc += Double(w[r * cols + k]) * Double(x[t * cols + k]) }
                y[t * rows + r] = acc
            }
        }
        return y
    }

    /// Y[t][r] in f32 exactly as `dl_matmul_dq` orders it (ckernels.h): 16 lanes, lane j accumulating
    /// W[r][k] · X[t][k] for k ≡ j (mod 16) in increasing k with fused multiply-adds, then the lane tree
    /// ((l[j] + l[j+8]) → (+4) → (+2) → (+1)). The parity tests hold both of the kernel's paths (the
    /// dequantized panel and the single-token kernel) to it bit for bit. cols a multiple of 16.
    public static func matmulLanes(_ w: [Float], rows: Int, cols: Int, _ x: [Float], tokens: Int) -> [Float] {
        precondition(w.count == rows * cols && x.count == tokens * cols && cols % 16 == 0)
        var y = [Float](repeating: 0, count: tokens * rows)
        for t in 0..<tokens {
            for r in 0..<rows {
                var lanes = [Float](repeating: 0, count: 16)
                for k in 0..<cols { lanes[k % 16] = lanes[k % 16].addingProduct(w[r * cols + k], x[t * cols + k]) }
                let a = (0..<8).map { lanes[$0] + lanes[$0 + 8] }
                let b = (0..<4).map { a[$0] + a[$0 + 4] }
                y[t * rows + r] = (b[0] + b[2]) + (b[1] + b[3])
            }
        }
        return y
    }

    /// One adapter run for `loraApply`: A (rank × in) and B (out × rank) row-major, applied to `tokens`.
    public struct LoRARun {
        public var a: [Float]
        public var b: [Float]
        public var rank: Int
        public var tokens: Range<Int>
        public var scale: Float
        /// MoLE: per token of the run, a row of expert gates, and each rank column's expert (-1: none).
        public var gates: [[Float]]?
        public var columns: [Int32]?
        public init(a: [Float], b: [Float], rank: Int, tokens: Range<Int>, scale: Float, gates: [[Float]]? = nil, columns: [Int32]? = nil) {
            self.a = a
            self.b = b
            self.rank = rank
            self.tokens = tokens
            self.scale = scale
            self.gates = gates
            self.columns = columns
        }
    }

    /// y[t][o] + scale · Σ_j B[o][j] · Σ_k A[j][k] · x[t][k] for every token of every run (x: tokens × in,
    /// y: tokens × out, packed), in double; tokens of no run keep y.
    public static func loraApply(x: [Float], inFeatures: Int, outFeatures: Int, runs: [LoRARun], y: [Float]) -> [Float] {
        var out = y
        for run in runs {
            precondition(run.a.count == run.rank * inFeatures && run.b.count == outFeatures * run.rank)
            for t in run.tokens {
                let shrunk = (0..<run.rank).map { j in
                    let u = (0..<inFeatures).reduce(0.0) { $0 + Double(run.a[j * inFeatures + $1]) * Double(x[t * inFeatures + $1]) }
                    guard let gates = run.gates, let columns = run.columns else { return u }
                    let e = Int(columns[j])
                    return e >= 0 ? u * Double(gates[t - run.tokens.lowerBound][e]) : 0
                }
                for o in 0..<outFeatures {
                    let delta = (0..<run.rank).reduce(0.0) { $0 + Double(run.b[o * run.rank + $1]) * shrunk[$1] }
                    out[t * outFeatures + o] = Float(Double(y[t * outFeatures + o]) + Double(run.scale) * delta)
                }
            }
        }
        return out
    }

    /// `loraApply` in the kernels' f32 order, the twin dl_lora_apply must match bit for bit: per token,
    /// u = matmulLanes(A, x[t]) over the rank padded to `paddedRank` (A and B zero-padded as the kernel
    /// holds them), u[j] · gate (MoLE), p = matmulLanes(B, u), then y + scale · p (a product, then a sum).
    public static func loraApplyLanes(x: [Float], inFeatures: Int, outFeatures: Int, runs: [LoRARun], paddedRanks: [Int],
                                      y: [Float]) -> [Float] {
        var out = y
        for (run, padded) in zip(runs, paddedRanks) {
            precondition(run.a.count == run.rank * inFeatures && run.b.count == outFeatures * run.rank && padded % 16 == 0)
            let a = run.a + [Float](repeating: 0, count: (padded - run.rank) * inFeatures)
            var b = [Float](repeating: 0, count: outFeatures * padded)
            for o in 0..<outFeatures {
                for j in 0..<run.rank { b[o * padded + j] = run.b[o * run.rank + j] }
            }
            for t in run.tokens {
                var u = matmulLanes(a, rows: padded, cols: inFeatures, Array(x[(t * inFeatures)..<((t + 1) * inFeatures)]), tokens: 1)
                if let gates = run.gates, let columns = run.columns {
                    for j in 0..<padded {
                        let e = Int(columns[j])
                        u[j] = e >= 0 ? u[j] * gates[t - run.tokens.lowerBound][e] : 0
                    }
                }
                let p = matmulLanes(b, rows: outFeatures, cols: padded, u, tokens: 1)
                for o in 0..<outFeatures {
                    let product = run.scale * p[o]
                    out[t * outFeatures + o] = out[t * outFeatures + o] + product
                }
            }
        }
        return out
    }
}
