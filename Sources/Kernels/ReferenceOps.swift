import Foundation

/// Plain, obviously-correct Swift twins of the C kernels in ops.c and attention.c (STYLE.md: every fast
/// kernel has a reference twin). Double accumulation, no blocking, no paging. Used only by parity tests.
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
}
