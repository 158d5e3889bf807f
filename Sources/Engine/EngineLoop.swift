import Foundation
import Models

/// The replica's step loop on one dedicated thread — the single owner of the Generator (and so of the
/// model, KV cache and adapters) — with `submit` and `cancel` callable from any task. Each request streams
/// its events through an AsyncStream; dropping the stream (or cancelling the consuming task) cancels the
/// request and frees its KV blocks. Call `shutdown()` when done: the loop thread keeps the engine alive.
public final class EngineLoop: @unchecked Sendable {
    private let generator: Generator
    private let lock = NSCondition()
    private var pending: [(prompt: [Int], params: SamplingParams, adapter: LoRAWeights?, scale: Float,
                           continuation: AsyncStream<GenerationEvent>.Continuation, ticket: Int)] = []
    private var cancels: [Int] = []
    /// ticket (our id, known at submit time) ↔ generator request id (known once the loop queued it).
    private var requestOfTicket: [Int: Int] = [:]
    private var ticketOfRequest: [Int: Int] = [:]
    private var streams: [Int: AsyncStream<GenerationEvent>.Continuation] = [:]
    private var nextTicket = 0
    private var stopping = false
    private var cancelEverything = false
    private let stepLock = NSLock()
    private var thread: Thread?
    /// Steps run so far (for tests and metrics).
    public private(set) var steps = 0
    /// The engine's state after the last step, readable without waiting for a step to end.
    private let snapshotLock = NSLock()
    private var lastSnapshot: EngineSnapshot

    public init(generator: Generator) {
        self.generator = generator
        lastSnapshot = EngineSnapshot(generator, pending: 0)
        let t = Thread { [weak self] in self?.run() }
        t.name = "dlora.engine"
        t.qualityOfService = .userInitiated
        thread = t
        t.start()
    }

    /// Validates and queues a request; its events arrive on the returned stream, which finishes after the
    /// event that carries a finish reason (or when the request is cancelled).
    public func submit(prompt: [Int], params: SamplingParams, adapter: LoRAWeights? = nil,
                       adapterScale: Float = 1) throws -> (ticket: Int, events: AsyncStream<GenerationEvent>) {
        try generator.validate(prompt: prompt, params: params, adapter: adapter, adapterScale: adapterScale)
        let (stream, continuation) = AsyncStream<GenerationEvent>.makeStream(bufferingPolicy: .unbounded)
        lock.lock()
        let ticket = nextTicket
        nextTicket += 1
        pending.append((prompt, params, adapter, adapterScale, continuation, ticket))
        lock.signal()
        lock.unlock()
        continuation.onTermination = { [weak self] reason in
            if case .cancelled = reason { self?.cancel(ticket) }
        }
        return (ticket, stream)
    }

    /// Cancels a request (queued or running); its stream finishes.
    public func cancel(_ ticket: Int) {
        lock.lock()
        cancels.append(ticket)
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

    /// Runs `body` on the loop's state between steps (e.g. to read stats) — blocking the caller until then.
    public func inspect<T>(_ body: (Generator) -> T) -> T {
        stepLock.lock()
        defer { stepLock.unlock() }
        return body(generator)
    }

    // Locking: `lock` guards only the hand-over queues (pending, cancels, flags) and is held for moments;
    // `stepLock` is held by the loop while it touches the Generator (and by `inspect`). Streams are yielded
    // to and finished with neither held: resuming a consumer task takes that task's own runtime lock, and a
    // consumer being cancelled calls `cancel` (and so `lock`) while holding it — yielding under `lock` would
    // deadlock against that.
    private func run() {
        while true {
            lock.lock()
            while pending.isEmpty && cancels.isEmpty && !cancelEverything && !generator.hasWork && !stopping { lock.wait() }
            let newRequests = pending, newCancels = cancels, stop = stopping, all = cancelEverything
            pending.removeAll()
            cancels.removeAll()
            cancelEverything = false
            lock.unlock()

            var yields: [(AsyncStream<GenerationEvent>.Continuation, GenerationEvent)] = []
            var finished: [AsyncStream<GenerationEvent>.Continuation] = []
            stepLock.lock()
            if stop {
                finished = Array(streams.values) + newRequests.map(\.continuation)
                for id in streams.keys { generator.cancel(id) }
                streams.removeAll()
                publishSnapshot(pending: 0)
                stepLock.unlock()
                finished.forEach { $0.finish() }
                lock.lock()
                let late = pending.map(\.continuation)
                pending.removeAll()
                lock.unlock()
                late.forEach { $0.finish() }
                return
            }
            for p in newRequests {
                // Validated at submit; a failure here would be a bug, reported by finishing the stream empty.
                if let id = try? generator.submit(prompt: p.prompt, params: p.params, adapter: p.adapter, adapterScale: p.scale) {
                    requestOfTicket[p.ticket] = id
                    ticketOfRequest[id] = p.ticket
                    streams[id] = p.continuation
                } else {
                    finished.append(p.continuation)
                }
            }
            for ticket in all ? Array(requestOfTicket.keys) : newCancels {
                if let id = requestOfTicket.removeValue(forKey: ticket) {
                    ticketOfRequest[id] = nil
                    generator.cancel(id)
                    if let c = streams.removeValue(forKey: id) { finished.append(c) }
                }
            }
            if generator.hasWork {
                let events = generator.step()
                steps += 1
                for e in events {
                    if let c = streams[e.requestID] { yields.append((c, e)) }
                    if e.finish != nil, let c = streams.removeValue(forKey: e.requestID) {
                        finished.append(c)
                        if let t = ticketOfRequest.removeValue(forKey: e.requestID) { requestOfTicket[t] = nil }
                    }
                }
            }
            lock.lock()
            let queued = pending.count
            lock.unlock()
            publishSnapshot(pending: queued)
            stepLock.unlock()
            for (c, e) in yields { c.yield(e) }
            finished.forEach { $0.finish() }
        }
    }

    private func publishSnapshot(pending: Int) {
        let snap = EngineSnapshot(generator, pending: pending)
        snapshotLock.lock()
        lastSnapshot = snap
        snapshotLock.unlock()
    }
}

/// What the engine is doing: cumulative counters and current occupancy.
public struct EngineSnapshot: Sendable, Equatable {
    public var stats: GenerationStats
    /// Requests queued or preempted (holding no KV blocks), and those holding KV blocks.
    public var waiting: Int
    public var running: Int
    public var kvBlocksTotal: Int
    public var kvBlocksFree: Int
    /// Blocks of the shared budget held by resident adapters, and how many adapters are resident.
    public var adapterBlocks: Int
    public var residentAdapters: Int
    /// Host memory holding swapped-out KV.
    public var hostSwapBytes: Int

    init(_ g: Generator, pending: Int) {
        stats = g.stats
        running = g.runningCount
        waiting = g.liveCount - running + pending
        kvBlocksTotal = g.totalKVBlocks
        kvBlocksFree = g.freeKVBlocks
        adapterBlocks = g.residentAdapterBlocks
        residentAdapters = g.residentAdapterCount
        hostSwapBytes = g.hostSwapBytes
    }
}
