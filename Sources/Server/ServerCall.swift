import HTTPFront
import Engine
import Foundation
import Hummingbird
import Scheduling
import ServingAPI

/// One generation request on its way through the engine: reads the engine's events, measures time to first
/// token, inter-token and end-to-end latency, and renders OpenAI's response or SSE chunks. Dropping it
/// (client gone, handler cancelled) cancels the engine request and gives back its queue place.
final class Call: Sendable {
    let server: OpenAIServer
    let model: String
    let chat: Bool
    let id: String
    let promptTokens: Int
    let arrival: UInt64
    let ticket: Scheduling.RequestID
    private let admission: any AnyObject & Sendable
    private let created = Int(Date().timeIntervalSince1970)
    /// The request asked for log-probabilities.
    let logprobs: Bool
    /// Completions' `echo`: the prompt's text and first token, sent back ahead of the completion.
    let echo: (text: String, firstToken: Int)?

    struct Outcome {
        var text = ""
        var completionTokens = 0
        /// nil: the stream ended without finishing (cancelled by shutdown or by the client leaving).
        var finish: FinishReason?
        var logprobs: LogprobsCollector
    }

    init(server: OpenAIServer, model: String, chat: Bool, id: String, promptTokens: Int, arrival: UInt64, ticket: Scheduling.RequestID,
         admission: any AnyObject & Sendable, logprobs: Bool, echo: (text: String, firstToken: Int)? = nil) {
        self.logprobs = logprobs
        self.echo = echo
        self.server = server
        self.model = model
        self.chat = chat
        self.id = id
        self.promptTokens = promptTokens
        self.arrival = arrival
        self.ticket = ticket
        self.admission = admission
    }

    /// Set once the engine reported the request's finish: then there is nothing to cancel.
    private let finished = Locked(false)

    deinit {
        // A request dropped before it finished (client gone, handler cancelled) frees its KV and adapter now.
        if !finished.withLock({ $0 }) { server.engine.cancel(ticket) }
    }

    /// Latency bookkeeping shared by both response styles.
    private struct Clock {
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
            m.tokens(model: call.model, prompt: call.promptTokens, generated: o.completionTokens)
            if o.finish == .error {
                return  // counted where the 500 is rendered (the handler's catch, or the stream's error event)
            } else if o.finish != nil {
                m.endToEnd(model: call.model, nanoseconds: DispatchTime.now().uptimeNanoseconds &- call.arrival)
                m.request(model: call.model, status: "ok")
            } else {
                m.request(model: call.model, status: "cancelled")
            }
        }
    }

    /// Waits for the whole completion.
    func collect(_ events: RequestStream) async -> Outcome {
        var o = Outcome(logprobs: LogprobsCollector(enabled: logprobs))
        var clock = Clock(call: self)
        var first = true
        for await e in events {
            if first, let echo {
                let p = server.promptEcho(text: echo.text, firstToken: echo.firstToken, logprobs: e.promptLogprobs)
                o.text += p.text
                o.logprobs.add(p)
            }
            first = false
            if e.token != nil {
                o.completionTokens += 1
                clock.token()
            }
            o.logprobs.add(e.logprobs.map(server.tokenizer.render))
            o.text += e.text
            if let f = e.finish { o.finish = f }
        }
        if o.finish != nil { finished.withLock { $0 = true } }
        clock.end(o)
        return o
    }

    /// The non-streamed response body; a request cut short by shutdown is a 503.
    func completion(_ o: Outcome) throws -> String {
        var o = o
        guard let finish = o.finish else {
            throw APIError(.serviceUnavailable, "the request was cancelled before it finished (the server is shutting down)")
        }
        if finish == .error { throw nonFiniteLogits }
        let usage = Usage(prompt: promptTokens, completion: o.completionTokens)
        if chat {
            return OpenAIWire.encode(ChatCompletion(id: id, object: "chat.completion", created: created, model: model,
                                                    choices: [ChatChoice(message: AssistantMessage(content: o.text), finishReason: finish.rawValue,
                                                                         logprobs: o.logprobs.takeChat())],
                                                    usage: usage))
        }
        return OpenAIWire.encode(TextCompletion(id: id, object: "text_completion", created: created, model: model,
                                                choices: [TextChoice(text: o.text, finishReason: finish.rawValue, logprobs: o.logprobs.takeCompletion())],
                                                usage: usage))
    }

    /// Streams server-sent events: one chunk per piece of text, a final chunk with the finish reason, the
    /// usage chunk when asked for, then `data: [DONE]`.
    func stream(_ events: RequestStream, includeUsage: Bool, writer: inout any ResponseBodyWriter) async throws {
        var o = Outcome(logprobs: LogprobsCollector(enabled: logprobs))
        var clock = Clock(call: self)
        defer { clock.end(o) }
        if chat {
            try await send(chunk(delta: ChatDelta(role: "assistant", content: ""), finish: nil), &writer)
        }
        var first = true
        for await e in events {
            if first, let echo, e.finish != .error {
                let p = server.promptEcho(text: echo.text, firstToken: echo.firstToken, logprobs: e.promptLogprobs)
                o.logprobs.add(p)
                try await send(chunk(text: p.text, finish: nil, logprobs: &o.logprobs), &writer)
            }
            first = false
            if e.token != nil {
                o.completionTokens += 1
                clock.token()
            }
            if let f = e.finish { o.finish = f }
            o.logprobs.add(e.logprobs.map(server.tokenizer.render))
            if !e.text.isEmpty {
                try await send(chunk(text: e.text, finish: nil, logprobs: &o.logprobs), &writer)
            }
        }
        if o.finish != nil { finished.withLock { $0 = true } }
        guard let finish = o.finish else {
            // Cancelled by shutdown (a client that left is not written to: the task was cancelled).
            if !Task.isCancelled {
                try await send(APIError(.serviceUnavailable, "the request was cancelled before it finished (the server is shutting down)").json, &writer)
                try await writer.write(ByteBuffer(string: "data: [DONE]\n\n"))
            }
            return
        }
        if finish == .error {
            server.metrics.request(model: model, status: "500")
            try await send(nonFiniteLogits.json, &writer)
            try await writer.write(ByteBuffer(string: "data: [DONE]\n\n"))
            return
        }
        try await send(chunk(text: nil, finish: finish, logprobs: &o.logprobs), &writer)
        if includeUsage {
            let usage = Usage(prompt: promptTokens, completion: o.completionTokens)
            try await send(chat ? OpenAIWire.encode(ChatCompletionChunk(id: id, object: "chat.completion.chunk", created: created, model: model,
                                                                        choices: [], usage: usage))
                                : OpenAIWire.encode(TextCompletion(id: id, object: "text_completion", created: created, model: model,
                                                                   choices: [], usage: usage)), &writer)
        }
        try await writer.write(ByteBuffer(string: "data: [DONE]\n\n"))
    }

    /// A request the engine ended with `.error`: its logits held NaN or +∞, which the adapters' validation at
    /// load is meant to rule out, so it is the server's (or the adapter's) fault, not the request's — a 500.
    private var nonFiniteLogits: APIError {
        let what = model == server.options.modelName ? "the model" : "the adapter '\(model)'"
        return APIError(.internalServerError, "\(what) produced non-finite logits (NaN or infinity); the request was stopped",
                        code: "non_finite_logits")
    }

    private func send(_ json: String, _ writer: inout any ResponseBodyWriter) async throws {
        try await writer.write(ByteBuffer(string: "data: \(json)\n\n"))
    }

    /// A chunk with a piece of text (nil: the final chunk, which carries only the finish reason) and the
    /// log-probabilities gathered since the last chunk.
    private func chunk(text: String?, finish: FinishReason?, logprobs: inout LogprobsCollector) -> String {
        if chat {
            return chunk(delta: ChatDelta(content: text), finish: finish, logprobs: logprobs.takeChat())
        }
        return OpenAIWire.encode(TextCompletion(id: id, object: "text_completion", created: created, model: model,
                                                choices: [TextChoice(text: text ?? "", finishReason: finish?.rawValue,
                                                                     logprobs: logprobs.takeCompletion())]))
    }

    private func chunk(delta: ChatDelta, finish: FinishReason?, logprobs: ChatLogprobs? = nil) -> String {
        OpenAIWire.encode(ChatCompletionChunk(id: id, object: "chat.completion.chunk", created: created, model: model,
                                              choices: [ChatChunkChoice(delta: delta, finishReason: finish?.rawValue, logprobs: logprobs)]))
    }
}
