import Foundation
import Kernels
import Models
import Tokenizers

/// Static compositions of LoRA adapters, served like an adapter: a directory under the adapter root holding
/// `composition.json` instead of a PEFT adapter,
///
///     {"combination": "cat", "adapters": [{"name": "math", "weight": 0.7}, {"name": "sql", "weight": 0.3}],
///      "normalize": false}
///
/// names the adapters (siblings under the same root, plain names, each a PEFT directory or GGUF LoRA; not
/// another composition) and their weights. `cat` is PEFT's `add_weighted_adapter(combination_type="cat")`:
/// per module, A stacks wᵢ·sᵢ·Aᵢ and B stacks Bᵢ, rank Σ rᵢ, scaling 1, so ΔW = Σᵢ wᵢ·sᵢ·Bᵢ·Aᵢ exactly (an
/// adapter without the module adds nothing). `normalize: true` divides the weights by their sum (normalized
/// linear arithmetic, the NLA baseline MoLE compares with). The composition is built when it is loaded; the
/// registry caches and evicts it like any adapter.
public enum LoRAComposition {
    public static let manifestFile = "composition.json"
    public static let maxParts = 64

    public struct Part: Sendable, Equatable {
        public var name: String
        public var weight: Float
    }

    public struct Manifest: Sendable, Equatable {
        public var combination: String
        public var parts: [Part]
        public var normalize: Bool
    }

    /// Parses and validates a manifest (untrusted: strict keys, bounded sizes, plain names, finite weights).
    public static func parse(_ bytes: UnsafeRawBufferPointer, adapter: String) throws -> Manifest {
        func fail(_ problem: String) -> AdapterError { AdapterError(adapter: adapter, problem: "\(manifestFile): " + problem) }
        let json: ExactJSON
        do { json = try ExactJSON.parse(bytes, name: manifestFile) } catch { throw fail("not valid JSON (\(error))") }
        guard case .object(let members) = json else { throw fail("not a JSON object") }
        var combination = "cat", normalize = false
        var parts: [Part]?
        var seen = Set<String>()
        for (key, value) in members {
            guard seen.insert(key).inserted else { throw fail("duplicate key '\(key.prefix(64))'") }
            switch key {
            case "combination":
                guard case .string(let s) = value else { throw fail("combination must be a string") }
                guard s == "cat" else {
                    throw fail("combination '\(s.prefix(32))' is not supported (cat; PEFT's linear, ties and dare_* are not yet)")
                }
                combination = s
            case "normalize":
                guard case .bool(let b) = value else { throw fail("normalize must be true or false") }
                normalize = b
            case "adapters":
                guard case .array(let items) = value else { throw fail("adapters must be an array") }
                guard (1...maxParts).contains(items.count) else { throw fail("adapters must list between 1 and \(maxParts) adapters") }
                parts = try items.enumerated().map { i, item in
                    guard case .object(let fields) = item else { throw fail("adapters[\(i)] must be an object") }
                    var name: String?, weight: Float?
                    for (k, v) in fields {
                        switch (k, v) {
                        case ("name", .string(let s)): name = s
                        case ("weight", .int(let n)): weight = Float(n)
                        case ("weight", .double(let d)): weight = Float(d)
                        default: throw fail("adapters[\(i)]: unexpected '\(k.prefix(32))' (name: string, weight: number)")
                        }
                    }
                    guard let name, let weight else { throw fail("adapters[\(i)] needs a name and a weight") }
                    guard isPlainName(name) else { throw fail("adapters[\(i)]: '\(name.prefix(64))' is not a plain adapter name under the root") }
                    guard weight.isFinite, abs(weight) <= 1000 else { throw fail("adapters[\(i)]: the weight must be finite, at most 1000 in size") }
                    return Part(name: name, weight: weight)
                }
            default:
                throw fail("unknown key '\(key.prefix(64))' (combination, adapters, normalize)")
            }
        }
        guard var parts else { throw fail("missing adapters") }
        guard Set(parts.map(\.name)).count == parts.count else { throw fail("an adapter appears twice") }
        if normalize {
            let sum = parts.reduce(Float(0)) { $0 + $1.weight }
            guard abs(sum) > 1e-6 else { throw fail("normalize: the weights sum to 0") }
            for i in parts.indices { parts[i].weight /= sum }
        }
        return Manifest(combination: combination, parts: parts, normalize: normalize)
    }

    /// A task or adapter directory name that stays in its parent (as `isPlainName`).
    public static func isPlainTaskName(_ s: String) -> Bool { isPlainName(s) }

    /// A name that stays in the directory it is resolved in: no separators, not `.`/`..`, no NUL, ≤ 255 bytes.
    static func isPlainName(_ s: String) -> Bool {
        !s.isEmpty && s.utf8.count <= 255 && s != "." && s != ".." && !s.contains("/") && !s.contains("\0") && !s.hasPrefix(".")
    }

    /// PEFT's `cat`: ΔW = Σᵢ wᵢ·sᵢ·Bᵢ·Aᵢ per module, as one adapter of scaling 1 (f32).
    public static func cat(_ parts: [(weights: LoRAWeights, weight: Float)], name: String, id: AdapterID) throws -> LoRAWeights {
        LoRAWeights(name: name, scale: 1, modules: try stack(parts, name: name).modules, id: id)
    }

    /// The stacked modules of `cat`, and per module the part each padded rank column comes from (-1: padding).
    static func stack(_ parts: [(weights: LoRAWeights, weight: Float)], name: String) throws
        -> (modules: [[LoRAModule?]], columns: [[[Int32]?]]) {
        guard let first = parts.first else { throw AdapterError(adapter: name, problem: "a composition needs at least one adapter") }
        let layers = first.weights.modules.count
        guard parts.allSatisfy({ $0.weights.modules.count == layers }) else {
            throw AdapterError(adapter: name, problem: "the composed adapters are for different models")
        }
        var modules: [[LoRAModule?]] = []
        var columns: [[[Int32]?]] = []
        for l in 0..<layers {
            var row: [LoRAModule?] = []
            var columnRow: [[Int32]?] = []
            for t in LoRATarget.allCases {
                let present = parts.enumerated().compactMap { i, p in
                    p.weights.module(layer: l, target: t).map { (m: $0, w: p.weight * p.weights.scale, part: Int32(i)) }
                }
                guard let m0 = present.first?.m else { row.append(nil); columnRow.append(nil); continue }
                let rank = present.reduce(0) { $0 + $1.m.rank }
                guard rank <= AdapterLoader.maxRank else {
                    throw AdapterError(adapter: name, problem: "the composed rank \(rank) of \(t) exceeds \(AdapterLoader.maxRank)")
                }
                let inF = m0.inFeatures, outF = m0.outFeatures
                guard present.allSatisfy({ $0.m.inFeatures == inF && $0.m.outFeatures == outF }) else {
                    throw AdapterError(adapter: name, problem: "the composed adapters disagree on the shape of \(t)")
                }
                let a = Buffer(floats: rank * inF), b = Buffer(floats: outF * rank)
                var offset = 0
                var owner: [Int32] = []
                for (m, w, part) in present {
                    // Widen this part's (padded) A and B to f32, then copy its r real rows of A (× w·s) and
                    // columns of B into place.
                    let pa = Buffer(floats: m.paddedRank * inF), pb = Buffer(floats: outF * m.paddedRank)
                    Kernels.dequantize(m.a.dtype, m.a.data, count: m.paddedRank * inF, into: pa.floats)
                    Kernels.dequantize(m.b.dtype, m.b.data, count: outF * m.paddedRank, into: pb.floats)
                    for k in 0..<(m.rank * inF) { a.floats[offset * inF + k] = w * pa.floats[k] }
                    for o in 0..<outF { (b.floats + o * rank + offset).update(from: pb.floats + o * m.paddedRank, count: m.rank) }
                    offset += m.rank
                    owner += repeatElement(part, count: m.rank)
                }
                let module = LoRAModule(rank: rank, inFeatures: inF, outFeatures: outF, a: a.floats, b: b.floats, dtype: .f32)
                row.append(module)
                columnRow.append(owner + repeatElement(-1, count: module.paddedRank - rank))
            }
            modules.append(row)
            columns.append(columnRow)
        }
        return (modules, columns)
    }
}
