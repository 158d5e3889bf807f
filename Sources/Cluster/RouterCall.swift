import AsyncHTTPClient
import ClusterPolicy
import Foundation
import HTTPFront
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import ServingAPI

/// One client request's response, rendered by the router from its choices' relays (OpenAI's shapes, as a replica
/// renders them): one flight per choice.
struct RouterCall: Sendable {
    let router: ClusterRouter
    /// The response's id (a single choice's flight has it too).
    let id: String
    let flights: [Flight]
    let chat: Bool
    let created: Int

    /// A chat answer that is a tool call (the body's `tool_choice`, which the replica checked).
    let tools: ToolCallMode?
    /// A `/v1/responses` request: answered in the Responses API's shapes.
    let responses: ResponsesEcho?

    private var render: CompletionRenderer {
        CompletionRenderer(id: id, created: created, model: flights[0].model, chat: chat, tools: tools, responses: responses)
    }
    /// Usage's prompt tokens: each prompt's once (its first choice's flight).
    private var promptTokens: Int { flights.reduce(0) { $0 + (($1.choice ?? 0) == 0 ? $1.promptTokens : 0) } }

    /// One choice's state while its relay runs.
    struct Choice: Sendable {
        var text = ""
        var tokens = 0
        var finish: String?
        var failure: (Int, String)?
        var logprobs = ChoiceRenderState(enabled: false)

        /// Takes one relay output; returns the echoed prompt, if this was one.
        mutating func take(_ out: RelayOutput) -> PromptEcho? {
            switch out {
            case .accepted(let asked):
                // A resumed flight is accepted again: what was rendered so far (a tool call's held text) stays.
                logprobs = logprobs.resumed(logprobs: asked)
            case .echo(let e):
                logprobs.add(e)
                return e
            case .token(_, _, let lp):
                tokens += 1
                logprobs.add(lp)
            case .finish(let f): finish = f
            case .failed(let status, let message): failure = (status, message)
            }
            return nil
        }
    }

    func collect(first: [Attempt]) async throws -> String {
        let results = try await withThrowingTaskGroup(of: (Int, Choice).self) { group in
            for (i, (flight, attempt)) in zip(flights, first).enumerated() {
                group.addTask {
                    var c = Choice()
                    try await router.relay(flight, first: attempt) { out in
                        if let echo = c.take(out) { c.text = echo.text + c.text }
                        if case .token(_, let t, _) = out { c.text += t }
                    }
                    return (i, c)
                }
            }
            var out = [Choice](repeating: Choice(), count: flights.count)
            for try await (i, c) in group { out[i] = c }
            return out
        }
        if let (status, message) = results.compactMap(\.failure).first {
            throw APIError(.init(code: status), message)  // counted by the router's handler, as every error thrown there
        }
        guard results.allSatisfy({ $0.finish != nil }) else {
            router.metrics.request(status: "cancelled")
            throw CancellationError()
        }
        router.metrics.request(status: "ok")
        let usage = Usage(prompt: promptTokens, completion: results.reduce(0) { $0 + $1.tokens })
        return render.whole(results.map { CompletionRenderer.Choice(text: $0.text, finish: $0.finish!, logprobs: $0.logprobs) }, usage: usage)
    }

    func stream(first: [Attempt], includeUsage: Bool, continuousUsage: Bool = false, writer: inout any ResponseBodyWriter) async throws {
        var render = self.render
        render.usageChunkFollows = includeUsage
        var choices = [Choice](repeating: Choice(), count: flights.count)
        /// With continuous_usage_stats, the usage so far for the chunks rendered next (the prompt's tokens as the replicas
        /// counted them, once they have).
        func refreshUsage() {
            if continuousUsage { render.runningUsage = Usage(prompt: self.promptTokens, completion: choices.reduce(0) { $0 + $1.tokens }) }
        }
        refreshUsage()
        var states = choices.map(\.logprobs)
        for f in render.openingFrames(flights.count, states: &states) { try await write(f, &writer) }
        for i in choices.indices { choices[i].logprobs = states[i] }
        // The writer is inout: the relays' callbacks cannot capture it, so their outputs pass through one local
        // stream, tagged with their choice; nil marks a relay's end.
        let (events, continuation) = AsyncStream<(Int, RelayOutput?)>.makeStream()
        let relays = Task {
            await withTaskGroup(of: Void.self) { group in
                for (i, (flight, attempt)) in zip(flights, first).enumerated() {
                    group.addTask {
                        do {
                            try await router.relay(flight, first: attempt) { continuation.yield((i, $0)) }
                        } catch {}
                        continuation.yield((i, nil))
                    }
                }
            }
            continuation.finish()
        }
        defer { relays.cancel() }
        // A stream that ends without an outcome — the client left (the write failed, or the task was cancelled) — counts
        // as cancelled, as `dlora serve` counts a client's disconnect (a probe's 16 disconnects through the router left
        // no series on the router or its replicas).
        var counted = false
        defer { if !counted { router.metrics.request(status: "cancelled") } }
        var open = flights.count
        var failure: (Int, String)?
        try await withTaskCancellationHandler {
            for await (i, out) in events {
                guard let out else {
                    guard choices[i].finish != nil else { break }  // ended without a finish: cancelled
                    open -= 1
                    if open == 0 { break }
                    continue
                }
                let echo = choices[i].take(out)
                refreshUsage()
                if let echo {
                    for f in render.frames(i, text: echo.text, finish: nil, state: &choices[i].logprobs) { try await write(f, &writer) }
                }
                switch out {
                case .token(_, let t, _) where !t.isEmpty:
                    for f in render.frames(i, text: t, finish: nil, state: &choices[i].logprobs) { try await write(f, &writer) }
                case .finish(let f):
                    for c in render.frames(i, text: nil, finish: f, state: &choices[i].logprobs) { try await write(c, &writer) }
                case .failed(let status, let message):
                    failure = (status, message)
                default:
                    break
                }
                if failure != nil { break }
            }
        } onCancel: {
            relays.cancel()
        }
        if let (status, message) = failure {
            counted = true
            router.metrics.request(status: String(status))
            var e = APIError(.init(code: status), message)
            if responses != nil { e = e.inResponsesTerms }
            for f in render.errorFrames(e.detail, state: &choices[0].logprobs) { try await write(f, &writer) }
            return
        }
        guard open == 0 else { return }
        counted = true
        router.metrics.request(status: "ok")
        let usage = Usage(prompt: promptTokens, completion: choices.reduce(0) { $0 + $1.tokens })
        states = choices.map(\.logprobs)
        for f in render.closingFrames(usage: usage, includeUsage: includeUsage, states: &states) { try await write(f, &writer) }
    }

    private func write(_ frame: String, _ writer: inout any ResponseBodyWriter) async throws {
        try await writer.write(ByteBuffer(string: frame))
    }
}
