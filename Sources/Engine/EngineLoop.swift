import Foundation
import Kernels
import Models
import Tokenizers
import Scheduling

/// The replica's step loop on one dedicated thread — the single owner of the `EngineCore` (and so of the
/// scheduler, model, KV cache and adapters) — with `submit`, `cancel` and `retire` callable from any task.
/// Request ids are assigned at submit. Each request's token events reach its `RequestStream`, which turns
/// them into text on the consumer's side (detokenizing and stop strings never run on the engine thread);
/// dropping the stream (or cancelling the consuming task) cancels the request and frees its KV blocks. Call
/// `shutdown()` when done: the loop thread keeps the engine alive.
public final class EngineLoop: @unchecked Sendable {
    private let engine: EngineCore
    private let tokenizer: Tokenizer
    private let lock = NSCondition()
    private struct Pending {
        let id: RequestID
        let prompt: [Int]
        let params: SamplingParams
        let adapter: LoRAWeights?
        let scale: Float
        let generated: [Int]
        let kv: KVBlocks?
        let continuation: AsyncStream<EngineEvent>.Continuation
    }
    private var pending: [Pending] = []
    private var cancels: [(RequestID, FinishReason)] = []
    private var retires: [AdapterID] = []
    /// Work to run on the engine between steps; each returns the requests it ended (their streams finish).
    private var operations: [(EngineCore) -> [RequestID]] = []
    private var streams: [RequestID: AsyncStream<EngineEvent>.Continuation] = [:]
    private var nextID = 0
    private var stopping = false
    /// The loop thread has returned.
    private var exited = false
    private var heapReturns = 0
    private var cancelEverything = false
    private let stepLock = NSLock()
    private var thread: Thread?
    /// Steps run so far (for tests and metrics).
    public private(set) var steps = 0
    /// The engine's state after the last step, readable without waiting for a step to end.
    private let snapshotLock = NSLock()
    private var lastSnapshot: EngineSnapshot

    /// Positions per KV block, and floats per block in a K/V frame (every layer's K and V rows).
    public let blockSize: Int
    public let floatsPerBlock: Int

    public init(engine: EngineCore) {
        self.engine = engine
        tokenizer = engine.tokenizer
        blockSize = engine.runner.kv.blockSize
        floatsPerBlock = engine.runner.floatsPerBlock
        lastSnapshot = EngineSnapshot(engine, pending: 0)
        let t = Thread { [weak self] in self?.run() }
        t.name = "dlora.engine"
        t.qualityOfService = .userInitiated
        thread = t
        t.start()
    }

    /// The longest sequence one request may reach.
    public var contextLimit: Int { engine.contextLimit }
    /// The longest a sequence may grow beside `adapter` (the context, or less where the adapter's resident bytes leave
    /// the budget fewer blocks); any thread may call it.
    public func lengthLimit(adapter: LoRAWeights?) -> Int {
        engine.schedulerConfig.lengthLimit(adapterBytes: adapter?.byteCount ?? 0)
    }

    /// Validates and queues a request; its events arrive on the returned stream, which ends after the event
    /// that carries a finish reason (or when the request is cancelled).
    /// `generated` and `kv` resume a request that ran elsewhere (see `EngineCore.submit`); its stream then
    /// carries only what follows `generated`, and its text continues where that text left off.
    public func submit(prompt: [Int], params: SamplingParams, adapter: LoRAWeights? = nil,
                       adapterScale: Float = 1, generated: [Int] = [], kv: KVBlocks? = nil) throws -> (id: RequestID, events: RequestStream) {
        try engine.validate(prompt: prompt, params: params, adapter: adapter, adapterScale: adapterScale)
        try engine.validate(prompt: prompt, generated: generated, params: params)
        let (stream, continuation) = AsyncStream<EngineEvent>.makeStream(bufferingPolicy: .unbounded)
        lock.lock()
        let id = RequestID(nextID)
        nextID += 1
        pending.append(Pending(id: id, prompt: prompt, params: params, adapter: adapter, scale: adapterScale, generated: generated, kv: kv,
                               continuation: continuation))
        lock.signal()
        lock.unlock()
        continuation.onTermination = { [weak self] reason in
            if case .cancelled = reason { self?.cancel(id) }
        }
        var processor = OutputProcessor(tokenizer: tokenizer, stop: params.stop, stopExemptPrefix: params.stopExemptPrefix)
        processor.prime(generated)
        return (id, RequestStream(id: id, raw: stream, processor: processor, onStop: { [weak self] in self?.finish(id, reason: .stop) }))
    }

    /// Cancels a request (queued or running); its stream finishes.
    public func cancel(_ id: RequestID) { finish(id, reason: .cancelled) }

    /// Ends a request with `reason` (a stop string seen by its consumer, or a cancellation).
    public func finish(_ id: RequestID, reason: FinishReason) {
        lock.lock()
        cancels.append((id, reason))
        lock.signal()
        lock.unlock()
    }

    /// The adapter was unloaded: the engine drops its weights once no request needs them.
    public func retire(adapter: AdapterID) {
        lock.lock()
        retires.append(adapter)
        lock.signal()
        lock.unlock()
    }

    /// Cancels every queued and running request (their streams finish).
    public func cancelAll() {
        lock.lock()
        cancelEverything = true
        lock.signal()
        lock.unlock()
    }

    /// How the message of a request the engine could not start begins (its `.error` event; other errors are the
    /// model's non-finite logits).
    public static let notStarted = "the request could not be started: "

    /// Runs `body` on the engine thread between steps and returns its result (waits at most one step).
    public func perform<T: Sendable>(_ body: @escaping @Sendable (EngineCore) -> T) async -> T {
        await withCheckedContinuation { (c: CheckedContinuation<T, Never>) in
            enqueue { engine in
                c.resume(returning: body(engine))
                return []
            }
        }
    }

    /// The K/V of a live request's blocks from `first` on — only full blocks, which no later step writes — read
    /// between steps while it keeps running (a stage of a live migration); nil when it is not live.
    public func kvBlocks(of id: RequestID, from first: Int) async -> KVBlocks? {
        await perform { $0.kvBlocks(of: id, from: first, fullOnly: true) }
    }

    /// Stops a live request for migration, atomically between steps: returns its tokens (prompt + generated),
    /// prompt length, and — when `kvFrom` is given — the K/V of its blocks from `kvFrom` to the last computed
    /// position; its stream then ends without a finish event. nil when it is not live (finished meanwhile).
    public func stopForMigration(_ id: RequestID, kvFrom: Int?) async -> (tokens: [Int], promptCount: Int, kv: KVBlocks?)? {
        await withCheckedContinuation { (c: CheckedContinuation<(tokens: [Int], promptCount: Int, kv: KVBlocks?)?, Never>) in
            enqueue { engine in
                guard let t = engine.tokens(of: id) else {
                    c.resume(returning: nil)
                    return []
                }
                let kv = kvFrom.flatMap { engine.kvBlocks(of: id, from: $0, fullOnly: false) }
                engine.finish(id, reason: .cancelled)
                c.resume(returning: (t.tokens, t.promptCount, kv))
                return [id]
            }
        }
    }

    private func enqueue(_ op: @escaping (EngineCore) -> [RequestID]) {
        lock.lock()
        if exited {
            lock.unlock()
            stepLock.lock()
            _ = op(engine)
            stepLock.unlock()
            return
        }
        operations.append(op)
        lock.signal()
        lock.unlock()
    }

    /// Counters and occupancy as of the last step (for metrics); never waits for the step in progress.
    public var snapshot: EngineSnapshot {
        snapshotLock.lock()
        defer { snapshotLock.unlock() }
        return lastSnapshot
    }

    /// Stops the loop after the current step; unfinished streams finish.
    public func shutdown() {
        lock.lock()
        stopping = true
        lock.signal()
        lock.unlock()
    }

    /// Runs `body` on the engine between steps (e.g. to read stats) — blocking the caller until then.
    public func inspect<T>(_ body: (EngineCore) -> T) -> T {
        stepLock.lock()
        defer { stepLock.unlock() }
        return body(engine)
    }

    // Locking: `lock` guards only the hand-over queues (pending, cancels, retires, flags) and is held for
    // moments; `stepLock` is held by the loop while it touches the engine (and by `inspect`). Streams are
    // yielded to and finished with neither held: resuming a consumer task takes that task's own runtime lock,
    // and a consumer being cancelled calls `cancel` (and so `lock`) while holding it — yielding under `lock`
    // would deadlock against that.
    private func run() {
        // When adapter weights were dropped (unloaded adapters) and their heap not yet returned: returned once the loop
        // goes idle, or after `heapReturnDelay` of steady work.
        var freedAt: UInt64?
        while true {
            lock.lock()
            while pending.isEmpty && cancels.isEmpty && retires.isEmpty && operations.isEmpty && !cancelEverything && !engine.hasWork
                    && !stopping {
                if freedAt != nil {
                    lock.unlock()
                    returnFreeHeap()
                    freedAt = nil
                    lock.lock()
                    continue
                }
                lock.wait()
            }
            let newRequests = pending, newCancels = cancels, newRetires = retires, stop = stopping, all = cancelEverything
            let newOperations = operations
            operations.removeAll()
            pending.removeAll()
            cancels.removeAll()
            retires.removeAll()
            cancelEverything = false
            lock.unlock()

            var yields: [(AsyncStream<EngineEvent>.Continuation, EngineEvent)] = []
            var finished: [AsyncStream<EngineEvent>.Continuation] = []
            stepLock.lock()
            if stop {
                finished = Array(streams.values) + newRequests.map(\.continuation)
                for id in streams.keys { engine.cancel(id) }
                streams.removeAll()
                publishSnapshot(pending: 0)
                stepLock.unlock()
                finished.forEach { $0.finish() }
                lock.lock()
                let late = pending.map(\.continuation)
                pending.removeAll()
                let lateOperations = operations
                operations.removeAll()
                exited = true
                lock.unlock()
                late.forEach { $0.finish() }
                // Nothing runs on the engine any more: operations run here, so no caller waits forever.
                stepLock.lock()
                for op in newOperations + lateOperations { _ = op(engine) }
                stepLock.unlock()
                return
            }
            for p in newRequests {
                // Validated at submit; a failure here (the budget changed meanwhile) ends the stream with an error.
                do {
                    try engine.submit(prompt: p.prompt, params: p.params, adapter: p.adapter, adapterScale: p.scale, id: p.id,
                                      generated: p.generated, kv: p.kv)
                    streams[p.id] = p.continuation
                } catch {
                    yields.append((p.continuation, EngineEvent(requestID: p.id, token: nil, finish: .error, message: Self.notStarted + "\(error)")))
                    finished.append(p.continuation)
                }
            }
            for (id, reason) in all ? streams.keys.map({ ($0, FinishReason.cancelled) }) : newCancels {
                engine.finish(id, reason: reason)
                if let c = streams.removeValue(forKey: id) { finished.append(c) }
            }
            for a in newRetires { engine.retire(adapter: a) }
            for op in newOperations {
                for id in op(engine) {
                    if let c = streams.removeValue(forKey: id) { finished.append(c) }
                }
            }
            if engine.hasWork {
                let events = engine.step()
                steps += 1
                for e in events {
                    if let c = streams[e.requestID] { yields.append((c, e)) }
                    if e.finish != nil, let c = streams.removeValue(forKey: e.requestID) { finished.append(c) }
                }
            }
            lock.lock()
            let queued = pending.count, queuedAdapters = pending.compactMap { $0.adapter?.name }
            lock.unlock()
            publishSnapshot(pending: queued, pendingAdapters: queuedAdapters)
            let now = DispatchTime.now().uptimeNanoseconds
            if engine.takeReleasedAdapterMemory(), freedAt == nil { freedAt = now }
            stepLock.unlock()
            if let t = freedAt, now &- t > Self.heapReturnDelay {
                returnFreeHeap()
                freedAt = nil
            }
            for (c, e) in yields { c.yield(e) }
            finished.forEach { $0.finish() }
        }
    }

    /// How long freed adapter heap waits for an idle moment before it is returned during steady work (ns).
    static let heapReturnDelay: UInt64 = 10_000_000_000

    /// Returns the heap's free pages to the system (glibc's `malloc_trim`). An adapter's tensors are many allocations
    /// below glibc's mmap threshold, so when it is dropped its memory stays in the heap, counted in the process's
    /// RSS: a server that loaded and unloaded a few hundred adapters kept their gigabytes. Run when the loop is idle
    /// (or at most once per `heapReturnDelay` of steady work), so its walk of the heap does not lengthen steps; counted
    /// in `heapReturns`.
    private func returnFreeHeap() {
        Kernels.returnFreeHeap()
        lock.lock()
        heapReturns += 1
        lock.unlock()
    }

    /// Times `returnFreeHeap` ran (for tests).
    public var heapReturnCount: Int {
        lock.lock()
        defer { lock.unlock() }
        return heapReturns
    }

    private func publishSnapshot(pending: Int, pendingAdapters: [String] = []) {
        // Only this thread writes `lastSnapshot`, so reading it here without the lock is safe.
        let snap = EngineSnapshot(engine, pending: pending, pendingAdapters: pendingAdapters, previous: lastSnapshot)
        snapshotLock.lock()
        lastSnapshot = snap
        snapshotLock.unlock()
    }
}

/// A request's output as text events: the engine's token events, detokenized and matched against the
/// request's stop strings as they are read. A stop string ends the stream and finishes the request in the
/// engine; dropping the stream before its end cancels the request.
public struct RequestStream: AsyncSequence, Sendable {
    public typealias Element = GenerationEvent
    public let id: RequestID
    let raw: AsyncStream<EngineEvent>
    let processor: OutputProcessor
    let onStop: @Sendable () -> Void

    public struct AsyncIterator: AsyncIteratorProtocol {
        var raw: AsyncStream<EngineEvent>.AsyncIterator
        var processor: OutputProcessor
        let onStop: @Sendable () -> Void

        public mutating func next() async -> GenerationEvent? {
            guard !processor.done, let e = await raw.next() else { return nil }
            let g = processor.process(e)
            if g.finish != nil && e.finish == nil { onStop() }
            return g
        }
    }

    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(raw: raw.makeAsyncIterator(), processor: processor, onStop: onStop)
    }
}

/// What the engine is doing: cumulative counters and current occupancy.
public struct EngineSnapshot: Sendable, Equatable {
    public var stats: GenerationStats
    /// Requests queued or preempted (holding no KV blocks), and those holding KV blocks.
    public var waiting: Int
    public var running: Int
    /// Preempted requests whose KV is in host memory.
    public var swapped: Int
    public var kvBlocksTotal: Int
    public var kvBlocksFree: Int
    /// Tokens per KV block.
    public var blockSize: Int
    /// What the KV cache stores.
    public var kvCacheDType: KVCacheDType
    /// Blocks of the shared budget held by resident adapters, and how many adapters are resident.
    public var adapterBlocks: Int
    /// Of them, the blocks of adapters no live request needs (the scheduler evicts them for room on demand).
    public var idleAdapterBlocks: Int
    public var residentAdapters: Int
    /// Distinct adapters one unmerged iteration may hold (the scheduler's LoRA slots; vLLM's `max_lora`).
    public var adapterSlots: Int
    /// Names of the resident adapters, and of the adapters that requests holding no KV blocks wait for
    /// (queued in the engine or not yet handed to it, preempted, swapped out); each sorted, without repeats.
    public var residentAdapterNames: [String]
    public var waitingAdapterNames: [String]
    /// Adapters whose weights the engine holds (needed by a request, or resident).
    public var heldAdapters: Int
    /// Host memory holding swapped-out KV.
    public var hostSwapBytes: Int
    /// The scheduler keys the name lists were built from: a step that changes neither reuses the lists.
    var residentKeys: [Int]
    var waitingKeys: [Int]

    /// Taken after every step on the engine thread. Cost: besides the counts (which walk the live requests
    /// and the known adapters, as before), the waiting adapters' keys are one more walk of the live
    /// requests into a small set and sorted array (no allocation when nothing waits for an adapter); names
    /// are looked up (one dictionary read each, the `String`s shared, not copied) only when the key lists
    /// differ from `previous`'s or requests not yet handed to the engine name adapters, so a steady batch
    /// builds no name lists. Reusing them is sound because a scheduler key never changes its adapter (keys
    /// are not reused).
    init(_ e: EngineCore, pending: Int, pendingAdapters: [String] = [], previous: EngineSnapshot? = nil) {
        let s = e.scheduler
        stats = e.stats
        running = s.runningCount
        swapped = s.swappedCount
        waiting = s.liveCount - running + pending
        kvBlocksTotal = s.pool.numBlocks
        kvBlocksFree = s.pool.freeCount
        blockSize = e.schedulerConfig.blockSize
        kvCacheDType = e.runner.kv.dtype
        adapterBlocks = s.residentAdapterBlocks
        idleAdapterBlocks = s.idleAdapterBlocks
        residentKeys = s.residentAdapters
        residentAdapters = residentKeys.count
        adapterSlots = e.schedulerConfig.policy.maxAdapters
        waitingKeys = s.waitingAdapters
        heldAdapters = e.heldAdapterCount
        hostSwapBytes = s.hostSwapBytes
        func names(_ keys: [Int]) -> [String] { Array(Set(keys.compactMap { e.adapterName($0)?.0 })).sorted() }
        if let previous, previous.residentKeys == residentKeys {
            residentAdapterNames = previous.residentAdapterNames
        } else {
            residentAdapterNames = names(residentKeys)
        }
        if let previous, previous.waitingKeys == waitingKeys, pendingAdapters.isEmpty, previous.waitingFromPending == false {
            waitingAdapterNames = previous.waitingAdapterNames
        } else {
            let engineNames = names(waitingKeys)
            waitingAdapterNames = pendingAdapters.isEmpty ? engineNames : Array(Set(engineNames + pendingAdapters)).sorted()
        }
        waitingFromPending = !pendingAdapters.isEmpty
    }

    /// Whether `waitingAdapterNames` includes names of requests not yet handed to the engine (then the next
    /// snapshot rebuilds it even if the engine's keys are unchanged).
    var waitingFromPending: Bool
}
