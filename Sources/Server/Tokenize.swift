import Foundation
import HTTPFront
import Hummingbird
import ServingAPI
import Tokenizers

// vLLM's tokenizer endpoints, which clients use to count a prompt's tokens before they send it:
//   POST /tokenize    {"model"?, "prompt": "…" | "messages": [...], "add_special_tokens"?, "add_generation_prompt"?,
//                      "return_token_strs"?}  →  {"count", "max_model_len", "tokens", "token_strs"}
//   POST /detokenize  {"model"?, "tokens": [ids]}  →  {"prompt": "…"}
// The tokens are exactly those a generation request's prompt becomes: a prompt with the tokenizer's special tokens
// (BOS) unless `add_special_tokens` is false; messages through the chat template, as chat renders them (control
// tokens typed in a message stay text), with the assistant's turn opened unless `add_generation_prompt` is false.
// `model` (the base or an adapter: they share the tokenizer) must be one this server serves when given.

extension OpenAIServer {
    /// The most tokens `/detokenize` takes.
    static let maxDetokenize = 1 << 20

    /// A body's fields, read exactly (a Boolean is not a number), only `known` keys allowed, `model` checked.
    private func tokenizerBody(_ request: Request, known: Set<String>) async throws -> JSONFields {
        try authorize(request, key: options.apiKey)
        var request = request
        let fields = try JSONFields(members: try JSONFields.parseObject(try await collect(&request)))
        if let key = fields.fields.keys.sorted().first(where: { !known.contains($0) }) {
            throw APIError.invalid(JSONFields.printable(key), "unrecognized request argument '\(JSONFields.printable(key))'")
        }
        if let name = try fields.string("model") { _ = try await resolveModel(name) }
        return fields
    }

    func tokenize(_ request: Request) async throws -> Response {
        let fields = try await tokenizerBody(request, known: ["model", "prompt", "messages", "add_special_tokens", "add_generation_prompt",
                                                             "return_token_strs", "tools", "tool_choice", "parallel_tool_calls",
                                                             "continue_final_message", "chat_template_kwargs"])
        if fields.fields["prompt"] != nil, fields.fields["tools"] != nil { throw APIError.invalid("tools", "tools go with 'messages'") }
        let ids: [Int]
        switch (fields.fields["prompt"], fields.fields["messages"]) {
        case (.string(let prompt)?, nil):
            let special = try fields.bool("add_special_tokens") ?? true
            guard prompts.minimumTokens(bytes: prompt.utf8.count) <= contextLimit else {
                throw APIError.invalid("prompt", "the prompt is longer than the context (\(contextLimit) tokens)", code: "context_length_exceeded")
            }
            ids = await prompts.encode(prompt, addSpecial: special)
        case (nil, .some):
            // The messages checked as a chat request checks them; with tools, their description in the system message
            // as chat writes it (vLLM's /tokenize takes `tools` too).
            var list = try GenerationRequest.messages(fields)
            if let call = try GenerationRequest.toolCalls(fields) { list = GenerationRequest.withToolPrompt(list, call.prompt) }
            let rendered = try renderChat(list, try GenerationRequest.chatOptions(fields, messages: list))
            guard prompts.minimumTokens(bytes: rendered.text.utf8.count) <= contextLimit else {
                throw APIError.invalid("messages", "the conversation is longer than the context (\(contextLimit) tokens)", code: "context_length_exceeded")
            }
            ids = await prompts.encode(rendered)
        case (nil, nil): throw APIError.invalid("prompt", "'prompt' (a string) or 'messages' is required")
        case (.some, .some): throw APIError.invalid("messages", "give 'prompt' or 'messages', not both")
        default: throw APIError.invalid("prompt", "prompt must be a string")
        }
        var answer: [String: Any] = ["count": ids.count, "max_model_len": contextLimit, "tokens": ids, "token_strs": NSNull()]
        if try fields.bool("return_token_strs") ?? false { answer["token_strs"] = ids.map { tokenizer.logprobText($0).text } }
        return json(.ok, OpenAIWire.text(answer))
    }

    func detokenize(_ request: Request) async throws -> Response {
        let fields = try await tokenizerBody(request, known: ["model", "tokens"])
        guard case .array(let list)? = fields.fields["tokens"] else { throw APIError.invalid("tokens", "'tokens' (an array of token ids) is required") }
        guard list.count <= Self.maxDetokenize else { throw APIError.invalid("tokens", "at most \(Self.maxDetokenize) tokens") }
        let vocab = tokenizer.vocabSize
        let ids = try list.map { v -> Int in
            guard case .int(let i) = v, (0..<vocab).contains(i) else {
                throw APIError.invalid("tokens", "every token must be an integer id from 0 to \(vocab - 1)")
            }
            return i
        }
        return json(.ok, OpenAIWire.text(["prompt": tokenizer.decode(ids, skipSpecial: false)]))
    }
}
