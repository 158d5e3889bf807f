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
}

/// Continuous batching over one model: every step runs the decode tokens of all running sequences plus
/// prompt chunks of waiting ones (up to `maxBatchTokens`) in one forward pass, samples, and streams text.
/// KV memory is a paged cache of `kvBlocks` blocks; when it runs out, the newest running sequence is
/// preempted (its blocks freed, to be recomputed later), so older requests always make progress.
public final class Generator {
    public let model: LlamaModel
    public let tokenizer: Tokenizer
    public let maxBatchTokens: Int
    public let maxSequences: Int
    public private(set) var stats = GenerationStats()
    /// Called with every row of logits a request samples from (tests compare them with goldens).
    public var logitsObserver: ((_ requestID: Int, _ logits: UnsafeBufferPointer<Float>) -> Void)?

    private let kv: PagedKVStorage
    private var pool: BlockPool
    private let workspace: ForwardWorkspace
    private let scratch = ScratchArena()
    private var batch = ForwardBatch()
    private var logits: Buffer
    private var logitsCapacity: Int
    private let endTokens: Set<Int>

    private final class Sequence {
        let id: Int
        var tokens: [Int]
        let promptCount: Int
        var computed = 0
        var blockTable: [Int32] = []
        var sampler: Sampler
        var detokenizer: StreamingDetokenizer
        var stopMatcher: StopMatcher
        let params: SamplingParams
        let maxLength: Int
        let adapter: LoRAWeights?
        let adapterScale: Float
        /// The LoRA slot while running (-1: base model only, or not admitted yet).
        var slot: Int32 = -1

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
    }

    /// Adapters resident for unmerged execution, and how many running sequences use each slot.
    public let lora: LoRASlots
    private var slotUsers: [Int]
    private var waiting: [Sequence] = []
    private var running: [Sequence] = []
    private var nextID = 0

    /// - Parameters:
    ///   - kvBlocks: blocks of `blockSize` tokens in the KV cache (all sequences share them).
    ///   - adapterSlots: how many distinct adapters can run in one batch (unmerged).
    public init(model: LlamaModel, tokenizer: Tokenizer, kvBlocks: Int, blockSize: Int = 16,
                maxBatchTokens: Int = 512, maxSequences: Int = 256, adapterSlots: Int = 32) {
        precondition(kvBlocks > 0 && blockSize > 0 && maxBatchTokens > 0 && maxSequences > 0)
        self.model = model
        self.tokenizer = tokenizer
        self.maxBatchTokens = maxBatchTokens
        self.maxSequences = maxSequences
        let c = model.config
        kv = PagedKVStorage(numLayers: c.numLayers, numBlocks: kvBlocks, blockSize: blockSize,
                            numKVHeads: c.numKVHeads, headDim: c.headDim)
        pool = BlockPool(numBlocks: kvBlocks, blockSize: blockSize)
        workspace = ForwardWorkspace(config: c, capacity: min(maxBatchTokens, 64))
        lora = LoRASlots(capacity: max(1, adapterSlots))
        slotUsers = Array(repeating: 0, count: max(1, adapterSlots))
        logitsCapacity = 8
        logits = Buffer(floats: logitsCapacity * c.vocabSize)
        var ends = Set(tokenizer.eosTokenIDs)
        for t in tokenizer.chatTemplate.endOfTurnTokens {
            if let id = tokenizer.id(for: t) { ends.insert(id) }
        }
        endTokens = ends
    }

    /// KV-cache blocks needed to hold `tokens` tokens.
    public static func kvBlocks(tokens: Int, blockSize: Int = 16) -> Int { (tokens + blockSize - 1) / blockSize }

    public var hasWork: Bool { !waiting.isEmpty || !running.isEmpty }
    public var kvBlockSize: Int { kv.blockSize }

    /// Queues a request. Throws when the prompt is empty, holds an unknown token id, or does not fit the
    /// context or the KV cache.
    /// `adapter` runs the request through a LoRA adapter (unmerged, batched with other adapters' requests)
    /// with its scaling multiplied by `adapterScale`.
    @discardableResult
    public func submit(prompt: [Int], params: SamplingParams, adapter: LoRAWeights? = nil, adapterScale: Float = 1) throws -> Int {
        try params.validate()
        guard adapterScale.isFinite, abs(adapterScale) <= 100 else { throw GeneratorError("adapter scale must be a finite number within ±100") }
        if let adapter, adapter.modules.count != model.config.numLayers {
            throw GeneratorError("adapter '\(adapter.name)' was loaded for a model with \(adapter.modules.count) layers")
        }
        let c = model.config
        guard !prompt.isEmpty else { throw GeneratorError("the prompt is empty") }
        if let bad = prompt.first(where: { $0 < 0 || $0 >= c.vocabSize }) {
            throw GeneratorError("token id \(bad) is outside the vocabulary (0..<\(c.vocabSize))")
        }
        let context = min(c.maxPositionEmbeddings, pool.numBlocks * pool.blockSize)
        guard prompt.count < context else {
            throw GeneratorError("the prompt has \(prompt.count) tokens; the context holds \(context)")
        }
        let maxLength = min(context, prompt.count + (params.maxTokens ?? context))
        let id = nextID
        nextID += 1
        waiting.append(Sequence(id: id, prompt: prompt, params: params, tokenizer: tokenizer, maxLength: maxLength,
                                adapter: adapter, adapterScale: adapterScale))
        return id
    }

    /// Drops a request, queued or running, and frees its KV blocks.
    public func cancel(_ id: Int) {
        if let i = running.firstIndex(where: { $0.id == id }) {
            pool.release(running[i].blockTable)
            releaseSlot(running[i])
            running.remove(at: i)
        }
        waiting.removeAll { $0.id == id }
    }

    /// Runs one iteration; returns the events of every request that sampled a token or finished.
    public func step() -> [GenerationEvent] {
        var scheduled: [(Sequence, Int)] = []
        var budget = maxBatchTokens

        // Decodes first (one token each), oldest first; preempt the newest when blocks run out.
        var i = 0
        while i < running.count {
            let s = running[i]
            let n = min(s.tokens.count - s.computed, budget)
            if n == 0 { i += 1; continue }
            if pool.ensureCapacity(&s.blockTable, tokens: s.computed + n) {
                scheduled.append((s, n))
                budget -= n
                i += 1
            } else if let victim = running.last, victim !== s {
                preempt(victim)
            } else {
                preempt(s)
            }
        }
        // Then prompts, first come first served, in chunks.
        while budget > 0, let s = waiting.first, running.count < maxSequences {
            let n = min(s.tokens.count - s.computed, budget)
            guard acquireSlot(s) else { break }
            guard pool.ensureCapacity(&s.blockTable, tokens: s.computed + n) else {
                releaseSlot(s)
                break
            }
            waiting.removeFirst()
            running.append(s)
            scheduled.append((s, n))
            budget -= n
        }
        guard !scheduled.isEmpty else { return [] }

        // Tokens of one adapter side by side (as SGMV groups them): one LoRA segment per adapter.
        scheduled.sort { $0.0.slot < $1.0.slot }
        batch.reset()
        var prefillTokens = 0
        for (s, n) in scheduled {
            let completes = s.computed + n == s.tokens.count
            if s.computed < s.promptCount { prefillTokens += min(n, s.promptCount - s.computed) }
            batch.append(sequence: s.tokens[s.computed..<(s.computed + n)], start: s.computed, blockTable: s.blockTable,
                         blockSize: kv.blockSize, logits: completes ? .last : .none, adapterSlot: s.slot, adapterScale: s.adapterScale)
        }
        let rows = batch.logitRows.count
        if rows > logitsCapacity {
            logitsCapacity = max(rows, logitsCapacity * 2)
            logits = Buffer(floats: logitsCapacity * model.config.vocabSize)
        }
        let start = DispatchTime.now().uptimeNanoseconds
        model.forward(batch, kv: kv, workspace: workspace, scratch: scratch, logits: logits.floats, lora: lora)
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        stats.steps += 1
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
            let token = s.sampler.sample(rowLogits)
            s.tokens.append(token)
            stats.generatedTokens += 1
            events.append(emit(s, token: token))
        }
        running.removeAll { s in
            guard let last = events.last(where: { $0.requestID == s.id }), last.finish != nil else { return false }
            pool.release(s.blockTable)
            releaseSlot(s)
            return true
        }
        return events
    }

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

    /// Frees a running sequence's KV blocks and queues it again at the front; its tokens so far (prompt and
    /// generated) are recomputed when it is rescheduled.
    private func preempt(_ s: Sequence) {
        pool.release(s.blockTable)
        releaseSlot(s)
        s.blockTable.removeAll()
        s.computed = 0
        running.removeAll { $0 === s }
        waiting.insert(s, at: 0)
        stats.preemptions += 1
    }

    /// Gives a sequence's adapter a LoRA slot: the one already holding it, else a slot no running sequence
    /// uses. False when every slot is busy with other adapters (the sequence waits).
    private func acquireSlot(_ s: Sequence) -> Bool {
        guard let adapter = s.adapter else { return true }
        if s.slot >= 0 { return true }
        let slot = lora.slots.firstIndex { $0 === adapter }
            ?? lora.slots.indices.first { lora[$0] == nil }
            ?? slotUsers.indices.first { slotUsers[$0] == 0 }
        guard let slot else { return false }
        lora[slot] = adapter
        slotUsers[slot] += 1
        s.slot = Int32(slot)
        return true
    }

    private func releaseSlot(_ s: Sequence) {
        guard s.slot >= 0 else { return }
        slotUsers[Int(s.slot)] -= 1
        s.slot = -1
    }
}
