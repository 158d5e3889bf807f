import HTTPFront
import Engine
import Foundation
import Hummingbird
import Scheduling
import ServingAPI

/// One choice of a generation request on its way through the engine (a request with `n` choices has `n` of
/// them, one engine request each): reads the engine's events, measures time to first token, inter-token and
/// end-to-end latency. Dropping it (client gone, handler cancelled) cancels its engine request and gives back its
/// queue place. `Calls` renders a request's choices as OpenAI's response or SSE chunks.
final class Call: Sendable {
    let server: OpenAIServer
    let model: String
    let chat: Bool
    let id: String
    /// Which choice (`index` in the response).
    let index: Int
    /// The first choice of its prompt: usage and the metrics count its prompt's tokens (once per prompt).
    let countsPrompt: Bool
    let promptTokens: Int
    let arrival: UInt64
    let ticket: Scheduling.RequestID
    private let admission: any AnyObject & Sendable
    /// The request asked for log-probabilities.
    let logprobs: Bool
    /// Completions' `echo`: the prompt's text and first token, sent back ahead of the completion.
    let echo: (text: String, firstToken: Int)?

    struct Outcome: Sendable {
        var text = ""
        var completionTokens = 0
        /// nil: the stream ended without finishing (cancelled by shutdown or by the client leaving).
        var finish: FinishReason?
        var logprobs: ChoiceRenderState
        /// With finish `.error`: the engine's reason when it could not start the request (nil: non-finite logits).
        var failure: String? = nil
    }

    init(server: OpenAIServer, model: String, chat: Bool, id: String, index: Int = 0, countsPrompt: Bool = true, promptTokens: Int, arrival: UInt64,
         ticket: Scheduling.RequestID, admission: any AnyObject & Sendable, logprobs: Bool, echo: (text: String, firstToken: Int)? = nil) {
        self.server = server
        self.model = model
        self.chat = chat
        self.id = id
        self.index = index
        self.countsPrompt = countsPrompt
        self.promptTokens = promptTokens
        self.arrival = arrival
        self.ticket = ticket
        self.admission = admission
        self.logprobs = logprobs
        self.echo = echo
        server.metrics.began(model: model)
    }

    /// Set once the engine reported the request's finish: then there is nothing to cancel.
    private let finished = Locked(false)

    deinit {
        // A request dropped before it finished (client gone, handler cancelled) frees its KV and adapter now.
        if !finished.withLock({ $0 }) { server.engine.cancel(ticket) }
        server.metrics.ended(model: model)
    }

    /// Latency bookkeeping shared by both response styles. The request itself (its status) is counted by its first
    /// choice, each prompt's tokens by that prompt's first; every choice counts its own tokens and latencies.
    struct Clock {
        let call: Call
        var last: UInt64?

        mutating func token() {
            let now = DispatchTime.now().uptimeNanoseconds
            if let last {
                call.server.metrics.interToken(model: call.model, nanoseconds: now &- last)
            } else {
                call.server.metrics.timeToFirstToken(model: call.model, nanoseconds: now &- call.arrival)
            }
            last = now
        }

        func end(_ o: Outcome) {
            let m = call.server.metrics
            m.tokens(model: call.model, prompt: call.countsPrompt ? call.promptTokens : 0, generated: o.completionTokens)
            if o.finish == .error {
                return  // counted where the 500 is rendered (the handler's catch, or the stream's error event)
            } else if let f = o.finish {
                m.endToEnd(model: call.model, nanoseconds: DispatchTime.now().uptimeNanoseconds &- call.arrival)
                m.finished(model: call.model, reason: f == .cancelled ? "abort" : f.rawValue)
                if call.index == 0 { m.request(model: call.model, status: "ok") }
            } else {
                m.finished(model: call.model, reason: "abort")
                if call.index == 0 { m.request(model: call.model, status: "cancelled") }
            }
        }
    }

    /// One choice's progress through its events, for either response style.
    struct Progress {
        var outcome: Outcome
        var clock: Clock
        var first = true

        init(_ call: Call) {
            outcome = Outcome(logprobs: ChoiceRenderState(enabled: call.logprobs))
            clock = Clock(call: call)
        }

        /// The echoed prompt ahead of the first event (its records added; returned for the caller to add its text,
        /// or for a stream to send as its own chunk), nil for any other.
        mutating func echo(_ e: GenerationEvent, _ call: Call) -> PromptEcho? {
            defer { first = false }
            guard first, let echo = call.echo, e.finish != .error else { return nil }
            let p = call.server.promptEcho(text: echo.text, firstToken: echo.firstToken, logprobs: e.promptLogprobs)
            outcome.logprobs.add(p)
            return p
        }

        /// Takes one event (after `echo`): the token's count, latency and log-probabilities, and the finish. The
        /// event's text is the caller's to add.
        mutating func take(_ e: GenerationEvent, _ call: Call) {
            if e.token != nil {
                outcome.completionTokens += 1
                clock.token()
            }
            if let f = e.finish { outcome.finish = f }
            if e.finish == .error { outcome.failure = e.message }
            outcome.logprobs.add(e.logprobs.map(call.server.tokenizer.render))
        }
    }

    /// Waits for the whole completion of this choice.
    func collect(_ events: RequestStream) async -> Outcome {
        var p = Progress(self)
        for await e in events {
            if let echo = p.echo(e, self) { p.outcome.text += echo.text }
            p.take(e, self)
            p.outcome.text += e.text
        }
        if p.outcome.finish != nil { finished.withLock { $0 = true } }
        p.clock.end(p.outcome)
        return p.outcome
    }

    func markFinished() { finished.withLock { $0 = true } }

    /// A request the engine ended with `.error`: it could not start it (`failure`: the budget or the adapter changed
    /// between the request's checks and its start; a 503 worth retrying), or its logits held NaN or +∞, which the
    /// adapters' validation at load is meant to rule out, so it is the server's (or the adapter's) fault, not the
    /// request's — a 500.
    func failed(_ failure: String?) -> APIError {
        guard let failure, failure.hasPrefix(EngineLoop.notStarted) else { return nonFiniteLogits }
        var e = APIError(.serviceUnavailable, String(failure.prefix(256)), code: "not_started")
        e.retryAfter = 1
        return e
    }

    var nonFiniteLogits: APIError {
        let what = model == server.options.modelName ? "the model" : "the adapter '\(model)'"
        return APIError(.internalServerError, "\(what) produced non-finite logits (NaN or infinity); the request was stopped",
                        code: "non_finite_logits")
    }
}

/// A request's choices (`n` of them, each its own engine request) rendered as one OpenAI response: whole, or as
/// SSE chunks that name their choice's index.
struct Calls: Sendable {
    let calls: [Call]
    let streams: [RequestStream]
    private let render: CompletionRenderer

    init(_ calls: [Call], _ streams: [RequestStream], tools: ToolCallMode? = nil, responses: ResponsesEcho? = nil) {
        precondition(!calls.isEmpty && calls.count == streams.count)
        self.calls = calls
        self.streams = streams
        render = CompletionRenderer(id: calls[0].id, created: Int(Date().timeIntervalSince1970), model: calls[0].model, chat: calls[0].chat,
                                    tools: tools, responses: responses)
    }

    private var lead: Call { calls[0] }
    /// Usage's prompt tokens: each prompt's once.
    private var promptTokens: Int { calls.reduce(0) { $0 + ($1.countsPrompt ? $1.promptTokens : 0) } }
    private var shutdown: APIError {
        APIError(.serviceUnavailable, "the request was cancelled before it finished (the server is shutting down)")
    }

    /// Waits for every choice, then renders the response body; a request cut short by shutdown is a 503.
    func completion() async throws -> String {
        let outcomes = await withTaskGroup(of: (Int, Call.Outcome).self) { group in
            for (i, (call, events)) in zip(calls, streams).enumerated() {
                group.addTask { (i, await call.collect(events)) }
            }
            var out = [Call.Outcome?](repeating: nil, count: calls.count)
            for await (i, o) in group { out[i] = o }
            return out.map { $0! }
        }
        for (call, o) in zip(calls, outcomes) {
            guard let finish = o.finish else { throw shutdown }
            if finish == .error { throw call.failed(o.failure) }
        }
        let usage = Usage(prompt: promptTokens, completion: outcomes.reduce(0) { $0 + $1.completionTokens })
        return render.whole(outcomes.map { CompletionRenderer.Choice(text: $0.text, finish: $0.finish!.rawValue, logprobs: $0.logprobs) },
                            usage: usage)
    }

    /// Streams server-sent events: per choice, its pieces of text as they come (choices interleaved), then a
    /// chunk with its finish reason; the usage chunk when asked for, then `data: [DONE]`. A failed or cancelled
    /// choice ends the whole stream with an error event.
    func stream(includeUsage: Bool, continuousUsage: Bool = false, writer: inout any ResponseBodyWriter) async throws {
        var render = self.render
        render.usageChunkFollows = includeUsage
        var progress = calls.map(Call.Progress.init)
        defer { for p in progress { p.clock.end(p.outcome) } }
        let promptTokens = self.promptTokens
        /// With continuous_usage_stats, the usage so far for the chunks rendered next.
        func refreshUsage() {
            if continuousUsage { render.runningUsage = Usage(prompt: promptTokens, completion: progress.reduce(0) { $0 + $1.outcome.completionTokens }) }
        }
        refreshUsage()
        var states = progress.map(\.outcome.logprobs)
        for f in render.openingFrames(calls.count, states: &states) { try await write(f, &writer) }
        for i in progress.indices { progress[i].outcome.logprobs = states[i] }
        var open = calls.count
        var failure: APIError?
        /// Takes choice i's next event (nil: its stream ended); false once the response must stop reading.
        func handle(_ i: Int, _ event: GenerationEvent?) async throws -> Bool {
            let call = calls[i]
            guard let e = event else {
                // This choice's stream ended: after its finish (sent with it), or cut off by shutdown.
                if progress[i].outcome.finish == nil {
                    if !Task.isCancelled { failure = shutdown }
                    return false
                }
                call.markFinished()
                open -= 1
                return open > 0
            }
            if let echo = progress[i].echo(e, call) {
                for f in render.frames(i, text: echo.text, finish: nil, state: &progress[i].outcome.logprobs) { try await write(f, &writer) }
            }
            progress[i].take(e, call)
            refreshUsage()
            if e.finish == .error {
                call.markFinished()
                let error = call.failed(progress[i].outcome.failure)
                lead.server.metrics.request(model: lead.model, status: String(error.status.code))
                failure = error
                return false
            }
            if !e.text.isEmpty {
                for f in render.frames(i, text: e.text, finish: nil, state: &progress[i].outcome.logprobs) { try await write(f, &writer) }
            }
            if let f = e.finish {
                for c in render.frames(i, text: nil, finish: f.rawValue, state: &progress[i].outcome.logprobs) { try await write(c, &writer) }
            }
            return true
        }
        if streams.count == 1 {
            // One choice: its events as they come, no merging.
            var reading = true
            for await e in streams[0] {
                reading = try await handle(0, e)
                if !reading { break }
            }
            if reading { _ = try await handle(0, nil) }
        } else {
            let (merged, continuation) = AsyncStream<(Int, GenerationEvent?)>.makeStream()
            let feeders = Task {
                await withTaskGroup(of: Void.self) { group in
                    for (i, events) in streams.enumerated() {
                        group.addTask {
                            for await e in events { continuation.yield((i, e)) }
                            continuation.yield((i, nil))
                        }
                    }
                }
                continuation.finish()
            }
            defer { feeders.cancel() }
            try await withTaskCancellationHandler {
                for await (i, event) in merged {
                    if try await !handle(i, event) { break }
                }
            } onCancel: {
                feeders.cancel()
            }
        }
        if let failure {
            for f in render.errorFrames(failure.detail, state: &progress[0].outcome.logprobs) { try await write(f, &writer) }
            return
        }
        // A client that left is not written to (the task was cancelled).
        guard open == 0 else { return }
        let usage = Usage(prompt: promptTokens, completion: progress.reduce(0) { $0 + $1.outcome.completionTokens })
        states = progress.map(\.outcome.logprobs)
        for f in render.closingFrames(usage: usage, includeUsage: includeUsage, states: &states) { try await write(f, &writer) }
    }

    private func write(_ frame: String, _ writer: inout any ResponseBodyWriter) async throws {
        try await writer.write(ByteBuffer(string: frame))
    }
}
