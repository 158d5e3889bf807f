import Foundation
import Kernels
import Models
import Scheduling

/// Carries out a `SchedulerOutput` on tensors: owns the paged KV storage, the forward workspace and logits,
/// the LoRA slots and the host copies of swapped-out KV, and merges or unmerges the model's weights when the
/// scheduler says so. It decides nothing: which blocks, adapters and modes are used comes from the
/// scheduler.
public final class ModelRunner {
    public let model: LlamaModel
    public let kv: PagedKVStorage
    public let lora: LoRASlots
    /// The clock merge, unmerge and forward timings use, in nanoseconds (tests pass a scripted one).
    public var clock: @Sendable () -> UInt64 = { DispatchTime.now().uptimeNanoseconds }
    private let workspace: ForwardWorkspace
    private let scratch = ScratchArena()
    private var batch = ForwardBatch()
    private var logits: Buffer
    private var logitsCapacity = 8
    /// K/V of swapped-out requests (positions 0 ..< computed, block by block in `copyOutRaw` order: the
    /// cache's own bytes, so an f16 cache's swaps take half the host memory).
    private var host: [RequestID: [UInt8]] = [:]
    /// The scheduler's adapter key merged into the weights by this runner.
    public private(set) var mergedAdapter: Int?

    public init(model: LlamaModel, numBlocks: Int, blockSize: Int, maxBatchTokens: Int, adapterSlots: Int,
                kvDType: KVCacheDType = .f32) {
        self.model = model
        let c = model.config
        kv = PagedKVStorage(numLayers: c.numLayers, numBlocks: numBlocks, blockSize: blockSize, numKVHeads: c.numKVHeads,
                            headDim: c.headDim, dtype: kvDType)
        workspace = ForwardWorkspace(config: c, capacity: min(maxBatchTokens, 64))
        lora = LoRASlots(capacity: max(1, adapterSlots))
        logits = Buffer(floats: logitsCapacity * c.vocabSize)
    }

    /// Floats of one block over all layers, K and V.
    public var floatsPerBlock: Int { kv.blockFloats * 2 * kv.numLayers }
    public var hostSwapCount: Int { host.count }

    /// What carrying out the actions measured.
    public struct ActionTimes {
        /// The merge's seconds for the cost model: nil when there was none, or when it first allocated the merge
        /// workspace (a one-time cost that says nothing about the next switch).
        public var mergeSeconds: Double?
        public var unmergeSeconds: Double?
        /// Every merge and unmerge carried out, and their seconds, the workspace's first allocation included
        /// (what the engine spent switching: the metrics' totals).
        public var merges = 0
        public var mergeTotalSeconds = 0.0
        public var unmerges = 0
        public var unmergeTotalSeconds = 0.0
    }

    /// Carries out the scheduler's actions in order. `weights` gives a merge its adapter and scale.
    public func perform(_ actions: [SchedulerAction], weights: (Int) -> (LoRAWeights, Float)?) -> ActionTimes {
        var times = ActionTimes()
        for action in actions {
            switch action {
            case .swapOut(let id, let blocks):
                let per = kv.bytesPerBlock
                host[id] = [UInt8](unsafeUninitializedCapacity: blocks.count * per) { buf, n in
                    for (i, b) in blocks.enumerated() { kv.copyOutRaw(block: Int(b), to: buf.baseAddress! + i * per) }
                    n = blocks.count * per
                }
            case .swapIn(let id, let blocks):
                guard let data = host.removeValue(forKey: id) else { preconditionFailure("swap-in of \(id) without a host copy") }
                let per = kv.bytesPerBlock
                precondition(data.count == blocks.count * per, "swap-in of \(id): \(blocks.count) blocks for \(data.count) bytes")
                data.withUnsafeBytes { buf in
                    for (i, b) in blocks.enumerated() { kv.copyInRaw(block: Int(b), from: buf.baseAddress! + i * per) }
                }
            case .dropSwap(let id):
                host[id] = nil
            case .merge(let a):
                guard let (w, scale) = weights(a) else { preconditionFailure("merge of unknown adapter \(a)") }
                precondition(mergedAdapter == nil && model.merged == nil, "merge over a merged model")
                let t0 = clock(), before = model.mergeWorkspaceBytes
                model.merge(w, scale: scale)
                let seconds = Double(clock() &- t0) / 1e9
                times.merges += 1
                times.mergeTotalSeconds += seconds
                // A merge that first allocated (part of) the merge workspace paid a one-time cost (page faults
                // over hundreds of MB): it says nothing about the next switch.
                if model.mergeWorkspaceBytes == before { times.mergeSeconds = seconds }
                mergedAdapter = a
            case .unmerge:
                guard mergedAdapter != nil else { continue }
                let t0 = clock()
                model.unmerge()
                let seconds = Double(clock() &- t0) / 1e9
                times.unmergeSeconds = seconds
                times.unmerges += 1
                times.unmergeTotalSeconds += seconds
                mergedAdapter = nil
            case .loadAdapter, .evictAdapter, .dropAdapter, .free:
                // Adapters live in host memory here (no device copy to make); the engine drops weights on
                // `.dropAdapter`. A freed request's blocks are bookkeeping only.
                continue
            }
        }
        return times
    }

    /// Runs the iteration's forward pass; returns its seconds. Logit rows, one per run that samples in run
    /// order (a run with all its logits: one per position), are then read with `logitsRow`. `tokens(run)` gives the run's token ids; `weights(slot adapter)`
    /// the adapter and the request's scale.
    /// `allLogits(run)`: the run wants a row for every position it computes (prompt log-probabilities), in place of
    /// the one row of a sampling run.
    public func forward(_ output: SchedulerOutput, tokens: (ScheduledRun) -> ArraySlice<Int>, weights: (Int) -> (LoRAWeights, Float)?,
                        allLogits: (ScheduledRun) -> Bool = { _ in false }) -> Double {
        for (slot, a) in output.loraSlots.enumerated() { lora[slot] = weights(a)?.0 }
        batch.reset()
        for run in output.runs {
            let scale = run.loraSlot >= 0 ? weights(run.adapter)?.1 ?? 1 : 1
            batch.append(sequence: tokens(run), start: run.start, blockTable: run.blockTable, blockSize: kv.blockSize,
                         logits: allLogits(run) ? .all : run.samples ? .last : .none, adapterSlot: run.loraSlot, adapterScale: scale)
        }
        let seconds = forward(batch, lora: lora)
        // The slots hold no adapter between iterations: an adapter the scheduler dropped is freed.
        for slot in 0..<output.loraSlots.count { lora[slot] = nil }
        return seconds
    }

    /// Runs a batch laid out by the caller (benchmarks and tests that place their own block tables in `kv`);
    /// returns its seconds. Logit rows, one per entry of `batch.logitRows`, are then read with `logitsRow`.
    public func forward(_ batch: ForwardBatch, lora slots: LoRASlots? = nil) -> Double {
        let rows = batch.logitRows.count
        if rows > logitsCapacity {
            logitsCapacity = max(rows, logitsCapacity * 2)
            logits = Buffer(floats: logitsCapacity * model.config.vocabSize)
        }
        let start = clock()
        model.forward(batch, kv: kv, workspace: workspace, scratch: scratch, logits: logits.floats, lora: slots)
        return Double(clock() &- start) / 1e9
    }

    /// MoLE gates of the last forward pass, per adapter slot: their entropy summed (nats), their count (one
    /// per token and gate), and each expert's weight summed (`MoLEGating.maxExperts` per slot). Current only for
    /// the slots that hold a MoLE composition in that pass.
    public var gateStatistics: (entropy: [Double], count: [Int], sums: [Double]) {
        (workspace.gateEntropy, workspace.gateCount, workspace.gateSums)
    }

    /// The logits of the `row`-th sampling run of the last forward pass.
    public func logitsRow(_ row: Int) -> UnsafeBufferPointer<Float> {
        let vocab = model.config.vocabSize
        return UnsafeBufferPointer(start: logits.floats + row * vocab, count: vocab)
    }

    /// Copies `blocks.count` blocks of K/V, f32 values flat in block order (as `exportKV(_:blocks:)` gives them),
    /// into `blocks` (an f16 cache rounds them: exact for K/V that an f16 cache exported).
    public func importKV(flat data: [Float], into blocks: [Int32]) {
        let per = floatsPerBlock
        precondition(data.count >= blocks.count * per)
        data.withUnsafeBufferPointer { buf in
            for (i, b) in blocks.enumerated() { kv.copyIn(block: Int(b), from: buf.baseAddress! + i * per) }
        }
    }

    /// The K/V of a request's blocks in `range` (clamped to the blocks it holds), f32 values flat in block order,
    /// from its blocks or its host copy: the replica-independent form that moves between replicas, whatever
    /// each one's cache type.
    public func exportKV(_ r: Request, blocks range: Range<Int>) -> [Float] {
        let per = floatsPerBlock
        let held = host[r.id].map { $0.count / kv.bytesPerBlock } ?? r.blockTable.count
        let lo = max(0, range.lowerBound), hi = min(range.upperBound, held)
        guard hi > lo else { return [] }
        if let h = host[r.id] {
            return [Float](unsafeUninitializedCapacity: (hi - lo) * per) { buf, n in
                h.withUnsafeBytes { kv.floats(fromRaw: $0.baseAddress! + lo * kv.bytesPerBlock, count: (hi - lo) * per, into: buf.baseAddress!) }
                n = (hi - lo) * per
            }
        }
        return [Float](unsafeUninitializedCapacity: (hi - lo) * per) { buf, n in
            for b in lo..<hi { kv.copyOut(block: Int(r.blockTable[b]), to: buf.baseAddress! + (b - lo) * per) }
            n = (hi - lo) * per
        }
    }
}
