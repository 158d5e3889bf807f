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
/// completion chunk is a `text_completion` too). `usage` is left out where OpenAI leaves it out (chunks
/// before the usage chunk).
public struct CompletionObject<Choice: Encodable>: Encodable {
    public let id: String
    public let object: String
    public let created: Int
    public let model: String
    public let choices: [Choice]
    public var usage: Usage?

    public init(id: String, object: String, created: Int, model: String, choices: [Choice], usage: Usage? = nil) {
        self.id = id
        self.object = object
        self.created = created
        self.model = model
        self.choices = choices
        self.usage = usage
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

    public init(index: Int = 0, text: String, finishReason: String?) {
        self.index = index
        self.text = text
        self.finishReason = finishReason
    }

    private enum CodingKeys: String, CodingKey { case index, text, logprobs, finishReason }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(index, forKey: .index)
        try c.encode(text, forKey: .text)
        try c.encodeNil(forKey: .logprobs)
        try c.encode(finishReason, forKey: .finishReason)
    }
}

/// A chat message as OpenAI returns it.
public struct AssistantMessage: Encodable {
    public var role = "assistant"
    public let content: String

    public init(content: String) { self.content = content }
}

/// A chat completion's choice.
public struct ChatChoice: Encodable {
    public var index = 0
    public let message: AssistantMessage
    public let finishReason: String

    public init(index: Int = 0, message: AssistantMessage, finishReason: String) {
        self.index = index
        self.message = message
        self.finishReason = finishReason
    }

    private enum CodingKeys: String, CodingKey { case index, message, logprobs, finishReason }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(index, forKey: .index)
        try c.encode(message, forKey: .message)
        try c.encodeNil(forKey: .logprobs)
        try c.encode(finishReason, forKey: .finishReason)
    }
}

/// What a chat chunk adds to the message: the role (first chunk), a piece of content, or nothing (`{}`,
/// the final chunk with the finish reason).
public struct ChatDelta: Encodable {
    public var role: String?
    public var content: String?

    public init(role: String? = nil, content: String? = nil) {
        self.role = role
        self.content = content
    }
}

/// A chat chunk's choice.
public struct ChatChunkChoice: Encodable {
    public var index = 0
    public let delta: ChatDelta
    public let finishReason: String?

    public init(index: Int = 0, delta: ChatDelta, finishReason: String?) {
        self.index = index
        self.delta = delta
        self.finishReason = finishReason
    }

    private enum CodingKeys: String, CodingKey { case index, delta, logprobs, finishReason }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(index, forKey: .index)
        try c.encode(delta, forKey: .delta)
        try c.encodeNil(forKey: .logprobs)
        try c.encode(finishReason, forKey: .finishReason)
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
