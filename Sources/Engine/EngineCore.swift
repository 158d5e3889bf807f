import Foundation
import Kernels
import Models
import Tokenizers
@_exported import Scheduling


public struct EngineError: Error, CustomStringConvertible, Equatable, Sendable {
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
    /// Adapters merged into the base weights and unmerged from them, and the seconds those took.
    public var merges = 0
    public var mergeSeconds = 0.0
    public var unmerges = 0
    public var unmergeSeconds = 0.0
    /// MoLE compositions by name: the gates evaluated (one per token and block) and their summed entropy.
    public var gates: [String: GateTally] = [:]

    public init() {}
}

/// Gates of a MoLE composition evaluated so far: how many (token, block) gates, their entropy summed (nats), and
/// each expert's weight summed.
public struct GateTally: Sendable, Equatable {
    public var count = 0
    public var entropy = 0.0
    public var sums: [Double] = []
    public init() {}

    mutating func add(count c: Int, entropy e: Double, sums s: ArraySlice<Double>) {
        count += c
        entropy += e
        if sums.count < s.count { sums += repeatElement(0, count: s.count - sums.count) }
        for (i, v) in s.enumerated() { sums[i] += v }
    }

    /// Each expert's mean gate weight (empty before any gate).
    public var meanGates: [Double] { count > 0 ? sums.map { $0 / Double(count) } : [] }
    /// The mean entropy of a gate (0 before any).
    public var meanEntropy: Double { count > 0 ? entropy / Double(count) : 0 }
}

/// One replica's engine: `step()` is `Scheduler.schedule` → `ModelRunner` (actions, forward) → sample →
/// `Scheduler.update`, and nothing else. The scheduler owns every request, block, resident adapter and swap
/// decision; the runner owns the tensors; this type owns what neither should: token ids, samplers, and the
/// adapters' weights — held only while the scheduler knows the adapter (a request needs it or it is
/// resident). Detokenizing and stop strings happen on the consumer's side (`OutputProcessor`).
public final class EngineCore {
    public let model: LlamaModel
    public let tokenizer: Tokenizer
    public let configuration: EngineConfiguration
    public let runner: ModelRunner
    public private(set) var scheduler: Scheduler
    /// The scheduler's configuration, readable from any thread.
    public let schedulerConfig: SchedulerConfig
    /// The longest sequence (prompt + generated) one request may reach: the model's context, or the KV cache.
    public let contextLimit: Int
    /// Called with every row of logits a request samples from (tests compare them with goldens).
    public var logitsObserver: ((_ request: RequestID, _ logits: UnsafeBufferPointer<Float>) -> Void)?
    /// Called once per iteration that ran a forward pass, after sampling: its shape, the seconds its actions took
    /// (merges, unmerges, swaps), the forward pass's, and the whole iteration's (scheduling, actions, forward
    /// and sampling) on `clock`. `dlora serve --step-log` writes these.
    public var stepObserver: ((_ step: StepSummary, _ actionSeconds: Double, _ forwardSeconds: Double, _ stepSeconds: Double) -> Void)?
    public private(set) var timing = GenerationStats()
    /// The clock merge, unmerge and forward timings (and so the cost model) use, in nanoseconds; tests pass a
    /// scripted one to make mode decisions reproducible.
    public var clock: @Sendable () -> UInt64 {
        get { runner.clock }
        set { runner.clock = newValue }
    }
    public let endTokens: Set<Int>

    struct Sequence {
        var tokens: [Int]
        let promptCount: Int
        var sampler: Sampler
        let params: SamplingParams
        let adapter: Int
        /// Prompt log-probabilities (`params.promptLogprobs`): those computed so far, and the next prompt position to
        /// score (a preempted request recomputes its prompt without scoring a position twice).
        var promptLogprobs: [TokenLogprobs] = []
        var scoreFrom = 1
        /// A structured output's automaton (`params.grammar`), and how far its replay of the generated tokens got.
        var automaton: GrammarAutomaton?
        var cursor: GrammarAutomaton.Cursor?

        /// Nothing generated yet: the prompt's positions may still be scored, and the next token is the first (its
        /// event carries `promptLogprobs`). A request resumed with tokens generated elsewhere never is (they were
        /// reported there).
        var beforeFirstToken: Bool { tokens.count == promptCount }
        /// One past the last prompt position to score: the prompt's length, or 0 when there is none to score.
        var scoreTo: Int { params.promptLogprobs != nil && beforeFirstToken ? promptCount : 0 }

        /// This run's logits at every position (prompt positions still to score).
        func wantsAllLogits(_ run: ScheduledRun) -> Bool {
            let end = scoreTo
            return scoreFrom < end && run.start < end - 1 && run.start + run.tokens > scoreFrom - 1
        }
    }
    private var sequences: [RequestID: Sequence] = [:]

    /// Structured outputs' token masks (built when a request first asks for one).
    private var constrained: ConstrainedDecoding?
    private var nextRequest = 0

    /// An adapter as the scheduler keys it: one per (adapter, scale) pair, since a merge folds in one scale.
    private struct AdapterKey: Hashable {
        let id: AdapterID
        let scale: UInt32
    }
    private var keyOf: [AdapterKey: Int] = [:]
    /// Adapters unloaded (`retire`): a request naming one is served and the adapter dropped again once unused.
    private var retiredIDs: Set<AdapterID> = []
    private var adapterWeights: [Int: (weights: LoRAWeights, scale: Float, key: AdapterKey)] = [:]
    private var nextAdapterKey = 0

    public init(model: LlamaModel, tokenizer: Tokenizer, configuration: EngineConfiguration) {
        precondition(configuration.kvBlocks > 0 && configuration.blockSize > 0 && configuration.maxBatchTokens > 0
                     && configuration.maxBatchSequences > 0)
        self.model = model
        self.tokenizer = tokenizer
        self.configuration = configuration
        runner = ModelRunner(model: model, numBlocks: configuration.kvBlocks, blockSize: configuration.blockSize,
                             maxBatchTokens: configuration.maxBatchTokens, adapterSlots: configuration.adapterSlots,
                             kvDType: configuration.kvCacheDType)
        let sc = configuration.scheduler(bytesPerBlock: runner.kv.bytesPerBlock, contextLimit: model.config.maxPositionEmbeddings)
        scheduler = Scheduler(config: sc)
        schedulerConfig = sc
        contextLimit = sc.contextLimit
        var ends = Set(tokenizer.eosTokenIDs)
        for t in tokenizer.chatTemplate.endOfTurnTokens {
            if let id = tokenizer.id(for: t) { ends.insert(id) }
        }
        endTokens = ends
    }

    /// Convenience for tests and tools: the defaults with `kvBlocks`.
    public convenience init(model: LlamaModel, tokenizer: Tokenizer, kvBlocks: Int, blockSize: Int = 16, maxBatchTokens: Int = 512,
                            maxSequences: Int = 256, adapterSlots: Int = 32, policy: BatchPolicyConfig = BatchPolicyConfig(),
                            hostSwapLimitBytes: Int = 1 << 30, kvCacheDType: KVCacheDType = .f32) {
        var c = EngineConfiguration(kvBlocks: kvBlocks)
        c.kvCacheDType = kvCacheDType
        c.blockSize = blockSize
        c.maxBatchTokens = maxBatchTokens
        c.maxBatchSequences = maxSequences
        c.adapterSlots = adapterSlots
        c.policy = policy
        c.hostSwapBytes = hostSwapLimitBytes
        self.init(model: model, tokenizer: tokenizer, configuration: c)
    }

    /// Checks a request without queueing it; reads only immutable state, so any thread may call it.
    public func validate(prompt: [Int], params: SamplingParams, adapter: LoRAWeights?, adapterScale: Float) throws {
        try params.validate()
        guard adapterScale.isFinite, abs(adapterScale) <= 100 else { throw EngineError("adapter scale must be a finite number within ±100") }
        if let adapter, adapter.modules.count != model.config.numLayers {
            throw EngineError("adapter '\(adapter.name)' was loaded for a model with \(adapter.modules.count) layers")
        }
        guard !prompt.isEmpty else { throw EngineError("the prompt is empty") }
        let vocab = model.config.vocabSize
        if let bad = prompt.first(where: { $0 < 0 || $0 >= vocab }) {
            throw EngineError("token id \(bad) is outside the vocabulary (0..<\(vocab))")
        }
        if let bad = params.logitBias.keys.filter({ $0 >= vocab }).min() {
            throw SamplingError("logit_bias names token id \(bad), outside the vocabulary (0..<\(vocab))", parameter: "logit_bias")
        }
        if let bad = params.stopTokenIDs.first(where: { $0 >= vocab }) {
            throw SamplingError("stop_token_ids names token id \(bad), outside the vocabulary (0..<\(vocab))", parameter: "stop_token_ids")
        }
        if let problem = schedulerConfig.admissionProblem(promptTokens: prompt.count, adapterBytes: adapter?.byteCount ?? 0) {
            throw EngineError(adapter.map { problem.replacingOccurrences(of: "the adapter", with: "adapter '\($0.name)'") } ?? problem)
        }
    }

    /// Checks the tokens a resumed request already generated (see `submit`); any thread may call it.
    public func validate(prompt: [Int], generated: [Int], params: SamplingParams) throws {
        guard !generated.isEmpty else { return }
        let vocab = model.config.vocabSize
        if let bad = generated.first(where: { $0 < 0 || $0 >= vocab }) {
            throw EngineError("generated token id \(bad) is outside the vocabulary (0..<\(vocab))")
        }
        guard prompt.count + generated.count < contextLimit else {
            throw EngineError("the prompt and the tokens generated so far (\(prompt.count + generated.count)) fill the context (\(contextLimit))")
        }
        if let m = params.maxTokens, generated.count >= m {
            throw EngineError("the request already generated its max_tokens (\(m))")
        }
    }

    // MARK: Requests

    public var hasWork: Bool { scheduler.hasWork }
    public var liveCount: Int { scheduler.liveCount }
    public var runningCount: Int { scheduler.runningCount }

    /// Queues a request and returns its id (`id` when the caller assigned one, e.g. the engine loop at submit).
    /// `generated`: tokens this request already produced elsewhere (a request resumed after a migration or a
    /// replica's death): they are appended to the prompt, count against `maxTokens`, and sampling continues at
    /// the next position with the same seed, so the continuation is the one the request would have had.
    /// `kv`: the K/V of the first positions of prompt + generated, computed elsewhere; adopted when it fits
    /// (else recomputed).
    @discardableResult
    public func submit(prompt: [Int], params: SamplingParams, adapter: LoRAWeights? = nil, adapterScale: Float = 1,
                       id: RequestID? = nil, generated: [Int] = [], kv: KVBlocks? = nil) throws -> RequestID {
        try validate(prompt: prompt, params: params, adapter: adapter, adapterScale: adapterScale)
        try validate(prompt: prompt, generated: generated, params: params)
        let remaining = params.maxTokens.map { $0 - generated.count }
        let rid = try enqueue(tokens: prompt + generated, promptCount: prompt.count, params: params, remaining: remaining,
                              sampler: Sampler(params: params), adapter: adapter, adapterScale: adapterScale, id: id)
        if let kv { _ = adoptKV(rid, kv) }
        return rid
    }

    /// `remaining`: tokens it may still generate (nil: up to its length limit).
    private func enqueue(tokens: [Int], promptCount: Int, params: SamplingParams, remaining: Int?, sampler: Sampler, adapter: LoRAWeights?,
                         adapterScale: Float, id: RequestID?) throws -> RequestID {
        let rid = id ?? RequestID(nextRequest)
        nextRequest = max(nextRequest, rid.rawValue + 1)
        guard sequences[rid] == nil else { throw EngineError("request \(rid) is already live") }
        let key = adapter.map { adapterKey($0, scale: adapterScale) } ?? Request.base
        do {
            try scheduler.add(rid, adapter: key, promptCount: promptCount, tokenCount: tokens.count,
                              maxNewTokens: remaining)
        } catch {
            performPending()
            throw EngineError("\(error)")
        }
        // Submitted after its adapter's unload: served, and the adapter dropped again once unused.
        if let id = adapter?.id, retiredIDs.contains(id) { scheduler.retire(adapter: key) }
        sequences[rid] = Sequence(tokens: tokens, promptCount: promptCount, sampler: sampler, params: params, adapter: key)
        return rid
    }

    /// The scheduler's key for an adapter at a scale, registering it on first use. Weights with an id the engine
    /// already holds are the same adapter (the registry keeps an id across host-cache reloads and gives new
    /// files a new one): the copy held here serves, so a reload never duplicates it.
    private func adapterKey(_ w: LoRAWeights, scale: Float) -> Int {
        let k = AdapterKey(id: w.id, scale: scale.bitPattern)
        if let known = keyOf[k] { return known }
        let key = nextAdapterKey
        nextAdapterKey += 1
        keyOf[k] = key
        adapterWeights[key] = (w, scale, k)
        scheduler.addAdapter(AdapterProfile(key: key, bytes: w.byteCount, loraParameters: Self.loraParameters(w),
                                            mergeElements: Self.mergeElements(w), mergeMultiplyAdds: Self.mergeMultiplyAdds(w),
                                            mergeable: w.mergeable))
        return key
    }

    /// Ends a live request (cancelled, or stopped by a stop string on the consumer's side).
    public func finish(_ id: RequestID, reason: FinishReason = .cancelled) {
        scheduler.finish(id, reason: reason)
        performPending()
    }

    public func cancel(_ id: RequestID) { finish(id, reason: .cancelled) }

    /// The adapter is no longer served (unloaded): its weights are dropped once no request needs them. A request
    /// handed its weights before the unload and submitted after it still runs (registries never give an unloaded
    /// adapter's id out again), and the weights go when it finishes.
    public func retire(adapter id: AdapterID) {
        retiredIDs.insert(id)
        for (k, key) in keyOf where k.id == id { scheduler.retire(adapter: key) }
        performPending()
    }

    /// Adapters the engine holds weights for (each also known to the scheduler).
    public var heldAdapterCount: Int { adapterWeights.count }

    // MARK: One iteration

    /// Runs one iteration; returns an event for every request that sampled a token or failed.
    public func step() -> [EngineEvent] {
        guard scheduler.hasWork else {
            performPending()
            return []
        }
        let observed = stepObserver != nil  // then the iteration and its actions are timed too
        let t0 = observed ? clock() : 0
        let output = scheduler.schedule()
        let tActions = observed ? clock() : 0
        let times = runner.perform(output.actions, weights: weights(of:))
        let actionSeconds = observed ? Double(clock() &- tActions) / 1e9 : 0
        count(times)
        handleDrops(output.actions)
        guard !output.runs.isEmpty else { return [] }
        let seconds = runner.forward(output, tokens: { run in self.sequences[run.request]!.tokens[run.start..<(run.start + run.tokens)] },
                                     weights: weights(of:), allLogits: { run in self.sequences[run.request]!.wantsAllLogits(run) })
        let (gateEntropy, gateCount, gateSums) = runner.gateStatistics
        for (slot, a) in output.loraSlots.enumerated() where slot < gateCount.count && gateCount[slot] > 0 {
            guard let w = adapterWeights[a]?.weights, let n = w.gating?.expertCount else { continue }
            timing.gates[w.name, default: GateTally()].add(count: gateCount[slot], entropy: gateEntropy[slot],
                                                           sums: gateSums[(slot * MoLEGating.maxExperts)...].prefix(n))
        }
        var sampled: [SampledToken] = []
        var events: [EngineEvent] = []
        var row = 0
        var prefill = 0
        for run in output.runs {
            let promptLeft = sequences[run.request]!.promptCount - run.start
            if promptLeft > 0 { prefill += min(run.tokens, promptLeft) }
            if sequences[run.request]!.wantsAllLogits(run) {
                // Every position's logits: score the prompt tokens they predict, then the last row samples (if it does).
                scorePrompt(run, firstRow: row)
                row += run.tokens
                guard run.samples else { continue }
                row -= 1
            }
            guard run.samples else { continue }
            let logits = runner.logitsRow(row)
            row += 1
            logitsObserver?(run.request, logits)
            // Non-finite logits (an adapter or model that overflowed) end this one request with an error.
            // Counter-based sampling: the draw depends on (seed, position of the new token) only.
            let position = sequences[run.request]!.tokens.count
            // Penalties count the tokens generated so far. The slice shares the array and ends with this scope, so the
            // append below does not copy it.
            var sampledToken: Int?
            /// A constrained output is complete (its end-of-sequence ends it even with ignore_eos or before min_tokens).
            var complete = false
            do {
                let all = sequences[run.request]!.tokens, promptCount = sequences[run.request]!.promptCount
                let params = sequences[run.request]!.params
                var mask: [UInt8]?
                if let spec = params.grammar {
                    if constrained == nil { constrained = ConstrainedDecoding(tokenizer: tokenizer, vocabSize: model.config.vocabSize) }
                    // The state is replayed from the generated tokens (nothing to carry when a request moves; each step
                    // replays only the tokens since the last). A spec the server compiled already; a failure here
                    // would be a bug, and ends only this request.
                    if sequences[run.request]!.automaton == nil { sequences[run.request]!.automaton = try? constrained!.automaton(spec) }
                    if let automaton = sequences[run.request]!.automaton,
                       let state = automaton.state(after: all[promptCount...], table: constrained!.table, cursor: &sequences[run.request]!.cursor) {
                        complete = automaton.isComplete(state)
                        mask = automaton.mask(state, table: constrained!.table, endTokens: endTokens)
                    } else {
                        mask = [UInt8](repeating: 0, count: model.config.vocabSize)
                    }
                }
                // Before min_tokens, nothing that would end the sequence (but a complete constrained output ends it).
                let suppress = all.count - promptCount < params.minTokens && !complete
                    ? params.stopTokenIDs + (params.ignoreEOS ? [] : Array(endTokens)) : []
                if let mask {
                    sampledToken = mask.withUnsafeBufferPointer { mask in
                        sequences[run.request]!.sampler.sample(logits, position: position, generated: all[promptCount...],
                                                               prompt: all[..<promptCount], suppress: suppress, allowed: mask)
                    }
                } else {
                    sampledToken = sequences[run.request]!.sampler.sample(logits, position: position, generated: all[promptCount...],
                                                                          prompt: all[..<promptCount], suppress: suppress)
                }
            }
            guard let token = sampledToken else {
                sampled.append(SampledToken(request: run.request, failed: true))
                events.append(EngineEvent(requestID: run.request, token: nil, finish: .error, message: nil))
                continue
            }
            let first = sequences[run.request]!.beforeFirstToken
            sequences[run.request]!.tokens.append(token)
            let s = sequences[run.request]!
            sampled.append(SampledToken(request: run.request,
                                        endsSequence: (endTokens.contains(token) && (!s.params.ignoreEOS || complete))
                                            || s.params.stopTokenIDs.contains(token)))
            let logprobs = s.params.logprobs.map { TokenLogprobs(logits: logits, token: token, top: $0) }
            var event = EngineEvent(requestID: run.request, token: token, finish: nil, message: nil, logprobs: logprobs)
            if first && s.params.promptLogprobs != nil {
                event.promptLogprobs = s.promptLogprobs
                sequences[run.request]!.promptLogprobs = []
            }
            events.append(event)
        }
        let outputs = scheduler.update(output, sampled: sampled,
                                       report: ExecutionReport(forwardSeconds: seconds, mergeSeconds: times.mergeSeconds,
                                                               unmergeSeconds: times.unmergeSeconds))
        var finishOf: [RequestID: FinishReason] = [:]
        for o in outputs { if let f = o.finish { finishOf[o.request] = f } }
        events = events.map { e in
            guard let f = finishOf[e.requestID] else { return e }
            var finished = EngineEvent(requestID: e.requestID, token: f == .error ? nil : e.token, finish: f,
                                       message: f == .error ? "the model produced non-finite logits" : nil,
                                       logprobs: f == .error ? nil : e.logprobs)
            finished.promptLogprobs = f == .error ? nil : e.promptLogprobs
            return finished
        }
        if prefill > 0 {
            timing.promptTokens += prefill
            timing.promptSeconds += seconds
        } else {
            timing.decodeTokens += output.tokens
            timing.decodeSeconds += seconds
        }
        if let stepObserver {
            stepObserver(StepSummary(output), actionSeconds, seconds, Double(clock() &- t0) / 1e9)
        }
        performPending()
        return events
    }

    /// Scores the prompt positions a run's logits predict (row j: position start + j, which predicts the token at
    /// start + j + 1), each once.
    private func scorePrompt(_ run: ScheduledRun, firstRow: Int) {
        guard var s = sequences[run.request], let top = s.params.promptLogprobs else { return }
        sequences[run.request] = nil  // edited outside the table, so the records append without copying
        for j in 0..<run.tokens {
            let target = run.start + j + 1
            guard target >= s.scoreFrom && target < s.scoreTo else { continue }
            let logits = runner.logitsRow(firstRow + j)
            s.promptLogprobs.append(TokenLogprobs(logits: logits, token: s.tokens[target], top: top))
            s.scoreFrom = target + 1
        }
        sequences[run.request] = s
    }

    /// Counters: the scheduler's, with this engine's timings.
    public var stats: GenerationStats {
        let s = scheduler.stats
        var g = timing
        g.generatedTokens = s.generatedTokens
        g.steps = s.steps
        g.preemptions = s.preemptions
        g.swapOuts = s.swapOuts
        g.swapIns = s.swapIns
        g.adapterEvictions = s.adapterEvictions
        g.adapterLoads = s.adapterLoads
        g.mergedSteps = s.mergedSteps
        g.unmergedSteps = s.unmergedSteps
        g.modeSwitches = s.modeSwitches
        return g
    }

    private func weights(of key: Int) -> (LoRAWeights, Float)? {
        adapterWeights[key].map { ($0.weights, $0.scale) }
    }

    /// Carries out what the scheduler decided between iterations (frees, retirements, an idle unmerge).
    private func performPending() {
        let actions = scheduler.takeActions()
        guard !actions.isEmpty else { return }
        count(runner.perform(actions, weights: weights(of:)))
        handleDrops(actions)
    }

    private func count(_ times: ModelRunner.ActionTimes) {
        timing.merges += times.merges
        timing.mergeSeconds += times.mergeTotalSeconds
        timing.unmerges += times.unmerges
        timing.unmergeSeconds += times.unmergeTotalSeconds
    }

    /// Whether adapter weights were dropped since the last `takeReleasedAdapterMemory()`: the engine loop then returns
    /// the freed heap to the system (`returnFreeHeap`).
    private var releasedAdapterMemory = false

    /// True once after adapter weights were dropped.
    public func takeReleasedAdapterMemory() -> Bool {
        defer { releasedAdapterMemory = false }
        return releasedAdapterMemory
    }

    private func handleDrops(_ actions: [SchedulerAction]) {
        for a in actions {
            switch a {
            case .dropAdapter(let key):
                if let entry = adapterWeights.removeValue(forKey: key), keyOf[entry.key] == key { keyOf[entry.key] = nil }
                releasedAdapterMemory = true
            case .free(let id, _):
                sequences[id] = nil
            default:
                continue
            }
        }
    }

    // MARK: Synchronous use (CLI, benchmarks, tests)

    /// Runs until every live request has finished, detokenizing and applying stop strings as a server's
    /// consumer would (a stop string finishes the request in the engine). Returns the text events in order;
    /// `onEvent` sees each as it happens.
    @discardableResult
    public func runToCompletion(onEvent: ((GenerationEvent) -> Void)? = nil) -> [GenerationEvent] {
        var processors: [RequestID: OutputProcessor] = [:]
        var out: [GenerationEvent] = []
        while hasWork {
            for (id, s) in sequences where processors[id] == nil {
                var p = OutputProcessor(tokenizer: tokenizer, stop: s.params.stop, stopExemptPrefix: s.params.stopExemptPrefix)
                p.prime(s.tokens[s.promptCount...])
                processors[id] = p
            }
            for e in step() {
                guard processors[e.requestID]?.done == false else { continue }
                let g = processors[e.requestID]!.process(e)
                onEvent?(g)
                out.append(g)
                if g.finish != nil && e.finish == nil { finish(e.requestID, reason: .stop) }
            }
        }
        return out
    }

    /// KV blocks not held by any request or resident adapter, and all of them.
    public var freeKVBlocks: Int { scheduler.pool.freeCount }
    public var totalKVBlocks: Int { scheduler.pool.numBlocks }
    /// Blocks of the budget held by resident adapters.
    public var residentAdapterBlocks: Int { scheduler.residentAdapterBlocks }
    /// Host memory holding swapped-out KV (the scheduler's account; the runner holds the copies).
    public var hostSwapBytes: Int { scheduler.hostSwapBytes }

    // MARK: Helpers

    /// Parameters of an adapter as the kernels run it (padded rank × (in + out) per module).
    static func loraParameters(_ w: LoRAWeights) -> Int {
        w.modules.joined().reduce(0) { $0 + ($1.map { $0.paddedRank * ($0.inFeatures + $0.outFeatures) } ?? 0) }
    }

    /// Elements of the base matrices an adapter targets: what a merge rewrites.
    static func mergeElements(_ w: LoRAWeights) -> Int {
        w.modules.joined().reduce(0) { $0 + ($1.map { $0.outFeatures * $0.inFeatures } ?? 0) }
    }

    /// Multiply-adds of a merge's update (elements × padded rank per module).
    static func mergeMultiplyAdds(_ w: LoRAWeights) -> Int {
        w.modules.joined().reduce(0) { $0 + ($1.map { $0.outFeatures * $0.inFeatures * $0.paddedRank } ?? 0) }
    }

    func sequence(_ id: RequestID) -> Sequence? { sequences[id] }

    /// The name and scale of the adapter the scheduler knows as `key` (nil: none held under it).
    public func adapterName(_ key: Int) -> (String, Float)? { adapterWeights[key].map { ($0.weights.name, $0.scale) } }

    func enqueueImported(tokens: [Int], promptCount: Int, params: SamplingParams, remaining: Int, adapter: LoRAWeights?,
                         adapterScale: Float) throws -> RequestID {
        try enqueue(tokens: tokens, promptCount: promptCount, params: params, remaining: remaining, sampler: Sampler(params: params),
                    adapter: adapter, adapterScale: adapterScale, id: nil)
    }

    /// Adopts K/V computed elsewhere for a request just queued: at most the positions before its last token
    /// (the last token's K/V is computed with the step that samples the next one), and only blocks that start at
    /// block 0 and match this engine's geometry. Returns whether it was adopted.
    @discardableResult
    func adoptKV(_ id: RequestID, _ kv: KVBlocks) -> Bool {
        guard let s = sequences[id], kv.firstBlock == 0, kv.floatsPerBlock == runner.floatsPerBlock, kv.blockSize == runner.kv.blockSize
        else { return false }
        let computed = min(kv.computed, s.tokens.count - 1, kv.blockCount * kv.blockSize)
        guard computed > 0 else { return false }
        guard let blocks = scheduler.adoptKV(id, computed: computed) else { return false }
        runner.importKV(flat: kv.data, into: Array(blocks.prefix((computed + kv.blockSize - 1) / kv.blockSize)))
        return true
    }

    /// K/V of a live request's blocks `first ..<` (only the full blocks when `fullOnly`: those no later step
    /// will write), from the paged cache or its host copy; nil when it is not live.
    public func kvBlocks(of id: RequestID, from first: Int, fullOnly: Bool) -> KVBlocks? {
        guard let r = scheduler.request(id) else { return nil }
        let bs = runner.kv.blockSize
        let end = fullOnly ? r.computed / bs : (r.computed + bs - 1) / bs
        let start = max(0, first)
        let data = end > start ? runner.exportKV(r, blocks: start..<end) : []
        return KVBlocks(firstBlock: start, blockSize: bs, floatsPerBlock: runner.floatsPerBlock, computed: r.computed,
                        data: data)
    }

    /// Tokens (prompt + generated) and prompt length of a live request.
    public func tokens(of id: RequestID) -> (tokens: [Int], promptCount: Int)? {
        sequences[id].map { ($0.tokens, $0.promptCount) }
    }
}

