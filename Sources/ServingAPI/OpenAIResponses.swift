import Foundation

// OpenAI's response shapes as values, rendered by one encoder (`OpenAIWire.encode`). Field names are
// OpenAI's snake_case (through the encoder's key strategy); fields OpenAI sends as `null` (`logprobs`, a
// running chunk's `finish_reason`, a base model's `parent`, an error's `param`/`code`) are encoded as
// explicit nulls, not left out. Wire types only: no logic, Foundation only (shared/DESIGN.md), so the
// replica server and the coming router render the same bytes. Requests are parsed by the strict parser in
// Server/OpenAIRequest.swift, not here.

public enum OpenAIWire {
    /// The one JSON configuration of every response body and SSE event: snake_case keys, sorted so a body
    /// is the same bytes every time (Foundation's encoder does not keep declaration order), `/` unescaped.
    /// Its configuration is never changed after this, so sharing it across requests is safe.
    public static let encoder: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.keyEncodingStrategy = .convertToSnakeCase
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return encoder
    }()

    /// `value` as JSON text.
    public static func encode(_ value: some Encodable) -> String {
        do {
            return String(decoding: try encoder.encode(value), as: UTF8.self)
        } catch {
            // Only non-finite floating-point values fail to encode, and these types hold none.
            preconditionFailure("an OpenAI response did not encode: \(error)")
        }
    }

    /// An array or dictionary of Foundation's JSON values (strings, numbers, Booleans, NSNull, arrays, dictionaries) as
    /// JSON in the same configuration: keys sorted, `/` unescaped. Only such values are passed, so the fallback
    /// (`null`) is never taken.
    public static func data(_ value: Any) -> Data {
        (try? JSONSerialization.data(withJSONObject: value, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data("null".utf8)
    }

    /// `data(value)` as text.
    public static func text(_ value: Any) -> String { String(decoding: data(value), as: UTF8.self) }
}

/// Token counts of one request.
public struct Usage: Encodable, Equatable {
    public let promptTokens: Int
    public let completionTokens: Int
    public let totalTokens: Int

    public init(prompt: Int, completion: Int) {
        promptTokens = prompt
        completionTokens = completion
        totalTokens = prompt + completion
    }
}

/// The envelope shared by `text_completion`, `chat.completion` and `chat.completion.chunk` objects (a
/// completion chunk is a `text_completion` too). Without usage, `usage` is left out, or (`nullUsage`) written as
/// null: OpenAI's chunks before the usage chunk of a stream that asked for one (`stream_options.include_usage`).
public struct CompletionObject<Choice: Encodable>: Encodable {
    public let id: String
    public let object: String
    public let created: Int
    public let model: String
    public let choices: [Choice]
    public var usage: Usage?
    /// Without usage: `"usage": null` rather than no key.
    public var nullUsage: Bool

    public init(id: String, object: String, created: Int, model: String, choices: [Choice], usage: Usage? = nil, nullUsage: Bool = false) {
        self.id = id
        self.object = object
        self.created = created
        self.model = model
        self.choices = choices
        self.usage = usage
        self.nullUsage = nullUsage
    }

    private enum CodingKeys: String, CodingKey { case id, object, created, model, choices, usage }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(id, forKey: .id)
        try c.encode(object, forKey: .object)
        try c.encode(created, forKey: .created)
        try c.encode(model, forKey: .model)
        try c.encode(choices, forKey: .choices)
        if let usage { try c.encode(usage, forKey: .usage) } else if nullUsage { try c.encodeNil(forKey: .usage) }
    }
}

/// `/v1/completions`, whole or as a chunk.
public typealias TextCompletion = CompletionObject<TextChoice>
/// `/v1/chat/completions`, not streamed.
public typealias ChatCompletion = CompletionObject<ChatChoice>
/// `/v1/chat/completions`, one SSE chunk.
public typealias ChatCompletionChunk = CompletionObject<ChatChunkChoice>

/// A completion's choice: its text (all of it, or a chunk's piece), `finish_reason` null while it runs.
public struct TextChoice: Encodable {
    public var index = 0
    public let text: String
    public let finishReason: String?
    /// With `logprobs` asked for: those of this choice's (or chunk's) tokens; else null.
    public var logprobs: CompletionLogprobs?

    public init(index: Int = 0, text: String, finishReason: String?, logprobs: CompletionLogprobs? = nil) {
        self.index = index
        self.text = text
        self.finishReason = finishReason
        self.logprobs = logprobs
    }

    private enum CodingKeys: String, CodingKey { case index, text, logprobs, finishReason }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(index, forKey: .index)
        try c.encode(text, forKey: .text)
        try c.encode(logprobs, forKey: .logprobs)
        try c.encode(finishReason, forKey: .finishReason)
    }
}

/// A chat message as OpenAI returns it: text, or (content null) the tool calls it makes.
public struct AssistantMessage: Encodable {
    public var role = "assistant"
    public let content: String?
    public var toolCalls: [ToolCall]?

    public init(content: String?, toolCalls: [ToolCall]? = nil) {
        self.content = content
        self.toolCalls = toolCalls
    }

    private enum CodingKeys: String, CodingKey { case role, content, toolCalls }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(role, forKey: .role)
        try c.encode(content, forKey: .content)
        try c.encodeIfPresent(toolCalls, forKey: .toolCalls)
    }
}

/// A chat completion's choice.
public struct ChatChoice: Encodable {
    public var index = 0
    public let message: AssistantMessage
    public let finishReason: String
    public var logprobs: ChatLogprobs?

    public init(index: Int = 0, message: AssistantMessage, finishReason: String, logprobs: ChatLogprobs? = nil) {
        self.index = index
        self.message = message
        self.finishReason = finishReason
        self.logprobs = logprobs
    }

    private enum CodingKeys: String, CodingKey { case index, message, logprobs, finishReason }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(index, forKey: .index)
        try c.encode(message, forKey: .message)
        try c.encode(logprobs, forKey: .logprobs)
        try c.encode(finishReason, forKey: .finishReason)
    }
}

/// What a chat chunk adds to the message: the role (first chunk), a piece of content, or nothing (`{}`,
/// the final chunk with the finish reason).
public struct ChatDelta: Encodable {
    public var role: String?
    public var content: String?
    public var toolCalls: [ToolCallDelta]?

    public init(role: String? = nil, content: String? = nil, toolCalls: [ToolCallDelta]? = nil) {
        self.role = role
        self.content = content
        self.toolCalls = toolCalls
    }
}

/// A chat chunk's choice.
public struct ChatChunkChoice: Encodable {
    public var index = 0
    public let delta: ChatDelta
    public let finishReason: String?
    public var logprobs: ChatLogprobs?

    public init(index: Int = 0, delta: ChatDelta, finishReason: String?, logprobs: ChatLogprobs? = nil) {
        self.index = index
        self.delta = delta
        self.finishReason = finishReason
        self.logprobs = logprobs
    }

    private enum CodingKeys: String, CodingKey { case index, delta, logprobs, finishReason }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(index, forKey: .index)
        try c.encode(delta, forKey: .delta)
        try c.encode(logprobs, forKey: .logprobs)
        try c.encode(finishReason, forKey: .finishReason)
    }
}

/// One generated token's log-probability as chat's `logprobs.content[]` gives it: its text, its bytes (the
/// text may end inside a UTF-8 character: then the text has U+FFFD and the bytes are exact), and the most likely
/// tokens at its position. The replica wire carries the same record per token (`ReplicaEvent.logprobs`).
public struct TokenLogprob: Codable, Sendable, Equatable {
    public var token: String
    public var logprob: Double
    public var bytes: [Int]
    public var topLogprobs: [TopLogprob]

    public init(token: String, logprob: Double, bytes: [Int], topLogprobs: [TopLogprob]) {
        self.token = token
        self.logprob = logprob
        self.bytes = bytes
        self.topLogprobs = topLogprobs
    }

    /// What a −∞ log-probability is reported as (JSON has no infinity; vLLM's choice).
    public static let floor = -9999.0

    public static func finite(_ x: Double) -> Double { x.isFinite ? max(x, floor) : floor }
}

public struct TopLogprob: Codable, Sendable, Equatable {
    public var token: String
    public var logprob: Double
    public var bytes: [Int]

    public init(token: String, logprob: Double, bytes: [Int]) {
        self.token = token
        self.logprob = logprob
        self.bytes = bytes
    }
}

/// A chat choice's (or chunk's) `logprobs`: `{"content": [...], "refusal": null}`.
public struct ChatLogprobs: Encodable, Equatable, Sendable {
    public let content: [TokenLogprob]

    public init(content: [TokenLogprob]) { self.content = content }

    private enum CodingKeys: String, CodingKey { case content, refusal }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(content, forKey: .content)
        try c.encodeNil(forKey: .refusal)
    }
}

/// A completion choice's (or chunk's) `logprobs`, the legacy shape: parallel lists of the tokens' texts, their
/// log-probabilities, the most likely tokens at each position (text → log-probability, the sampled token
/// included, as OpenAI's completions list it), and each token's character offset in the completion's text.
public struct CompletionLogprobs: Encodable, Equatable, Sendable {
    public let tokens: [String]
    /// null for an echoed prompt's first token (nothing precedes it to predict it).
    public let tokenLogprobs: [Double?]
    public let topLogprobs: [[String: Double]?]
    public let textOffset: [Int]

    /// From the tokens' records; `offset`: the characters of the completion before the first of them (a stream
    /// carries on from its earlier chunks); `leading`: the text of a token before them that has no
    /// log-probability (an echoed prompt's first).
    public init(_ entries: [TokenLogprob], offset: Int, leading: String? = nil) {
        tokens = (leading.map { [$0] } ?? []) + entries.map(\.token)
        tokenLogprobs = (leading.map { _ in [nil] } ?? []) + entries.map(\.logprob)
        topLogprobs = (leading.map { _ in [nil] } ?? []) + entries.map { e in
            var top: [String: Double] = [:]
            for t in e.topLogprobs where top[t.token] == nil { top[t.token] = t.logprob }
            if top[e.token] == nil { top[e.token] = e.logprob }
            return top
        }
        var offsets: [Int] = []
        var at = offset
        for t in tokens {
            offsets.append(at)
            at += t.unicodeScalars.count
        }
        textOffset = offsets
    }

    /// The characters the tokens' texts span (where the next chunk's offsets start).
    public var characters: Int { tokens.reduce(0) { $0 + $1.unicodeScalars.count } }
}

/// An echoed prompt (completions' `echo`), as the replica sends it to the router with the request's first token:
/// its text, and with `logprobs` its first token's text (which has no log-probability) and the others' records.
public struct PromptEcho: Codable, Sendable, Equatable {
    public var text: String
    public var firstToken: String?
    public var logprobs: [TokenLogprob]?

    public init(text: String, firstToken: String? = nil, logprobs: [TokenLogprob]? = nil) {
        self.text = text
        self.firstToken = firstToken
        self.logprobs = logprobs
    }
}

/// `/v1/models`.
public struct ModelList: Encodable {
    public var object = "list"
    public let data: [ModelCard]

    public init(data: [ModelCard]) { self.data = data }
}

/// One served model: the base (`parent` null) or an adapter (`parent` the base), as vLLM lists them.
public struct ModelCard: Encodable {
    public let id: String
    public var object = "model"
    public let created: Int
    public var ownedBy = "dlora"
    public let root: String
    public let parent: String?
    public let maxModelLen: Int

    public init(id: String, created: Int, root: String, parent: String?, maxModelLen: Int) {
        self.id = id
        self.created = created
        self.root = root
        self.parent = parent
        self.maxModelLen = maxModelLen
    }

    private enum CodingKeys: String, CodingKey { case id, object, created, ownedBy, root, parent, maxModelLen }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(id, forKey: .id)
        try c.encode(object, forKey: .object)
        try c.encode(created, forKey: .created)
        try c.encode(ownedBy, forKey: .ownedBy)
        try c.encode(root, forKey: .root)
        try c.encode(parent, forKey: .parent)
        try c.encode(maxModelLen, forKey: .maxModelLen)
    }
}

/// `{"error": {"message", "type", "param", "code"}}`, `param` and `code` null when there is none.
public struct ErrorBody: Encodable {
    public struct Detail: Encodable {
        public let message: String
        public let type: String
        public let param: String?
        public let code: String?

        public init(message: String, type: String, param: String?, code: String?) {
            self.message = message
            self.type = type
            self.param = param
            self.code = code
        }

        private enum CodingKeys: String, CodingKey { case message, type, param, code }

        public func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(message, forKey: .message)
            try c.encode(type, forKey: .type)
            try c.encode(param, forKey: .param)
            try c.encode(code, forKey: .code)
        }
    }

    public let error: Detail

    public init(error: Detail) { self.error = error }
}

/// `/health`.
public struct HealthStatus: Encodable {
    public var status = "ok"

    public init() {}
}

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
                                                nullUsage: usageChunkFollows))
    }

    /// The usage chunk (no choices) that ends a stream which asked for it.
    public func usageChunk(_ usage: Usage) -> String {
        chat ? OpenAIWire.encode(ChatCompletionChunk(id: id, object: "chat.completion.chunk", created: created, model: model, choices: [], usage: usage))
             : OpenAIWire.encode(TextCompletion(id: id, object: "text_completion", created: created, model: model, choices: [], usage: usage))
    }

    private func chatChunk(_ index: Int, delta: ChatDelta, finish: String?, logprobs: ChatLogprobs?) -> String {
        OpenAIWire.encode(ChatCompletionChunk(id: id, object: "chat.completion.chunk", created: created, model: model,
                                              choices: [ChatChunkChoice(index: index, delta: delta, finishReason: finish, logprobs: logprobs)],
                                              nullUsage: usageChunkFollows))
    }
}
