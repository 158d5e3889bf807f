import Foundation
import Kernels
import Models

/// A running request taken out of one engine to resume in another (migration between replicas): its
/// tokens, sampling parameters and random-generator state, the adapter it needs (by name), and the KV
/// cache of the tokens computed so far. Resuming gives the continuation the request would have had.
public struct ExportedRequest: Codable, Sendable, Equatable {
    public var tokens: [Int]
    public var promptCount: Int
    public var params: SamplingParams
    /// xoshiro256** state of the request's sampler.
    public var rngState: [UInt64]
    public var adapterName: String?
    public var adapterScale: Float
    public var maxLength: Int
    /// Tokens whose K/V are in `kv` (the first `computed` tokens); 0 when the KV was not exported.
    public var computed: Int
    public var kv: KVSnapshot?

    /// The K/V rows of positions 0 ..< computed, block by block in `PagedKVStorage.copyOut` order.
    public struct KVSnapshot: Codable, Sendable, Equatable {
        public var numLayers: Int
        public var numKVHeads: Int
        public var headDim: Int
        public var blockSize: Int
        public var blocks: [[Float]]
    }
}

extension Generator {
    /// Removes a live request from this engine and returns everything needed to resume it elsewhere;
    /// `includeKV: false` exports only tokens and state (the importer recomputes the KV).
    public func export(_ id: Int, includeKV: Bool = true) throws -> ExportedRequest {
        guard let s = sequence(id) else { throw GeneratorError("no live request \(id)") }
        var snapshot: ExportedRequest.KVSnapshot?
        if includeKV && s.computed > 0 {
            let perBlock = kvStorage.blockFloats * 2 * kvStorage.numLayers
            let used = (s.computed + kvStorage.blockSize - 1) / kvStorage.blockSize
            let blocks: [[Float]]
            if let host = s.swapped {  // swapped out: the host copy is the KV
                blocks = (0..<used).map { Array(host[($0 * perBlock)..<(($0 + 1) * perBlock)]) }
            } else {
                blocks = s.blockTable.prefix(used).map { block -> [Float] in
                    [Float](unsafeUninitializedCapacity: perBlock) { buf, n in
                        kvStorage.copyOut(block: Int(block), to: buf.baseAddress!)
                        n = perBlock
                    }
                }
            }
            snapshot = .init(numLayers: kvStorage.numLayers, numKVHeads: kvStorage.numKVHeads, headDim: kvStorage.headDim,
                             blockSize: kvStorage.blockSize, blocks: blocks)
        }
        let r = s.sampler.rng.state
        let exported = ExportedRequest(tokens: s.tokens, promptCount: s.promptCount, params: s.params, rngState: [r.0, r.1, r.2, r.3],
                                       adapterName: s.adapter?.name, adapterScale: s.adapterScale, maxLength: s.maxLength,
                                       computed: snapshot == nil ? 0 : s.computed, kv: snapshot)
        cancel(id)
        return exported
    }

    /// Resumes an exported request here. `adapter` must be the adapter the request names (the caller
    /// resolves the name, e.g. through its AdapterRegistry). KV from an engine with another geometry is
    /// dropped and recomputed.
    @discardableResult
    public func importRequest(_ e: ExportedRequest, adapter: LoRAWeights?) throws -> Int {
        guard e.adapterName == adapter?.name else {
            throw GeneratorError("the request needs adapter '\(e.adapterName ?? "none")', got '\(adapter?.name ?? "none")'")
        }
        guard e.rngState.count == 4, e.promptCount >= 1, e.promptCount <= e.tokens.count, e.computed <= e.tokens.count,
              e.tokens.count < contextLimit else {
            throw GeneratorError("the exported request is inconsistent or does not fit this engine's context")
        }
        try validate(prompt: e.tokens, params: e.params, adapter: adapter, adapterScale: e.adapterScale)
        let id = try submit(prompt: Array(e.tokens.prefix(e.promptCount)), params: e.params, adapter: adapter, adapterScale: e.adapterScale)
        let s = sequence(id)!
        try s.restore(tokens: e.tokens, rng: SamplerRNG(state: (e.rngState[0], e.rngState[1], e.rngState[2], e.rngState[3])),
                      maxLength: min(e.maxLength, contextLimit))
        if let kv = e.kv, e.computed > 0, kv.numLayers == kvStorage.numLayers, kv.numKVHeads == kvStorage.numKVHeads,
           kv.headDim == kvStorage.headDim, kv.blockSize == kvStorage.blockSize,
           kv.blocks.count == (e.computed + kv.blockSize - 1) / kv.blockSize,
           kv.blocks.allSatisfy({ $0.count == kvStorage.blockFloats * 2 * kvStorage.numLayers }) {
            if allocateBlocks(for: s, tokens: e.computed) {
                for (i, data) in kv.blocks.enumerated() {
                    data.withUnsafeBufferPointer { kvStorage.copyIn(block: Int(s.blockTable[i]), from: $0.baseAddress!) }
                }
                s.computed = e.computed
            }
        }
        return id
    }
}
