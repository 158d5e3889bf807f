import HTTPFront
import Hummingbird
import Engine
import Foundation
import Models
import ServingAPI
import Tokenizers

/// A parsed `/v1/completions` or `/v1/chat/completions` body. Parsing is strict: every key is known, every
/// value has the type and range OpenAI documents, and a parameter this server does not implement is a 400
/// that names it (accepted only at its no-op default).
struct GenerationRequest: Equatable {
    enum Input: Equatable {
        case text(String)
        case tokens([Int])
        case messages([ChatMessage])
    }

    var model: String
    /// The prompts: one, or a completions batch (OpenAI's array of prompts), each run as requests of its own.
    var inputs: [Input]
    /// The first (the only one but in a completions batch).
    var input: Input { inputs[0] }
    /// Sampling parameters; `maxTokens` is nil when the client gave none (the server picks the default).
    var params: SamplingParams
    var stream = false
    var includeUsage = false
    /// vLLM's `stream_options.continuous_usage_stats` (with `include_usage`): every chunk carries the usage so far.
    var continuousUsage = false
    var user: String?
    /// dlora's extension for MoLE compositions: the experts to use (the others' gates are 0, the rest renormalise).
    var moleExperts: [String]?
    /// Completions' `echo`: the prompt comes back ahead of the completion (with `logprobs`, its tokens' too).
    var echo = false
    /// Choices to generate for the prompt (OpenAI's `n`), each its own engine request.
    var n = 1
    /// Chat's tool calls: what the answer is (the output is constrained to it; `params.grammar`).
    var tools: ToolCallMode?
    /// The parameter that set `params.maxTokens`, for errors about it ("max_tokens", or chat's "max_completion_tokens").
    var maxTokensParam = "max_tokens"
    /// Chat's template controls (vLLM's): open the assistant's turn, or continue the final (assistant) message, and
    /// the template's own variables (`chat_template_kwargs`).
    var chat = ChatOptions()

    struct ChatOptions: Equatable {
        var addGenerationPrompt = true
        var continueFinalMessage = false
        var templateArguments: [(key: String, value: ExactJSON)] = []

        static func == (a: ChatOptions, b: ChatOptions) -> Bool {
            a.addGenerationPrompt == b.addGenerationPrompt && a.continueFinalMessage == b.continueFinalMessage
                && a.templateArguments.map(\.key) == b.templateArguments.map(\.key)
                && a.templateArguments.map(\.value) == b.templateArguments.map(\.value)
        }
    }

    /// The most choices one request may ask for (OpenAI's limit).
    static let maxChoices = 128

    var isChat: Bool {
        if case .messages = input { return true }
        return false
    }

    /// Keys accepted in both endpoints, and the per-endpoint ones.
    private static let commonKeys: Set<String> = [
        "model", "max_tokens", "temperature", "top_p", "top_k", "stop", "seed", "n", "user", "stream", "stream_options",
        "presence_penalty", "frequency_penalty", "logit_bias", "logprobs", "ignore_eos", "mole_experts",
        // vLLM's sampling extensions.
        "repetition_penalty", "min_p", "min_tokens", "stop_token_ids", "response_format", "guided_json", "guided_choice",
        "guided_regex", "structured_outputs",
    ]
    private static let completionKeys: Set<String> = ["prompt", "echo", "best_of", "suffix"]
    /// OpenAI chat parameters not implemented here: a 400 with a value, nothing when null.
    private static let openAIUnimplementedKeys: Set<String> = [
        "reasoning_effort", "modalities", "prediction", "audio", "web_search_options", "verbosity", "prompt_cache_key",
        "safety_identifier", "function_call", "functions",
    ]
    private static let chatKeys: Set<String> = [
        "messages", "max_completion_tokens", "top_logprobs", "tools", "tool_choice",
        "parallel_tool_calls", "store", "metadata", "service_tier",
        // vLLM's chat-template controls.
        "add_generation_prompt", "continue_final_message", "chat_template_kwargs", "skip_special_tokens",
    ]

    /// Parses a body. `chat` selects the endpoint's shape.
    static func parse(_ body: ByteBuffer, chat: Bool) throws -> GenerationRequest {
        let members = try JSONFields.parseObject(body)
        let f = try JSONFields(members: members)
        let allowed = commonKeys.union(chat ? chatKeys : completionKeys)
        for (key, value) in members where !allowed.contains(key) {
            // OpenAI's own parameters that this server does not implement are accepted as null (the SDKs and some
            // clients send every parameter, unset ones as null), and refused with any value.
            if value == .null && openAIUnimplementedKeys.contains(key) { continue }
            throw APIError.invalid(key, "unrecognized request argument '\(JSONFields.printable(key))'")
        }
        guard let model = try f.string("model") else { throw APIError.invalid("model", "'model' is required") }
        guard !model.isEmpty, model.utf8.count <= 256 else { throw APIError.invalid("model", "'model' must be 1 to 256 bytes") }

        var inputs: [Input]
        if chat {
            inputs = [.messages(try messages(f))]
        } else {
            inputs = try prompts(f)
        }

        var params = SamplingParams()
        params.maxTokens = try f.int("max_tokens", in: 1...Int(Int32.max))
        var maxTokensParam = "max_tokens"
        if chat, let m = try f.int("max_completion_tokens", in: 1...Int(Int32.max)) {
            guard params.maxTokens == nil || params.maxTokens == m else {
                throw APIError.invalid("max_completion_tokens", "max_tokens and max_completion_tokens disagree")
            }
            if params.maxTokens == nil { maxTokensParam = "max_completion_tokens" }
            params.maxTokens = m
        }
        params.temperature = try f.number("temperature", in: 0...2) ?? 1
        params.topP = try f.number("top_p", in: 0...1) ?? 1
        guard params.topP > 0 else { throw APIError.invalid("top_p", "top_p must be greater than 0") }
        // vLLM spells "no top-k" as -1 (and 0).
        let topK = try f.int("top_k", in: -1...Int(Int32.max)) ?? 0
        params.topK = max(0, topK)
        if let seed = try f.int("seed", in: Int.min...Int.max) { params.seed = UInt64(bitPattern: Int64(seed)) }
        params.stop = try stops(f)
        let n = try f.int("n", in: 1...maxChoices) ?? 1
        let user = try f.string("user")
        if let user, user.utf8.count > 256 { throw APIError.invalid("user", "'user' must be at most 256 bytes") }
        params.ignoreEOS = try f.bool("ignore_eos") ?? false  // vLLM's extension: generate past end-of-sequence
        let stream = try f.bool("stream") ?? false
        var includeUsage = false, continuousUsage = false
        if let options = f.fields["stream_options"], options != .null {
            guard case .object(let o) = options else { throw APIError.invalid("stream_options", "stream_options must be an object") }
            for (key, value) in o {
                guard key == "include_usage" || key == "continuous_usage_stats" else {
                    throw APIError.invalid("stream_options", "unrecognized stream option '\(JSONFields.printable(key))'")
                }
                guard case .bool(let b) = value else { throw APIError.invalid("stream_options", "\(key) must be a boolean") }
                if key == "include_usage" { includeUsage = b } else { continuousUsage = b }
            }
            guard stream else { throw APIError.invalid("stream_options", "stream_options is only allowed with stream = true") }
        }

        params.presencePenalty = try f.number("presence_penalty", in: -2...2) ?? 0
        params.frequencyPenalty = try f.number("frequency_penalty", in: -2...2) ?? 0
        params.logitBias = try logitBias(f)
        params.repetitionPenalty = try f.number("repetition_penalty", in: 0...10) ?? 1
        guard params.repetitionPenalty > 0 else { throw APIError.invalid("repetition_penalty", "repetition_penalty must be greater than 0") }
        params.minP = try f.number("min_p", in: 0...1) ?? 0
        params.minTokens = try f.int("min_tokens", in: 0...Int(Int32.max)) ?? 0
        if let m = params.maxTokens, params.minTokens > m {
            throw APIError.invalid("min_tokens", "min_tokens (\(params.minTokens)) must not exceed max_tokens (\(m))")
        }
        params.stopTokenIDs = try stopTokenIDs(f)
        params.logprobs = try logprobs(f, chat: chat)
        let echo = chat ? false : try f.bool("echo") ?? false
        if echo { params.promptLogprobs = params.logprobs }

        // Accepted only at their defaults: what the engine does not implement is refused, never ignored.
        try f.noOp("best_of") { $0 == .int(1) }
        try f.noOp("suffix") { $0 == .string("") }
        params.grammar = try structuredOutput(f)
        var tools: ToolCallMode?
        if chat, case .messages(var messages) = inputs[0], let call = try toolCalls(f) {
            guard params.grammar == nil else {
                throw APIError.invalid("tool_choice", "a tool call cannot be combined with response_format, guided_json or guided_choice")
            }
            guard params.logprobs == nil else { throw APIError.invalid("logprobs", "logprobs cannot be combined with a tool call") }
            tools = call.mode
            params.grammar = call.grammar
            // A call is its grammar's to end: stop strings apply to an "auto" answer's text only, never inside a call
            // (a stop matched there returned the call's syntax cut short as content).
            switch call.mode {
            case .auto: params.stopExemptPrefix = ToolCallMode.marker
            case .named, .required: params.stop = []
            }
            messages = Self.withToolPrompt(messages, call.prompt)
            inputs = [.messages(messages)]
        }
        try f.noOp("store") { $0 == .bool(false) }
        try f.noOp("metadata") { if case .object = $0 { return true } else { return false } }
        // OpenAI's processing tiers: one tier here, so "auto" and "default" are what every request gets.
        try f.noOp("service_tier") { $0 == .string("auto") || $0 == .string("default") }

        var moleExperts: [String]?
        if let value = f.fields["mole_experts"], value != .null {
            guard case .array(let items) = value, (1...64).contains(items.count) else {
                throw APIError.invalid("mole_experts", "mole_experts must be an array of 1 to 64 expert names")
            }
            moleExperts = try items.map { item in
                guard case .string(let s) = item, !s.isEmpty, s.utf8.count <= 256 else {
                    throw APIError.invalid("mole_experts", "mole_experts must hold expert names (strings of 1 to 256 bytes)")
                }
                return s
            }
        }

        var chatOptions = ChatOptions()
        if chat, case .messages(let messages) = inputs[0] {
            chatOptions = try Self.chatOptions(f, messages: messages)
        }
        // The text leaves out special tokens (vLLM's default); keeping them is not implemented.
        try f.noOp("skip_special_tokens") { $0 == .bool(true) }

        guard inputs.count * n <= maxChoices * 8 else {
            throw APIError.invalid("n", "\(inputs.count) prompts × n = \(n) asks for \(inputs.count * n) completions; at most \(maxChoices * 8)")
        }
        return GenerationRequest(model: model, inputs: inputs, params: params, stream: stream, includeUsage: includeUsage,
                                 continuousUsage: includeUsage && continuousUsage, user: user,
                                 moleExperts: moleExperts, echo: echo, n: n, tools: tools, maxTokensParam: maxTokensParam, chat: chatOptions)
    }

    /// vLLM's chat-template controls: `add_generation_prompt` (default true), `continue_final_message` (default false:
    /// the prompt ends inside the final message, which the model continues — a prefilled answer; add_generation_prompt
    /// must then be false, its default there), `chat_template_kwargs` (an object of the template's own variables; not
    /// one the template is given).
    static func chatOptions(_ f: JSONFields, messages: [ChatMessage]) throws -> ChatOptions {
        var o = ChatOptions()
        o.continueFinalMessage = try f.bool("continue_final_message") ?? false
        o.addGenerationPrompt = try f.bool("add_generation_prompt") ?? !o.continueFinalMessage
        if o.continueFinalMessage && o.addGenerationPrompt {
            throw APIError.invalid("continue_final_message", "continue_final_message and add_generation_prompt cannot both be true")
        }
        if let value = f.fields["chat_template_kwargs"], value != .null {
            guard case .object(let members) = value else {
                throw APIError.invalid("chat_template_kwargs", "chat_template_kwargs must be an object")
            }
            for (key, _) in members where ChatTemplate.reservedArguments.contains(key) {
                throw APIError.invalid("chat_template_kwargs", "chat_template_kwargs cannot set '\(key)', which the template is given")
            }
            o.templateArguments = members
        }
        return o
    }

    /// `logit_bias`: token ids (as JSON keys, decimal) to biases in −100…100. Ids beyond the vocabulary are refused
    /// where the vocabulary is known (`OpenAIServer.prepare`).
    private static func logitBias(_ f: JSONFields) throws -> [Int: Double] {
        guard let value = f.fields["logit_bias"], value != .null else { return [:] }
        guard case .object(let members) = value else {
            throw APIError.invalid("logit_bias", "logit_bias must be an object mapping token ids to biases")
        }
        guard members.count <= SamplingParams.maxLogitBias else {
            throw APIError.invalid("logit_bias", "logit_bias may name at most \(SamplingParams.maxLogitBias) tokens, got \(members.count)")
        }
        var bias: [Int: Double] = [:]
        for (key, v) in members {
            guard !key.isEmpty, key.utf8.count <= 10, key.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), let id = Int(key) else {
                throw APIError.invalid("logit_bias", "logit_bias keys must be token ids (non-negative integers), got '\(JSONFields.printable(key))'")
            }
            let b: Double
            switch v {
            case .int(let i): b = Double(i)
            case .double(let d): b = d
            default: throw APIError.invalid("logit_bias", "logit_bias values must be numbers, got a non-number for token \(id)")
            }
            guard b.isFinite, abs(b) <= 100 else {
                throw APIError.invalid("logit_bias", "logit_bias values must be between -100 and 100, got \(b) for token \(id)")
            }
            guard bias.updateValue(b, forKey: id) == nil else {
                throw APIError.invalid("logit_bias", "logit_bias names token \(id) twice")
            }
        }
        return bias
    }

    /// vLLM's `stop_token_ids`: at most 64 token ids (checked against the vocabulary where it is known).
    private static func stopTokenIDs(_ f: JSONFields) throws -> [Int] {
        guard let value = f.fields["stop_token_ids"], value != .null else { return [] }
        guard case .array(let items) = value, items.count <= 64 else {
            throw APIError.invalid("stop_token_ids", "stop_token_ids must be an array of at most 64 token ids")
        }
        return try items.map { item in
            guard case .int(let id) = item, id >= 0, id <= Int(Int32.max) else {
                throw APIError.invalid("stop_token_ids", "stop_token_ids must hold non-negative integers")
            }
            return id
        }
    }

    /// The alternatives per token to report (`SamplingParams.logprobs`): chat's `logprobs` (a boolean) with
    /// `top_logprobs` (0…20); completions' `logprobs` (an integer, 0…20; `false` as none, as some clients send it).
    private static func logprobs(_ f: JSONFields, chat: Bool) throws -> Int? {
        let limit = SamplingParams.maxLogprobs
        if chat {
            let on = try f.bool("logprobs") ?? false
            let top = try f.int("top_logprobs", in: 0...limit)
            if let top, top > 0, !on {
                throw APIError.invalid("top_logprobs", "top_logprobs requires logprobs to be true")
            }
            return on ? (top ?? 0) : nil
        }
        if f.fields["logprobs"] == .bool(false) { return nil }
        if case .bool? = f.fields["logprobs"] {
            throw APIError.invalid("logprobs", "'logprobs' must be an integer (the alternatives to list per token, 0 to \(limit))")
        }
        return try f.int("logprobs", in: 0...limit)
    }

    /// The most prompts one completions request may batch.
    static let maxPrompts = 256

    /// `prompt`: a string, token ids, or a batch — an array of strings, or of token-id arrays (OpenAI's shapes).
    private static func prompts(_ f: JSONFields) throws -> [Input] {
        guard let value = f.fields["prompt"], value != .null else { throw APIError.invalid("prompt", "'prompt' is required") }
        switch value {
        case .string(let s):
            return [.text(s)]
        case .array(let items):
            func isString(_ v: ExactJSON) -> Bool { if case .string = v { return true } else { return false } }
            func isArray(_ v: ExactJSON) -> Bool { if case .array = v { return true } else { return false } }
            if !items.isEmpty && (items.allSatisfy(isString) || items.allSatisfy(isArray)) {
                guard items.count <= maxPrompts else {
                    throw APIError.invalid("prompt", "a batch holds at most \(maxPrompts) prompts, got \(items.count)")
                }
                return try items.map { item in
                    switch item {
                    case .string(let s): return .text(s)
                    case .array(let inner): return .tokens(try tokenIDs(inner))
                    default: preconditionFailure("checked above")
                    }
                }
            }
            if items.contains(where: { isString($0) || isArray($0) }) {
                throw APIError.invalid("prompt", "a batch of prompts must be all strings or all arrays of token ids")
            }
            return [.tokens(try tokenIDs(items))]
        default:
            throw APIError.invalid("prompt", "'prompt' must be a string, an array of token ids, or an array of either")
        }
    }

    private static func tokenIDs(_ items: [ExactJSON]) throws -> [Int] {
        try items.map { item in
            guard case .int(let id) = item, id >= 0, id <= Int(Int32.max) else {
                throw APIError.invalid("prompt", "token ids must be non-negative integers")
            }
            return id
        }
    }

    /// The functions, and what to answer, in the system message (appended to the client's, or a new one first): what a
    /// chat request with tools renders, and what `/tokenize` counts for one.
    static func withToolPrompt(_ messages: [ChatMessage], _ prompt: String) -> [ChatMessage] {
        var messages = messages
        if messages.first?.role == "system" {
            messages[0].content += "\n\n" + prompt
        } else {
            messages.insert(ChatMessage(role: "system", content: prompt), at: 0)
        }
        return messages
    }

    static func messages(_ f: JSONFields) throws -> [ChatMessage] {
        guard let value = f.fields["messages"], value != .null else { throw APIError.invalid("messages", "'messages' is required") }
        guard case .array(let items) = value, !items.isEmpty else {
            throw APIError.invalid("messages", "'messages' must be a non-empty array")
        }
        // The functions earlier answers called, by call id (a tool result names its call).
        var called: [String: String] = [:]
        return try items.enumerated().map { i, item in
            let param = "messages[\(i)]"
            guard case .object(let members) = item else { throw APIError.invalid(param, "\(param) must be an object") }
            var role: String?
            var contentValue: ExactJSON?
            var echoed: String?
            var calls: [(id: String, name: String, arguments: String)] = []
            var callID: String?
            for (key, v) in members {
                switch key {
                case "role":
                    guard case .string(let r) = v else { throw APIError.invalid("\(param).role", "\(param).role must be a string") }
                    role = r
                case "content" where v == .null:
                    break
                case "content":
                    contentValue = v
                case "name":
                    guard case .string = v else { throw APIError.invalid("\(param).name", "\(param).name must be a string") }
                case "tool_calls" where v != .null && v != .array([]):
                    calls = try toolCallHistory(v, param: "\(param).tool_calls")
                    echoed = echoed ?? key
                case "tool_call_id":
                    guard case .string(let id) = v, !id.isEmpty else {
                        throw APIError.invalid("\(param).tool_call_id", "\(param).tool_call_id must be a non-empty string")
                    }
                    callID = id
                // Fields of an assistant message a client echoes back from an earlier answer (the OpenAI SDK's
                // message objects): accepted there when they say nothing (null, or no tool calls or annotations).
                case "refusal" where v == .null, "function_call" where v == .null, "audio" where v == .null,
                     "tool_calls" where v == .null || v == .array([]), "annotations" where v == .null || v == .array([]):
                    echoed = echoed ?? key
                default:
                    throw APIError.invalid("\(param).\(JSONFields.printable(key))", "unsupported message field '\(JSONFields.printable(key))'")
                }
            }
            guard var r = role else { throw APIError.invalid("\(param).role", "\(param).role is required") }
            let content = try contentValue.map { try messageContent($0, param: "\(param).content", assistant: r == "assistant") }
            if let key = echoed, r != "assistant" {
                throw APIError.invalid("\(param).\(key)", "unsupported message field '\(key)'")
            }
            if r == "developer" { r = "system" }  // OpenAI's newer name for the system role
            if r == "tool" {
                // A function's result: a user turn that says which call it answers (the templates here have no tool role).
                guard let id = callID else { throw APIError.invalid("\(param).tool_call_id", "a tool message needs tool_call_id") }
                guard let c = content else { throw APIError.invalid("\(param).content", "\(param).content is required") }
                let name = called[id].map { " (\($0))" } ?? ""
                return ChatMessage(role: "user", content: "Result of call \(id)\(name):\n" + c)
            }
            if callID != nil { throw APIError.invalid("\(param).tool_call_id", "only a tool message has tool_call_id") }
            guard ChatTemplate.roles.contains(r) else {
                throw APIError.invalid("\(param).role", "role must be system, developer, user, assistant or tool")
            }
            if !calls.isEmpty {
                // An earlier answer's calls, written as the model is asked to write them.
                for c in calls { called[c.id] = c.name }
                let text = ToolCallMode.marker + "[" + calls.map { "{\"name\":" + JSONSchemaGrammar.text(.string($0.name)) + ",\"parameters\":" + $0.arguments + "}" }
                    .joined(separator: ",") + "]"
                return ChatMessage(role: r, content: (content.map { $0 + "\n" } ?? "") + text)
            }
            guard let c = content else { throw APIError.invalid("\(param).content", "\(param).content is required") }
            return ChatMessage(role: r, content: c)
        }
    }

    /// A message's content: a string, or an array of `{"type": "text", "text": …}` parts (joined).
    private static func messageContent(_ v: ExactJSON, param: String, assistant: Bool) throws -> String {
        switch v {
        case .string(let s):
            return s
        case .array(let parts):
            return try parts.map { part -> String in
                guard case .object(let m) = part else { throw APIError.invalid(param, "content parts must be objects") }
                var type: String?
                var text: String?
                var refusal: String?
                for (key, value) in m {
                    switch (key, value) {
                    case ("type", .string(let t)): type = t
                    case ("text", .string(let t)): text = t
                    case ("refusal", .string(let t)): refusal = t
                    default: throw APIError.invalid(param, "unsupported content part field '\(JSONFields.printable(key))'")
                    }
                }
                // An assistant's refusal part (OpenAI's answers carry one where the model declined) is its text.
                if type == "refusal", assistant, let refusal, text == nil { return refusal }
                guard type == "text", let text, refusal == nil else {
                    throw APIError.invalid(param, assistant ? "only text and refusal content parts are supported" : "only text content parts are supported")
                }
                return text
            }.joined()
        default:
            throw APIError.invalid(param, "content must be a string or an array of text parts")
        }
    }

    private static func stops(_ f: JSONFields) throws -> [String] {
        let stops: [String]
        switch f.fields["stop"] {
        case nil, .null?: return []
        case .string(let s)?: stops = [s]
        case .array(let items)?:
            stops = try items.map {
                guard case .string(let s) = $0 else { throw APIError.invalid("stop", "'stop' must be a string or an array of strings") }
                return s
            }
        default: throw APIError.invalid("stop", "'stop' must be a string or an array of strings")
        }
        guard stops.count <= 16 else { throw APIError.invalid("stop", "at most 16 stop sequences") }
        guard stops.allSatisfy({ !$0.isEmpty && $0.utf8.count <= 256 }) else {
            throw APIError.invalid("stop", "stop sequences must be 1 to 256 bytes long")
        }
        return stops
    }
}

/// Typed access to a JSON object's fields; every mistake is a 400 naming the field.
struct JSONFields {
    let fields: [String: ExactJSON]

    /// The fields of an object; a key given twice is a 400.
    init(members: [(key: String, value: ExactJSON)]) throws {
        var fields: [String: ExactJSON] = [:]
        for (key, value) in members {
            guard fields.updateValue(value, forKey: key) == nil else {
                throw APIError.invalid(Self.printable(key), "duplicate key '\(Self.printable(key))'")
            }
        }
        self.fields = fields
    }

    /// Parses a request body that must be one JSON object (`RequestJSON.object`: the router refuses in the same words).
    static func parseObject(_ body: ByteBuffer) throws -> [(key: String, value: ExactJSON)] { try RequestJSON.object(body) }

    /// A key as it may appear in an error message (bounded, control characters escaped).
    static func printable(_ key: String) -> String { HTTPFront.printable(key, limit: 64) }

    func string(_ key: String) throws -> String? {
        switch fields[key] {
        case nil, .null?: return nil
        case .string(let s)?: return s
        default: throw APIError.invalid(key, "'\(key)' must be a string")
        }
    }

    func bool(_ key: String) throws -> Bool? {
        switch fields[key] {
        case nil, .null?: return nil
        case .bool(let b)?: return b
        default: throw APIError.invalid(key, "'\(key)' must be a boolean")
        }
    }

    func int(_ key: String, in range: ClosedRange<Int>) throws -> Int? {
        let value: Int
        switch fields[key] {
        case nil, .null?: return nil
        case .int(let i)?: value = i
        case .double(let d)? where d.rounded() == d && abs(d) < 9e15: value = Int(d)
        default: throw APIError.invalid(key, "'\(key)' must be an integer")
        }
        guard range.contains(value) else {
            throw APIError.invalid(key, "'\(key)' must be between \(range.lowerBound) and \(range.upperBound), got \(value)")
        }
        return value
    }

    func number(_ key: String, in range: ClosedRange<Double>) throws -> Double? {
        let value: Double
        switch fields[key] {
        case nil, .null?: return nil
        case .int(let i)?: value = Double(i)
        case .double(let d)?: value = d
        default: throw APIError.invalid(key, "'\(key)' must be a number")
        }
        guard range.contains(value) else {
            throw APIError.invalid(key, "'\(key)' must be between \(range.lowerBound) and \(range.upperBound), got \(value)")
        }
        return value
    }

    /// A parameter accepted only at its no-op value (or null).
    func noOp(_ key: String, _ isDefault: (ExactJSON) -> Bool) throws {
        guard let v = fields[key], v != .null else { return }
        guard isDefault(v) else { throw APIError.invalid(key, "'\(key)' is not supported by this server") }
    }
}
