import Foundation
import Kernels
import Models
import Scheduling

/// A running request taken out of one engine to resume in another (migration between replicas): its
/// tokens, sampling parameters and seed (sampling is counter-based, so the seed and the position are the
/// whole random state), the adapter it needs (by name), and the KV cache of the tokens computed so far.
/// Resuming gives the continuation the request would have had.
public struct ExportedRequest: Codable, Sendable, Equatable {
    public var tokens: [Int]
    public var promptCount: Int
    public var params: SamplingParams
    /// The request's sampling seed.
    public var seed: UInt64
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

extension EngineCore {
    /// Removes a live request from this engine and returns everything needed to resume it elsewhere;
    /// `includeKV: false` exports only tokens and state (the importer recomputes the KV).
    public func export(_ id: RequestID, includeKV: Bool = true) throws -> ExportedRequest {
        guard let s = sequence(id), let r = scheduler.request(id) else { throw EngineError("no live request \(id)") }
        var snapshot: ExportedRequest.KVSnapshot?
        if includeKV && r.computed > 0, let blocks = kvBlocks(of: id, from: 0, fullOnly: false) {
            let kv = runner.kv, per = blocks.floatsPerBlock
            snapshot = .init(numLayers: kv.numLayers, numKVHeads: kv.numKVHeads, headDim: kv.headDim, blockSize: kv.blockSize,
                             blocks: (0..<blocks.blockCount).map { Array(blocks.data[($0 * per)..<(($0 + 1) * per)]) })
        }
        let adapter = s.adapter == Request.base ? nil : adapterName(s.adapter)
        let exported = ExportedRequest(tokens: s.tokens, promptCount: s.promptCount, params: s.params, seed: s.sampler.seed,
                                       adapterName: adapter?.0, adapterScale: adapter?.1 ?? 1, maxLength: r.maxLength,
                                       computed: snapshot == nil ? 0 : r.computed, kv: snapshot)
        cancel(id)
        return exported
    }

    /// Resumes an exported request here. `adapter` must be the adapter the request names (the caller
    /// resolves the name, e.g. through its AdapterRegistry). KV from an engine with another geometry, or that
    /// does not fit now, is dropped and recomputed.
    @discardableResult
    public func importRequest(_ e: ExportedRequest, adapter: LoRAWeights?) throws -> RequestID {
        guard e.adapterName == adapter?.name else {
            throw EngineError("the request needs adapter '\(e.adapterName ?? "none")', got '\(adapter?.name ?? "none")'")
        }
        guard e.promptCount >= 1, e.promptCount <= e.tokens.count, e.computed >= 0, e.computed <= e.tokens.count,
              e.tokens.count < contextLimit else {
            throw EngineError("the exported request is inconsistent or does not fit this engine's context")
        }
        try validate(prompt: e.tokens, params: e.params, adapter: adapter, adapterScale: e.adapterScale)
        // The length limit travels with the request (the importer's own limits still apply).
        var params = e.params
        params.seed = e.seed
        let id = try enqueueImported(tokens: e.tokens, promptCount: e.promptCount, params: params,
                                     remaining: max(1, e.maxLength - e.tokens.count),
                                     adapter: adapter, adapterScale: e.adapterScale)
        let kv = runner.kv
        if let snap = e.kv, e.computed > 0, snap.numLayers == kv.numLayers, snap.numKVHeads == kv.numKVHeads,
           snap.headDim == kv.headDim, snap.blockSize == kv.blockSize,
           snap.blocks.count == (e.computed + snap.blockSize - 1) / snap.blockSize,
           snap.blocks.allSatisfy({ $0.count == runner.floatsPerBlock }) {
            adoptKV(id, KVBlocks(firstBlock: 0, blockSize: snap.blockSize, floatsPerBlock: runner.floatsPerBlock, computed: e.computed,
                                 data: Array(snap.blocks.joined())))
        }
        return id
    }
}
