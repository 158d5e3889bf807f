import Foundation

// Rendering one response (whole, or as SSE chunk payloads) from its choices' text and log-probabilities, for the
// replica server and the router alike. The wire types it fills are in OpenAIResponses.swift; the Responses API's
// shapes in ResponsesRendering.swift.

/// One choice's state while it is rendered, for the replica server and the router alike. Its `logprobs`: the
/// tokens' records in order; a whole response takes them all at the end, a stream those gathered since its last
/// chunk (a token whose text is still held back — part of a character, a possible stop string — rides with the
/// chunk that shows it); nil throughout when the request did not ask for them. A tool-call answer's text held back
/// in a stream, and a Responses stream's progress (its events' sequence numbers, whether its message is open, the
/// text so far).
public struct ChoiceRenderState: Sendable {
    public let enabled: Bool
    /// A stream's text of a tool-call answer so far (`CompletionRenderer.chunk`): read again whole at its end.
    public var heldText = ""
    /// An `auto` tool-call answer that turned out to be text: streamed as it comes.
    public var plainText = false
    /// A tool-call answer's calls as they stream (nil: none begun reading, or an `auto` answer not yet decided).
    public var callStream: ToolCallStream?
    /// A Responses stream: the next event's `sequence_number`, whether its message item is open, its text so far and
    /// how it finished.
    var sequence = 0
    var messageOpen = false
    var text = ""
    var finish: String?

    /// The state of a resumed flight (the router's): what was rendered so far stays, log-probabilities as now asked.
    public func resumed(logprobs asked: Bool) -> ChoiceRenderState {
        var s = ChoiceRenderState(enabled: asked)
        (s.heldText, s.plainText, s.sequence, s.messageOpen, s.text, s.finish) = (heldText, plainText, sequence, messageOpen, text, finish)
        s.callStream = callStream
        return s
    }
    private var pending: [TokenLogprob] = []
    /// Characters of the completion before `pending` (completions' `text_offset`).
    private var offset = 0

    public init(enabled: Bool) { self.enabled = enabled }

    /// An echoed prompt's first token (no log-probability), ahead of what is pending.
    private var leading: String?

    public mutating func add(_ entry: TokenLogprob?) {
        if enabled, let entry { pending.append(entry) }
    }

    /// An echoed prompt's records: its first token's text, then the others'.
    public mutating func add(_ echo: PromptEcho) {
        guard enabled else { return }
        leading = echo.firstToken
        pending += echo.logprobs ?? []
    }

    public var isEmpty: Bool { pending.isEmpty && leading == nil }

    public mutating func takeChat() -> ChatLogprobs? {
        guard enabled else { return nil }
        defer { pending.removeAll() }
        return ChatLogprobs(content: pending)
    }

    public mutating func takeCompletion() -> CompletionLogprobs? {
        guard enabled else { return nil }
        let out = CompletionLogprobs(pending, offset: offset, leading: leading)
        offset += out.characters
        pending.removeAll()
        leading = nil
        return out
    }
}

/// One response's bodies — whole, or as the payloads of its SSE chunks — for the replica server and the router
/// alike, so both send the same bytes: completions' or chat's shape, every choice named by its index, each piece
/// of text with the log-probabilities gathered for it.
public struct CompletionRenderer: Sendable {
    public let id: String
    public let created: Int
    public let model: String
    public let chat: Bool

    /// Chat answers that are tool calls (nil: text).
    public let tools: ToolCallMode?

    /// A `/v1/responses` request (run as chat): its answer in the Responses API's shapes (ResponsesRendering.swift).
    public let responses: ResponsesEcho?

    /// A stream that ends with a usage chunk: its other chunks carry `"usage": null`, as OpenAI's do.
    public var usageChunkFollows = false

    /// vLLM's `stream_options.continuous_usage_stats`: the usage so far, which every chunk then carries (set by the
    /// caller before it renders each piece).
    public var runningUsage: Usage?

    public init(id: String, created: Int, model: String, chat: Bool, tools: ToolCallMode? = nil, responses: ResponsesEcho? = nil) {
        self.id = id
        self.created = created
        self.model = model
        self.chat = chat || responses != nil
        self.tools = chat || responses != nil ? tools : nil
        self.responses = responses
    }

    /// A choice's answer as a message: its tool calls when it is a complete one, else its text. A tool-call answer cut
    /// short (by max_tokens, a stop string or the context) is what a stream of it sends (`toolPiece`): the calls begun,
    /// each with its arguments so far, and the finish reason it had (OpenAI's shape for a call cut by the length
    /// limit); never the call syntax as content.
    func message(_ index: Int, text: String, finish: String) -> (AssistantMessage, String) {
        guard let tools else { return (AssistantMessage(content: text), finish) }
        func callMessage(_ calls: [(name: String, arguments: String)]) -> AssistantMessage {
            AssistantMessage(content: nil, toolCalls: calls.enumerated().map { k, c in ToolCall(id: callID(index, k), name: c.name, arguments: c.arguments) })
        }
        if finish == "stop", let calls = tools.calls(in: text) { return (callMessage(calls), tools.finishReason) }
        guard finish != "stop" else { return (AssistantMessage(content: text), finish) }
        var state = ChoiceRenderState(enabled: false)
        if case .text(let plain) = state.toolPiece(text, tools: tools) { return (AssistantMessage(content: plain), finish) }
        let sent = state.callStream?.sent ?? []
        guard !sent.isEmpty else {
            // Nothing of a call was complete enough to send: an `auto` answer still undecided is its text; a forced
            // call's answer has none.
            if case .auto = tools, !text.hasPrefix(ToolCallMode.marker) { return (AssistantMessage(content: text), finish) }
            return (AssistantMessage(content: nil), finish)
        }
        return (callMessage(sent), finish)
    }

    /// Call k of choice `index`: unique within the response, and the same from a replica and the router.
    func callID(_ index: Int, _ k: Int) -> String { "call_\(idSuffix)_\(index)_\(k)" }

    /// The id's unique part: after "resp_", or after the last "-" ("chatcmpl-…", "cmpl-…", a choice's "…-k").
    var idSuffix: String { id.hasPrefix("resp_") ? String(id.dropFirst(5)) : String(id.split(separator: "-").last ?? "") }

    /// One choice of a whole response.
    public struct Choice: Sendable {
        public var text: String
        public var finish: String
        public var logprobs: ChoiceRenderState

        public init(text: String, finish: String, logprobs: ChoiceRenderState) {
            self.text = text
            self.finish = finish
            self.logprobs = logprobs
        }
    }

    /// The whole response: its choices in index order, and the usage.
    public func whole(_ choices: [Choice], usage: Usage) -> String {
        if let responses, let c = choices.first { return responseObject(responses, text: c.text, finish: c.finish, usage: usage) }
        if chat {
            let items = choices.enumerated().map { i, c in
                var l = c.logprobs
                let (message, finish) = message(i, text: c.text, finish: c.finish)
                return ChatChoice(index: i, message: message, finishReason: finish, logprobs: l.takeChat())
            }
            return OpenAIWire.encode(ChatCompletion(id: id, object: "chat.completion", created: created, model: model, choices: items, usage: usage))
        }
        let items = choices.enumerated().map { i, c in
            var l = c.logprobs
            return TextChoice(index: i, text: c.text, finishReason: c.finish, logprobs: l.takeCompletion())
        }
        return OpenAIWire.encode(TextCompletion(id: id, object: "text_completion", created: created, model: model, choices: items, usage: usage))
    }

    /// Chat's first chunk of choice `index`: the assistant's role, empty content.
    public func roleChunk(_ index: Int) -> String {
        chatChunk(index, delta: ChatDelta(role: "assistant", content: ""), finish: nil, logprobs: nil)
    }

    /// The chunks of choice `index` with a piece of text (nil: its final chunk, which carries only the finish
    /// reason) and the log-probabilities gathered since its last chunk. A tool-call answer streams as OpenAI's do:
    /// each call's first chunk names it, the next ones carry pieces of its arguments as they are generated
    /// (`ToolCallStream`; an `auto` answer is held back until it is known to be a call or text). At the end the
    /// whole answer is read again: what it holds beyond what was sent goes in one more chunk. An answer that never
    /// began a call and is not a complete one is sent as text; one that began calls and was cut short ends with what
    /// was sent and its finish reason ("length").
    public func chunk(_ index: Int, text: String?, finish: String?, logprobs: inout ChoiceRenderState) -> [String] {
        if let tools, !logprobs.plainText {
            if let text {
                switch logprobs.toolPiece(text, tools: tools) {
                case .text(let released):  // not a call after all (auto): what was held, then the rest as it comes
                    return [singleChunk(index, text: released, finish: nil, logprobs: &logprobs)]
                case .calls(let events):
                    guard !events.isEmpty else { return [] }
                    let deltas = events.reduce(into: [ToolCallDelta]()) { out, e in
                        switch e {
                        case .begin(let k, let name): out.append(ToolCallDelta(index: k, id: callID(index, k), name: name, arguments: ""))
                        case .arguments(let k, let piece):
                            if let last = out.last, last.index == k { out[out.count - 1] = last.appending(piece) } else {
                                out.append(ToolCallDelta(index: k, arguments: piece))
                            }
                        }
                    }
                    return [chatChunk(index, delta: ChatDelta(toolCalls: deltas), finish: nil, logprobs: logprobs.takeChat())]
                }
            }
            let (message, reason) = message(index, text: logprobs.heldText, finish: finish ?? "")
            if let (rest, complete) = logprobs.remainingCalls(message.toolCalls) {
                // Calls were streamed: what the whole answer holds beyond them, then the finish (the answer's own
                // reason when it was cut short or went wrong after the calls began).
                logprobs.heldText = ""
                var out: [String] = []
                if !rest.isEmpty || !logprobs.isEmpty {
                    out.append(chatChunk(index, delta: ChatDelta(toolCalls: rest.isEmpty ? nil : rest), finish: nil, logprobs: logprobs.takeChat()))
                }
                return out + [chatChunk(index, delta: ChatDelta(), finish: complete ? reason : finish ?? "stop", logprobs: nil)]
            }
            let calls = message.toolCalls?.enumerated().map { k, c in
                ToolCallDelta(index: k, id: c.id, name: c.function.name, arguments: c.function.arguments)
            }
            let delta = calls.map { ChatDelta(toolCalls: $0) } ?? ChatDelta(content: logprobs.heldText)
            logprobs.heldText = ""
            return [chatChunk(index, delta: delta, finish: nil, logprobs: logprobs.takeChat()),
                    chatChunk(index, delta: ChatDelta(), finish: calls == nil ? finish : reason, logprobs: nil)]
        }
        return [singleChunk(index, text: text, finish: finish, logprobs: &logprobs)]
    }

    private func singleChunk(_ index: Int, text: String?, finish: String?, logprobs: inout ChoiceRenderState) -> String {
        if chat { return chatChunk(index, delta: ChatDelta(content: text), finish: finish, logprobs: logprobs.takeChat()) }
        return OpenAIWire.encode(TextCompletion(id: id, object: "text_completion", created: created, model: model,
                                                choices: [TextChoice(index: index, text: text ?? "", finishReason: finish,
                                                                     logprobs: logprobs.takeCompletion())],
                                                usage: runningUsage, nullUsage: usageChunkFollows))
    }

    /// The usage chunk (no choices) that ends a stream which asked for it.
    public func usageChunk(_ usage: Usage) -> String {
        chat ? OpenAIWire.encode(ChatCompletionChunk(id: id, object: "chat.completion.chunk", created: created, model: model, choices: [], usage: usage))
             : OpenAIWire.encode(TextCompletion(id: id, object: "text_completion", created: created, model: model, choices: [], usage: usage))
    }

    private func chatChunk(_ index: Int, delta: ChatDelta, finish: String?, logprobs: ChatLogprobs?) -> String {
        OpenAIWire.encode(ChatCompletionChunk(id: id, object: "chat.completion.chunk", created: created, model: model,
                                              choices: [ChatChunkChoice(index: index, delta: delta, finishReason: finish, logprobs: logprobs)],
                                              usage: runningUsage, nullUsage: usageChunkFollows))
    }
}
