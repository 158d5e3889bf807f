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
public struct Usage: Encodable, Equatable, Sendable {
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

/// `GET /version` (vLLM's): the server's version.
public struct VersionInfo: Encodable {
    /// dlora's release; bumped with the API's user-visible changes.
    public static let current = "0.1.0"
    public var version = VersionInfo.current

    public init() {}
}
