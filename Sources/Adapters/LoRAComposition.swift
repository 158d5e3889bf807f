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
/// linear arithmetic, the NLA baseline MoLE compares with). `linear`, `ties`, `dare_linear` and `dare_ties` are
/// PEFT's task-arithmetic merges of adapters of one rank (`taskArithmetic`); DARE's random drop is seeded
/// (`seed`), so a composition is the same every time it is loaded. The composition is built when it is loaded;
/// the registry caches and evicts it like any adapter.
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
        /// ties, dare_*: the fraction of each A and B kept (ties: by magnitude; dare: at random, the kept entries
        /// scaled by 1/density); ties and dare_ties: how the sign is elected ("total", "frequency").
        public var density: Float?
        public var majoritySignMethod = "total"
        /// dare_*: the seed of the random drop (`dareMask`).
        public var seed: UInt64 = 0
    }

    /// The combinations served: PEFT's `add_weighted_adapter` types except the SVD ones.
    public static let combinations = ["cat", "linear", "ties", "dare_linear", "dare_ties"]
    /// The largest `seed` accepted (JSON integers stay exact up to 2^53).
    public static let maxSeed: UInt64 = 1 << 53

    /// Parses and validates a manifest (untrusted: strict keys, bounded sizes, plain names, finite weights).
    public static func parse(_ bytes: UnsafeRawBufferPointer, adapter: String) throws -> Manifest {
        func fail(_ problem: String) -> AdapterError { AdapterError(adapter: adapter, problem: "\(manifestFile): " + problem) }
        let json: ExactJSON
        do { json = try ExactJSON.parse(bytes, name: manifestFile, strict: true) } catch { throw fail("not valid JSON (\(error))") }
        guard case .object(let members) = json else { throw fail("not a JSON object") }
        var combination = "cat", normalize = false
        var density: Float?, signMethod: String?, seed: UInt64?
        var parts: [Part]?
        var seen = Set<String>()
        for (key, value) in members {
            guard seen.insert(key).inserted else { throw fail("duplicate key '\(key.prefix(64))'") }
            switch key {
            case "combination":
                guard case .string(let s) = value else { throw fail("combination must be a string") }
                guard combinations.contains(s) else {
                    throw fail("combination '\(s.prefix(32))' is not supported (\(combinations.joined(separator: ", ")); PEFT's *_svd are not)")
                }
                combination = s
            case "density":
                switch value {
                case .int(let n): density = Float(n)
                case .double(let d): density = Float(d)
                default: throw fail("density must be a number")
                }
                guard let d = density, d > 0, d <= 1 else { throw fail("density must be in (0, 1]") }
            case "majority_sign_method":
                guard case .string(let m) = value, m == "total" || m == "frequency" else {
                    throw fail("majority_sign_method must be \"total\" or \"frequency\"")
                }
                signMethod = m
            case "seed":
                guard case .int(let n) = value, n >= 0, UInt64(n) <= maxSeed else { throw fail("seed must be an integer in 0...2^53") }
                seed = UInt64(n)
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
                throw fail("unknown key '\(key.prefix(64))' (combination, adapters, normalize, density, majority_sign_method, seed)")
            }
        }
        guard var parts else { throw fail("missing adapters") }
        guard Set(parts.map(\.name)).count == parts.count else { throw fail("an adapter appears twice") }
        if normalize {
            let sum = parts.reduce(Float(0)) { $0 + $1.weight }
            guard abs(sum) > 1e-6 else { throw fail("normalize: the weights sum to 0") }
            for i in parts.indices { parts[i].weight /= sum }
        }
        let pruned = ["ties", "dare_linear", "dare_ties"].contains(combination)
        if pruned {
            guard density != nil else { throw fail("\(combination) needs a density (the fraction of each A and B kept)") }
        } else if density != nil {
            throw fail("density applies to ties, dare_linear and dare_ties only")
        }
        if signMethod != nil && combination != "ties" && combination != "dare_ties" {
            throw fail("majority_sign_method applies to ties and dare_ties only")
        }
        if seed != nil && !combination.hasPrefix("dare_") { throw fail("seed applies to dare_linear and dare_ties only") }
        return Manifest(combination: combination, parts: parts, normalize: normalize, density: density,
                        majoritySignMethod: signMethod ?? "total", seed: seed ?? 0)
    }

    /// How `taskArithmetic` merges each A (and B): which entries each part keeps, and whether a sign is elected.
    struct MergeRule {
        enum Pruning {
            case none
            /// ties: the largest ⌊density·size⌋ magnitudes.
            case magnitude(Float)
            /// DARE: each entry with probability density (`dareMask`), scaled by 1/density.
            case random(density: Float, seed: UInt64)
        }
        var pruning: Pruning
        /// The sign election ("total", "frequency") and disjoint mean of ties and dare_ties; nil: a weighted sum.
        var signMethod: String?
    }

    /// The composition a manifest names, of the loaded `parts` (in manifest order), for the base `base` (whose
    /// Q/K layout DARE's masks follow).
    public static func compose(_ manifest: Manifest, _ parts: [LoRAWeights], base: ModelConfig, name: String, id: AdapterID) throws
        -> LoRAWeights {
        let weighted = Array(zip(parts, manifest.parts.map(\.weight)))
        let density = manifest.density ?? 1, method = manifest.majoritySignMethod
        let rule: MergeRule
        switch manifest.combination {
        case "cat": return try cat(weighted, name: name, id: id)
        case "ties": rule = MergeRule(pruning: .magnitude(density), signMethod: method)
        case "dare_linear": rule = MergeRule(pruning: .random(density: density, seed: manifest.seed), signMethod: nil)
        case "dare_ties": rule = MergeRule(pruning: .random(density: density, seed: manifest.seed), signMethod: method)
        default: rule = MergeRule(pruning: .none, signMethod: nil)
        }
        return try taskArithmetic(weighted, base: base, name: name, id: id, rule: rule)
    }

    /// PEFT's `linear`, `ties`, `dare_linear` and `dare_ties` (equal ranks): per module, with wᵢ' = wᵢ·sᵢ, A merges
    /// the Aᵢ at sign(wᵢ')·√|wᵢ'| and B the Bᵢ at √|wᵢ'| (so a lone adapter is reproduced exactly; with several, B·A
    /// has cross terms — PEFT calls linear "a very rough approximation"). `linear` sums them. `ties` first keeps each
    /// Aᵢ's (and Bᵢ's) largest ⌊density·size⌋ entries by magnitude, elects a sign per entry (the sign of the kept
    /// entries' sum, "total", or of their signs' sum, "frequency"; ≥ 0 is +), then averages the weighted entries that
    /// agree with it. `dare_linear` and `dare_ties` keep each entry at random with probability density instead,
    /// scaled by 1/density, then sum (dare_linear) or elect and average as ties does (dare_ties). Scaling 1, the
    /// rank of the parts.
    static func taskArithmetic(_ parts: [(weights: LoRAWeights, weight: Float)], base: ModelConfig, name: String, id: AdapterID,
                               rule: MergeRule) throws -> LoRAWeights {
        let layers = try layerCount(parts, name: name)
        let ranks = Set(parts.flatMap { p in p.weights.modules.joined().compactMap { $0?.rank } })
        guard ranks.count == 1, let rank = ranks.first else {
            throw AdapterError(adapter: name, problem: "linear, ties and dare_* need adapters of one rank (these have ranks \(ranks.sorted()); cat takes any)")
        }
        var modules: [[LoRAModule?]] = []
        for l in 0..<layers {
            var row: [LoRAModule?] = []
            for t in LoRATarget.allCases {
                let present = try partModules(parts, layer: l, target: t, name: name)
                guard let m0 = present.first?.m else { row.append(nil); continue }
                let inF = m0.inFeatures, outF = m0.outFeatures
                let factors = present.map(\.m.unpaddedFactors)
                let aParts = factors.map(\.a), bParts = factors.map(\.b)
                let wA = present.map { ($0.w >= 0 ? 1 : -1) * abs($0.w).squareRoot() }
                let wB = present.map { abs($0.w).squareRoot() }
                // DARE's masks are drawn in PEFT's (Hugging Face) layout; a base with llama.cpp's Q/K row order holds
                // B of q and k permuted, and its masks are permuted the same way.
                let permuted = base.ropeStyle == .adjacentPairs && (t == .q || t == .k)
                func keep(_ part: Int32, _ isB: Bool, _ count: Int, _ density: Float, _ seed: UInt64) -> [Float] {
                    let mask = dareMask(seed: seed, layer: l, target: t, part: Int(part), isB: isB, count: count, density: density)
                    guard isB && permuted else { return mask }
                    return AdapterLoader.permuteRows(mask, rowLength: rank, heads: t == .q ? base.numHeads : base.numKVHeads,
                                                     headDim: base.headDim, inverse: false)
                }
                let a = merge(aParts, weights: wA, rule: rule) { i, n, d, seed in keep(present[i].part, false, n, d, seed) }
                let b = merge(bParts, weights: wB, rule: rule) { i, n, d, seed in keep(present[i].part, true, n, d, seed) }
                row.append(LoRAModule(rank: rank, inFeatures: inF, outFeatures: outF, a: a, b: b, dtype: .f32))
            }
            modules.append(row)
        }
        return LoRAWeights(name: name, scale: 1, modules: modules, id: id)
    }

    /// PEFT's merge of the tensors tᵢ at weights wᵢ under `rule`: each tᵢ pruned (`mask(i, count, density, seed)`
    /// gives DARE's 0/1 mask of tensor i), then Σᵢ wᵢ·tᵢ, or, with a sign method, the mean of the weighted entries
    /// that agree with the elected sign.
    static func merge(_ tensors: [[Float]], weights: [Float], rule: MergeRule,
                      mask: (Int, Int, Float, UInt64) -> [Float]) -> [Float] {
        let n = tensors[0].count
        let pruned: [[Float]] = tensors.enumerated().map { i, t in
            switch rule.pruning {
            case .none: return t
            case .magnitude(let density):
                // Keep the top ⌊density·n⌋ magnitudes.
                guard density < 1 else { return t }
                var kept = [Float](repeating: 0, count: n)
                for j in t.indices.sorted(by: { abs(t[$0]) > abs(t[$1]) }).prefix(Int(density * Float(n))) { kept[j] = t[j] }
                return kept
            case .random(let density, let seed):
                guard density < 1 else { return t }
                let m = mask(i, n, density, seed)
                return (0..<n).map { t[$0] * m[$0] / density }
            }
        }
        guard let method = rule.signMethod else {
            var out = [Float](repeating: 0, count: n)
            for (t, w) in zip(pruned, weights) { for j in 0..<n { out[j] += t[j] * w } }
            return out
        }
        var out = [Float](repeating: 0, count: n)
        for j in 0..<n {
            var elect: Float = 0
            for t in pruned { elect += method == "total" ? t[j] : Float(t[j] > 0 ? 1 : t[j] < 0 ? -1 : 0) }
            let majority: Float = elect >= 0 ? 1 : -1
            var sum: Float = 0, agreeing = 0
            for (t, w) in zip(pruned, weights) where (t[j] > 0 ? 1 : t[j] < 0 ? -1 : 0) == majority {
                sum += t[j] * w
                agreeing += 1
            }
            out[j] = sum / Float(max(agreeing, 1))
        }
        return out
    }

    /// DARE's keep mask (1 kept, 0 dropped) of one A or B, in PEFT's row-major layout (A: rank × in, B: out ×
    /// rank, Q/K rows in the Hugging Face order): entry j is kept when u_j < density, u_j the top 24 bits of the
    /// j-th output of `SeededGenerator` (SplitMix64) over 2^24, seeded by seed + key·0x9E3779B97F4A7C15 (wrapping), key =
    /// ((layer·7 + target)·64 + part)·2 + (B ? 1 : 0). tools/gen_composition_goldens.py draws the same masks for
    /// PEFT's `random_pruning`.
    public static func dareMask(seed: UInt64, layer: Int, target: LoRATarget, part: Int, isB: Bool, count: Int, density: Float) -> [Float] {
        let key = UInt64(((layer * LoRATarget.allCases.count + target.rawValue) * maxParts + part) * 2 + (isB ? 1 : 0))
        var rng = SeededGenerator(seed: seed &+ key &* 0x9E37_79B9_7F4A_7C15)
        return (0..<count).map { _ in Float(rng.next() >> 40) / Float(1 << 24) < density ? 1 : 0 }
    }

    /// A name that stays in the directory it is resolved in: no separators, not `.`/`..`, no NUL, ≤ 255 bytes.
    public static func isPlainName(_ s: String) -> Bool {
        !s.isEmpty && s.utf8.count <= 255 && s != "." && s != ".." && !s.contains("/") && !s.contains("\0") && !s.hasPrefix(".")
    }

    /// PEFT's `cat`: ΔW = Σᵢ wᵢ·sᵢ·Bᵢ·Aᵢ per module, as one adapter of scaling 1 (f32).
    public static func cat(_ parts: [(weights: LoRAWeights, weight: Float)], name: String, id: AdapterID) throws -> LoRAWeights {
        LoRAWeights(name: name, scale: 1, modules: try stack(parts, name: name).modules, id: id)
    }

    /// The layer count the parts share (at least one part, all for the same model).
    static func layerCount(_ parts: [(weights: LoRAWeights, weight: Float)], name: String) throws -> Int {
        guard let first = parts.first else { throw AdapterError(adapter: name, problem: "a composition needs at least one adapter") }
        let layers = first.weights.modules.count
        guard parts.allSatisfy({ $0.weights.modules.count == layers }) else {
            throw AdapterError(adapter: name, problem: "the composed adapters are for different models")
        }
        return layers
    }

    /// The parts' modules for (layer, target), in order, each with its weight times its scaling and its part
    /// index; the parts that have one must agree on its shape.
    static func partModules(_ parts: [(weights: LoRAWeights, weight: Float)], layer l: Int, target t: LoRATarget, name: String) throws
        -> [(m: LoRAModule, w: Float, part: Int32)] {
        let present = parts.enumerated().compactMap { i, p in
            p.weights.module(layer: l, target: t).map { (m: $0, w: p.weight * p.weights.scale, part: Int32(i)) }
        }
        guard let m0 = present.first?.m else { return [] }
        guard present.allSatisfy({ $0.m.inFeatures == m0.inFeatures && $0.m.outFeatures == m0.outFeatures }) else {
            throw AdapterError(adapter: name, problem: "the composed adapters disagree on the shape of \(t)")
        }
        return present
    }

    /// The stacked modules of `cat`, and per module the part each padded rank column comes from (-1: padding).
    static func stack(_ parts: [(weights: LoRAWeights, weight: Float)], name: String) throws
        -> (modules: [[LoRAModule?]], columns: [[[Int32]?]]) {
        let layers = try layerCount(parts, name: name)
        var modules: [[LoRAModule?]] = []
        var columns: [[[Int32]?]] = []
        for l in 0..<layers {
            var row: [LoRAModule?] = []
            var columnRow: [[Int32]?] = []
            for t in LoRATarget.allCases {
                let present = try partModules(parts, layer: l, target: t, name: name)
                guard let m0 = present.first?.m else { row.append(nil); columnRow.append(nil); continue }
                let rank = present.reduce(0) { $0 + $1.m.rank }
                guard rank <= AdapterLoader.maxRank else {
                    throw AdapterError(adapter: name, problem: "the composed rank \(rank) of \(t) exceeds \(AdapterLoader.maxRank)")
                }
                let inF = m0.inFeatures, outF = m0.outFeatures
                let a = Buffer(floats: rank * inF), b = Buffer(floats: outF * rank)
                var offset = 0
                var owner: [Int32] = []
                for (m, w, part) in present {
                    // This part's r rows of A (× w·s) and r columns of B, in place.
                    let f = m.unpaddedFactors
                    for k in 0..<(m.rank * inF) { a.floats[offset * inF + k] = w * f.a[k] }
                    for o in 0..<outF {
                        f.b.withUnsafeBufferPointer { (b.floats + o * rank + offset).update(from: $0.baseAddress! + o * m.rank, count: m.rank) }
                    }
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
