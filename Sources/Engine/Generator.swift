import Foundation
import Kernels
import Models
import Scheduling

/// Why a sequence stopped generating (OpenAI's `finish_reason`).
public enum FinishReason: String, Sendable, Equatable {
    /// End-of-sequence token or a stop string.
    case stop
    /// `maxTokens` reached or the context is full.
    case length
    /// The logits could not be sampled (NaN or +∞: the forward pass overflowed); the request ends with no
    /// further text and its client gets an error.
    case error
}

/// What one step produced for one request.
public struct GenerationEvent: Sendable, Equatable {
    public let requestID: Int
    /// The sampled token (nil only for the event that flushes held-back text at the end).
    public let token: Int?
    /// Text that is now safe to show (may be empty: a partial UTF-8 character or a possible stop string).
    public let text: String
    public let finish: FinishReason?
}

public struct GeneratorError: Error, CustomStringConvertible, Equatable, Sendable {
    public let description: String
    public init(_ message: String) { description = message }
}

/// Throughput counters. A step that runs any prompt tokens counts as prefill time, the others as decode.
public struct GenerationStats: Sendable, Equatable {
    public var promptTokens = 0
    public var promptSeconds = 0.0
    public var generatedTokens = 0
    public var decodeTokens = 0
    public var decodeSeconds = 0.0
    public var steps = 0
    public var preemptions = 0
    /// Preempted sequences whose KV went to host memory, and back.
    public var swapOuts = 0
    public var swapIns = 0
    /// Resident adapters evicted to make room (KV and adapters share one budget).
    public var adapterEvictions = 0
    /// Adapters made resident (loaded into the shared budget) for execution.
    public var adapterLoads = 0
    /// Iterations run with one adapter merged into the base weights, and with the unmerged (mixed) batch.
    public var mergedSteps = 0
    public var unmergedSteps = 0
    /// Mode switches the batching policy made.
    public var modeSwitches = 0

    public init() {}
}

/// Continuous batching over one model and many LoRA adapters. Every step asks the batching policy
/// (`Scheduling.BatchPolicy`: dLoRA or a baseline) for the iteration's mode and requests, merges or unmerges
/// the model's weights when the mode changes, runs the chosen decode tokens and prompt chunks in one forward
/// pass (each adapter's tokens one LoRA segment in unmerged mode), samples, and streams text. KV memory is a
/// paged cache of `kvBlocks` blocks; when it runs out, the newest sequence holding blocks is preempted (its
/// blocks freed, recomputed later), so older requests always make progress.
public final class Generator {
    public let model: LlamaModel
    public let tokenizer: Tokenizer
    public let maxBatchTokens: Int
    public let maxSequences: Int
    public private(set) var stats = GenerationStats()
    /// The clock the step timings (and so the policy's cost model) use, in nanoseconds; tests pass a scripted
    /// one to make mode decisions reproducible.
    public var clock: @Sendable () -> UInt64 = { DispatchTime.now().uptimeNanoseconds }
    /// Called with every row of logits a request samples from (tests compare them with goldens).
    public var logitsObserver: ((_ requestID: Int, _ logits: UnsafeBufferPointer<Float>) -> Void)?

    private let kv: PagedKVStorage
    var kvStorage: PagedKVStorage { kv }
    private var pool: BlockPool
    private let workspace: ForwardWorkspace
    private let scratch = ScratchArena()
    private var batch = ForwardBatch()
    private var logits: Buffer
    private var logitsCapacity: Int
    private let endTokens: Set<Int>

    final class Sequence {
        let id: Int
        var tokens: [Int]
        let promptCount: Int
        var computed = 0
        var blockTable: [Int32] = []
        private(set) var sampler: Sampler
        /// The policy's adapter id (QueuedRequest.base without an adapter).
        var adapterID = QueuedRequest.base
        var detokenizer: StreamingDetokenizer
        var stopMatcher: StopMatcher
        let params: SamplingParams
        private(set) var maxLength: Int
        /// The K/V of positions 0..<computed in host memory while the sequence is swapped out (its block
        /// table is then empty).
        var swapped: [Float]?
        let adapter: LoRAWeights?
        let adapterScale: Float

        init(id: Int, prompt: [Int], params: SamplingParams, tokenizer: Tokenizer, maxLength: Int,
             adapter: LoRAWeights?, adapterScale: Float) {
            self.adapter = adapter
            self.adapterScale = adapterScale
            self.id = id
            tokens = prompt
            promptCount = prompt.count
            self.params = params
            sampler = Sampler(params: params)
            detokenizer = StreamingDetokenizer(tokenizer: tokenizer, skipSpecial: true, startsSequence: false)
            stopMatcher = StopMatcher(stops: params.stop)
            self.maxLength = maxLength
        }

        var generated: Int { tokens.count - promptCount }


        /// Puts back the state of an exported request: its generated tokens (replayed through the
        /// detokenizer and stop matcher, so streaming resumes where it stopped) and its random stream.
        func restore(tokens all: [Int], rng: SamplerRNG, maxLength limit: Int) throws {
            for t in all.dropFirst(promptCount) {
                _ = stopMatcher.append(detokenizer.append(t))
            }
            tokens = all
            sampler = Sampler(params: params, rng: rng)
            maxLength = max(limit, all.count + 1)
        }

        func sample(_ logits: UnsafeBufferPointer<Float>) -> Int? { sampler.sample(logits) }
    }

    /// The LoRA slot table of the current unmerged step (rebuilt every step from the batch's adapters).
    public let lora: LoRASlots
    /// The batching policy (mode decisions, credits, thresholds).
    public private(set) var policy: BatchPolicy
    /// Live sequences in arrival order (queued, running and preempted alike).
    private var live: [Sequence] = []
    private var nextID = 0
    /// Adapter ids for the policy: one per (adapter, scale) pair, since a merge folds in one scale.
    private var adapterIDs: [AdapterKey: Int] = [:]
    private var adapterByID: [Int: (weights: LoRAWeights, scale: Float)] = [:]
    /// The adapter this Generator folded into the model, if any.
    private var mergedAdapter: Int?
    /// Measured merge cost per targeted base-matrix element (prior: SmolLM2 Q4_1, bench/results/lora.md: ~11 ms
    /// for q/v's 13.3 M elements, ~57 ms for all seven layers' 106 M, rank 16), and the last unmerge's seconds:
    /// the policy's switch-cost estimates.
    private var mergeSecondsPerElement = 0.7e-9
    private var lastUnmergeSeconds = 0.0001
    /// Adapters resident for execution, each holding KV-cache blocks' worth of the shared budget.
    private var resident: [Int: (blocks: [Int32], lastUse: Int)] = [:]
    /// Host memory for swapped-out KV, and its limit (beyond it, preempted sequences recompute instead).
    public let hostSwapLimitBytes: Int
    public private(set) var hostSwapBytes = 0

    private struct AdapterKey: Hashable {
        let object: ObjectIdentifier
        let scale: Float
    }

    /// - Parameters:
    ///   - kvBlocks: blocks of `blockSize` tokens in the KV cache (all sequences share them).
    ///   - adapterSlots: how many distinct adapters can run in one batch (unmerged).
    ///   - policy: the batching policy; its budgets are set from maxBatchTokens, maxSequences and adapterSlots.
    public init(model: LlamaModel, tokenizer: Tokenizer, kvBlocks: Int, blockSize: Int = 16,
                maxBatchTokens: Int = 512, maxSequences: Int = 256, adapterSlots: Int = 32,
                policy: BatchPolicyConfig = BatchPolicyConfig(), hostSwapLimitBytes: Int = 1 << 30) {
        self.hostSwapLimitBytes = hostSwapLimitBytes
        precondition(kvBlocks > 0 && blockSize > 0 && maxBatchTokens > 0 && maxSequences > 0)
        self.model = model
        self.tokenizer = tokenizer
        self.maxBatchTokens = maxBatchTokens
        self.maxSequences = maxSequences
        let c = model.config
        kv = PagedKVStorage(numLayers: c.numLayers, numBlocks: kvBlocks, blockSize: blockSize,
                            numKVHeads: c.numKVHeads, headDim: c.headDim)
        pool = BlockPool(numBlocks: kvBlocks, blockSize: blockSize)
        contextLimit = min(c.maxPositionEmbeddings, kvBlocks * blockSize)
        workspace = ForwardWorkspace(config: c, capacity: min(maxBatchTokens, 64))
        lora = LoRASlots(capacity: max(1, adapterSlots))
        var pc = policy
        pc.maxBatchTokens = maxBatchTokens
        pc.maxBatchSequences = maxSequences
        pc.maxAdapters = max(1, adapterSlots)
        self.policy = BatchPolicy(config: pc)
        logitsCapacity = 8
        logits = Buffer(floats: logitsCapacity * c.vocabSize)
        var ends = Set(tokenizer.eosTokenIDs)
        for t in tokenizer.chatTemplate.endOfTurnTokens {
            if let id = tokenizer.id(for: t) { ends.insert(id) }
        }
        endTokens = ends
    }

    /// The longest sequence (prompt + generated) one request may reach: the model's context, or the KV cache.
    public let contextLimit: Int

    /// Checks a request without queueing it; reads only immutable state, so any thread may call it.
    public func validate(prompt: [Int], params: SamplingParams, adapter: LoRAWeights?, adapterScale: Float) throws {
        try params.validate()
        guard adapterScale.isFinite, abs(adapterScale) <= 100 else { throw GeneratorError("adapter scale must be a finite number within ±100") }
        if let adapter, adapter.modules.count != model.config.numLayers {
            throw GeneratorError("adapter '\(adapter.name)' was loaded for a model with \(adapter.modules.count) layers")
        }
        guard !prompt.isEmpty else { throw GeneratorError("the prompt is empty") }
        let vocab = model.config.vocabSize
        if let bad = prompt.first(where: { $0 < 0 || $0 >= vocab }) {
            throw GeneratorError("token id \(bad) is outside the vocabulary (0..<\(vocab))")
        }
        guard prompt.count < contextLimit else {
            throw GeneratorError("the prompt has \(prompt.count) tokens; the context holds \(contextLimit)")
        }
        // The adapter's residency comes out of the same budget as the KV blocks: it must fit beside the prompt.
        let adapterBlocks = self.adapterBlocks(adapter)
        guard prompt.count < (kv.numBlocks - adapterBlocks) * kv.blockSize else {
            throw GeneratorError("adapter '\(adapter?.name ?? "")' takes \(adapterBlocks) of the \(kv.numBlocks) KV blocks; "
                                 + "the \(prompt.count)-token prompt does not fit beside it")
        }
    }

    /// KV blocks' worth of the shared budget an adapter occupies while resident.
    private func adapterBlocks(_ adapter: LoRAWeights?) -> Int {
        adapter.map { max(1, ($0.byteCount + kv.bytesPerBlock - 1) / kv.bytesPerBlock) } ?? 0
    }

    /// KV-cache blocks needed to hold `tokens` tokens.
    public static func kvBlocks(tokens: Int, blockSize: Int = 16) -> Int { (tokens + blockSize - 1) / blockSize }

    public var hasWork: Bool { !live.isEmpty }
    /// Requests admitted and not finished: those holding KV blocks (running) and the rest (waiting, preempted).
    public var liveCount: Int { live.count }
    public var runningCount: Int { live.reduce(0) { $0 + ($1.blockTable.isEmpty ? 0 : 1) } }
    /// Adapters resident in the shared budget.
    public var residentAdapterCount: Int { resident.count }
    /// KV blocks not held by any sequence.
    public var freeKVBlocks: Int { pool.freeCount }
    public var totalKVBlocks: Int { pool.numBlocks }
    public var kvBlockSize: Int { kv.blockSize }

    /// Queues a request. Throws when the prompt is empty, holds an unknown token id, or does not fit the
    /// context or the KV cache.
    /// `adapter` runs the request through a LoRA adapter (unmerged, batched with other adapters' requests)
    /// with its scaling multiplied by `adapterScale`.
    @discardableResult
    public func submit(prompt: [Int], params: SamplingParams, adapter: LoRAWeights? = nil, adapterScale: Float = 1) throws -> Int {
        try validate(prompt: prompt, params: params, adapter: adapter, adapterScale: adapterScale)
        let context = contextLimit
        // The request's length is capped to what the budget leaves beside its adapter (validate checked the prompt fits).
        let room = (kv.numBlocks - adapterBlocks(adapter)) * kv.blockSize
        let maxLength = min(context, room, prompt.count + (params.maxTokens ?? context))
        let id = nextID
        nextID += 1
        let s = Sequence(id: id, prompt: prompt, params: params, tokenizer: tokenizer, maxLength: maxLength,
                         adapter: adapter, adapterScale: adapterScale)
        if let adapter {
            let key = AdapterKey(object: ObjectIdentifier(adapter), scale: adapterScale)
            if let known = adapterIDs[key] {
                s.adapterID = known
            } else {
                s.adapterID = adapterIDs.count
                adapterIDs[key] = s.adapterID
                adapterByID[s.adapterID] = (adapter, adapterScale)
                // Merging costs in proportion to the base matrices the adapter targets (dequantize, add B·A).
                policy.estimateSwitch(adapter: s.adapterID, seconds: Double(Self.mergeElements(adapter)) * mergeSecondsPerElement + lastUnmergeSeconds)
                // Its LoRA path costs in proportion to its multiply-adds per token: its (padded) parameters.
                policy.estimateLoRACost(adapter: s.adapterID,
                                        relative: Double(Self.loraParameters(adapter)) / policy.config.costs.referenceLoRAParameters)
            }
        }
        live.append(s)
        return id
    }

    /// Drops a request, queued or running, and frees its KV blocks.
    public func cancel(_ id: Int) {
        if let i = live.firstIndex(where: { $0.id == id }) {
            release(live[i])
            live.remove(at: i)
        }
        if live.isEmpty && mergedAdapter != nil {
            unmergeTimed()
            mergedAdapter = nil
        }
    }

    /// Runs one iteration; returns the events of every request that sampled a token or finished.
    public func step() -> [GenerationEvent] {
        guard !live.isEmpty else { return [] }
        let queue = live.map { QueuedRequest(id: $0.id, adapter: $0.adapterID, pendingTokens: $0.tokens.count - $0.computed) }
        var decision = policy.schedule(queue)
        let byID = Dictionary(uniqueKeysWithValues: live.map { ($0.id, $0) })

        // One budget: resident adapters and KV blocks draw from the same block pool. First make this step's
        // adapters resident (evicting idle adapters, then preempting the newest sequences, to make room)…
        let wanted = Set(decision.runs.map(\.id))
        var unavailable = Set<Int>()
        for run in decision.runs {
            guard let s = byID[run.id], s.adapter != nil, resident[s.adapterID] == nil, !unavailable.contains(s.adapterID) else { continue }
            if !makeResident(s.adapterID, keep: wanted) { unavailable.insert(s.adapterID) }
        }
        for a in Set(decision.runs.compactMap { byID[$0.id]?.adapterID }) where resident[a] != nil {
            resident[a]!.lastUse = stats.steps
        }

        // …then KV blocks for the chosen runs; when they run out, preempt the newest sequence that holds
        // blocks and is not part of this step (swapping its KV to host memory), else the run waits.
        var scheduled: [(Sequence, Int)] = []
        var chosen = Set<Int>()
        for run in decision.runs {
            guard let s = byID[run.id], !unavailable.contains(s.adapterID) else { continue }
            var ok = pool.ensureCapacity(&s.blockTable, tokens: s.computed + run.tokens)
            while !ok, let victim = live.last(where: { !$0.blockTable.isEmpty && !chosen.contains($0.id) && $0 !== s }) {
                preempt(victim)
                ok = pool.ensureCapacity(&s.blockTable, tokens: s.computed + run.tokens)
            }
            guard ok, s.computed + run.tokens <= s.tokens.count else { continue }
            if let host = s.swapped { swapIn(s, host) }
            scheduled.append((s, run.tokens))
            chosen.insert(s.id)
        }
        // A sequence preempted after it was chosen lost its blocks: drop its run (it waits).
        scheduled.removeAll { s, _ in s.blockTable.isEmpty }
        decision.runs = scheduled.map { ($0.0.id, $0.1) }
        guard !scheduled.isEmpty else {
            // Nothing fit (this step's adapters and KV could not share the budget): free everything that is
            // not running so the oldest request can make progress next step. Submit checked it fits alone.
            for s in live where !s.blockTable.isEmpty { preempt(s) }
            for (a, r) in resident {
                pool.release(r.blocks)
                resident[a] = nil
                stats.adapterEvictions += 1
            }
            return []
        }

        // Mode: fold the adapter in (merged) or take it out (unmerged) when the policy switched. A model that
        // was merged before it reached the Generator (dlora generate --lora-mode merged) is left alone.
        var slots: [Int: Int32] = [:]
        var mergedNow = false
        if case .merged(let a) = decision.mode, let (weights, scale) = adapterByID[a], model.merged == nil || mergedAdapter != nil {
            if mergedAdapter != a {
                if mergedAdapter != nil { unmergeTimed() }
                let t0 = clock(), workspace = model.mergeWorkspaceBytes
                model.merge(weights, scale: scale)
                let seconds = Double(clock() &- t0) / 1e9
                // A merge that first allocated (part of) the model's merge workspace paid a one-time cost (page
                // faults over hundreds of MB): it says nothing about the next switch, so it is not learned from.
                if model.mergeWorkspaceBytes == workspace {
                    let elements = Self.mergeElements(weights)
                    if elements > 0 { mergeSecondsPerElement = 0.5 * mergeSecondsPerElement + 0.5 * seconds / Double(elements) }
                    policy.observeSwitch(adapter: a, seconds: seconds + lastUnmergeSeconds)
                }
                mergedAdapter = a
            }
            mergedNow = true
        } else if mergedAdapter != nil {
            unmergeTimed()
            mergedAdapter = nil
        }
        if !mergedNow {
            for (s, _) in scheduled where s.adapter != nil && slots[s.adapterID] == nil {
                let slot = slots.count
                lora[slot] = s.adapter
                slots[s.adapterID] = Int32(slot)
            }
        }

        // Tokens of one adapter side by side (as SGMV groups them): one LoRA segment per adapter.
        scheduled.sort { (slots[$0.0.adapterID] ?? -1, $0.0.id) < (slots[$1.0.adapterID] ?? -1, $1.0.id) }
        batch.reset()
        var prefillTokens = 0
        for (s, n) in scheduled {
            let completes = s.computed + n == s.tokens.count
            if s.computed < s.promptCount { prefillTokens += min(n, s.promptCount - s.computed) }
            batch.append(sequence: s.tokens[s.computed..<(s.computed + n)], start: s.computed, blockTable: s.blockTable,
                         blockSize: kv.blockSize, logits: completes ? .last : .none,
                         adapterSlot: slots[s.adapterID] ?? -1, adapterScale: s.adapterScale)
        }
        let rows = batch.logitRows.count
        if rows > logitsCapacity {
            logitsCapacity = max(rows, logitsCapacity * 2)
            logits = Buffer(floats: logitsCapacity * model.config.vocabSize)
        }
        let start = clock()
        model.forward(batch, kv: kv, workspace: workspace, scratch: scratch, logits: logits.floats, lora: lora)
        let seconds = Double(clock() &- start) / 1e9
        policy.observe(decision, adapters: slots.count, seconds: seconds)
        stats.steps += 1
        if mergedNow { stats.mergedSteps += 1 } else { stats.unmergedSteps += 1 }
        stats.modeSwitches = policy.switches
        if prefillTokens > 0 {
            stats.promptTokens += prefillTokens
            stats.promptSeconds += seconds
        } else {
            stats.decodeTokens += batch.count
            stats.decodeSeconds += seconds
        }

        var events: [GenerationEvent] = []
        var row = 0
        let vocab = model.config.vocabSize
        for (s, n) in scheduled {
            s.computed += n
            guard s.computed == s.tokens.count else { continue }
            let rowLogits = UnsafeBufferPointer(start: logits.floats + row * vocab, count: vocab)
            row += 1
            logitsObserver?(s.id, rowLogits)
            guard let token = s.sample(rowLogits) else {
                events.append(GenerationEvent(requestID: s.id, token: nil, text: "", finish: .error))
                continue
            }
            s.tokens.append(token)
            stats.generatedTokens += 1
            events.append(emit(s, token: token))
        }
        let finished = Set(events.filter { $0.finish != nil }.map(\.requestID))
        live.removeAll { s in
            guard finished.contains(s.id) else { return false }
            release(s)
            return true
        }
        if live.isEmpty && mergedAdapter != nil {
            // Idle: leave the model as it was given (other users may share it).
            unmergeTimed()
            mergedAdapter = nil
        }
        return events
    }

    func sequence(_ id: Int) -> Sequence? { live.first { $0.id == id } }

    /// Gives a sequence KV blocks for `tokens` positions (false: not enough free blocks).
    func allocateBlocks(for s: Sequence, tokens: Int) -> Bool { pool.ensureCapacity(&s.blockTable, tokens: tokens) }

    /// Runs steps until every queued request has finished; returns all events in order.
    public func runToCompletion() -> [GenerationEvent] {
        var all: [GenerationEvent] = []
        while hasWork { all += step() }
        return all
    }

    private func emit(_ s: Sequence, token: Int) -> GenerationEvent {
        if endTokens.contains(token) && !s.params.ignoreEOS {
            let text = s.detokenizer.finish() + s.stopMatcher.finish()
            return GenerationEvent(requestID: s.id, token: token, text: text, finish: .stop)
        }
        let piece = s.detokenizer.append(token)
        let (text, stopped) = s.stopMatcher.append(piece)
        if stopped { return GenerationEvent(requestID: s.id, token: token, text: text, finish: .stop) }
        if s.tokens.count >= s.maxLength {
            let rest = s.stopMatcher.append(s.detokenizer.finish())
            let tail = rest.stopped ? rest.emit : rest.emit + s.stopMatcher.finish()
            return GenerationEvent(requestID: s.id, token: token, text: text + tail, finish: rest.stopped ? .stop : .length)
        }
        return GenerationEvent(requestID: s.id, token: token, text: text, finish: nil)
    }

    /// Frees a sequence's KV blocks. Its K/V go to host memory while the swap space holds them (copying
    /// ~46 KB per SmolLM2 token costs microseconds; recomputing costs ~1.4 ms per token here, so swapping
    /// always wins while there is room); beyond that it recomputes from zero when rescheduled. Either way
    /// it keeps its place in arrival order, so swapped sequences come back FCFS.
    private func preempt(_ s: Sequence) {
        let used = (s.computed + kv.blockSize - 1) / kv.blockSize
        let bytes = used * kv.blockFloats * 2 * kv.numLayers * MemoryLayout<Float>.stride
        if s.computed > 0 && s.swapped == nil && hostSwapBytes + bytes <= hostSwapLimitBytes {
            let per = kv.blockFloats * 2 * kv.numLayers
            var host = [Float](repeating: 0, count: used * per)
            host.withUnsafeMutableBufferPointer { buf in
                for (i, block) in s.blockTable.prefix(used).enumerated() { kv.copyOut(block: Int(block), to: buf.baseAddress! + i * per) }
            }
            s.swapped = host
            hostSwapBytes += bytes
            stats.swapOuts += 1
        } else {
            s.computed = 0
        }
        pool.release(s.blockTable)
        s.blockTable.removeAll()
        stats.preemptions += 1
    }

    /// Copies a swapped sequence's K/V back into its (newly allocated) blocks.
    private func swapIn(_ s: Sequence, _ host: [Float]) {
        let per = kv.blockFloats * 2 * kv.numLayers
        host.withUnsafeBufferPointer { buf in
            for i in 0..<(host.count / per) { kv.copyIn(block: Int(s.blockTable[i]), from: buf.baseAddress! + i * per) }
        }
        hostSwapBytes -= host.count * MemoryLayout<Float>.stride
        s.swapped = nil
        stats.swapIns += 1
    }

    /// Frees everything a finished or cancelled sequence holds.
    private func release(_ s: Sequence) {
        pool.release(s.blockTable)
        s.blockTable.removeAll()
        if let host = s.swapped {
            hostSwapBytes -= host.count * MemoryLayout<Float>.stride
            s.swapped = nil
        }
    }

    /// Blocks' worth of the budget an adapter takes while resident.
    private func blocksFor(adapter a: Int) -> Int { adapterBlocks(adapterByID[a]?.weights) }

    /// Makes an adapter resident: takes its share of the budget, evicting idle adapters (least recently
    /// used; never one a sequence holding KV needs) and then preempting the newest sequences not in `keep`.
    private func makeResident(_ a: Int, keep: Set<Int>) -> Bool {
        let need = blocksFor(adapter: a)
        guard need <= pool.numBlocks else { return false }
        while pool.freeCount < need {
            let needed = Set(live.filter { !$0.blockTable.isEmpty || keep.contains($0.id) }.map(\.adapterID))
            if let victim = resident.filter({ !needed.contains($0.key) }).min(by: { $0.value.lastUse < $1.value.lastUse }) {
                pool.release(victim.value.blocks)
                resident[victim.key] = nil
                stats.adapterEvictions += 1
            } else if let seq = live.last(where: { !$0.blockTable.isEmpty && !keep.contains($0.id) }) {
                preempt(seq)
            } else {
                return false
            }
        }
        resident[a] = (pool.allocate(need)!, stats.steps)
        stats.adapterLoads += 1
        return true
    }

    /// Parameters of an adapter as the kernels run it (padded rank × (in + out) per module).
    private static func loraParameters(_ w: LoRAWeights) -> Int {
        w.modules.joined().reduce(0) { $0 + ($1.map { $0.paddedRank * ($0.inFeatures + $0.outFeatures) } ?? 0) }
    }

    /// Elements of the base matrices an adapter targets: what a merge rewrites.
    private static func mergeElements(_ w: LoRAWeights) -> Int {
        w.modules.joined().reduce(0) { $0 + ($1.map { $0.outFeatures * $0.inFeatures } ?? 0) }
    }

    private func unmergeTimed() {
        let t0 = clock()
        model.unmerge()
        lastUnmergeSeconds = Double(clock() &- t0) / 1e9
    }

    /// Adapters resident now, and the KV blocks they take from the shared budget.
    public var residentAdapterBlocks: Int { resident.values.reduce(0) { $0 + $1.blocks.count } }
}
