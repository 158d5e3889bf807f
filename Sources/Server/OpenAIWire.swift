import Foundation
import Scheduling

// OpenAI's response shapes as values, rendered by one encoder (`OpenAIWire.encode`). Field names are
// OpenAI's snake_case (through the encoder's key strategy); fields OpenAI sends as `null` (`logprobs`, a
// running chunk's `finish_reason`, a base model's `parent`, an error's `param`/`code`) are encoded as
// explicit nulls, not left out. Requests are parsed by the strict parser in OpenAIRequest.swift, not here.
// These types stay in `Server` for now: a `ServingAPI` target (shared/DESIGN.md) is worth its public
// initializers once the router needs the same types.

enum OpenAIWire {
    /// The one JSON configuration of every response body and SSE event: snake_case keys, sorted so a body
    /// is the same bytes every time (Foundation's encoder does not keep declaration order), `/` unescaped.
    /// Its configuration is never changed after this, so sharing it across requests is safe.
    static let encoder: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.keyEncodingStrategy = .convertToSnakeCase
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return encoder
    }()

    /// `value` as JSON text.
    static func encode(_ value: some Encodable) -> String {
        do {
            return String(decoding: try encoder.encode(value), as: UTF8.self)
        } catch {
            // Only non-finite floating-point values fail to encode, and these types hold none.
            preconditionFailure("an OpenAI response did not encode: \(error)")
        }
    }
}

/// Token counts of one request.
struct Usage: Encodable, Equatable {
    let promptTokens: Int
    let completionTokens: Int
    let totalTokens: Int

    init(prompt: Int, completion: Int) {
        promptTokens = prompt
        completionTokens = completion
        totalTokens = prompt + completion
    }
}

/// The envelope shared by `text_completion`, `chat.completion` and `chat.completion.chunk` objects (a
/// completion chunk is a `text_completion` too). `usage` is left out where OpenAI leaves it out (chunks
/// before the usage chunk).
struct CompletionObject<Choice: Encodable>: Encodable {
    let id: String
    let object: String
    let created: Int
    let model: String
    let choices: [Choice]
    var usage: Usage?
}

/// `/v1/completions`, whole or as a chunk.
typealias TextCompletion = CompletionObject<TextChoice>
/// `/v1/chat/completions`, not streamed.
typealias ChatCompletion = CompletionObject<ChatChoice>
/// `/v1/chat/completions`, one SSE chunk.
typealias ChatCompletionChunk = CompletionObject<ChatChunkChoice>

/// A completion's choice: its text (all of it, or a chunk's piece), `finish_reason` null while it runs.
struct TextChoice: Encodable {
    var index = 0
    let text: String
    let finishReason: FinishReason?

    private enum CodingKeys: String, CodingKey { case index, text, logprobs, finishReason }

    func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(index, forKey: .index)
        try c.encode(text, forKey: .text)
        try c.encodeNil(forKey: .logprobs)
        try c.encode(finishReason?.rawValue, forKey: .finishReason)
    }
}

/// A chat message as OpenAI returns it.
struct AssistantMessage: Encodable {
    var role = "assistant"
    let content: String
}

/// A chat completion's choice.
struct ChatChoice: Encodable {
    var index = 0
    let message: AssistantMessage
    let finishReason: FinishReason

    private enum CodingKeys: String, CodingKey { case index, message, logprobs, finishReason }

    func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(index, forKey: .index)
        try c.encode(message, forKey: .message)
        try c.encodeNil(forKey: .logprobs)
        try c.encode(finishReason.rawValue, forKey: .finishReason)
    }
}

/// What a chat chunk adds to the message: the role (first chunk), a piece of content, or nothing (`{}`,
/// the final chunk with the finish reason).
struct ChatDelta: Encodable {
    var role: String?
    var content: String?
}

/// A chat chunk's choice.
struct ChatChunkChoice: Encodable {
    var index = 0
    let delta: ChatDelta
    let finishReason: FinishReason?

    private enum CodingKeys: String, CodingKey { case index, delta, logprobs, finishReason }

    func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(index, forKey: .index)
        try c.encode(delta, forKey: .delta)
        try c.encodeNil(forKey: .logprobs)
        try c.encode(finishReason?.rawValue, forKey: .finishReason)
    }
}

/// `/v1/models`.
struct ModelList: Encodable {
    var object = "list"
    let data: [ModelCard]
}

/// One served model: the base (`parent` null) or an adapter (`parent` the base), as vLLM lists them.
struct ModelCard: Encodable {
    let id: String
    var object = "model"
    let created: Int
    var ownedBy = "dlora"
    let root: String
    let parent: String?
    let maxModelLen: Int

    private enum CodingKeys: String, CodingKey { case id, object, created, ownedBy, root, parent, maxModelLen }

    func encode(to encoder: any Encoder) throws {
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
struct ErrorBody: Encodable {
    struct Detail: Encodable {
        let message: String
        let type: String
        let param: String?
        let code: String?

        private enum CodingKeys: String, CodingKey { case message, type, param, code }

        func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(message, forKey: .message)
            try c.encode(type, forKey: .type)
            try c.encode(param, forKey: .param)
            try c.encode(code, forKey: .code)
        }
    }

    let error: Detail
}

/// `/health`.
struct HealthStatus: Encodable {
    var status = "ok"
}
