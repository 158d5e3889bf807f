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
    private var thread: Thread?
    /// Steps run so far (for tests and metrics).
    public private(set) var steps = 0

    public init(generator: Generator) {
        self.generator = generator
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

    /// Stops the loop after the current step; unfinished streams finish.
    public func shutdown() {
        lock.lock()
        stopping = true
        lock.signal()
        lock.unlock()
    }

    /// Runs `body` on the loop's state between steps (e.g. to read stats) — blocking the caller until then.
    public func inspect<T>(_ body: (Generator) -> T) -> T {
        lock.lock()
        defer { lock.unlock() }
        return body(generator)
    }


    private func run() {
        while true {
            lock.lock()
            while pending.isEmpty && cancels.isEmpty && !generator.hasWork && !stopping { lock.wait() }
            if stopping {
                let open = Array(streams.values) + pending.map(\.continuation)
                streams.removeAll()
                pending.removeAll()
                lock.unlock()
                open.forEach { $0.finish() }
                return
            }
            for p in pending {
                // Validated at submit; a failure here would be a bug, reported by finishing the stream empty.
                if let id = try? generator.submit(prompt: p.prompt, params: p.params, adapter: p.adapter, adapterScale: p.scale) {
                    requestOfTicket[p.ticket] = id
                    ticketOfRequest[id] = p.ticket
                    streams[id] = p.continuation
                } else {
                    p.continuation.finish()
                }
            }
            pending.removeAll()
            for ticket in cancels {
                if let id = requestOfTicket.removeValue(forKey: ticket) {
                    ticketOfRequest[id] = nil
                    generator.cancel(id)
                    streams.removeValue(forKey: id)?.finish()
                }
            }
            cancels.removeAll()
            // One step, under the lock: `inspect` and the queues see consistent state; submitters wait at most
            // one step to enqueue.
            let events = generator.step()
            steps += 1
            var finished: [AsyncStream<GenerationEvent>.Continuation] = []
            for e in events {
                streams[e.requestID]?.yield(e)
                if e.finish != nil, let c = streams.removeValue(forKey: e.requestID) {
                    finished.append(c)
                    if let t = ticketOfRequest.removeValue(forKey: e.requestID) { requestOfTicket[t] = nil }
                }
            }
            lock.unlock()
            finished.forEach { $0.finish() }
        }
    }
}
